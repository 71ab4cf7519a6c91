"""The rewrite driver's guarantees hold for any registered rule, not only the
convolution's: merges that close a cycle together are undone (and not counted
as fired), a replacement that reads its own result is a CompilerError, rules
see what earlier rules made (``ctx.current``), and ``Program.passes`` counts
firings by rule name."""
import numpy as np
import pytest

import graphdiff as gd
from graphdiff import rewrite
from graphdiff.errors import CompilerError
from graphdiff.graph import Op, toposort
from graphdiff.ops.elementwise import Unary


class ExpAndTanh(Op):
    """``(exp(a), tanh(b))``: two nodes of different chains as one op (a merge)."""

    name = "exp_and_tanh"
    num_outputs = 2

    def forward(self, xp, a, b, out=(None, None)):
        return xp.exp(a), xp.tanh(b)


def _chains():
    """p1 = exp(x), q2 = tanh(p1); p2 = exp(2x), q1 = tanh(p2)."""
    x = gd.placeholder((3,), "float64", name="x")
    p1 = gd.exp(x, name="p1")
    q2 = gd.tanh(p1, name="q2")
    p2 = gd.exp(x * 2.0, name="p2")
    q1 = gd.tanh(p2, name="q1")
    return x, p1, q1, p2, q2


def _merge_rule(pairs):
    """Merge each ``(p, q)`` of ``pairs`` (by name) into one ExpAndTanh op."""
    partner = dict(pairs)

    def fn(node, ctx):
        if node.op.fn != "exp" or node.name not in partner:
            return None
        q = next(n for n in ctx.order if n.name == partner[node.name])
        both = rewrite.like(node, ExpAndTanh(), (node.inputs[0], q.inputs[0]))
        return rewrite.parts(both, [node, q])
    return rewrite.Rule("exp_and_tanh", (Unary,), fn, merges=True)


def test_merges_closing_a_cycle_together_are_undone_and_not_counted():
    x, p1, q1, p2, q2 = _chains()
    order = toposort([q1, q2])
    canon, fired = rewrite.apply_rules(order, [q1, q2], rules=[_merge_rule([("p1", "q1"), ("p2", "q2")])])
    assert fired == {} and all(canon[id(n)] is n for n in order)


def test_one_merge_alone_is_kept_counted_and_computes_the_same():
    x, p1, q1, p2, q2 = _chains()
    rule = _merge_rule([("p1", "q1")])
    order = toposort([q1, q2])
    canon, fired = rewrite.apply_rules(order, [q1, q2], rules=[rule])
    assert fired == {"exp_and_tanh": 1} and canon[id(q1)].op.name == "part"
    rewrite.register(rule)
    try:
        program = gd.compile([q1, q2], [x])
    finally:
        rewrite.unregister("exp_and_tanh")
    assert program.passes[2].rules == {"exp_and_tanh": 1}
    assert "exp_and_tanh" in {n.op.name for n in program.nodes}
    xv = np.array([0.1, -0.5, 0.3])
    got = program(xv)
    np.testing.assert_allclose(got[0], np.tanh(np.exp(2 * xv)), rtol=1e-12)
    np.testing.assert_allclose(got[1], np.tanh(np.exp(xv)), rtol=1e-12)


def test_a_replacement_reading_its_own_result_is_a_compiler_error():
    x = gd.placeholder((3,), "float64", name="x")
    a = gd.exp(x, name="a")
    b = gd.tanh(a, name="b")

    def loop(node, ctx):  # a := exp(b), b = tanh(a)
        return {node: rewrite.like(node, node.op, (b,))} if node is a else None

    with pytest.raises(CompilerError, match="cycle"):
        rewrite.apply_rules(toposort([b]), [b], rules=[rewrite.Rule("loop", (Unary,), loop)])


def test_a_later_rule_sees_what_an_earlier_one_made():
    x = gd.placeholder((3,), "float64", name="x")
    y = gd.neg(gd.exp(x, name="e"), name="y")
    seen = []

    def exp_to_tanh(node, ctx):
        return {node: rewrite.like(node, Unary("tanh"), node.inputs)} if node.op.fn == "exp" else None

    def look(node, ctx):
        seen.append(getattr(ctx.current(node.inputs[0]).op, "fn", None))
        return None

    rules = [rewrite.Rule("exp_to_tanh", (Unary,), exp_to_tanh), rewrite.Rule("look", (Unary,), look)]
    canon, fired = rewrite.apply_rules(toposort([y]), [y], rules=rules)
    assert fired == {"exp_to_tanh": 1}
    assert "tanh" in seen and canon[id(y)].inputs[0].op.fn == "tanh"


def test_registration_replaces_a_rule_of_the_same_name():
    rule = rewrite.Rule("toy_rule", (Unary,), lambda node, ctx: None)
    rewrite.register(rule)
    try:
        rewrite.register(rewrite.Rule("toy_rule", (Unary,), lambda node, ctx: None))
        assert sum(r.name == "toy_rule" for r in rewrite.RULES) == 1
    finally:
        rewrite.unregister("toy_rule")
    assert "toy_rule" not in {r.name for r in rewrite.RULES}
