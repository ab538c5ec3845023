"""The benchmark's instruments and output format (no timings are asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from modality_lens.bench import paired_ratios, peak_memory


@pytest.mark.parametrize("megabytes", [16, 64])
def test_peak_memory_measures_a_known_allocation(megabytes):
    make = lambda: torch.ones(megabytes * 2**20 // 4)  # noqa: E731  float32: 4 bytes each
    for _ in range(3):  # repeated: memory freed by the previous call must not hide the next peak
        assert peak_memory(make, torch.device("cpu")) / 2**20 == pytest.approx(megabytes, abs=2.0)


def test_paired_ratios_are_per_round():
    # round 2 is slower for every method: per-round ratios cancel the drift, a ratio of medians would not
    times = {"forward": [1.0, 2.0, 1.0], "lens": [1.1, 2.2, 1.1], "three": [1.2, 2.0, 1.5]}
    got = paired_ratios(times, "forward")
    assert got["forward"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert got["lens"] == pytest.approx({"median": 1.1, "min": 1.1, "max": 1.1})
    assert got["three"] == pytest.approx({"median": 1.2, "min": 1.0, "max": 1.5})
    assert paired_ratios({"forward": [0.5], "lens": [0.6]}, "forward", floor=1.0)["lens"] is None


def test_bench_prints_the_table_and_the_json_line_last():
    done = subprocess.run([sys.executable, "-m", "modality_lens.cli", "bench", "--size", "tiny", "--repeats", "2",
                           "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert "memory_ratio" in last  # None when the tiny model's forward peaks below 1 MiB
    for key in ("three_pass_ratio", "lens_ratio") + (("memory_ratio",) if last["memory_ratio"] else ()):
        assert set(last[key]) == {"median", "min", "max"} and last[key]["min"] <= last[key]["median"] <= last[key]["max"]
    methods = ["forward", "forward_full_logits", "hidden_states", "transformer_lens", "lens", "three_pass_uncached",
               "three_pass"]
    assert list(last["time_ratio"]) == methods
    assert last["time_ratio"]["forward"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    assert 0 < last["lm_tokens_ratio"] < 1  # the tiny LLaVA reuses its image prefix
    # every method computed the same lens: the table's agreement column is tiny
    rows = {ln.split()[0]: ln.split() for ln in done.stdout.splitlines() if ln.split() and ln.split()[0] in methods}
    assert set(rows) == set(methods) and "1 threads" in done.stdout
    for name in ("forward", "forward_full_logits", "hidden_states", "transformer_lens", "three_pass"):
        assert float(rows[name][-1]) <= 1e-4
