"""One list of models: the adapters, the tiny families, the TransformerLens support and the
README's model table agree."""

from __future__ import annotations

import re
from pathlib import Path

from hooks.adapters import ADAPTERS
from hooks.tiny import FAMILIES, tiny_model
from hooks.tl_backend import tl_stock_support

README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_table() -> dict[str, tuple[list[str], str]]:
    """HF class -> (tiny families, TransformerLens bridge) from the README's table under '## Models'."""
    section = README.read_text().split("## Models", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].endswith("ForConditionalGeneration"):
            rows[cells[1]] = (re.findall(r"[a-z0-9_]+", cells[2]), cells[3])
    return rows


def test_every_class_has_an_adapter_a_tiny_family_and_a_readme_row():
    built = {family: type(tiny_model(family)[0]).__name__ for family in FAMILIES}
    table = _readme_table()
    assert set(built.values()) == set(ADAPTERS), "a tiny family per adapter class, and an adapter per tiny class"
    assert set(table) == set(ADAPTERS), "one README row per adapter class"
    for cls, (families, _) in table.items():
        assert sorted(families) == sorted(f for f, c in built.items() if c == cls), cls


def test_readme_says_which_classes_transformer_lens_bridges_with_its_own_adapter():
    stock = tl_stock_support()
    for cls, (_, bridge) in _readme_table().items():
        assert bridge in ("stock", "language model only"), (cls, bridge)
        assert (bridge == "stock") == (cls in stock), f"{cls}: README says {bridge!r}"
