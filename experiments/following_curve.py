"""Following curve of a model on the built-in colour-conflict set, through the public API.

    python experiments/following_curve.py                      # the shipped model, ~1 min on 2 cores
    python experiments/following_curve.py --model DIR --n-per-cell 10 --out curve.png

Runs the three passes of every conflict case, keeps the cases answered correctly in both
unimodal passes, fits P(follow text) against dH_rel and prints the balance point, its
bootstrap interval, the model-free isotonic crossing and the robustness split; draws the
binned curve with the logistic fit.
"""

import argparse

import numpy as np

from hooks.loading import load_vlm
from interp.curves import fit_following, robustness_split
from interp.datasets.colour import colour_cases
from modality_lens.cases import auto_image_size
from modality_lens.pipeline import default_model, iter_rows

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default=default_model())
parser.add_argument("--n-per-cell", type=int, default=16)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="following_curve.png")
args = parser.parse_args()

vlm = load_vlm(args.model)
cases = list(colour_cases(args.n_per_cell, args.seed, image_size=auto_image_size(vlm.processor), controls=False))
rows = [row for case_rows, _ in iter_rows(vlm, cases, batch_size=32) for row in case_rows]

kept = [r for r in rows if r["kept"] and r["label"] in ("text", "vision")]
dh = np.array([r["dh_rel"] for r in kept])
follows_text = np.array([r["label"] == "text" for r in kept])
print(f"{len(rows)} conflict cases, {sum(r['kept'] for r in rows)} kept (correct in both unimodal passes), "
      f"{int(follows_text.sum())} follow the text, {int((~follows_text).sum())} the image")

curve = fit_following(dh, follows_text, seed=args.seed)
print(f"balance point {curve.balance_point} (95% CI {curve.balance_point_ci}); isotonic {curve.isotonic_balance_point}")
print(f"Spearman rho {curve.spearman_rho}; share of decreasing adjacent bins {curve.share_decreasing}")
if curve.note:
    print("note:", curve.note)
split = robustness_split(dh, follows_text, np.array([r["h_t"] + r["h_v"] for r in kept]), seed=args.seed)
print(f"robustness split at median H_t + H_v: low {split.low.balance_point}, high {split.high.balance_point}")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(5, 3.5))
centres = [b.dh_rel_mean for b in curve.bins]
ax.errorbar(centres, [b.p_text for b in curve.bins],
            yerr=[[b.p_text - b.ci_low for b in curve.bins], [b.ci_high - b.p_text for b in curve.bins]],
            fmt="o", capsize=3, label="binned (Wilson 95%)")
if curve.a is not None:
    grid = np.linspace(dh.min(), dh.max(), 200)
    ax.plot(grid, 1 / (1 + np.exp(-(curve.a + curve.b * grid))), label="logistic fit")
if curve.balance_point is not None:
    ax.axvline(curve.balance_point, ls="--", c="k", lw=1, label=f"balance point {curve.balance_point:.2f}")
ax.axhline(0.5, c="grey", lw=0.5)
ax.set(xlabel="ΔH_rel = 2(H_t − H_v)/(H_t + H_v)", ylabel="P(follow text)", ylim=(-0.05, 1.05))
ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(args.out, dpi=120)
print("figure:", args.out)
