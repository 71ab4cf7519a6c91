"""The explorer's formulas in TeX, one table keyed by op name (``node.op.name``).

Each entry has ``forward`` (what the op computes) and ``vjp`` (its
vector-Jacobian product, the rule the backward pass applies), written as on
the lecture's slides: the convolution's case 1 (weights) and case 2 (input,
with the inversion of indexes), ReLU's switch, max pooling's multiplexer,
LRN's refactored gradient, the elementwise table. ``\\partial E_{ij}`` is
``dE/dY_ij``, the gradient arriving; the explorer typesets them with KaTeX
(vendored in ``explorer_assets/katex``). The text docstrings stay the
reference: :func:`visualize.explore.rule_text` quotes them beside these.
"""

CONV_FORWARD = r"Y_{ij} = \sum_{a=0}^{m-1} \sum_{b=0}^{m-1} W_{ab}\, X_{(i+a)(j+b)}"
CONV_CASE1 = (r"\frac{\partial E}{\partial W_{lk}} = \sum_{i=0}^{N-m} \sum_{j=0}^{N-m} "
              r"\partial E_{ij}\, X_{(i+l)(j+k)}")
CONV_CASE2 = (r"\frac{\partial E}{\partial X_{ij}} = \sum_{a=0}^{m-1} \sum_{b=0}^{m-1} W_{ab}\, "
              r"\partial E_{(i-a)(j-b)} \quad \begin{cases} (i-a), (j-b) \geq 0 \\ "
              r"\text{note the inversion of indexes} \end{cases}")
RELU_SWITCH = (r"\frac{\partial E}{\partial x} = \partial E \cdot \operatorname{step}(y) = "
               r"\begin{cases} \partial E & y > 0 \ \text{(switch open)} \\ 0 & \text{otherwise (closed)} \end{cases}")
POOL_MUX = (r"\frac{\partial E}{\partial X_{(i s + a)(j s + b)}} \mathrel{+}= \partial E_{ij} \quad "
            r"\text{where } (a, b) = \operatorname{argmax}_{a, b} X_{(i s + a)(j s + b)}"
            r"\quad \text{(a multiplexer: the other inputs get 0)}")
LRN_FORWARD = (r"Y_{ijl} = \frac{X_{ijl}}{\left(k + \alpha \sum_{q \in \mathrm{Nbr}(l)} X_{ijq}^2\right)^{\beta}}"
               r" = X_{ijl}\, \mathrm{scale}_{ijl}^{-\beta}")
LRN_GRAD = (r"\frac{\partial E}{\partial X} = \partial E \cdot \mathrm{scale}^{-\beta} - 2 \alpha \beta\, X "
            r"\cdot S^{\top}\!\left(\frac{\partial E \cdot Y}{\mathrm{scale}}\right), \quad "
            r"\mathrm{scale} = k + \alpha\, S(X^2)")

FORMULAS = {
    # convolution: the slides' case 1 and case 2
    "conv2d": {"forward": CONV_FORWARD,
               "vjp": r"\begin{gathered} " + CONV_CASE2 + r" \\[4pt] " + CONV_CASE1
               + r" \\[4pt] \frac{\partial E}{\partial b} = \sum_{ij} \partial E_{ij} \end{gathered}"},
    "conv2d_grad_input": {"forward": CONV_CASE2,
                          "vjp": r"\text{linear in } \partial E \text{ and } W:\ \text{a convolution of the incoming gradient with } W"},
    "conv2d_grad_weight": {"forward": CONV_CASE1,
                           "vjp": r"\text{linear in } X \text{ and } \partial E:\ \text{case 2 against } X,\ \text{a convolution against } \partial E"},
    # ReLU: a switch
    "relu": {"forward": r"y = \max(0, x)", "vjp": RELU_SWITCH},
    "relu_grad": {"forward": RELU_SWITCH, "vjp": r"\operatorname{step}(y) \cdot g \ \text{(the same switch)}"},
    # max pooling: a multiplexer
    "max_pool2d": {"forward": r"Y_{ij} = \max_{a, b} X_{(i s + a)(j s + b)}", "vjp": POOL_MUX},
    "max_pool2d_argmax": {"forward": r"\mathrm{idx}_{ij} = \operatorname{argmax}_{a, b} X_{(i s + a)(j s + b)}",
                          "vjp": r"\text{none: piecewise constant in } X"},
    "max_pool2d_grad": {"forward": POOL_MUX, "vjp": r"g_{\mathrm{idx}} \ \text{(the gather at each window's argmax)}"},
    "avg_pool2d": {"forward": r"Y_{ij} = \frac{1}{k^2} \sum_{a, b} X_{(i s + a)(j s + b)}",
                   "vjp": r"\frac{\partial E}{\partial X_{(i s + a)(j s + b)}} \mathrel{+}= \frac{\partial E_{ij}}{k^2}"},
    # LRN: the refactored gradient
    "lrn_scale": {"forward": r"\mathrm{scale}_{ijl} = k + \alpha \sum_{q \in \mathrm{Nbr}(l)} X_{ijq}^2",
                  "vjp": r"2 \alpha\, X \cdot S^{\top}(g)"},
    "lrn_normalize": {"forward": LRN_FORWARD, "vjp": LRN_GRAD},
    "lrn_grad": {"forward": LRN_GRAD, "vjp": r"\text{written in graph ops (grad of grad works)}"},
    "lrn_within_normalize": {"forward": r"Y_{ijl} = \frac{X_{ijl}}{\left(k + \alpha \sum_{(a,b) \in \mathrm{Nbr}(i,j)} X_{abl}^2\right)^{\beta}}",
                             "vjp": LRN_GRAD},
    "lrn_within_grad": {"forward": LRN_GRAD, "vjp": r"\text{written in graph ops}"},
    "normalize_cross_map": {"forward": r"Y_{ijl} = \frac{X_{ijl}}{c}, \quad c = \sum_{k=1}^{h} X_{ijk}",
                            "vjp": r"\frac{\partial E}{\partial X_{ijl}} = \frac{\partial E_{ijl}}{c} - "
                                   r"\sum_k Y_{ijk} \frac{\partial E_{ijk}}{c}"},
    # dense layers and the loss
    "matmul": {"forward": r"Y = A B",
               "vjp": r"\frac{\partial E}{\partial A} = \partial E\, B^{\top}, \quad \frac{\partial E}{\partial B} = A^{\top} \partial E"},
    "softmax_cross_entropy": {
        "forward": r"E = -\frac{1}{n} \sum_{i} \log \frac{e^{z_{i t_i}}}{\sum_c e^{z_{ic}}}",
        "vjp": r"\frac{\partial E}{\partial z_{ic}} = \frac{g}{n} \left(\mathrm{softmax}(z_i)_c - [c = t_i]\right)"},
    "softmax": {"forward": r"y_c = \frac{e^{z_c}}{\sum_k e^{z_k}}",
                "vjp": r"\frac{\partial E}{\partial z} = y \cdot \left(g - \textstyle\sum_k g_k y_k\right)"},
    "log_softmax": {"forward": r"y_c = z_c - \log \sum_k e^{z_k}",
                    "vjp": r"\frac{\partial E}{\partial z} = g - \mathrm{softmax}(z) \textstyle\sum_k g_k"},
    # the elementwise table (y the output, g the gradient arriving; broadcast inputs sum g back)
    "add": {"forward": r"y = a + b", "vjp": r"\bar a = g, \quad \bar b = g"},
    "sub": {"forward": r"y = a - b", "vjp": r"\bar a = g, \quad \bar b = -g"},
    "mul": {"forward": r"y = a \cdot b", "vjp": r"\bar a = g \cdot b, \quad \bar b = g \cdot a"},
    "div": {"forward": r"y = a / b", "vjp": r"\bar a = g / b, \quad \bar b = -g \cdot y / b"},
    "pow": {"forward": r"y = a^{b}", "vjp": r"\bar a = g\, b\, a^{b-1}, \quad \bar b = g\, y \log a"},
    "maximum": {"forward": r"y = \max(a, b)", "vjp": r"\bar a = g\,[a \geq b], \quad \bar b = g\,[a < b]"},
    "minimum": {"forward": r"y = \min(a, b)", "vjp": r"\bar a = g\,[a \leq b], \quad \bar b = g\,[a > b]"},
    "neg": {"forward": r"y = -x", "vjp": r"\bar x = -g"},
    "exp": {"forward": r"y = e^{x}", "vjp": r"\bar x = g \cdot y"},
    "log": {"forward": r"y = \log x", "vjp": r"\bar x = g / x"},
    "sqrt": {"forward": r"y = \sqrt{x}", "vjp": r"\bar x = \frac{g}{2 y}"},
    "tanh": {"forward": r"y = \tanh x", "vjp": r"\bar x = g \cdot (1 - y^2)"},
    "sigmoid": {"forward": r"y = \frac{1}{1 + e^{-x}}", "vjp": r"\bar x = g \cdot y (1 - y)"},
    "abs": {"forward": r"y = |x|", "vjp": r"\bar x = g \cdot \operatorname{sign}(x)"},
    # reductions and shapes
    "sum": {"forward": r"y = \sum_{\text{axes}} x", "vjp": r"\bar x = \operatorname{broadcast}(g)"},
    "sum_to": {"forward": r"y = \sum_{\text{broadcast axes}} x", "vjp": r"\bar x = \operatorname{broadcast}(g)"},
    "reshape": {"forward": r"y = \operatorname{reshape}(x)", "vjp": r"\bar x = \operatorname{reshape}^{-1}(g)"},
    "transpose": {"forward": r"y = x^{\top}", "vjp": r"\bar x = g^{\top}"},
}


def formula(op_name):
    """``{"forward": TeX, "vjp": TeX}`` of an op, or None."""
    return FORMULAS.get(op_name)
