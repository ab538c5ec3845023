"""SoEBench: solutions satisfy their equations (checked by substitution into the printed text),
unique solutions, deterministic and distinct per seed; the answer parsers."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest

from interp.datasets.soebench import parse_regex, parse_soe, parse_word, soebench, solve_exact


def _terms(equation: str) -> tuple[dict[str, int], int]:
    """Parse '2A - B + C = 7' independently of the generator: coefficients by variable, rhs."""
    left, right = equation.split("=")
    coef: dict[str, int] = {}
    for sign, mag, var in re.findall(r"([+-]?)\s*(\d*)([A-E])", left.replace(" ", "")):
        coef[var] = (-1 if sign == "-" else 1) * (int(mag) if mag else 1)
    return coef, int(right)


def test_solutions_satisfy_the_printed_equations_by_substitution():
    items = soebench(40, seed=3)
    for item in items:
        values = dict(zip(item.variables, item.solution))
        assert all(0 <= v <= 9 for v in values.values())
        assert len(item.equations) == len(item.variables)
        for eq in item.equations:
            coef, rhs = _terms(eq)
            assert sum(c * values[v] for v, c in coef.items()) == rhs, eq


def test_solution_is_unique():
    for item in soebench(20, seed=1):
        assert solve_exact(item.coefficients, item.rhs) == tuple(Fraction(x) for x in item.solution)
    assert solve_exact([[1, 2], [2, 4]], [3, 6]) is None  # singular: no unique solution


def test_deterministic_and_unique_per_seed():
    a, b, c = soebench(30, seed=5), soebench(30, seed=5), soebench(30, seed=6)
    assert [x.context for x in a] == [x.context for x in b]
    assert len({x.context for x in a}) == 30  # no system twice in a set
    assert {x.context for x in a} != {x.context for x in c}


def test_hand_worked_system_text():
    item = soebench(1, seed=0, n_vars=(2,))[0]
    assert item.answer == f"A={item.solution[0]}, B={item.solution[1]}"
    assert "A" in item.question and "B" in item.question


def test_parsers():
    assert parse_soe("So A = 3 and B: 1. Finally C is 4", "ABC") == "A=3, B=1, C=4"
    assert parse_soe("A=2, B=5 ... wait, A=7", "AB") == "A=7, B=5"
    assert parse_soe("A=2 only", "AB") is None
    assert parse_soe("", "A") is None
    assert parse_word("The answer: Red.", ["blue", "red"]) == "red"
    assert parse_word("no idea", ["blue", "red"]) is None
    assert parse_regex("answer is 42!", r"(\d+)") == "42"
    assert parse_regex("nothing here", r"(\d+)") is None


def test_bad_arguments():
    with pytest.raises(ValueError):
        soebench(-1)
    with pytest.raises(ValueError):
        soebench(2, n_vars=(6,))
