"""Oscillation sweep: how often the layer-wise prediction flips between the text and the image answer.

    python experiments/oscillation_sweep.py                      # the shipped model, ~1 min on 2 cores
    python experiments/oscillation_sweep.py --widths 0.25 0.5 1.0 --model DIR

For every conflict case the logit lens reads the top-1 token at each decoder layer of the
conflict pass and classifies it as text / vision / irrelevant; an oscillation is one switch
between text and vision (irrelevant layers skipped). Cases near the balance point
(|dH_rel - balance point| <= width) are "ambiguous", the others "clear". The sweep prints the
mean number of oscillations per region for several widths, per text tier, and for the
text-irrelevant control.
"""

import argparse
from collections import defaultdict

import numpy as np

from hooks.loading import load_vlm
from interp.curves import fit_following
from interp.datasets.colour import colour_cases
from interp.oscillation import region_labels, summarise_oscillations
from modality_lens.cases import auto_image_size
from modality_lens.pipeline import default_model, iter_rows

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default=default_model())
parser.add_argument("--n-per-cell", type=int, default=16)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--widths", type=float, nargs="+", default=[0.25, 0.5, 1.0])
args = parser.parse_args()

vlm = load_vlm(args.model)
cases = list(colour_cases(args.n_per_cell, args.seed, image_size=auto_image_size(vlm.processor)))
rows = [row for case_rows, _ in iter_rows(vlm, cases, batch_size=32) for row in case_rows]
kept = [r for r in rows if r["kept"]]
decided = [r for r in kept if r["label"] in ("text", "vision")]
curve = fit_following(np.array([r["dh_rel"] for r in decided]), np.array([r["label"] == "text" for r in decided]),
                      seed=args.seed)
print(f"{len(kept)} kept conflict cases; balance point {curve.balance_point} (CI {curve.balance_point_ci})")
if curve.balance_point is None:
    raise SystemExit(f"no balance point, so no regions: {curve.note}")

dh = np.array([r["dh_rel"] for r in kept])
counts = np.array([r["oscillations"] for r in kept])
print(f"\n{'width':>6s} {'ambiguous (n)':>22s} {'clear (n)':>22s} {'difference [95% CI]':>26s}")
for width in args.widths:
    s = summarise_oscillations(counts, region_labels(dh, curve.balance_point, width), seed=args.seed)
    amb, clear = s.region("ambiguous"), s.region("clear")
    fmt = lambda r: "n/a" if r.mean is None else f"{r.mean:.2f} ({r.n})"  # noqa: E731
    diff = "n/a" if s.difference is None else f"{s.difference:+.2f} {tuple(round(x, 2) for x in s.difference_ci)}"
    print(f"{width:6.2f} {fmt(amb):>22s} {fmt(clear):>22s} {diff:>26s}")

by_tier = defaultdict(list)
for r in kept:
    by_tier[r["text_tier"]].append(r["oscillations"])
print("\nmean oscillations by text tier (kept conflict cases):")
for tier in sorted(by_tier):
    print(f"  tier {tier}: {np.mean(by_tier[tier]):.2f} (n={len(by_tier[tier])})")
control = [r["oscillations"] for r in rows if r["control"] == "text_irrelevant"]
print(f"text-irrelevant control: {np.mean(control):.2f} (n={len(control)})")
