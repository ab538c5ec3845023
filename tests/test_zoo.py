"""The model zoo recipe: its models load through the existing adapters, its memory figures follow
the stated formula, docs/zoo.md prints what `modality-lens zoo commands` prints, and the recipe
runs end to end on tiny random stand-ins of every listed class saved to local directories (about
5 s per class; the whole sweep stays in the default suite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hooks.adapters import ADAPTERS
from hooks.tiny import tiny_model
from modality_lens.cli import main
from modality_lens.zoo import ZOO, memory_estimate_gb

DOC = Path(__file__).resolve().parents[1] / "docs" / "zoo.md"


def _code(args) -> int:
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)


def test_every_zoo_model_has_an_adapter_and_a_tiny_stand_in_of_its_class():
    assert len({m.name for m in ZOO}) == len(ZOO)
    for m in ZOO:
        assert m.model_class in ADAPTERS, m.name
        assert type(tiny_model(m.tiny_family)[0]).__name__ == m.model_class, m.name


def test_the_memory_estimate_of_llava_1_5_by_hand():
    m = next(m for m in ZOO if m.name == "llava-1.5-7b")
    e = memory_estimate_gb(m)
    # 7.06e9 params x 2 bytes; K and V: 2 x 32 layers x (576 + 80) tokens x 4096 x 2 bytes x batch 16;
    # lens: 16 x 33 positions x 32064 x 4 bytes; total x 1.2
    assert e["weights"] == pytest.approx(14.12)
    assert e["kv"] == pytest.approx(5.502926848)
    assert e["lens"] == pytest.approx(0.067719168)
    assert e["total"] == pytest.approx((14.12 + 5.502926848 + 0.067719168) * 1.2)


def test_docs_zoo_shows_the_commands_the_cli_prints(capsys):
    assert main(["zoo", "commands"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    block = DOC.read_text().split("<!-- zoo commands -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    assert [ln for ln in block.strip().splitlines() if ln.startswith("modality-lens ")] == printed
    for m in ZOO:
        assert m.hub_id in DOC.read_text() and f"--batch-size {m.batch_size}" in "\n".join(printed)


def test_the_recipe_runs_end_to_end_on_tiny_local_stand_ins(tmp_path, capsys):
    stand_ins = []
    for m in ZOO:
        folder = tmp_path / "models" / m.name
        model, processor = tiny_model(m.tiny_family)
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        stand_ins += ["--stand-in", f"{m.name}={folder}"]
    out = tmp_path / "zoo"
    args = ["zoo", "run", "--out", str(out), *stand_ins, "--limit", "12", "--n-per-cell", "1", "--n-boot", "50",
            "--threads", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed.count("modality-lens run --model") == len(ZOO) and "modality-lens compare" in printed
    result = json.loads((out / "compare" / "compare.json").read_text())
    assert [Path(r["path"]).name for r in result["runs"]] == [m.name for m in ZOO]
    for m in ZOO:
        info = json.loads((out / m.name / "run.json").read_text())
        assert info["model"]["class"] == m.model_class
        assert info["arguments"]["dtype"] == m.dtype and info["arguments"]["batch_size"] == m.batch_size
        assert info["dataset"]["parameters"]["image_size"] is None  # the paper's sizes, the same for all
        assert (out / m.name / "report.html").exists()
    assert result["mixed_datasets"] is False
    assert f"<h1>modality-lens compare: {len(ZOO)} runs</h1>" in (out / "compare" / "report.html").read_text()


def test_a_stand_in_for_an_unknown_model_is_refused(tmp_path, capsys):
    assert _code(["zoo", "run", "--out", str(tmp_path / "z"), "--stand-in", f"llava-9={tmp_path}"]) == 2
    assert "unknown zoo model" in capsys.readouterr().err and not (tmp_path / "z").exists()
    assert _code(["zoo", "run", "--stand-in", "llava-1.5-7b=/no/such/dir"]) == 2
    assert "not a directory" in capsys.readouterr().err
