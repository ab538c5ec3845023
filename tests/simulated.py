"""A simulated run whose truth is known, for the run-directory, summary and plot tests.

P(follow text) = sigmoid(SLOPE * (dH_rel - BALANCE)), and conflict-pass trajectories with a
chosen number of vision <-> text switches. The alternative uncertainty indices of each pass are
noisy monotone functions of its entropy. Layer ``CONSTANT_LAYER``'s top-1 is the same token in
every row (the constant-layer diagnostic must flag it, and no other). Not a test module.
"""

from __future__ import annotations

import math

import numpy as np

from modality_lens.rundir import RunDir

BALANCE = 0.3
SLOPE = -4.0
N_LAYERS = 8  # decoder layers; every pass has N_LAYERS + 1 lens rows (layer 0 = embedding)
PROBS = {"text": (0.6, 0.2), "vision": (0.2, 0.6), "irrelevant": (0.1, 0.1)}
CONSTANT_LAYER = 1
TOP1 = {"text": 1, "vision": 2, "irrelevant": 3}


def run_info(**changes):
    info = {
        "model": {"source": "data/tiny_vlm", "weights_hash": "sha256:aaa"},
        "dataset": {"source": "colour", "parameters": {"n_groups": 4}, "hash": "sha256:ddd"},
        "seed": 0,
        "arguments": {"dtype": "float32", "limit": None, "batch_size": 8},
        "device": "cpu",
    }
    for dotted, value in changes.items():
        target = info
        *head, last = dotted.split("__")
        for key in head:
            target = target[key]
        target[last] = value
    return info


def _classes(k: int, final: str) -> list[str]:
    """Embedding + N_LAYERS classes with exactly ``k`` vision <-> text switches, ending at ``final``."""
    other = "vision" if final == "text" else "text"
    runs = [final if (k - j) % 2 == 0 else other for j in range(k + 1)]
    return ["irrelevant"] * (N_LAYERS + 1 - len(runs)) + runs


def _layer_rows(case_id: str, pass_name: str, classes: list[str], rng) -> list[dict]:
    rows = []
    for layer, c in enumerate(classes):
        pt, pv = PROBS[c]
        varied = int(case_id[1:]) % 7 if c == "irrelevant" else 0  # irrelevant tokens differ between cases
        top1 = 100 if layer == CONSTANT_LAYER else TOP1[c] + 10 * layer + varied
        rows.append({"case_id": case_id, "pass": pass_name, "layer": layer, "class": c, "top1": top1,
                     "p_text": pt, "p_vision": pv, "logit_diff": math.log(pt / pv),
                     "entropy": float(rng.uniform(0.5, 3.0))})
    return rows


def _indices(h: float, suffix: str, rng) -> dict:
    """The alternative indices of one pass from its entropy ``h`` (monotone, with noise)."""
    noise = lambda: float(rng.uniform(0.9, 1.1))  # noqa: E731
    return {f"h_cand_{suffix}": min(math.log(2), 0.4 * h * noise()),
            f"one_minus_max_p_{suffix}": 1 - math.exp(-h * noise()),
            f"margin_{suffix}": math.exp(-1.5 * h * noise()), f"nmlp_{suffix}": 4.0 / (0.3 + h * noise())}


def synthetic_rows(n_conflict: int = 400, n_controls: int = 20, seed: int = 0, other_rate: float = 0.03):
    """(case rows, layer rows) of a simulated run; see the module docstring."""
    rng = np.random.default_rng(seed)
    index_rng = np.random.default_rng(seed + 10_000)  # its own stream: the other columns stay as they were
    cases, layers = [], []
    for i in range(n_conflict + 2 * n_controls):
        control = None if i < n_conflict else ("text_irrelevant" if i < n_conflict + n_controls else "image_irrelevant")
        vt, tt = i % 14, (i // 14) % 4
        h_v = 0.2 + 0.15 * vt + rng.exponential(0.3)
        h_t = 0.3 + 0.5 * tt + rng.exponential(0.3)
        dh = 2 * (h_t - h_v) / (h_t + h_v)
        vision_correct = bool(rng.random() < 0.98 - 0.04 * vt)
        text_correct = bool(rng.random() < 0.95 - 0.1 * tt)
        u = rng.random()
        if u < other_rate:
            label = "other"
        else:
            label = "text" if rng.random() < 1 / (1 + math.exp(-SLOPE * (dh - BALANCE))) else "vision"
        if control is None:
            k = int(rng.integers(2, 4)) if abs(dh - BALANCE) <= 0.5 else int(rng.integers(0, 2))
        else:
            k = int(rng.integers(0, 2))
        reason = ("both_wrong" if not (vision_correct or text_correct) else "vision_wrong" if not vision_correct
                  else "text_wrong" if not text_correct else None)
        cid = f"c{i:04d}"
        final_class = {"other": "irrelevant"}.get(label, label)
        cases.append({**_indices(h_v, "v", index_rng), **_indices(h_t, "t", index_rng),
            "case_id": cid, "group_id": f"g{i // 4}", "visual_tier": vt, "text_tier": tt, "control": control,
            "image_answer": "red", "text_answer": "blue",
            "y_v": "red" if vision_correct else "green", "y_t": "blue" if text_correct else "green",
            "y_m": {"text": "blue", "vision": "red", "other": "green"}[label],
            "vision_correct": vision_correct, "text_correct": text_correct,
            "h_v": h_v, "h_t": h_t, "dh_rel": dh, "label": label,
            "kept": reason is None, "drop_reason": reason, "oscillations": k,
            "task": "colour", "class_v": "vision" if vision_correct else "irrelevant",
            "class_t": "text" if text_correct else "irrelevant", "class_m": {"other": "irrelevant"}.get(label, label),
            "p_text_m": PROBS[final_class][0], "p_vision_m": PROBS[final_class][1],
            "logit_diff_m": math.log(PROBS[final_class][0] / PROBS[final_class][1]), "divergence_position": 0,
        })
        final = label if label != "other" else "vision"
        layers += _layer_rows(cid, "vision", _classes(0, "vision"), rng)
        layers += _layer_rows(cid, "text", _classes(0, "text"), rng)
        layers += _layer_rows(cid, "conflict", _classes(k, final), rng)
    return cases, layers


def chunks(cases, layers, size):
    """Split rows into chunks of ``size`` cases with their layer rows."""
    by_case = {}
    for r in layers:
        by_case.setdefault(r["case_id"], []).append(r)
    for start in range(0, len(cases), size):
        part = cases[start:start + size]
        yield part, [r for c in part for r in by_case.get(c["case_id"], [])]


def write_run(path, cases, layers, size=25, info=None) -> RunDir:
    run = RunDir(path)
    run.create(info or run_info(), resume=False)
    for c, lay in chunks(cases, layers, size):
        run.append(c, lay)
    return run
