"""Does the model know when it cannot see? The perturbation study through the public API.

    python experiments/perturbation_study.py                       # the shipped model, default colour set
    python experiments/perturbation_study.py --model DIR --conflict --out runs/perturb-mine
    python experiments/perturbation_study.py --image photo.png --sheet levels.png   # perturb your own image

Runs `modality_lens.perturb.run_perturb` (what `modality-lens perturb` runs): the vision-only pass
of every image at every level of every perturbation, through the per-layer lens; then prints,
for each perturbation, accuracy and confidence per level with 95% bootstrap CIs, the slope of
confidence against accuracy across the levels (near 0 while accuracy falls = confidence does not
track perception, the seed paper's claim for base models), the first lens layer whose NMLP
separates right from wrong answers, and voting over sampled answers. With ``--image`` it also
draws that image at every level of every perturbation (a contact sheet), to see the scales.
"""

import argparse
import json
import time

from modality_lens.perturb import run_perturb
from modality_lens.shipped import default_model

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default=default_model())
parser.add_argument("--out", default="runs/perturbation-study")
parser.add_argument("--n-per-cell", type=int, default=16)
parser.add_argument("--limit", type=int, default=None, help="only the first N images")
parser.add_argument("--perturbations", default="noise,blur,occlusion,crop")
parser.add_argument("--conflict", action="store_true", help="also the conflict pass (TFR against the level)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--image", default=None, help="a picture of yours to perturb at every level")
parser.add_argument("--sheet", default="perturbation_levels.png", help="where the --image contact sheet goes")
args = parser.parse_args()

if args.image:
    from PIL import Image

    from interp.datasets.perturb import diffusion_levels, perturb

    picture = Image.open(args.image).convert("RGB")
    w, h = picture.size
    box = (w // 4, h // 4, w - w // 4, h - h // 4)  # no target box of its own: the central quarter
    names, levels = args.perturbations.split(","), diffusion_levels()
    sheet = Image.new("RGB", (w * len(levels), h * len(names)), "white")
    for i, name in enumerate(names):
        for j, level in enumerate(levels):
            sheet.paste(perturb(name, picture, level, args.seed, box=box), (j * w, i * h))
    sheet.save(args.sheet)
    print(f"contact sheet: {args.sheet} (rows {', '.join(names)}; columns levels {', '.join(f'{v:g}' for v in levels)})")

start = time.perf_counter()
run = run_perturb(model=args.model, out=args.out, n_per_cell=args.n_per_cell, limit=args.limit,
                  perturbations=args.perturbations.split(","), conflict=args.conflict, seed=args.seed,
                  resume=args.resume)
print(f"{time.perf_counter() - start:.0f} s; report: {run.report_path}")
summary = json.loads(run.summary_path.read_text())


def ci(entry):
    if entry["mean"] is None:
        return "n/a"
    if entry["ci_low"] is None:
        return f"{entry['mean']:.3f}"
    return f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


for pass_name, perturbations in summary["passes"].items():
    for name, entry in perturbations.items():
        print(f"\n{pass_name} pass, {name}: {entry['n_units']} units")
        print("  level  accuracy               max p                  NMLP                   dC (NMLP)")
        for lv in entry["levels"]:
            print(f"  {lv['level']:.3f}  {ci(lv['accuracy']):22s} {ci(lv['confidence']['max_p']):22s} "
                  f"{ci(lv['confidence']['nmlp']):22s} {ci(lv['drop']['nmlp'])}")
        for score in ("max_p", "nmlp"):
            t = entry["tracking"][score] if entry["tracking"] else None
            if t and t["slope"] is not None:
                interval = f" [{t['ci_low']:.3f}, {t['ci_high']:.3f}]" if t["ci_low"] is not None else ""
                print(f"  slope of mean {score} against accuracy: {t['slope']:.3f}{interval}")
            else:
                print(f"  slope of mean {score} against accuracy: n/a (accuracy does not change with the level)")
        if entry["layers"]:
            for score, sep in entry["layers"]["separation"].items():
                print(f"  {score}: first lens layer ranking right above wrong (AUROC CI > 0.5): "
                      f"{sep['first_separating_layer']}; the wrong way round (CI < 0.5): {sep['first_inverse_layer']}")
        if entry["voting"]:
            last = entry["voting"][-1]
            print(f"  voting at level {last['level']:.3f}, N = {last['ns']}: weighted {last['weighted']}, "
                  f"majority {last['majority']}")
