"""Which heads carry the text answer, and where they look: attention mass, direct logit attribution,
head knockouts, on the colour set's conflict cases.

Run:  python experiments/head_attribution.py --out runs/heads
      python experiments/head_attribution.py --out runs/heads --n-per-cell 2   # quicker

The model is `data/tiny_vlm` (the shipped trained LLaVA) when it exists, else the random-weight
`tiny:llava` (a note says so); `--model` picks another source. Cases: the conflict cases of the
main job's built-in colour set (`modality-lens run --seed SEED`, 64-px images); TFR and the
follower split use the cases answered right in both unimodal passes (METHOD §1.1).

Per case and pass (`hooks.interventions`):
1. attention mass of every layer x head from the answer position and from the question tokens
   to the image, the context, the question and the rest (`attention_mass`);
2. direct logit attribution of every head and MLP to logit(text) - logit(vision) at the answer
   position of the conflict pass, the final norm's scale frozen (`direct_logit_attribution`);
3. knockouts in the conflict pass of the kept cases (only they enter TFR; **[ours]** the others are
   not run again): the `--top-k` most text-ward heads by mean DLA over kept cases,
   the `--top-k` most vision-ward, and `--controls` sets of as many random heads (excluding the
   text-ward ones); TFR before / after with paired bootstrap CIs (`interp.heads`); and every head
   alone: the layer x head maps of the mean change of the logit difference and of the TFR shift
   (`knockout_sets` tiles every set into a few forwards).
Writes `heads.json` (means with CIs), `heads.npz` (per case: DLA case x layer x head, attention
mass case x query x layer x head x span per pass, labels, kept), `attention_mass.png`, `dla.png`,
`knockout.png` under `--out`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch


def default_model() -> str:
    from modality_lens.shipped import default_model as shipped

    if Path(shipped(), "config.json").is_file():
        return shipped()
    print("note: the shipped model is not built; using the random-weight tiny:llava, whose numbers only show that "
          "the machinery runs", flush=True)
    return "tiny:llava"


def conflict_cases(seed: int, n_per_cell: int | None) -> list[Any]:
    from modality_lens.cases import BUILTIN_N_PER_CELL, builtin_cases

    cases, _ = builtin_cases("colour", seed=seed, n_per_cell=n_per_cell or BUILTIN_N_PER_CELL, image_size=64)
    return [c for c in cases if c.control is None]


def measure(vlm: Any, cases: Sequence[Any], batch_size: int, correct_only: bool = True) -> dict[str, Any]:
    """Per case: kept flag, conflict label, DLA terms, attention mass of the three passes."""
    from tqdm import tqdm

    import hooks.interventions as P
    from modality_lens.cases import case_item, case_pairs

    out: dict[str, list] = {"kept": [], "labels": [], "heads": [], "mlp": [], "embed": [], "logit_diff": [],
                            "mass": {p: [] for p in ("vision", "text", "conflict")}}
    for lo in tqdm(range(0, len(cases), batch_size), desc="cases", unit="batch"):
        chunk = cases[lo:lo + batch_size]
        items, pairs = [case_item(c) for c in chunk], case_pairs(vlm.tokenizer, chunk)
        batches = vlm.passes(items)
        uni = {p: P.read_answer(vlm, batches[p], pairs) for p in ("vision", "text")}
        out["kept"] += P.kept_in_both(uni["vision"], uni["text"], pairs) if correct_only else [True] * len(chunk)
        dla = P.direct_logit_attribution(vlm, batches["conflict"], pairs)
        out["labels"] += dla.clean.labels(pairs)
        for key in ("heads", "mlp", "embed", "logit_diff"):
            out[key].append(getattr(dla, key).cpu().numpy())
        for name, batch in batches.items():
            out["mass"][name].append(P.attention_mass(vlm, batch).mass.numpy())
    for key in ("heads", "mlp", "embed", "logit_diff"):
        out[key] = np.concatenate(out[key])
    out["mass"] = {k: np.concatenate(v) for k, v in out["mass"].items()}  # case, query, layer, head, span
    return out


def knockouts(vlm: Any, cases: Sequence[Any], measured: dict[str, Any], top_k: int, n_controls: int,
              batch_size: int, seed: int) -> dict[str, Any]:
    """TFR before / after knocking out the top text-ward, top vision-ward and random head sets, and
    the single-head sweep."""
    from tqdm import tqdm

    import hooks.interventions as P
    from interp.heads import knockout_report, mean_by_label, random_heads, shift_difference_ci, top_heads
    from modality_lens.cases import case_item, case_pairs

    score = mean_by_label(measured["heads"], measured["labels"], measured["kept"], n_boot=0).groups["all"].mean
    # only the kept cases enter TFR, so only they are run again (**[ours]**: a third of the cost)
    chosen = [i for i, k in enumerate(measured["kept"]) if k]
    if not chosen:
        raise SystemExit(f"none of the {len(cases)} cases is answered right in both unimodal passes, so there is "
                         "no TFR to shift; use more cases (--n-per-cell) or --no-filter")
    cases, labels, kept = [cases[i] for i in chosen], [measured["labels"][i] for i in chosen], [True] * len(chosen)
    text_ward, vision_ward = top_heads(score, top_k, sign=1), top_heads(score, top_k, sign=-1)
    n_layers, n_heads = score.shape
    sets = {"text_ward": [(l, h) for l, h, _ in text_ward], "vision_ward": [(l, h) for l, h, _ in vision_ward]}
    for c in range(n_controls):
        sets[f"random_{c}"] = random_heads(n_layers, n_heads, top_k, exclude=sets["text_ward"], seed=seed + c)
    singles = [[(l, h)] for l in range(n_layers) for h in range(n_heads)]
    after: dict[str, list[str]] = {name: [] for name in sets}
    sweep_effect, sweep_labels = [], []
    for lo in tqdm(range(0, len(cases), batch_size), desc="knockouts", unit="batch"):
        chunk = cases[lo:lo + batch_size]
        pairs = case_pairs(vlm.tokenizer, chunk)
        batch = vlm.passes([case_item(c) for c in chunk], ("conflict",))["conflict"]
        # every named set and every single head, each knocked out on its own, tiled into few forwards
        result = P.knockout_sets(vlm, batch, pairs, list(sets.values()) + singles, max_rows=512)
        rows = result.intervened.labels(pairs)  # per case: one label per set
        for s, name in enumerate(sets):
            after[name] += [row[s] for row in rows]
        effect = result.intervened.logit_diff[:, len(sets):] - result.clean.logit_diff[:, None]
        sweep_effect.append(effect.reshape(len(chunk), n_layers, n_heads).cpu().numpy())
        sweep_labels += [np.asarray(row[len(sets):], dtype=object).reshape(n_layers, n_heads) for row in rows]
    reports = {name: knockout_report(name, heads, labels, after[name], kept, seed=seed) for name, heads in sets.items()}
    lab = np.stack(sweep_labels)  # kept case, layer, head
    text, vision = (lab == "text").sum(0), (lab == "vision").sum(0)
    tfr0 = labels.count("text") / max(1, labels.count("text") + labels.count("vision"))
    return {"text_ward": text_ward, "vision_ward": vision_ward, "reports": reports,
            "control_differences": {name: shift_difference_ci(reports["text_ward"], r, seed=seed)
                                    for name, r in reports.items() if name.startswith("random")},
            "sweep_effect": np.concatenate(sweep_effect), "sweep_tfr_shift": text / np.maximum(text + vision, 1) - tfr0}


def draw(measured: dict[str, Any], knocked: dict[str, Any], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from interp.heads import mean_by_label

    kept, labels = measured["kept"], measured["labels"]

    def heat(ax, grid, name, cmap="viridis", centred=False):
        lim = np.nanmax(np.abs(grid)) or 1.0
        im = ax.imshow(grid, cmap=cmap, vmin=-lim if centred else None, vmax=lim if centred else None, aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(name, fontsize=8)
        plt.colorbar(im, ax=ax, fraction=0.046)

    mass = measured["mass"]["conflict"][:, 0]  # from the answer position: case, layer, head, span
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, (s, name) in zip(axes, ((0, "image"), (1, "context"), (2, "question"))):
        heat(ax, mean_by_label(mass[..., s], labels, kept, n_boot=0).groups["all"].mean, f"answer -> {name}")
    fig.suptitle(f"{title}: attention mass from the answer position, conflict pass", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "attention_mass.png", dpi=130)
    plt.close(fig)
    split = mean_by_label(measured["heads"], labels, kept, n_boot=0)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    heat(axes[0], split.groups["text"].mean, f"DLA, text followers (n={split.groups['text'].n})", "RdBu_r", True)
    heat(axes[1], split.groups["vision"].mean, f"DLA, vision followers (n={split.groups['vision'].n})", "RdBu_r", True)
    heat(axes[2], split.difference, "text - vision followers", "RdBu_r", True)
    fig.suptitle(f"{title}: direct logit attribution to logit(text) - logit(vision)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "dla.png", dpi=130)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    heat(axes[0], knocked["sweep_effect"].mean(0), "knockout: mean Δ logit diff",
         "RdBu_r", True)
    heat(axes[1], knocked["sweep_tfr_shift"], "knockout: TFR shift", "RdBu_r", True)
    fig.suptitle(f"{title}: each head knocked out alone, conflict pass", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "knockout.png", dpi=130)
    plt.close(fig)


def summarise(vlm: Any, cases: Sequence[Any], measured: dict[str, Any], knocked: dict[str, Any]) -> dict[str, Any]:
    from interp.heads import mean_by_label

    kept, labels = measured["kept"], measured["labels"]
    spans = ("image", "context", "question", "rest")
    mass = {p: {q: {s: mean_by_label(m[:, qi, ..., si], labels, kept).to_dict() for si, s in enumerate(spans)}
                for qi, q in enumerate(("answer", "question"))} for p, m in measured["mass"].items()}
    dla = mean_by_label(measured["heads"], labels, kept)
    return {
        "model": vlm.source, "n_cases": len(cases), "n_kept": int(sum(kept)),
        "dla_convention": "final-norm scale frozen at the full residual; z[text id] - z[vision id] at the answer "
                          "position, each id the answer's candidate with the highest clean logit",
        "max_abs_dla_sum_error": float(np.abs(measured["heads"].sum((1, 2)) + measured["mlp"].sum(1)
                                              + measured["embed"] - measured["logit_diff"]).max()),
        "text_ward_heads": [{"layer": l, "head": h, "mean_dla": v} for l, h, v in knocked["text_ward"]],
        "vision_ward_heads": [{"layer": l, "head": h, "mean_dla": v} for l, h, v in knocked["vision_ward"]],
        "dla_heads": dla.to_dict(), "dla_mlp": mean_by_label(measured["mlp"], labels, kept).to_dict(),
        "attention_mass": mass,
        "knockouts": {name: r.to_dict() for name, r in knocked["reports"].items()},
        "text_ward_minus_control_shift_ci": {k: None if v is None else list(v)
                                             for k, v in knocked["control_differences"].items()},
        "sweep_mean_effect": knocked["sweep_effect"].mean(0).tolist(),
        "sweep_tfr_shift": knocked["sweep_tfr_shift"].tolist(),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="model source (default: the shipped model)")
    parser.add_argument("--out", type=Path, default=Path("runs/heads"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-per-cell", type=int, default=None, help="groups per tier cell (default: the main job's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--top-k", type=int, default=3, help="heads per knockout set")
    parser.add_argument("--controls", type=int, default=3, help="random control sets")
    parser.add_argument("--no-filter", action="store_true", help="keep every case, not only those right in both "
                        "unimodal passes (METHOD §1.1)")
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    from hooks.loading import load_vlm

    start = time.perf_counter()
    vlm = load_vlm(args.model or default_model())
    cases = conflict_cases(args.seed, args.n_per_cell)
    args.out.mkdir(parents=True, exist_ok=True)
    measured = measure(vlm, cases, args.batch_size, correct_only=not args.no_filter)
    knocked = knockouts(vlm, cases, measured, args.top_k, args.controls, args.batch_size, args.seed)
    record = summarise(vlm, cases, measured, knocked)
    (args.out / "heads.json").write_text(json.dumps(record, indent=1, allow_nan=False, default=_plain))
    np.savez(args.out / "heads.npz", case_ids=np.array([c.id for c in cases]), kept=np.array(measured["kept"]),
             labels=np.array(measured["labels"]), dla_heads=measured["heads"], dla_mlp=measured["mlp"],
             dla_embed=measured["embed"], logit_diff=measured["logit_diff"],
             **{f"mass_{p}": m for p, m in measured["mass"].items()})
    draw(measured, knocked, args.out, Path(vlm.source).name)
    print(f"{vlm.source}: {len(cases)} conflict cases, {record['n_kept']} right in both unimodal passes; "
          f"DLA sums to the logit difference to {record['max_abs_dla_sum_error']:.2g}")
    for side in ("text_ward", "vision_ward"):
        print(f"  top {side} heads (mean DLA): " + ", ".join(f"L{l}H{h} {v:+.3f}" for l, h, v in knocked[side]))
    for r in knocked["reports"].values():
        print("  " + str(r))
    for name, ci in record["text_ward_minus_control_shift_ci"].items():
        print(f"  shift(text_ward) - shift({name}): 95% CI {ci}")
    print(f"  wrote {args.out}/heads.json, heads.npz, attention_mass.png, dla.png, knockout.png in "
          f"{time.perf_counter() - start:.0f} s")
    return 0


def _plain(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


if __name__ == "__main__":
    sys.exit(main())
