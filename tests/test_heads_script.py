"""experiments/head_attribution.py runs end to end on a tiny random model and writes what it says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HANG_GUARD_S = 30 * 60  # only a guard against a hung script; nothing here is timed


def test_head_attribution_script(tmp_path):
    out = tmp_path / "heads"
    done = subprocess.run([sys.executable, str(REPO / "experiments" / "head_attribution.py"), "--model", "tiny:llava",
                           "--n-per-cell", "1", "--top-k", "2", "--controls", "2", "--no-filter",
                           "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=HANG_GUARD_S)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    record = json.loads((out / "heads.json").read_text())
    assert record["n_cases"] == record["n_kept"] == 56 and record["max_abs_dla_sum_error"] <= 1e-4
    assert len(record["text_ward_heads"]) == 2 and len(record["vision_ward_heads"]) == 2
    dla = [h["mean_dla"] for h in record["text_ward_heads"]]
    assert dla == sorted(dla, reverse=True)
    assert set(record["knockouts"]) == {"text_ward", "vision_ward", "random_0", "random_1"}
    text_ward = {tuple(h) for h in record["knockouts"]["text_ward"]["heads"]}
    assert not text_ward & {tuple(h) for h in record["knockouts"]["random_0"]["heads"]}
    assert len(record["sweep_mean_effect"]) == 4 and len(record["sweep_mean_effect"][0]) == 4
    mass = record["attention_mass"]["conflict"]["answer"]
    assert set(mass) == {"image", "context", "question", "rest"}
    import numpy as np

    per_case = np.load(out / "heads.npz")
    assert per_case["dla_heads"].shape == (56, 4, 4) and per_case["mass_conflict"].shape == (56, 2, 4, 4, 4)
    assert np.allclose(per_case["mass_conflict"].sum(-1), 1, atol=1e-5)
    assert np.abs(per_case["mass_text"][..., 0]).max() == 0  # no image in the text-only pass
    for name in ("attention_mass.png", "dla.png", "knockout.png"):
        assert (out / name).stat().st_size > 0
