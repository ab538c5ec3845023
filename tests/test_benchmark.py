"""The benchmark's instruments and output format (no timings are asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from modality_lens.bench import peak_memory


@pytest.mark.parametrize("megabytes", [16, 64])
def test_peak_memory_measures_a_known_allocation(megabytes):
    make = lambda: torch.ones(megabytes * 2**20 // 4)  # noqa: E731  float32: 4 bytes each
    for _ in range(3):  # repeated: memory freed by the previous call must not hide the next peak
        assert peak_memory(make, torch.device("cpu")) / 2**20 == pytest.approx(megabytes, abs=2.0)


def test_bench_prints_the_json_ratios_last():
    done = subprocess.run([sys.executable, "-m", "modality_lens.cli", "bench", "--size", "tiny", "--repeats", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    keys = ["plain", "hidden_states", "transformer_lens", "taps"]
    assert list(last) == ["time_ratio", "memory_ratio"]
    assert list(last["time_ratio"]) == keys and list(last["memory_ratio"]) == keys
    assert last["time_ratio"]["plain"] == 1.0
    # every method computed the same lens: the table's agreement column is tiny
    rows = [ln.split() for ln in done.stdout.splitlines() if ln.split() and ln.split()[0] in keys[1:]]
    assert rows and all(float(r[-1]) <= 1e-4 for r in rows)
