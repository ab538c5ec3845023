"""Train the small LLaVA shipped in data/tiny_vlm, evaluate it on held-out cases, write its card.

    python experiments/train_tiny_vlm.py                      # the shipped recipe (~70-76 min, 2 cores)
    python experiments/train_tiny_vlm.py --out /tmp/m --recipe base   # the previous 4-layer model (~14 min)
    python experiments/train_tiny_vlm.py --out /tmp/m --steps 200 --seed 1
    python experiments/train_tiny_vlm.py --metrics-only data/tiny_vlm
    python experiments/train_tiny_vlm.py --context-from DIR --out /tmp/m   # only the last stage, on DIR

The recipe, the training mix and why it is built that way are in modality_lens/tiny_vlm/. The
held-out set is the built-in colour set with another seed than anything used in training
(training scenes are drawn from their own random stream).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

from hooks.interventions import INSTRUCTION_PLACEMENTS
from hooks.loading import load_vlm
from modality_lens.tiny_vlm import (DEEP_RECIPE, DEFAULT_DIR, INSTRUCTIONS, SHIPPED_RECIPE, TinyVLMConfig,
                                    check_config, evaluate, save, train)
from modality_lens.tiny_vlm.record import continue_with_context_stage, read_record

RECIPES = {"shipped": SHIPPED_RECIPE, "deep": DEEP_RECIPE, "base": {}}


def metrics_table(m: dict) -> str:
    lines = ["| modality | tier | accuracy | mean entropy (nats) |", "|---|---|---|---|"]
    for name, key in (("vision-only", "vision"), ("text-only", "text")):
        block = m[key]
        for t, acc, h in zip(block["tiers"], block["accuracy"], block["mean_entropy"]):
            lines.append(f"| {name} | {t} | {acc:.3f} | {h:.3f} |")
    fc = m["following_curve"]
    bp = "none" if fc["balance_point"] is None else f"{fc['balance_point']:.3f}"
    ci = fc["balance_point_ci"]
    lines += [
        "",
        f"- Spearman rho of mean H_v vs visual tier: {m['vision']['spearman_entropy_vs_tier']:.3f}; "
        f"of mean H_t vs text tier: {m['text']['spearman_entropy_vs_tier']:.3f}",
        f"- conflict cases: {m['n_cases']}; kept by the correct-in-both filter: {m['n_kept']} "
        f"({m['kept_share']:.1%}); among kept: text-following {m['labels_kept']['text']}, "
        f"vision-following {m['labels_kept']['vision']}, other {m['labels_kept']['other']}",
        f"- TFR {m['tfr'] if m['tfr'] is None else round(m['tfr'], 3)}, "
        f"VFR {m['vfr'] if m['vfr'] is None else round(m['vfr'], 3)}",
        f"- balance point {bp}" + (f" (95% CI {ci[0]:.3f} to {ci[1]:.3f})" if ci else "")
        + f"; isotonic 0.5 crossing {fc['isotonic_balance_point']}; status {fc['status']}",
    ]
    ins = m.get("instruction_following")
    if ins:
        lines.append(
            f"- instructed conflict pass ({ins['n']} cases, \"{INSTRUCTIONS[0].format(m='...')}\" "
            f"{PLACED[ins.get('placement', 'question')]}): "
            f"\"text\" -> the text's colour {ins['text']['instructed']:.1%} (the image's {ins['text']['other']:.1%}); "
            f"\"image\" -> the image's colour {ins['image']['instructed']:.1%} (the text's {ins['image']['other']:.1%})")
        if ins.get("n_kept"):
            lines.append(
                f"- the same on the {ins['n_kept']} cases right in both unimodal passes: \"text\" -> the text's colour "
                f"{ins['text']['kept_instructed']:.1%} (the image's {ins['text']['kept_other']:.1%}); \"image\" -> "
                f"the image's colour {ins['image']['kept_instructed']:.1%} (the text's {ins['image']['kept_other']:.1%})")
    return "\n".join(lines + skills_table(m))


def skills_table(m: dict) -> list[str]:
    """The card's lines for the reading and shape-task metrics (`modality_lens.tiny_vlm.skills`)."""
    out: list[str] = []
    sh = m.get("shapes")
    if sh:
        out += ["", f"Shape set (seed {m.get('seed', 1000)}, conflict cases): {sh['n_cases']} cases, kept "
                f"{sh['n_kept']} ({sh['kept_share']:.1%}); among kept: text-following {sh['labels_kept']['text']}, "
                f"vision-following {sh['labels_kept']['vision']}, other {sh['labels_kept']['other']}; vision accuracy "
                f"per visual tier {', '.join(f'{a:.3f}' for a in sh['vision_accuracy'])}; text accuracy per text "
                f"tier {', '.join(f'{a:.3f}' for a in sh['text_accuracy'])}."]
    rd = m.get("reading")
    if rd:
        w0, sign = rd["word_tier0"], rd["sign"]
        out += ["", "Reading (top-1 answer over the whole vocabulary):",
                f"- a colour word, tier 0 (black, centred, 3 fonts x 1, 3/4, 1/2 of the largest size that fits; "
                f"{w0['n']} images): {w0['accuracy']:.1%} ("
                + ", ".join(f"{float(k):g}: {v:.1%}" for k, v in w0["by_scale"].items()) + ")",
                f"- a colour word at a random font, size and place ({rd['word_placed']['n']}): "
                f"{rd['word_placed']['accuracy']:.1%}; in another colour's ink ({rd['word_ink']['n']}): the word "
                f"{rd['word_ink']['accuracy']:.1%}, the ink {rd['word_ink']['answered_ink']:.1%}",
                f"- a rendered context sentence, asked the shape's colour: text tier 0 "
                f"{rd['context_tier0']['accuracy']:.1%}, tier 1 {rd['context_tier1']['accuracy']:.1%} "
                f"({rd['context_tier0']['n']} each)",
                f"- colour scenes (visual tiers 0-4) with a sign naming an absent colour ({sign['n']}): the sign read "
                f"{sign['read_accuracy']:.1%}; asked the shape's colour, right {sign['colour_accuracy']:.1%}, "
                f"the sign's word {sign['colour_answered_sign']:.1%}"]
    return out


CARD = """# tiny_vlm: a small LLaVA trained on the colour-conflict tasks

**What it is.** A `LlavaForConditionalGeneration` ({params:,} parameters) built from scratch:
a CLIP-style vision tower ({vision_layers} layers, width {vision_hidden}, {image_size} px images in
{patch_size} px patches, {n_img} image tokens), a linear-GELU-linear projector and a Llama-style language
model ({attention}{text_layers} layers, width {text_hidden}), with a word-level tokenizer over the colour set's
vocabulary ({vocab} tokens), a processor and a chat template. Saved with `save_pretrained`, so
`load_vlm("data/tiny_vlm")` goes through exactly the code path of a hub model.

**What it is not.** A real-world VLM. It knows six colours, seven shapes, the words of the
colour set's templates, and nothing else; it has never seen a photograph. Use it to exercise the
toolkit end to end and to see the modality-following analyses on a model whose training data is
known, not to draw conclusions about large models.

## Recipe

- seed {seed}; {steps} steps of batch {batch_size}; AdamW (lr {lr}, {warmup} warm-up steps, cosine
  decay to 5%, weight decay {weight_decay}); loss: cross-entropy of the answer token{loss_where}.
- wall time {wall_min:.1f} min on {threads} CPU threads ({machine}); torch {torch}{continued}.
- reproduce: `{reproduce}`. The weights come
  out identical for the same torch build, thread count and machine; elsewhere float rounding can
  differ from the first steps and the result is another draw of the same recipe (docs/interventions.md
  has how far one such retrain of the previous 4-layer recipe moved its numbers).

## Training data

Drawn by `interp.datasets.colour` at {image_size} px from {n_scenes} pre-drawn scenes (every visual tier
equally often; during the first {curriculum:.0%} of the steps only visual tiers 0-{curriculum_tier}, without
which the vision pathway stayed at chance). In {same_colour:.0%} of the scenes distractors may also wear the
target's colour, so that "the colour worn by one object only" is no shortcut to the answer (in the
evaluation set, as in the paper, it always is).

Per example: with probability {instructed} an *instructed* example, {conflict_share}a vision-only (share
{mix_v} of the rest), text-only ({mix_t}) or both ({mix_b}) example.
- Vision-only, text-only and both: the label is always the scene's true colour. Contexts state the true
  colour with probability {reliability} at text tiers 0-3 and another colour otherwise (a wrong
  colour is absent from the image, as in the evaluation set); {irrelevant:.0%} of contexts speak of
  another shape.
{distractor_block}{conflict_block}- Instructed examples: image + a relevant context + the question, with an instruction
  naming a modality {placed} ({instructions}, with "text" or "image"). The context states a wrong colour
  with probability {instructed_conflict}; the label is the named modality's colour. They give
  the model a real "follow the text" / "follow the image" distinction for MC²-style steering.
{skills_block}
{chosen_block}## Layers whose lens cannot depend on the case

{layers_block}

## Held-out metrics

Built-in colour set, seed {eval_seed}, {eval_n} groups per cell, 14 visual x 4 text tiers, conflict
cases only (`python experiments/train_tiny_vlm.py --metrics-only data/tiny_vlm` prints them):

{table}

## Limits

- Word-level vocabulary: any word outside it is `<unk>`.
- Images other than flat-coloured shapes on white are out of distribution.
- Text-following and vision-following here reflect the reliabilities (and any text prior) chosen
  above; change `text_reliability` / `text_prior` of `TinyVLMConfig` in
  `modality_lens/tiny_vlm/recipe.py` and retrain to move the balance point.
- It follows an instruction only in the phrasings it was trained on ({instructions}).
{vision_limits}
"""


def write_card(out: Path, cfg: TinyVLMConfig, log: dict, m: dict, eval_seed: int, eval_n: int) -> str:
    vlm = load_vlm(out, self_check=False)
    text = CARD.format(
        params=log["params"], vision_layers=cfg.vision_layers, vision_hidden=cfg.vision_hidden,
        image_size=cfg.image_size, patch_size=cfg.patch_size, n_img=(cfg.image_size // cfg.patch_size) ** 2,
        text_layers=cfg.text_layers, text_hidden=cfg.text_hidden, vocab=len(vlm.tokenizer), seed=cfg.seed,
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup=cfg.warmup, weight_decay=cfg.weight_decay,
        wall_min=log["wall_s"] / 60, threads=cfg.threads, continued="" if "continued_from" not in log else (
            f"; the context stage ({log['context_stage']['wall_s'] / 60:.1f} min of it) continued\n  the saved "
            f"weights of the stages before it (sha256 {log['continued_from']['sha256'][:8]}..., `--context-from`)"), machine=platform.machine(), torch=torch.__version__,
        n_scenes=cfg.n_scenes, curriculum=cfg.curriculum_share, curriculum_tier=cfg.curriculum_max_tier,
        same_colour=cfg.same_colour_share, mix_v=cfg.mix[0], mix_t=cfg.mix[1], mix_b=cfg.mix[2],
        reliability=", ".join(f"{r:.2f}" for r in cfg.text_reliability), irrelevant=cfg.text_irrelevant_share,
        eval_seed=eval_seed, eval_n=eval_n, table=metrics_table(m), instructed=cfg.instructed_share,
        instructed_conflict=cfg.instructed_conflict,
        instructions=", ".join(f'"{t.format(m="...")}"' for t in INSTRUCTIONS), **conflict_text(cfg),
        placed=PLACED[cfg.instruction_placement],
        attention="" if cfg.local_layers <= 0 else (
            f"`Qwen2`, the first {'layer' if cfg.local_layers == 1 else f'{cfg.local_layers} layers'} attending "
            f"only to the last {cfg.local_window} tokens; "),
        skills_block=skills_text(cfg), reproduce=reproduce_command(cfg),
        loss_where=" only" if cfg.asked_loss <= 0 else " (and at the asked word: below)",
        layers_block=layers_text(cfg), vision_limits=vision_limits(m, eval_n), chosen_block=chosen_text(cfg),
        distractor_block="" if cfg.text_distractor_share <= 0 else (
            f"- In {cfg.text_distractor_share:.0%} of all contexts (of every kind) one more sentence, before or "
            "after,\n  gives another shape another colour, so that the stated colour must be matched to the asked "
            "shape.\n"),
    )
    (out / "MODEL_CARD.md").write_text(text)
    return text


def reproduce_command(cfg: TinyVLMConfig) -> str:
    """The command that trains `cfg`: the shipped recipe plus a `--set` per field that differs
    (`--recipe deep` and the fields that differ from it, when that is shorter)."""
    commands = []
    for name in ("shipped", "deep"):
        start = TinyVLMConfig(**RECIPES[name])
        sets = [f"--set {f.name}={_flag_value(getattr(cfg, f.name))}" for f in dataclasses.fields(cfg)
                if getattr(cfg, f.name) != getattr(start, f.name)]
        commands.append(" ".join(["python experiments/train_tiny_vlm.py", *(["--recipe", name] if name != "shipped"
                                                                              else []), *sets]))
    return min(commands, key=len)


def _flag_value(value: object) -> str:
    """`value` as `config_override` parses it back: a tuple comma-separated, a bool lower-case."""
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def skills_text(cfg: TinyVLMConfig) -> str:
    """The card's words for the shape and reading tasks of the mix."""
    out = ""
    if cfg.shape_share > 0 and cfg.n_shape_scenes:
        out += (f"- Shape task ({cfg.shape_share:.0%} of all examples): scenes of the 2-D shape set's four visual\n"
                f"  tiers ({cfg.n_shape_scenes} pre-drawn), \"What shape is the {{colour}} object?\", vision-only, "
                "text-only or both\n  as above with the same reliabilities; a wrong text shape is absent from the "
                "image.\n")
    if cfg.pretrain_steps > 0:
        out += (f"- Before the VLM is trained on the mix above, a stage that trains its vision tower alone "
                f"({cfg.pretrain_steps} steps of\n  {cfg.pretrain_batch} images, lr {cfg.pretrain_lr}; "
                "`modality_lens.tiny_vlm.pretrain`): a small reader (dropped afterwards)\n  asked the colour of "
                "a shape on the colour scenes, the shape of a colour on the shape-set scenes and\n  the word of a "
                "rendered colour word"
                + (f", plus the patch loss of `modality_lens.tiny_vlm.aux` (weight {cfg.pretrain_aux})"
                   if cfg.pretrain_aux > 0 else "")
                + (f", plus, on the words, a linear head per image token of the word written on it\n  (every patch "
                   f"with ink; weight {cfg.pretrain_word_aux}, `aux.WordPatchHead`)" if cfg.pretrain_word_aux > 0 else "")
                + ". In the VLM\n  stage the tower "
                + ("is frozen" if cfg.tower_lr_scale == 0 else f"learns at {cfg.tower_lr_scale} x the learning rate")
                + (". The projector starts as the reader's input MLP (the reader's width is the language\n  model's) "
                   "and " + ("stays frozen" if cfg.projector_lr_scale == 0 else
                             f"learns at {cfg.projector_lr_scale} x the learning rate")
                   + ": a projector trained from scratch drops the binding of colour\n  to shape that the tower carries "
                   "(docs/datasets.md)" if cfg.projector_from_reader else "") + ".\n")
    if cfg.asked_loss > 0:
        out += (f"- The answer's loss also at the question's asked word (weight {cfg.asked_loss}; the shape in \"What "
                "colour is\n  the circle?\", the colour in \"What shape is the red object?\"), and for the first "
                f"{cfg.asked_only_steps} steps\n  there only: the answer position is two attention hops from the "
                "image (the asked word, then the\n  object that wears it) and does not learn that on its own "
                "(docs/datasets.md, \"Two hops\")"
                + (". Those first steps draw\n  vision-only colour and shape questions only (`asked_only_vision`): "
                   "the language model needs\n  about a thousand of them to read the binding from the tower's "
                   "tokens" if cfg.asked_only_vision else "")
                + (f". Then {cfg.copy_steps} steps of vision-only colour and shape questions with both losses "
                   "(`copy_steps`),\n  so that the answer position learns to copy what the asked word reads"
                   if cfg.copy_steps else "") + ".\n")
    if cfg.scene_refresh > 0:
        out += (f"- Every {cfg.scene_refresh} steps of the VLM stage the scene pools are drawn afresh (same sizes, "
                "another random\n  stream), so the language model does not see the same scenes again and again.\n")
    if cfg.aux_weight > 0:
        out += (f"- An auxiliary loss on the vision tower during training only (weight {cfg.aux_weight}): per image\n"
                "  token, the shape and colour of the object covering most of its patch, or background\n"
                "  (`modality_lens.tiny_vlm.aux`); the head is not part of the saved model.\n")
    if cfg.read_share > 0:
        out += (f"- Reading ({cfg.read_share:.0%} of all examples): half a colour word drawn by\n"
                "  `interp.datasets.render` in one of the three DejaVu fonts that ship with matplotlib (random\n"
                "  size and place, 15% in another colour's ink), asked \"What word is written in the image?\"; a\n"
                "  quarter a rendered context sentence (text tier 0 or 1) asked the colour question; a quarter a\n"
                "  colour scene of visual tier 0-4 with a sign naming a colour below it, asked the sign's word or\n"
                "  the target's colour. Labels: the word, the stated colour, the target's colour.\n")
    if cfg.context_steps > 0:
        out += (f"- Then a context stage (`train.context_stage`): {cfg.context_steps} steps of batch {cfg.batch_size} "
                f"in which {cfg.context_share:.0%} of\n  the examples are rendered context sentences (text tier 0 or 1, "
                "fitted to the canvas in one of the\n  three fonts, asked the shape's colour; the label is the stated "
                "colour) and the rest come from\n  the mix above; its own AdamW at lr "
                f"{cfg.context_lr} (warm-up over a tenth of the stage, cosine decay to 5%),\n  tower and projector "
                "frozen. Without it a rendered sentence was answered at 27.5% (text tier 0):\n  the mix's 5% of them "
                "did not teach it.\n")
    return out


def chosen_text(cfg: TinyVLMConfig) -> str:
    """For a recipe with the tower's pretraining stage: what, measured, bought accuracy per training
    minute (docs/datasets.md, "A deeper model that reads and knows shapes", has every run)."""
    if cfg.pretrain_steps <= 0:
        return ""
    return """## What bought accuracy per training minute (measured; docs/datasets.md)

- The vision pathway: at 600 steps and about the same wall time, a 4 x 128 CLIP tower on 64 px
  images in 8 px patches read visual tier 0 at 0.96 and tiers 1-6 at 0.30, against 0.79 / 0.24
  for the 3 x 64 tower and 0.46 / 0.22 at 128 px in 16 px patches. Larger patches at 96 px and a
  Swin tower that merges 4 px patches learned the binding of colour to shape more slowly per
  step (Swin also cost 2.2x per step); 4 px patches (256 image tokens) cost 4x per step.
- The tower trained alone first (the pretraining stage), on colour scenes of visual tiers 0-6,
  with new scenes every step and a per-patch loss naming the object under each patch: the
  answer-token loss alone does not teach the tower form within an hour of CPU (a linear probe
  read shape from its tokens at 0.25, under the raw pixels' 0.33), while the tower alone reached
  0.825 on tiers 1-6 after 4,000 steps.
- The answer's loss at the question's asked word first, then copy steps: the answer position is
  two attention hops from the image and does not learn the binding on its own; with 400 copy
  steps it reads what the asked word reads (0.68 against 0.67).
- Reading: a per-patch loss naming the word written on each inked patch took the tier-0 word
  from 56% to 91% at weight 1; weight 2 and 1,000 more pretraining steps (the shipped recipe)
  gave 98%. A larger
  share of words in the stage's batches bought no reading and cost vision (0.52 on tiers 1-6).

"""


def vision_limits(m: dict, n_scenes: int) -> str:
    """The card's words on where vision is reliable, from the measured per-tier accuracy."""
    tiers, acc = m["vision"]["tiers"], m["vision"]["accuracy"]
    good = [t for t, a in zip(tiers, acc) if a >= 0.9]
    weak = [t for t, a in zip(tiers, acc) if a < 0.5]
    span = lambda ts: ", ".join(str(t) for t in ts) or "none"  # noqa: E731
    return (f"- Vision-only accuracy is >= 0.9 at visual tiers {span(good)} and below 0.5 at tiers {span(weak)}\n"
            f"  (held-out: {n_scenes} scenes per tier, each asked under the 4 text tiers, so a tier's figure carries\n"
            f"  a sampling error of about ±{0.5 / n_scenes ** 0.5:.2f}). Crowded and\n"
            "  occluded scenes are where the image is uncertain, which is what the following curve needs.")


def layers_text(cfg: TinyVLMConfig) -> str:
    """Which lens positions are one distribution for every row, by construction."""
    text = ("Lens index 0 (the embedding output) reads the answer position's own token, the last token of\n"
            "the chat template, the same in every prompt: its lens is one distribution for every row.")
    if cfg.local_layers > 0:
        last = cfg.local_layers
        text += (f" Indices 1-{last} (after the local layer{'s' if last > 1 else ''}, window {cfg.local_window})"
                 if last > 1 else f" Index 1 (after the local first layer, window {cfg.local_window})")
        text += (f" {'see' if last > 1 else 'sees'} only the last {cfg.local_window} tokens, the question's\ninstruction and the template's "
                 "tail, the same in every uninstructed prompt: one distribution for\nevery row as well (and with an "
                 "instruction after the question, one per instruction). The first\nlayer is local because, in the "
                 "4-layer model shipped before, instruction steering needed a layer\nwhose state at the answer "
                 "position knows the instruction and nothing of the content; on the\n8-layer model each of "
                 "layers 0-4 moves TFR about as far (docs/interventions.md), and a model\nwithout the local "
                 "layer was not trained to see whether it still matters.")
        first = last + 1
    else:
        first = 1
    return text + f" Indices {first}-{cfg.text_layers} depend on the case."


def conflict_text(cfg: TinyVLMConfig) -> dict[str, str]:
    """The card's words for the uninstructed conflict examples (none, or the taught text prior)."""
    if cfg.conflict_share <= 0:
        return {"conflict_share": "else ", "conflict_block": (
            "- No uninstructed example is labelled with the text's colour against the image: what the model\n"
            "  does under conflict without an instruction comes from what it learned about how reliable each\n"
            "  modality is.\n")}
    prior = ", ".join(f"{p:.2f}" for p in cfg.text_prior)
    return {"conflict_share": f"with probability {cfg.conflict_share} an uninstructed *conflict* example, else ",
            "conflict_block": (
                "- Conflict examples: image + a relevant context stating a colour absent from the image, no\n"
                f"  instruction; the label is the stated colour with probability {prior} at text tiers 0-3,\n"
                "  else the image's. This is a taught text prior: without an instruction the model is meant\n"
                "  to side with a clearly worded text part of the time even when it reads the image, as large\n"
                "  VLMs are reported to, so that its answer under conflict is a real arbitration that an\n"
                "  instruction, or a steering vector, can move either way.\n")}


PLACED = {"question": "before the question", "start": "at the start of the user turn", "end": "after the question"}


def config_override(text: str) -> tuple[str, object]:
    """`FIELD=VALUE` -> (field, value), the value parsed as the field's default is typed (a tuple: comma-separated)."""
    name, sep, raw = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(TinyVLMConfig)}
    if not sep or name not in fields:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE with FIELD one of {', '.join(fields)}")
    default = fields[name].default
    try:
        if isinstance(default, tuple):
            return name, tuple(type(default[0])(v) for v in raw.split(","))
        if isinstance(default, bool):
            return name, {"true": True, "false": False}[raw.lower()]
        return name, type(default)(raw)
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"{text!r}: {raw!r} is not of type {type(default).__name__}") from None


def config_from_args(args: argparse.Namespace) -> TinyVLMConfig:
    """The recipe named by `--recipe`, then the options given, then `--set` (in that order)."""
    fields = {f.name for f in dataclasses.fields(TinyVLMConfig)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items() if k in fields and v is not None}
    return dataclasses.replace(TinyVLMConfig(**{**RECIPES[args.recipe], **given}), **dict(args.set))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="shipped",
                        help="the settings to start from: 'shipped' (data/tiny_vlm's, SHIPPED_RECIPE), 'deep' (the "
                             "8-layer candidate of 2026-12-02, DEEP_RECIPE) or 'base' (TinyVLMConfig's defaults: the "
                             "previous 4-layer model); the options below and --set change them")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--instruction-placement", choices=INSTRUCTION_PLACEMENTS,
                        default=None,
                        help="where instructed training examples carry their instruction (default: after the question)")
    parser.add_argument("--text-layers", type=int, default=None,
                        help="decoder layers of the language model")
    parser.add_argument("--text-reliability", type=float, nargs="+", default=None, metavar="P",
                        help="P(the context states the true colour) per text tier (default: TEXT_RELIABILITY)")
    parser.add_argument("--conflict-share", type=float, default=None,
                        help="share of uninstructed conflict examples (image + a context stating a wrong colour)")
    parser.add_argument("--text-prior", type=float, nargs="+", default=None, metavar="P",
                        help="P(a conflict example is labelled with the text's colour) per text tier")
    parser.add_argument("--text-distractor-share", type=float, default=None,
                        help="share of training contexts with one more sentence giving another shape another colour")
    parser.add_argument("--local-layers", type=int, default=None,
                        help="first decoder layers with sliding-window attention (a Qwen2 language model then)")
    parser.add_argument("--local-window", type=int, default=None,
                        help="the window of the local layers, in tokens")
    parser.add_argument("--vision-hidden", type=int, default=None, help="vision tower width")
    parser.add_argument("--vision-layers", type=int, default=None, help="vision tower layers")
    parser.add_argument("--read-share", type=float, default=None,
                        help="share of reading examples (rendered words, contexts, scenes with a sign)")
    parser.add_argument("--shape-share", type=float, default=None,
                        help="share of shape-task examples (needs --n-shape-scenes)")
    parser.add_argument("--aux-weight", type=float, default=None,
                        help="weight of the tower's auxiliary patch loss during training (0: off)")
    parser.add_argument("--n-shape-scenes", type=int, default=None,
                        help="pre-drawn shape-set scenes for the shape task")
    parser.add_argument("--n-scenes", type=int, default=None,
                        help="pre-drawn colour scenes of the training pool")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (the weights are reproducible for the same thread count)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="steps of the vision tower's pretraining stage before the VLM's (0: none)")
    parser.add_argument("--pretrain-aux", type=float, default=None,
                        help="weight of the patch loss in the pretraining stage (0: off)")
    parser.add_argument("--tower-lr-scale", type=float, default=None,
                        help="the tower's learning rate in the VLM stage, as a multiple of the others'")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", type=config_override,
                        help="any other TinyVLMConfig field (repeatable), e.g. --set lr=5e-4 "
                             "--set mix=0.5,0.2,0.3; applied after the options above")
    parser.add_argument("--context-from", type=Path, default=None, metavar="DIR",
                        help="instead of training from scratch: run the recipe's context stage on DIR, a model this "
                             "script trained with the same recipe and no context stage (the weights a full run gives)")
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--eval-n", type=int, default=16, help="held-out groups per (visual, text) tier cell")
    parser.add_argument("--metrics-only", type=Path, default=None, metavar="DIR",
                        help="evaluate an existing checkpoint instead of training")
    parser.add_argument("--save-metrics", action="store_true",
                        help="with --metrics-only: store the metrics in DIR/training.json and rewrite DIR/MODEL_CARD.md")
    parser.add_argument("--write-card", type=Path, default=None, metavar="DIR",
                        help="rewrite DIR/MODEL_CARD.md from DIR/training.json (no training)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.write_card is not None:
        record, cfg = read_record(args.write_card)
        write_card(args.write_card, cfg, record["log"], record["metrics"], args.eval_seed, args.eval_n)
        return 0

    if args.metrics_only is not None:
        trained = (read_record(args.metrics_only)[1] if (args.metrics_only / "training.json").exists()
                   else TinyVLMConfig())
        m = evaluate(load_vlm(args.metrics_only), n_per_cell=args.eval_n, seed=args.eval_seed,
                     placement=trained.instruction_placement)
        print(metrics_table(m))
        if args.save_metrics:
            record, cfg = read_record(args.metrics_only)
            (args.metrics_only / "training.json").write_text(
                json.dumps({**record, "metrics": m}, indent=2, sort_keys=True) + "\n")
            write_card(args.metrics_only, cfg, record["log"], m, args.eval_seed, args.eval_n)
        return 0
    cfg = config_from_args(args)
    try:  # a setting train() would refuse: a usage error now, not a traceback after the scenes are drawn
        check_config(cfg)
    except ValueError as err:
        parser.error(str(err))
    start = time.time()
    if args.context_from is not None:
        try:
            model, processor, log = continue_with_context_stage(args.context_from, cfg)
        except ValueError as err:
            parser.error(f"--context-from {args.context_from}: {err}")
    else:
        model, processor, log = train(cfg)
    save(model, processor, args.out, metadata={"config": cfg.to_dict(), "log": log})
    m = evaluate(load_vlm(args.out), n_per_cell=args.eval_n, seed=args.eval_seed, placement=cfg.instruction_placement)
    log["total_s"] = time.time() - start
    save(model, processor, args.out, metadata={"config": cfg.to_dict(), "log": log, "metrics": m})
    write_card(args.out, cfg, log, m, args.eval_seed, args.eval_n)
    print(metrics_table(m))
    print(f"saved to {args.out} ({log['wall_s'] / 60:.1f} min training, {log['params']:,} parameters)")
    print(json.dumps({"vision_tier0_acc": m["vision"]["accuracy"][0], "text_tier0_acc": m["text"]["accuracy"][0],
                      "tfr": m["tfr"], "balance_point": m["following_curve"]["balance_point"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
