"""Oscillation by outcome and by depth, the constant-layer diagnostic, --layers (interp.depth, finalize)."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from interp.errors import ArgumentError, RunDirError
from interp.oscillation import constant_layers, count_switches, switch_layers
from modality_lens.arguments import check_layers, layers_option
from modality_lens.finalize import finalize
from modality_lens.rows import CASE_INDEX_COLUMNS
from modality_lens.rundir import RunDir
from tests.simulated import CONSTANT_LAYER, run_info, synthetic_rows, write_run


def test_switch_layers_by_hand():
    classes = ["irrelevant", "text", "irrelevant", "vision", "vision", "text"]
    assert switch_layers(classes, range(6)) == [3, 5]  # vision appears at 3, text again at 5
    assert switch_layers(classes, range(6), counted=[3, 4, 5]) == [5]
    assert switch_layers(classes[::-1], range(5, -1, -1)) == [3, 5]  # order of the rows does not matter
    assert len(switch_layers(classes, range(6), counted=range(1, 6))) == count_switches(classes, has_embedding=True)


def test_constant_layers_by_hand():
    got = constant_layers([1, 1, 1, 2, 2, 2], [7, 7, 7, 7, 8, 7])
    assert got["flagged"] == [1]
    assert [(r["layer"], r["top1"], r["top1_share"]) for r in got["layers"]] == [(1, 7, 1.0), (2, 7, pytest.approx(2 / 3))]


def test_layers_option():
    assert layers_option("all") is None and layers_option(None) is None
    assert layers_option("2-4,6") == [2, 3, 4, 6]
    assert layers_option([3, 1, 3]) == [1, 3]
    for bad in ("2-", "x", "4-2"):
        with pytest.raises(ArgumentError, match="--layers"):
            layers_option(bad)
    with pytest.raises(ArgumentError, match="beyond this model's 4 decoder layers"):
        check_layers([2, 5], 4)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    cases, layers = synthetic_rows(n_conflict=400, n_controls=10, seed=4)
    run = write_run(tmp_path_factory.mktemp("depth") / "run", cases, layers, size=100)
    summary = finalize(run, n_boot=200)
    run.close()
    return run, summary


def _recount(layers: pd.DataFrame, keep: list[int]) -> pd.Series:
    """Switches per case over the layers ``keep``, counted with pandas (no code of the package)."""
    rows = layers[(layers["pass"] == "conflict") & layers.layer.isin(keep) & (layers["class"] != "irrelevant")]
    rows = rows.sort_values(["case_id", "layer"])
    changed = rows.groupby("case_id")["class"].transform(lambda c: (c != c.shift()).astype(int).cumsum() - 1)
    return changed.groupby(rows.case_id).max().reindex(layers.case_id.unique(), fill_value=0)


def test_constant_layer_is_flagged_and_counts_are_recounted(finished):
    run, summary = finished
    depth = summary["oscillation_depth"]
    assert depth["constant_layers"]["flagged"] == [CONSTANT_LAYER]  # the simulated layers 0, 2.. vary
    layers = pd.read_parquet(run.layers_path)
    cases = pd.read_parquet(run.cases_path).set_index("case_id")
    counted, without = depth["layers_counted"], depth["layers_without_constant"]
    assert counted == list(range(1, layers.layer.max() + 1)) and without == [p for p in counted if p != CONSTANT_LAYER]
    assert (_recount(layers, counted).reindex(cases.index) == cases.oscillations).all()
    assert (_recount(layers, without).reindex(cases.index) == cases.oscillations_no_constant).all()


@pytest.mark.parametrize("key,column", [("by_outcome", "oscillations"),
                                        ("by_outcome_without_constant", "oscillations_no_constant")])
def test_by_outcome_means_agree_with_a_pandas_recount(finished, key, column):
    run, summary = finished
    cases = pd.read_parquet(run.cases_path)
    kept = cases[cases.control.isna() & cases.kept]
    means = kept.groupby(["label", "region"])[column].agg(["mean", "size"])
    for label in ("text", "vision", "other"):
        for region in ("ambiguous", "clear"):
            entry = summary["oscillation_depth"][key][label][region]
            if (label, region) in means.index:
                assert entry["mean"] == pytest.approx(means.loc[(label, region), "mean"], abs=1e-12)
                assert entry["n"] == means.loc[(label, region), "size"]
            else:
                assert entry["n"] == 0
    pooled = kept.groupby("region")[column].mean()
    assert summary["oscillation_depth"][key]["all"]["ambiguous"]["mean"] == pytest.approx(pooled["ambiguous"])
    assert summary["oscillation"]["ambiguous"]["mean"] == pytest.approx(kept.groupby("region").oscillations.mean()["ambiguous"])


def test_by_layer_sums_to_the_mean_switch_count(finished):
    run, summary = finished
    cases = pd.read_parquet(run.cases_path)
    kept = cases[cases.control.isna() & cases.kept]
    by_layer = summary["oscillation_depth"]["by_layer"]
    for group, rows in (("all", kept), ("ambiguous", kept[kept.region == "ambiguous"]),
                        ("vision", kept[kept.label == "vision"])):
        assert sum(by_layer[group]) == pytest.approx(rows.oscillations.mean())


def test_layers_choice_changes_the_counts(tmp_path):
    cases, layers = synthetic_rows(n_conflict=120, n_controls=0, seed=6)
    run = write_run(tmp_path / "run", cases, layers, size=60)
    summary = finalize(run, n_boot=50, layers=[5, 6, 7, 8])
    run.close()
    frame = pd.read_parquet(run.cases_path).set_index("case_id")
    recount = _recount(pd.read_parquet(run.layers_path), [5, 6, 7, 8]).reindex(frame.index)
    assert summary["parameters"]["layers"] == [5, 6, 7, 8]
    assert (recount == frame.oscillations).all()


def test_resume_of_a_run_without_the_index_columns_is_refused(tmp_path):
    cases, layers = synthetic_rows(n_conflict=20, n_controls=0, seed=1)
    write_run(tmp_path / "run", cases, layers, size=10).close()
    part = sorted((tmp_path / "run" / "cases").glob("part-*.parquet"))[0]
    table = pq.read_table(part)
    pq.write_table(table.drop_columns([c for c in CASE_INDEX_COLUMNS if c != "nmlp_t"]), part)  # as an old version wrote it
    before = (tmp_path / "run" / "run.json").read_bytes()
    with pytest.raises(RunDirError, match="older modality-lens.*another --out"):
        RunDir(tmp_path / "run").create(run_info(), resume=True)
    assert (tmp_path / "run" / "run.json").read_bytes() == before  # nothing was changed


def test_the_shipped_model_has_a_constant_layer_one(tmp_path):
    """The shipped model's first decoder layer sees only the last 8 tokens (the template's tail,
    the same in every pass), so the lens after it gives one token for every row; that token and
    the depth are worked out here from a plain HF forward (`output_hidden_states`, final norm,
    unembedding), not from the pipeline."""
    import torch
    import transformers as T
    from PIL import Image

    from hooks.prompts import render_prompt
    from interp.datasets.text import COLOUR_QUESTION, INSTRUCTION
    from modality_lens.pipeline import run
    from modality_lens.shipped import default_model

    summary = run(out=tmp_path / "run", limit=48, n_boot=20, progress=False, figures=False).read_summary()
    diagnostic = summary["oscillation_depth"]["constant_layers"]
    layer_one = next(r for r in diagnostic["layers"] if r["layer"] == 1)
    assert 1 in diagnostic["flagged"] and layer_one["top1_share"] == 1.0 and layer_one["n"] == 48 * 3

    source = default_model()
    model = T.LlavaForConditionalGeneration.from_pretrained(source).eval()
    processor = T.AutoProcessor.from_pretrained(source)
    # a case's question ends with the colour set's instruction: the last 8 tokens are its and the template's
    prompt = render_prompt(processor, question=f"{COLOUR_QUESTION.format(shape='circle')} {INSTRUCTION}",
                           with_image=True)
    inputs = processor(text=[prompt], images=[[Image.new("RGB", (64, 64), "white")]], return_tensors="pt")
    with torch.no_grad():
        states = model(**inputs, output_hidden_states=True).hidden_states
        logits = model.lm_head(model.model.language_model.norm(states[1][:, -1]))
    assert layer_one["token"] == processor.tokenizer.decode([int(logits.argmax())]).strip()
    depth = model.config.text_config.num_hidden_layers
    assert summary["n_layers_model"] == depth and summary["oscillation_depth"]["n_layers"] == depth
