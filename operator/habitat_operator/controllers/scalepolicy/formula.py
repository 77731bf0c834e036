"""A scaling formula (`queue_a + queue_b / 2`): parsed into Python's AST, never evaluated by `eval`.

Only finite numbers, trigger names, + - * /, unary minus and parentheses are allowed; anything else
is refused when the policy is read, so a formula can neither call nor reach anything. Its value may
still overflow (to +Inf or NaN) with large trigger values: the decision treats that as a failure.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class Formula:
    def __init__(self, expression: str, names: set[str]) -> None:
        """Raises ValueError naming what is wrong: syntax, an operator, or an unknown trigger."""
        self.expression = expression
        try:
            self._tree = ast.parse(expression, mode="eval").body
        except SyntaxError:
            raise ValueError(f"formula {expression!r} is not an arithmetic expression") from None
        self.names = self._check(self._tree, names)

    def _check(self, node: ast.expr, names: set[str]) -> set[str]:
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, int | float)
            and type(node.value) is not bool
        ):
            if not _finite(node.value):
                raise ValueError(
                    f"formula constant {ast.get_source_segment(self.expression, node)} is not a finite number"
                )
            return set()
        if isinstance(node, ast.Name):
            if node.id not in names:
                raise ValueError(f"formula names {node.id!r}, which is not a rabbitmq or prometheus trigger")
            return {node.id}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return self._check(node.left, names) | self._check(node.right, names)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return self._check(node.operand, names)
        raise ValueError(
            f"formula may only use numbers, trigger names, + - * / and parentheses: {ast.unparse(node)!r}"
        )

    def evaluate(self, values: Mapping[str, float]) -> float:
        """The value for these trigger values; a division by zero gives 0 (an idle queue's ratio)."""
        return self._evaluate(self._tree, values)

    def _evaluate(self, node: ast.expr, values: Mapping[str, float]) -> float:
        if isinstance(node, ast.Constant):
            return float(node.value)  # type: ignore[arg-type]  # _check allowed numbers only
        if isinstance(node, ast.Name):
            return values[node.id]
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](self._evaluate(node.operand, values))
        assert isinstance(node, ast.BinOp)
        left, right = self._evaluate(node.left, values), self._evaluate(node.right, values)
        if isinstance(node.op, ast.Div) and right == 0:
            return 0.0
        return _BINARY[type(node.op)](left, right)


def _finite(number: float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:  # an integer too large for a float
        return False
