"""Adding an op family with its own kernel and a fusion rule touches only its own
code: here a toy family, ``square`` (``y = x ** 2``) and the compile-time op
``sum_of_squares`` (``s = sum(x ** 2)`` in one pass, no ``x ** 2`` temporary),
with the rule that puts the second in place of ``sum(square(x))``, all defined
in this file (in the package they would be ``graphdiff/ops/square.py`` and
``graphdiff/kernels/square.py``, plus a line in ``graphdiff/ops/__init__.py``).
The compiler applies the rule with no change of its own; ``Program.passes``
names it. The walk-through: docs/adding_an_op.md.
"""
import numpy as np
import pytest

import graphdiff as gd
from graphdiff import rewrite
from graphdiff.graph import Op, apply, as_tensor
from graphdiff.ops.reduce import Sum
from graphdiff.testing import check_double_vjp, check_vjp


# --------------------------------------------------------------------------- the kernels (kernels/square.py)
def square_kernel(xp, x, out=None):
    """``x * x``, into ``out`` if given."""
    return xp.multiply(x, x, out=out)


def sum_of_squares_kernel(xp, x):
    """``sum(x * x)`` as one dot product of the flat array with itself: no temporary."""
    flat = xp.ravel(x)
    return xp.asarray(xp.dot(flat, flat), dtype=x.dtype)


# --------------------------------------------------------------------------- the ops (ops/square.py)
class Square(Op):
    """``y = x ** 2``; VJP ``dx = 2 x g`` (a graph, so it differentiates again)."""

    name = "square"
    supports_out = True

    def infer(self, x):
        if x.dtype.kind != "f":
            raise self.error(f"needs a float input, got {x.dtype}", x)
        return x.shape, x.dtype

    def forward(self, xp, x, out=None):
        return square_kernel(xp, x, out)

    def vjp(self, node, g, wrt):
        return [g * node.inputs[0] * 2.0]


def square(x, name=None):
    """Elementwise ``x ** 2``."""
    return apply(Square(), [as_tensor(x)], name=name)


class SumOfSquares(Op):
    """``s = sum(x ** 2)`` (a scalar): built only by the rule below, after the
    gradients were taken, so it needs no VJP."""

    name = "sum_of_squares"

    def infer(self, x):  # built by the rule with the sum's own shape
        raise NotImplementedError

    def forward(self, xp, x):
        return sum_of_squares_kernel(xp, x)


def sum_of_squares_rule(node, ctx):
    """``sum(square(x))`` over every axis, where nothing else reads the squares."""
    sq = node.inputs[0]
    if (type(sq.op) is not Square or ctx.uses(sq) != 1 or ctx.is_root(sq)
            or node.op.keepdims or len(node.shape) != 0):
        return None
    ctx.absorb(sq)
    return {node: rewrite.like(node, SumOfSquares(), sq.inputs)}


@pytest.fixture
def registered():
    """The rule registered as the family's module would at import; removed afterwards."""
    rewrite.register(rewrite.Rule("sum_of_squares", (Sum,), sum_of_squares_rule))
    try:
        yield
    finally:
        rewrite.unregister("sum_of_squares")


# --------------------------------------------------------------------------- the tests
def test_square_vjp_and_double_vjp_against_finite_differences():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    assert max(check_vjp(lambda t: square(t), [x])) < 1e-7
    assert max(check_double_vjp(lambda t: square(t), [x])) < 1e-6


def test_square_against_its_formula():
    x = np.linspace(-2, 2, 7)
    t = gd.placeholder((7,), "float64", name="x")
    np.testing.assert_array_equal(gd.compile(square(t), [t])(x), x * x)
    with pytest.raises(gd.ShapeError, match="square: .*needs a float input"):
        square(gd.placeholder((2,), "int64"))


def test_the_compiler_applies_the_new_rule_and_names_it(registered):
    rng = np.random.default_rng(1)
    x = gd.placeholder((None, 5), "float64", name="x")
    loss = gd.sum(square(gd.tanh(x))) * 0.5
    program = gd.compile(loss, [x])
    ops = [n.op.name for n in program.nodes]
    assert "sum_of_squares" in ops and "square" not in ops  # the squares are never stored
    assert [p.name for p in program.passes] == ["prune", "simplify", "rewrite", "fusion"]
    assert program.passes[2].rules == {"sum_of_squares": 1}
    xv = rng.standard_normal((4, 5))
    np.testing.assert_allclose(program(xv), 0.5 * np.sum(np.tanh(xv) ** 2), rtol=1e-12)
    plain = gd.compile(loss, [x], optimize=False)  # no rules: the same number
    np.testing.assert_allclose(program(xv), plain(xv), rtol=1e-12)
    # With the gradient the squares are read again (the sum's VJP takes their shape):
    # the rule declines, and the values stay right.
    (gx,) = gd.grad(loss, [x])
    both = gd.compile([loss, gx], [x])
    assert both.passes[2].rules == {}
    value, grad = both(xv)
    np.testing.assert_allclose(value, 0.5 * np.sum(np.tanh(xv) ** 2), rtol=1e-12)
    np.testing.assert_allclose(grad, np.tanh(xv) * (1 - np.tanh(xv) ** 2), rtol=1e-12)


def test_the_rule_leaves_squares_that_are_read_elsewhere(registered):
    x = gd.placeholder((3,), "float64", name="x")
    sq = square(x)
    program = gd.compile([gd.sum(sq), sq], [x])  # the squares are an output too
    assert "sum_of_squares" not in {n.op.name for n in program.nodes}
    assert program.passes[2].rules == {}
    value, squares = program(np.array([1.0, 2.0, 3.0]))
    assert value == 14.0 and squares.tolist() == [1.0, 4.0, 9.0]


def test_an_unregistered_rule_does_not_fire():
    x = gd.placeholder((3,), "float64", name="x")
    program = gd.compile(gd.sum(square(x)), [x])
    assert "sum_of_squares" not in {n.op.name for n in program.nodes}
    assert "sum_of_squares" not in {r.name for r in rewrite.RULES}
