"""SoEBench: systems of linear equations over the digits 0-9 with variables A-E (REST, METHOD §2).

`soebench(n, seed=...)` generates `n` fresh systems, each with a unique solution in which every
variable is a digit 0-9; the same seed gives the same systems, and no two systems of one set are
the same. The answer parsers turn a model's free text into a canonical answer or ``None``
(invalid: counted, and wrong).

**[ours]** conventions (the paper does not publish its generator):

- A system has `n_vars` variables (2-3 by default: A, B[, C]) and as many equations; the
  coefficients are integers in -3..3, each equation with at least two non-zero coefficients, and
  the coefficient matrix is non-singular (exact rational elimination), so the solution is unique.
- An equation is written ``"2A + B - C = 7"`` (coefficient 1 omitted, a term of 0 left out);
  the question asks for every variable, the answer is ``"A=3, B=1, C=4"`` (the canonical form
  the parser returns: variables in order, ``", "`` between them).
- The parser accepts ``A = 3``, ``A: 3`` or ``A is 3`` anywhere in the text (the last value of a
  variable wins, since models tend to restate their final answer) and needs every variable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

__all__ = ["VARIABLES", "SoeItem", "soebench", "soe_item", "parse_soe", "parse_word", "parse_regex", "solve_exact"]

VARIABLES = "ABCDE"
"""The variable names, in order."""
COEFFICIENTS = tuple(range(-3, 4))
"""The coefficient range **[ours]**."""


@dataclass(frozen=True)
class SoeItem:
    """One system: `equations` (their text), `coefficients` (rows of ints), `rhs`, the
    `solution` (a digit per variable), and the text the formats are built from."""

    item_id: str
    variables: str
    coefficients: tuple[tuple[int, ...], ...]
    rhs: tuple[int, ...]
    solution: tuple[int, ...]

    @property
    def equations(self) -> tuple[str, ...]:
        return tuple(_equation(row, r, self.variables) for row, r in zip(self.coefficients, self.rhs))

    @property
    def context(self) -> str:
        """The system itself, one equation a line (the part the mixed format renders)."""
        return "\n".join(self.equations)

    @property
    def question(self) -> str:
        names = ", ".join(self.variables)
        return (f"Solve the system for {names}; every value is a digit 0-9. "
                f"Answer as {', '.join(f'{v}=?' for v in self.variables)}.")

    @property
    def answer(self) -> str:
        return ", ".join(f"{v}={x}" for v, x in zip(self.variables, self.solution))


def _equation(row: Sequence[int], rhs: int, variables: str) -> str:
    parts: list[str] = []
    for c, v in zip(row, variables):
        if c == 0:
            continue
        mag = "" if abs(c) == 1 else str(abs(c))
        if not parts:
            parts.append(f"{'-' if c < 0 else ''}{mag}{v}")
        else:
            parts.append(f"{'-' if c < 0 else '+'} {mag}{v}")
    return f"{' '.join(parts)} = {rhs}"


def solve_exact(coefficients: Sequence[Sequence[int]], rhs: Sequence[int]) -> tuple[Fraction, ...] | None:
    """The unique solution by exact Gauss-Jordan elimination, or None if the matrix is singular."""
    n = len(coefficients)
    m = [[Fraction(x) for x in row] + [Fraction(r)] for row, r in zip(coefficients, rhs)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if m[r][col] != 0), None)
        if pivot is None:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(n):
            if r != col and m[r][col] != 0:
                f = m[r][col] / m[col][col]
                m[r] = [a - f * b for a, b in zip(m[r], m[col])]
    return tuple(m[i][n] / m[i][i] for i in range(n))


def soe_item(rng: np.random.Generator, n_vars: int, item_id: str) -> SoeItem:
    """One system with `n_vars` variables whose unique solution is a digit per variable."""
    if not 1 <= n_vars <= len(VARIABLES):
        raise ValueError(f"n_vars must lie in 1..{len(VARIABLES)}; got {n_vars}")
    solution = tuple(int(x) for x in rng.integers(0, 10, size=n_vars))
    while True:
        rows = []
        while len(rows) < n_vars:
            row = tuple(int(x) for x in rng.choice(COEFFICIENTS, size=n_vars))
            if sum(c != 0 for c in row) >= min(2, n_vars):
                rows.append(row)
        rhs = tuple(int(sum(c * x for c, x in zip(row, solution))) for row in rows)
        if solve_exact(rows, rhs) is not None:
            return SoeItem(item_id, VARIABLES[:n_vars], tuple(rows), rhs, solution)


def soebench(n: int, *, seed: int = 0, n_vars: Sequence[int] = (2, 3)) -> list[SoeItem]:
    """`n` distinct systems (the variable count cycles through `n_vars`), deterministic for `seed`."""
    if n < 0:
        raise ValueError(f"n must be >= 0; got {n}")
    rng = np.random.default_rng([seed, 2])  # 2: SoEBench's stream, apart from the other sets
    items: list[SoeItem] = []
    seen: set[tuple] = set()
    while len(items) < n:
        item = soe_item(rng, int(n_vars[len(items) % len(n_vars)]), f"soe-{seed}-{len(items):04d}")
        key = (item.coefficients, item.rhs)
        if key not in seen:
            seen.add(key)
            items.append(item)
    return items


_ASSIGN = re.compile(r"\b([A-E])\s*(?:=|:|is)\s*(-?\d+)")


def parse_soe(text: str, variables: str) -> str | None:
    """The canonical answer ``"A=3, B=1"`` from free text, or None if a variable has no value."""
    found: dict[str, int] = {}
    for name, value in _ASSIGN.findall(text or ""):
        found[name] = int(value)
    if any(v not in found for v in variables):
        return None
    return ", ".join(f"{v}={found[v]}" for v in variables)


def parse_word(text: str, allowed: Sequence[str]) -> str | None:
    """The first word of `text` (lower-cased, punctuation stripped) that is one of `allowed`, else None."""
    allowed_set = {a.lower() for a in allowed}
    for word in re.findall(r"[A-Za-z]+", text or ""):
        if word.lower() in allowed_set:
            return word.lower()
    return None


def parse_regex(text: str, pattern: str | re.Pattern) -> str | None:
    """The first match of `pattern` (its first group if it has one), stripped, else None."""
    m = re.search(pattern, text or "")
    if m is None:
        return None
    return (m.group(1) if m.groups() else m.group(0)).strip()
