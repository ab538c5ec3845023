"""Activation patching on the colour set: a layer x position-group sweep, and the effect checks.

Run:  python experiments/activation_patching.py --out runs/patching
      python experiments/activation_patching.py --out runs/patching --effects

The model is `data/tiny_vlm` (the small trained LLaVA) when that directory exists, else the
random-weight `tiny:llava` (a note says so: its numbers only show that the machinery runs).
`--model` picks another source.

**Sweep** (always). Each conflict case is patched from a copy of itself whose image is that
of another case with another image colour (neither the case's image colour nor its text
colour, same visual tier when possible). Source and target share their text, so every group
maps position for position. For every decoder layer and each group (image, context, question
and answer tokens) the source's `resid_post` (or `--site`) is written into the target and the
change of logit(text) - logit(vision) at the answer position is recorded. Writes
`patching.png` (mean change, and share of the source-target gap moved), `patching.json` and
`patching.npz` (per case: batch x group x layer) under `--out`.

**Effects** (`--effects`): the causal checks, printed and written to `effects.json`:

1. image swap: patching the image span from the donor case raises the probability of the
   donor's image colour at the answer position: share of cases and mean change of
   log p(donor colour), per layer, in the vision-only and the conflict pass;
2. knockout: blocking attention to the context tokens (from the answer position, and from
   every position after the context) in all layers lowers text-following: TFR before/after;
   and the read timing: attention from the answer position to the context, or to the image,
   blocked in one layer at a time, on the main job's default conflict set (the set steering
   is measured on): the layers where each modality is read into the answer;
3. steering: a direction estimated on 120 conflict cases covering every (image colour, text
   colour) pair (seed + 2), added with -alpha, 0, +alpha at the answer position of the main
   job's default conflict set (`modality-lens run --seed SEED`: 896 cases, of which those
   right in both unimodal passes count), for the layer windows first half, second half and
   all layers (`--all-windows`: also each layer alone; `--steer-layers`: one window of your
   own): TFR with a paired bootstrap CI of its shift, and the balance point, per alpha.
   Two directions: the MC² instruction contrast ("use the text to answer ." minus "use the
   image to answer ." appended to the question; `--placement question`: before it, `start`: at
   the start of the user turn) and a relevance contrast (conflict cases minus their
   text-irrelevant controls).
   Alpha is a fraction of the mean state norm at each layer (`SteeringDirection.relative`).
4. `--lever MAX_NORM`: per layer, the best single vector for text-following on the fit cases
   (`hooks.interventions.optimize_direction`), applied with -v, -v/2, +v/2, +v to the default set:
   a bound on what any additive direction of that size can do there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hooks.interventions import DEFAULT_PLACEMENT, INSTRUCTION_PLACEMENTS
from modality_lens.cases import BUILTIN_N_PER_CELL, builtin_cases, case_item, case_pairs
from modality_lens.pipeline import default_model as shipped_model

VISUAL_TIERS = (0, 2, 5, 7, 9, 11)
TEXT_TIERS = (0, 1, 2)
STEER_VISUAL_TIERS = (2, 7)
STEER_TEXT_TIERS = (0, 2)


def default_model() -> str:
    """The shipped model, else the random-weight tiny:llava (with a note saying so)."""
    shipped = shipped_model()
    if Path(shipped, "config.json").is_file():
        return shipped
    print(f"note: {shipped} does not exist (the trained tiny VLM is not built yet); using the random-weight "
          "tiny:llava, whose numbers only show that the machinery runs", flush=True)
    return "tiny:llava"


def conflict_cases(n: int, seed: int) -> list[Any]:
    """`n` conflict cases of the colour set (64-px images), balanced over the chosen tiers."""
    from interp.datasets.colour import colour_cases

    per_cell = math.ceil(n / (len(VISUAL_TIERS) * len(TEXT_TIERS)))
    cases = list(colour_cases(per_cell, seed, image_size=64, visual_tiers=VISUAL_TIERS, text_tiers=TEXT_TIERS,
                              controls=False))
    return cases[:n]


def donors(cases: Sequence[Any]) -> list[int | None]:
    """Per case, another case whose image colour is neither its image nor its text colour."""
    out: list[int | None] = []
    for i, case in enumerate(cases):
        fits = [j for j, other in enumerate(cases)
                if other.image_answer not in (case.image_answer, case.text_answer)]
        same_tier = [j for j in fits if cases[j].visual_tier == case.visual_tier]
        pool = same_tier or fits
        out.append(pool[i % len(pool)] if pool else None)
    return out


def donor_pairs(tokenizer: Any, chosen: Sequence[tuple[Any, Any]]) -> list[Any]:
    """Candidate pairs whose "text" side is the donor's image colour and whose "vision" side is the
    case's own image colour (what an image swap moves between)."""
    from interp.candidates import candidate_pair

    return [candidate_pair(tokenizer, donor.image_answer, case.image_answer, tuple(donor.image_candidates)[1:],
                           tuple(case.image_candidates)[1:]) for case, donor in chosen]


def swap_batches(vlm: Any, cases: Sequence[Any], pass_name: str = "conflict"):
    """(source, target, kept cases with their donors): target = the case, source = the case with the donor image."""
    chosen = [(c, cases[d]) for c, d in zip(cases, donors(cases)) if d is not None]
    if not chosen:
        raise SystemExit(f"none of the {len(cases)} cases has a donor (another case whose image colour is neither "
                         "its image nor its text colour); use more cases (--n-cases, --n-effect-cases)")
    target = vlm.passes([case_item(c) for c, _ in chosen], (pass_name,))[pass_name]
    source = vlm.passes([case_item(c, d.open_image()) for c, d in chosen], (pass_name,))[pass_name]
    return source, target, chosen


def run_sweep(vlm: Any, cases: Sequence[Any], site: str, out: Path) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hooks.interventions import patching_sweep
    from modality_lens.plots import plot_patching

    source, target, chosen = swap_batches(vlm, cases)
    pairs = case_pairs(vlm.tokenizer, [c for c, _ in chosen])
    sweep = patching_sweep(vlm, source, target, pairs, site=site, progress=True)
    fig, axes = plt.subplots(1, 2, figsize=(4.0 + 1.1 * len(sweep.layers), 3.2))
    plot_patching(sweep, value="effect", ax=axes[0], title="Δ logit(text) − logit(vision)")
    plot_patching(sweep, value="recovered", ax=axes[1], title="share of the source−target gap")
    fig.suptitle(f"{vlm.source}: image swap, n = {len(chosen)} conflict cases", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "patching.png", dpi=130)
    plt.close(fig)
    record = {"model": vlm.source, "n_cases": len(chosen), "case_ids": [c.id for c, _ in chosen],
              "donor_ids": [d.id for _, d in chosen], **sweep.to_dict()}
    (out / "patching.json").write_text(json.dumps(_finite(record), indent=1))
    np.savez(out / "patching.npz", effect=sweep.effect.numpy(), patched_logit_diff=sweep.patched.logit_diff.numpy(),
             clean_logit_diff=sweep.clean.logit_diff.numpy(), source_logit_diff=sweep.source.logit_diff.numpy(),
             groups=np.array(sweep.groups), layers=np.array(sweep.layers))
    mean = sweep.mean("effect").numpy()
    print(f"mean change of logit(text) - logit(vision), {site} (rows: groups, columns: layers {list(sweep.layers)}):")
    for g, name in enumerate(sweep.groups):
        print(f"  {name:>9}: " + " ".join(f"{v:+7.3f}" for v in mean[g]))
    return record


# --------------------------------------------------------------------------- effects
def image_swap_effect(vlm: Any, cases: Sequence[Any]) -> dict[str, Any]:
    """Per layer: share of cases where patching the donor's image span raises p(donor colour)."""
    from hooks.interventions import patch

    result: dict[str, Any] = {}
    for pass_name in ("vision", "conflict"):
        source, target, chosen = swap_batches(vlm, cases, pass_name)
        pairs = donor_pairs(vlm.tokenizer, chosen)  # "text" side = donor colour
        rows = []
        settings = [("resid_pre", 0)] + [("resid_post", l) for l in range(vlm.n_layers)]
        for site, layer in settings:
            r = patch(vlm, source, target, pairs, layers=layer, group="image", site=site)
            delta = (r.intervened.log_p_text - r.clean.log_p_text).numpy()
            rows.append({"site": site, "layer": layer, "share_raised": float((delta > 0).mean()),
                         "mean_delta_log_p_donor": float(delta.mean()),
                         "mean_delta_log_p_own": float((r.intervened.log_p_vision - r.clean.log_p_vision).mean()),
                         "share_top1_donor": float(np.mean([l == "text" for l in r.intervened.labels(pairs)]))})
        result[pass_name] = {"n": len(chosen), "rows": rows}
        print(f"image swap, {pass_name} pass (n = {len(chosen)}): share of cases where p(donor colour) rises")
        for row in rows:
            print(f"  {row['site']:>10} {row['layer']}: {row['share_raised']:.2f}  mean Δlog p(donor) "
                  f"{row['mean_delta_log_p_donor']:+.3f}  Δlog p(own colour) {row['mean_delta_log_p_own']:+.3f}  "
                  f"top-1 = donor {row['share_top1_donor']:.2f}")
    return result


def _kept(vlm: Any, items: Sequence[Any], pairs: Sequence[Any]) -> list[bool]:
    """Cases answered right in both unimodal passes (METHOD §1.1)."""
    from hooks.interventions import kept_in_both, read_answer

    uni = {name: read_answer(vlm, vlm.passes(items, (name,))[name], pairs) for name in ("vision", "text")}
    return kept_in_both(uni["vision"], uni["text"], pairs)


def knockout_effect(vlm: Any, cases: Sequence[Any]) -> dict[str, Any]:
    """TFR of the conflict pass with attention to the context blocked, against none blocked."""
    from hooks.interventions import knockout
    from interp.following import tfr_vfr

    items = [case_item(c) for c in cases]
    pairs = case_pairs(vlm.tokenizer, cases)
    kept = _kept(vlm, items, pairs)
    batch = vlm.passes(items, ("conflict",))["conflict"]
    out: dict[str, Any] = {"n": len(cases), "n_kept": sum(kept)}
    print(f"knockout of the context (n = {len(cases)}, correct in both unimodal passes: {sum(kept)})")
    for queries in ("answer", "after:context"):
        r = knockout(vlm, batch, pairs, queries=queries, keys="context")
        row = {}
        for which, readout in (("clean", r.clean), ("knocked_out", r.intervened)):
            labels = readout.labels(pairs)
            row[which] = {"tfr_all": tfr_vfr(labels).tfr,
                          "tfr_kept": tfr_vfr(l for l, k in zip(labels, kept) if k).tfr,
                          "mean_logit_diff": float(readout.logit_diff.mean())}
        out[queries] = row
        fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
        print(f"  from {queries!r}: TFR {fmt(row['clean']['tfr_all'])} -> {fmt(row['knocked_out']['tfr_all'])} "
              f"(kept cases {fmt(row['clean']['tfr_kept'])} -> {fmt(row['knocked_out']['tfr_kept'])}); mean logit "
              f"diff {row['clean']['mean_logit_diff']:+.3f} -> {row['knocked_out']['mean_logit_diff']:+.3f}")
    return out


def read_timing(vlm: Any, eval_seed: int, n_per_cell: int | None = None, batch_size: int = 128) -> dict[str, Any]:
    """When each modality reaches the answer: attention from the answer position to the
    context, or to the image, blocked in one decoder layer at a time (then in all), on the
    main job's default conflict set; TFR of the cases right in both unimodal passes, with a
    paired bootstrap CI of its shift, and the mean logit diff. A read that a layer-l knockout
    removes happens in layer l; a steering vector added to `resid_post` of layer l (after it)
    can no longer change it, only what later layers read."""
    from hooks.interventions import knockout, read_answer
    from interp.following import tfr_shift_ci, tfr_vfr

    held = default_conflict_set(eval_seed, n_per_cell)
    items = [case_item(c) for c in held]
    pairs = case_pairs(vlm.tokenizer, held)
    kept = _kept(vlm, items, pairs)
    mask = torch.tensor(kept)
    batches = [(vlm.passes(items[lo:lo + batch_size], ("conflict",))["conflict"], pairs[lo:lo + batch_size])
               for lo in range(0, len(items), batch_size)]

    def summary(readouts: Sequence[Any]) -> tuple[list[str], Any, float]:
        labels = [lab for r, (_, chunk) in zip(readouts, batches) for lab in r.labels(chunk)]
        ratios = tfr_vfr(lab for lab, k in zip(labels, kept) if k)
        return labels, ratios, float(torch.cat([r.logit_diff for r in readouts])[mask].mean())

    clean, clean_ratios, clean_diff = summary([read_answer(vlm, batch, chunk) for batch, chunk in batches])
    out: dict[str, Any] = {"n": len(held), "n_kept": sum(kept), "eval_seed": eval_seed,
                           "clean": {"tfr": clean_ratios.tfr, "mean_logit_diff": clean_diff}, "rows": []}
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    print(f"read timing: attention from the answer position blocked per layer (the main job's conflict set, seed "
          f"{eval_seed}: {len(held)} cases, {sum(kept)} right in both unimodal passes); unblocked TFR "
          f"{fmt(clean_ratios.tfr)}, mean logit diff {clean_diff:+.3f}")
    for keys in ("context", "image"):
        for window in [(layer,) for layer in range(vlm.n_layers)] + [tuple(range(vlm.n_layers))]:
            labels, ratios, diff = summary([knockout(vlm, batch, chunk, queries="answer", keys=keys,
                                                     layers=window).intervened for batch, chunk in batches])
            ci = tfr_shift_ci(labels, clean, kept)
            out["rows"].append({"keys": keys, "layers": list(window), "tfr": ratios.tfr, "tfr_shift_ci": ci,
                                "mean_logit_diff": diff, "ratios": ratios.to_dict()})
            interval = "" if ci is None else f" (shift 95% CI {ci[0]:+.3f} to {ci[1]:+.3f})"
            print(f"  answer -/-> {keys:<7} in layers {list(window)}: TFR {fmt(ratios.tfr)}{interval}, mean logit "
                  f"diff {diff:+.3f} (text {ratios.n_text}, vision {ratios.n_vision}, other {ratios.n_other})")
    return out


def steering_cases(seed: int) -> tuple[list[Any], list[Any], list[Any]]:
    """(fit conflict cases, their text-irrelevant controls, held-out conflict cases), colour-balanced.

    Groups 0..29 of the colour set use each ordered (image colour, text colour) pair once, and
    so do groups 30..59: the fit half and the held-out half each cover all 30 pairs. This
    matters **[ours, measured]**: a mean difference estimated on a few groups carries those
    groups' answer colours, and adding it moves the held-out cases whose colours overlap,
    which reads as a (spurious) strong change of TFR of either sign.
    """
    from interp.datasets.colour import colour_cases

    cases = list(colour_cases(60, seed, image_size=64, visual_tiers=STEER_VISUAL_TIERS, text_tiers=STEER_TEXT_TIERS,
                              controls=True))
    group = lambda c: int(c.group_id.rsplit("g", 1)[-1])  # noqa: E731
    fit = [c for c in cases if c.control is None and group(c) < 30]
    fit_controls = [c for c in cases if c.control == "text_irrelevant" and group(c) < 30]
    held = [c for c in cases if c.control is None and group(c) >= 30]
    return fit, fit_controls, held


def default_conflict_set(seed: int, n_per_cell: int | None = None) -> list[Any]:
    """The conflict cases of the main job's built-in set (`modality-lens run --seed SEED`;
    `n_per_cell` groups per tier cell, default the main job's)."""
    cases, _ = builtin_cases("colour", seed=seed, n_per_cell=n_per_cell or BUILTIN_N_PER_CELL, image_size=64)
    return [c for c in cases if c.control is None]


def steering_windows(n_layers: int, single: bool = False) -> list[tuple[int, ...]]:
    """The first half, the second half and all layers; with `single`, each layer alone first."""
    half = n_layers // 2
    windows = [(l,) for l in range(n_layers)] if single else []
    windows += [tuple(range(half)), tuple(range(half, n_layers)), tuple(range(n_layers))]
    return list(dict.fromkeys(w for w in windows if w))


def steering_measurement(vlm: Any, fit_seed: int, eval_seed: int, alphas: Sequence[float],
                         windows: Sequence[Sequence[int]] | None, text_instruction: str, image_instruction: str,
                         correct_only: bool, kind: str = "instruction", relative: bool = True,
                         batch_size: int = 64, n_per_cell: int | None = None, where: str = "answer",
                         placement: str = DEFAULT_PLACEMENT, positions: int = 1) -> dict[str, Any]:
    """A direction fit on a colour-balanced set (`steering_cases(fit_seed)`, groups 0-29), then
    TFR / balance point under steering on the main job's default conflict set (`eval_seed`),
    for each layer window.

    kind "instruction": MC², `text_instruction` minus `image_instruction` added to the fit
    cases at `placement` (`hooks.interventions.with_instruction`). kind "relevance": the fit
    conflict cases minus their text-irrelevant controls (same images and colours; only whether
    the context speaks of the asked shape differs), a direction of "the text is about the
    question". `positions` K > 1: the direction spans the last K prompt positions, each added
    at its own position.
    """
    from hooks.interventions import instruction_direction, mean_difference, steering_effects

    fit, fit_controls, _ = steering_cases(fit_seed)
    if kind == "instruction":
        direction = instruction_direction(vlm, [case_item(c) for c in fit], text_instruction=text_instruction,
                                          image_instruction=image_instruction, placement=placement,
                                          positions=positions)
    else:
        direction = mean_difference(vlm, vlm.passes([case_item(c) for c in fit], ("conflict",))["conflict"],
                                    vlm.passes([case_item(c) for c in fit_controls], ("conflict",))["conflict"],
                                    plus_name="conflict cases", minus_name="their text-irrelevant controls",
                                    positions=positions)
    raw_norms = direction.norms
    if relative:
        direction = direction.relative()
    windows = [tuple(w) for w in (windows or steering_windows(vlm.n_layers))]
    held = default_conflict_set(eval_seed, n_per_cell)
    signed = sorted({float(s * a) for a in alphas for s in (-1, 1)})
    reports = steering_effects(vlm, [case_item(c) for c in held], case_pairs(vlm.tokenizer, held),
                               direction, alphas=signed, windows=windows, correct_only=correct_only,
                               batch_size=batch_size, where=where)
    unit = "x the mean state norm" if relative else "x the raw mean difference"
    print(f"steering with the {kind} direction ({direction.plus!r} minus {direction.minus!r}; fit on {len(fit)} "
          f"cases of seed {fit_seed}), alpha {unit}; raw difference norms {[round(float(x), 3) for x in raw_norms]}, "
          f"state norms {[round(float(x), 2) for x in direction.state_norms]}; evaluated on the {len(held)} conflict "
          f"cases of the default set (seed {eval_seed}), added at {where!r}"
          + (f" (the last {positions} prompt positions, each its own vector)" if positions > 1 else ""))
    for report in reports:
        print(report)
    return {"direction": kind, "plus": direction.plus, "minus": direction.minus, "alpha_unit": unit,
            "raw_direction_norms": raw_norms.tolist(), "state_norms": direction.state_norms.tolist(),
            "n_fit": len(fit), "fit_seed": fit_seed, "eval_seed": eval_seed, "where": where, "positions": positions,
            "placement": placement if kind == "instruction" else None,
            "windows": [report.to_dict() for report in reports]}


def lever_bound(vlm: Any, fit_seed: int, eval_seed: int, layers: Sequence[int], max_norm: float,
                where: str = "answer", correct_only: bool = True, batch_size: int = 64,
                n_per_cell: int | None = None, placement: str = DEFAULT_PLACEMENT) -> dict[str, Any]:
    """For each layer, the best single vector for text-following on the fit cases
    (`hooks.interventions.optimize_direction`: max_norm x the mean state norm, at `where`), then
    TFR on the default conflict set with -v, -v/2, 0, +v/2, +v: does the model have a
    sign-consistent additive lever at that layer at all? Also the cosine of v with the MC²
    instruction direction (instructions at `placement`) of that layer."""
    from hooks.interventions import SteeringDirection, instruction_direction, optimize_direction, steering_effects

    layers = list(dict.fromkeys(layers))
    fit, _, _ = steering_cases(fit_seed)
    fit_items = [case_item(c) for c in fit]
    mc2 = instruction_direction(vlm, fit_items, placement=placement).vectors.float()
    fit_batch = vlm.passes(fit_items, ("conflict",))["conflict"]
    fit_pairs = case_pairs(vlm.tokenizer, fit)
    fits = [optimize_direction(vlm, fit_batch, fit_pairs, layer=layer, where=where, max_norm=max_norm)
            for layer in layers]
    # one direction holding each layer's v (each fit is zero at every other layer): a window of
    # one layer adds only that layer's vector, and the unimodal passes run once for all layers
    combined = SteeringDirection(sum(opt.direction.vectors for opt in fits), fits[0].direction.plus,
                                 fits[0].direction.minus, len(fit), len(fit))
    held = default_conflict_set(eval_seed, n_per_cell)
    reports = steering_effects(vlm, [case_item(c) for c in held], case_pairs(vlm.tokenizer, held),
                               combined, alphas=(-1.0, -0.5, 0.5, 1.0), windows=[(layer,) for layer in layers],
                               where=where, correct_only=correct_only, batch_size=batch_size)
    out = {"max_norm": max_norm, "where": where, "n_fit": len(fit), "fit_seed": fit_seed, "eval_seed": eval_seed,
           "layers": []}
    for layer, opt, report in zip(layers, fits, reports):
        cosine = float(torch.nn.functional.cosine_similarity(opt.direction.vectors[layer].float(), mc2[layer], dim=0))
        print(f"optimised lever at layer {layer} (|v| <= {max_norm} x state norm {opt.direction.state_norms[layer]:.2f}"
              f", at {where!r}): fit-set mean logit diff {opt.history[0]:+.3f} -> {opt.final:+.3f}; cosine with the "
              f"MC² instruction direction {cosine:+.3f}; alpha in units of v")
        print(report)
        out["layers"].append({"layer": layer, "fit_before": opt.history[0], "fit_after": opt.final, "cosine_mc2": cosine,
                              "norm": float(opt.direction.norms[layer]), "report": report.to_dict()})
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--model", default=None, help="model source (default: data/tiny_vlm, else tiny:llava)")
    parser.add_argument("--n-cases", type=int, default=24, help="conflict cases in the sweep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the colour set")
    parser.add_argument("--site", default="resid_post", choices=("resid_pre", "resid_post", "attn_out", "mlp_out"))
    parser.add_argument("--effects", action="store_true", help="also run the three effect measurements")
    parser.add_argument("--n-effect-cases", type=int, default=96, help="conflict cases for the image-swap and knockout measurements")
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.1, 0.3],
                        help="steering strengths, each run as -alpha and +alpha (and 0); fractions of the mean state "
                             "norm at each layer unless --raw-alpha")
    parser.add_argument("--raw-alpha", action="store_true", help="alpha multiplies the raw mean difference")
    parser.add_argument("--direction", choices=("instruction", "relevance", "both"), default="both",
                        help="instruction: MC² 'use the text' minus 'use the image'; relevance: conflict cases minus "
                             "their text-irrelevant controls; both (default)")
    parser.add_argument("--steer-layers", type=int, nargs="*", default=None,
                        help="one window of decoder layers to steer (default: the first half, the second half and "
                             "all layers, each reported)")
    parser.add_argument("--all-windows", action="store_true", help="also steer each layer alone")
    parser.add_argument("--steer-groups", type=int, default=None,
                        help="groups per tier cell of the default conflict set steering is measured on "
                             "(default: the main job's 16)")
    parser.add_argument("--steer-where", default="answer",
                        help="positions the direction is added at: answer (default), all, after:context, ...")
    parser.add_argument("--steer-positions", type=int, default=1, metavar="K",
                        help="the direction spans the last K prompt positions (METHOD §4), each added at its own "
                             "position (default 1: the answer position); needs --steer-where answer")
    parser.add_argument("--placement", choices=INSTRUCTION_PLACEMENTS, default=DEFAULT_PLACEMENT,
                        help="where the instructions of the instruction direction go: after the question (end; "
                             "the default, where data/tiny_vlm was trained with them), before it (question) or at "
                             "the start of the user turn (start)")
    parser.add_argument("--lever", type=float, default=None, metavar="MAX_NORM",
                        help="with --effects: also find, per layer, the best single vector for text-following on the "
                             "fit cases (|v| <= MAX_NORM x the mean state norm) and steer the default set with +-v")
    parser.add_argument("--text-instruction", default=None)
    parser.add_argument("--image-instruction", default=None)
    parser.add_argument("--all-cases", action="store_true",
                        help="steering TFR over every case, not only those right in both unimodal passes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.lever is not None and not args.effects:
        parser.error("--lever is one of the effect measurements; add --effects")
    if args.steer_positions < 1 or (args.steer_positions > 1 and args.steer_where != "answer"):
        parser.error("--steer-positions must be >= 1, and above 1 it needs --steer-where answer (each of the last K "
                     "positions gets its own vector)")

    from hooks.loading import load_vlm
    from hooks.interventions import IMAGE_INSTRUCTION, TEXT_INSTRUCTION

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vlm = load_vlm(args.model or default_model())
    print(f"model {vlm.source}: {vlm.adapter.model_class}, {vlm.n_layers} decoder layers")
    run_sweep(vlm, conflict_cases(args.n_cases, args.seed), args.site, out)
    print(f"sweep written to {out} ({time.perf_counter() - start:.1f} s)")
    if args.effects:
        cases = conflict_cases(args.n_effect_cases, args.seed + 1)
        effects = {
            "model": vlm.source,
            "image_swap": image_swap_effect(vlm, cases),
            "knockout": knockout_effect(vlm, cases),
            "read_timing": read_timing(vlm, args.seed, args.steer_groups),
        }
        kinds = ("instruction", "relevance") if args.direction == "both" else (args.direction,)
        for kind in kinds:
            effects[f"steering_{kind}"] = steering_measurement(
                vlm, args.seed + 2, args.seed, args.alpha,
                [args.steer_layers] if args.steer_layers else steering_windows(vlm.n_layers, args.all_windows),
                args.text_instruction or TEXT_INSTRUCTION, args.image_instruction or IMAGE_INSTRUCTION,
                correct_only=not args.all_cases, kind=kind, relative=not args.raw_alpha,
                n_per_cell=args.steer_groups, where=args.steer_where, placement=args.placement,
                positions=args.steer_positions)
        if args.lever is not None:
            effects["lever"] = lever_bound(vlm, args.seed + 2, args.seed, args.steer_layers or range(vlm.n_layers),
                                           args.lever, where=args.steer_where, correct_only=not args.all_cases,
                                           n_per_cell=args.steer_groups, placement=args.placement)
        (out / "effects.json").write_text(json.dumps(_finite(effects), indent=1))
        print(f"effects written to {out / 'effects.json'} ({time.perf_counter() - start:.1f} s)")
    return 0


def _finite(value: Any) -> Any:
    """`value` with NaN / infinity replaced by None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    sys.exit(main())
