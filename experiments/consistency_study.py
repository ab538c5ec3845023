"""Same content, different answers? The cross-modal consistency study through the public API.

    python experiments/consistency_study.py                          # the shipped model, colour items
    python experiments/consistency_study.py --items soebench --n-items 48
    python experiments/consistency_study.py --items mine.jsonl --variants rest+ --out runs/consistency-mine
    python experiments/consistency_study.py --typographic            # the sign-in-the-scene conflict

Runs `modality_lens.consistency.run_consistency` (what `modality-lens consistency` runs): every
item as text, as a rendered image and mixed (context rendered, question as text), answered by
greedy generation with the lens at every step and parsed (unparsable = invalid, wrong), the OCR
gate (the model transcribes each rendered image; CER against the source), then prints RER, CFR
and MMC with 95% bootstrap CIs on all items and on the CER = 0 subset, per-format accuracy, the
McNemar tests, the per-layer cosine of rendered and text tokens and the layer where the lens of
the rendered formats parts from the text format's. With ``--typographic`` it runs the
typographic conflict instead and prints the main job's TFR and balance point.
"""

import argparse
import json
import time

from modality_lens.shipped import default_model

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model", default=default_model())
parser.add_argument("--out", default=None)
parser.add_argument("--items", default="colour", help="colour, soebench or a .jsonl file")
parser.add_argument("--n-items", type=int, default=48)
parser.add_argument("--variants", default="default", help="default or rest+")
parser.add_argument("--max-new-tokens", type=int, default=12)
parser.add_argument("--canvas", default="auto", help="auto, none or a square's side in pixels (see the CLI's --canvas)")
parser.add_argument("--typographic", action="store_true")
parser.add_argument("--n-per-cell", type=int, default=2, help="--typographic: groups per tier cell")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=None)
parser.add_argument("--resume", action="store_true")
args = parser.parse_args()

start = time.time()
if args.typographic:
    from modality_lens.consistency_typographic import run_typographic

    run = run_typographic(model=args.model, n_per_cell=args.n_per_cell, seed=args.seed, resume=args.resume,
                          out=args.out or f"runs/typographic-seed{args.seed}", threads=args.threads)
    s = run.read_summary()
    print(f"typographic conflict: {s['n_conflict']} conflict cases, {s['n_kept']} kept (correct in both)")
    print(f"TFR {json.dumps(s['tfr'])}")
    print(f"balance point {s['balance_point']} (CI {s['balance_point_ci']}; curve: {s['curve_status']})")
else:
    from modality_lens.consistency import run_consistency

    run = run_consistency(model=args.model, items=args.items, n_items=args.n_items, variants=args.variants,
                          max_new_tokens=args.max_new_tokens, seed=args.seed, resume=args.resume,
                          out=args.out or f"runs/consistency-{args.items.split('/')[-1]}-seed{args.seed}",
                          threads=args.threads, canvas=args.canvas)
    s = json.loads((run.path / "summary.json").read_text())
    show = lambda m: "n/a" if m["value"] is None else (  # noqa: E731
        f"{m['value']:.3f}" + (f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]" if m["ci_low"] is not None else ""))
    for name, v in s["variants"].items():
        print(f"variant {name}: {v['n_items']} items, {v['n_three_formats']} in three formats, "
              f"{v['n_ocr_gated']} transcribed with CER 0")
        for subset in ("all", "ocr_gated"):
            m = v[subset]
            if not m:
                print(f"  {subset}: no items")
                continue
            acc = ", ".join(f"{f} {show(a)}" for f, a in m["accuracy"].items())
            print(f"  {subset} (n={m['n']}): RER {show(m['rer'])}  CFR {show(m['cfr'])}  MMC {show(m['mmc'])}")
            print(f"    accuracy: {acc}; invalid {m['invalid']}")
            print("    McNemar: " + "; ".join(f"{t['a']} vs {t['b']} {t['only_a']}:{t['only_b']} p={t['p_value']:.3g}"
                                          for t in m["mcnemar"]))
        for fmt in ("image", "mixed"):
            lay = v["layers"].get(fmt, {})
            if "cosine" in lay:
                curve = " ".join(f"{c['mean']:.3f}" for c in lay["cosine"])
                print(f"  {fmt}: cosine per layer {curve}; parting layer {lay['parting_layer']}")
print(f"wall time {time.time() - start:.1f} s; report: {run.report_path.resolve()}")
