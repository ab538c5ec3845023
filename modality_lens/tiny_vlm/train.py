"""Training the small VLM from scratch on the training mix, and saving it as a hub model.

The loss is the cross-entropy of the answer token (the last position); AdamW with a
linear warm-up over `warmup` steps, then a cosine decay to 5% of `lr` (`_lr`); gradients
clipped to norm 1. Each batch is split into its examples with an image and those without, so
that a text-only example is encoded without image tokens. `save` writes `save_pretrained`
output, so `load_vlm(out)` takes exactly the path of a hub model.

**[ours]** `asked_loss > 0` adds the same answer's cross-entropy, times that weight, at the
asked word of the question (the shape in "What colour is the circle?", the colour in "What
shape is the red object?"; `asked_positions`), and `asked_only_steps` trains with that loss
alone for the first steps. `copy_steps` > 0 follows them with that many steps of vision-only
colour and shape questions with both losses, before the full mix: measured (docs/datasets.md,
"The answer copies what the asked word holds"), after an asked-word stage and an 800-step mix the
answer position read the binding at 0.34 where the asked word read 0.52; 600 such steps raised
the answer to 0.43 (the asked word 0.54), and 300 further steps of the mix kept it (0.46). Measured (docs/datasets.md, "Two hops"): the answer position is two
attention hops from the image (the asked word, then the object that wears it), and a language
model trained at the answer position alone stays at the colour-of-some-object level even on
ideal image tokens, while at the asked word (one hop) it learns the binding in a few hundred
steps. On in the shipped recipe (1,000 asked-word steps, then 400 copy steps).

`tower_lr_scale` and `projector_lr_scale` set the learning rate of the vision tower and of the
projector as multiples of `lr`; 0 freezes the part (`_param_groups`). `scene_refresh` > 0 draws
new scene pools of the same sizes every that many steps (`TrainingMix.refresh`), so that a long
run does not see the same scenes again and again. `DEEP_RECIPE` and the shipped
recipe use all of these (tower and projector frozen).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm import tqdm

from hooks.prompts import render_prompt
from interp.datasets.colour import COLOUR_TIERS
from interp.datasets.drawing import COLOURS, SHAPES
from modality_lens.tiny_vlm.mix import Example, ScenePool, TrainingMix, check_mix
from modality_lens.tiny_vlm.aux import PatchHead
from modality_lens.tiny_vlm.pretrain import cosine_lr, pretrain_tower
from modality_lens.tiny_vlm.reading import ShapePool
from modality_lens.tiny_vlm.recipe import TinyVLMConfig, build_model, build_processor, check_model

__all__ = ["batches", "train", "context_stage", "check_config", "save", "asked_word", "asked_positions"]

_ASKED = frozenset(COLOURS + SHAPES)
_CONTEXT_STREAM = 101
"""The context stage's random stream and pool stream (the VLM stage's refreshes use 1, 2, ...)."""


def _encode(processor: Any, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    prompts = [render_prompt(processor, question=e.question, context=e.context, with_image=e.image is not None,
                             preamble=e.preamble) for e in examples]
    if examples[0].image is not None:
        out = processor(text=prompts, images=[[e.image] for e in examples], return_tensors="pt", padding=True)
    else:
        out = processor(text=prompts, return_tensors="pt", padding=True)
    return dict(out)


def asked_word(example: Example, placement: str) -> str | None:
    """The word the question asks about (its first shape or colour word), or None: a question
    without one (what word is written?), and an instructed example whose instruction comes after
    the question (`placement` "end"), whose answer the asked word cannot see."""
    if example.kind == "instructed" and placement == "end":
        return None
    question = example.question.lower().replace("?", " ").split()
    return next((w for w in question if w in _ASKED), None)


def asked_positions(processor: Any, examples: Sequence[Example], input_ids: torch.Tensor,
                    placement: str) -> torch.Tensor:
    """Per example, the position in `input_ids` of its asked word (`asked_word`): the word's last
    occurrence, which is the question's (contexts come before the question, instructions name no
    shape or colour); -1 where there is none."""
    out = []
    for example, row in zip(examples, input_ids):
        word = asked_word(example, placement)
        hits = [] if word is None else (row == processor.tokenizer.convert_tokens_to_ids(word)).nonzero()
        out.append(int(hits[-1]) if len(hits) else -1)
    return torch.tensor(out, dtype=torch.long)


def _lr(step: int, cfg: TinyVLMConfig) -> float:
    return cosine_lr(step, cfg.lr, cfg.warmup, cfg.steps)


def batches(mix: TrainingMix, batch_size: int) -> Iterator[tuple[list[Example], list[Example]]]:
    """Forever: (examples with an image, examples without) making up one batch.

    The asked-word stage (`asked_only_vision`) and the copy stage (`copy_steps`) draw vision-only
    colour and shape questions only (`TrainingMix.sample`).

    Curriculum **[ours]**: during the first `curriculum_share` of the steps, scenes come from
    visual tiers <= `curriculum_max_tier` only, so that the vision pathway learns to read colours
    on easy scenes before it sees the hard ones (without it, it stayed at chance; measured: see
    docs/datasets.md, "Training the shipped model: measured").
    """
    cfg = mix.cfg
    step = 0
    while True:
        max_tier = cfg.curriculum_max_tier if step < cfg.curriculum_share * cfg.steps else None
        vision_only = ((cfg.asked_only_vision and step < cfg.asked_only_steps)
                       or cfg.asked_only_steps <= step < cfg.asked_only_steps + cfg.copy_steps)
        drawn = [mix.sample(max_tier, vision_only) for _ in range(batch_size)]
        step += 1
        yield _split(drawn)


def _split(drawn: Sequence[Example]) -> tuple[list[Example], list[Example]]:
    """(the examples with an image, those without): a batch's two parts, encoded apart."""
    return [e for e in drawn if e.image is not None], [e for e in drawn if e.image is None]


def _optimise(model: Any, processor: Any, opt: Any, params: list[Any], parts: Sequence[Sequence[Example]],
              label_ids: dict[str, int], cfg: TinyVLMConfig, aux: Any, step: int) -> float:
    """One optimiser step on a batch's non-empty parts; returns the summed answer loss."""
    opt.zero_grad(set_to_none=True)
    loss_total = sum(_backward(model, processor, part, label_ids, cfg, aux, step) for part in parts if part)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return loss_total


def check_config(cfg: TinyVLMConfig) -> None:
    """Raise ValueError, naming the field and the fix, for a recipe that `train` would refuse
    (the model's, the mix's and the stages' settings), before anything is drawn or trained."""
    check_model(cfg)
    check_mix(cfg)
    if cfg.asked_only_steps and cfg.asked_loss <= 0:
        raise ValueError(f"asked_only_steps ({cfg.asked_only_steps}) trains the loss at the asked word alone: it needs "
                         f"asked_loss > 0 (got {cfg.asked_loss}); set asked_loss, or asked_only_steps=0")
    if cfg.copy_steps < 0 or (cfg.copy_steps and cfg.asked_loss <= 0):
        raise ValueError(f"copy_steps ({cfg.copy_steps}) trains the answer to copy the asked word's read: it must be "
                         f">= 0 and needs asked_loss > 0 (got {cfg.asked_loss}); set asked_loss, or copy_steps=0")
    if cfg.projector_from_reader and not cfg.pretrain_steps:
        raise ValueError("projector_from_reader copies the pretraining stage's reader: it needs pretrain_steps > 0 "
                         "(got 0); set pretrain_steps, or projector_from_reader=false")
    for name in ("pretrain_aux", "pretrain_word_aux"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} is the weight of a pretraining loss: it must be >= 0 (got {getattr(cfg, name)})")
    shares = cfg.pretrain_shares
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-9:
        raise ValueError(f"pretrain_shares are the shares of colour scenes, shape-set scenes and words in a "
                         f"pretraining batch: three numbers >= 0 that sum to 1 (got {shares})")
    if not 0 <= cfg.pretrain_max_tier < len(COLOUR_TIERS):
        raise ValueError(f"pretrain_max_tier is a visual tier, 0-{len(COLOUR_TIERS) - 1} (got {cfg.pretrain_max_tier})")
    if cfg.context_steps < 0 or cfg.context_lr <= 0 or not 0 <= cfg.context_share <= 1:
        raise ValueError(f"the context stage needs context_steps >= 0 (got {cfg.context_steps}), context_lr > 0 (got "
                         f"{cfg.context_lr}) and context_share in [0, 1] (got {cfg.context_share})")
    if cfg.pretrain_steps and not cfg.n_shape_scenes:
        raise ValueError("the pretraining stage needs shape-set scenes: set n_shape_scenes > 0, or pretrain_steps=0")


def train(cfg: TinyVLMConfig, *, pool: ScenePool | None = None, log_every: int = 50, progress: bool = True,
          model: Any = None, processor: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train from scratch; returns (model, processor, log). Deterministic for a seed, thread count,
    torch build and machine (measured: see docs/datasets.md, "Training the shipped model:
    measured")."""
    check_config(cfg)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = time.time()
    processor = processor or build_processor(cfg)
    tok = processor.tokenizer
    model = model or build_model(cfg, len(tok))
    patch = cfg.patch_size if cfg.aux_weight > 0 or cfg.pretrain_aux > 0 else None
    pool = pool or ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size, same_colour_share=cfg.same_colour_share,
                                  patch=patch)
    shapes = ShapePool.draw(cfg.n_shape_scenes, cfg.seed, cfg.image_size, patch=patch) if cfg.n_shape_scenes else None
    drawn_s = time.time() - start
    pre_log = (pretrain_tower(model, processor, cfg, pool, shapes, progress=_pretrain_progress(progress))
               if cfg.pretrain_steps else None)
    mix = TrainingMix(pool, cfg, shapes)
    label_ids = {c: tok.convert_tokens_to_ids(c) for c in COLOURS + SHAPES}
    aux = _Aux(model, cfg) if cfg.aux_weight > 0 else None
    groups = _param_groups(model, aux, cfg)
    params = [p for group in groups for p in group["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, 0.98))
    model.train()
    history, running = [], []
    it = batches(mix, cfg.batch_size)
    bar = tqdm(range(cfg.steps), desc="training", disable=not progress, mininterval=5)
    for step in bar:
        if cfg.scene_refresh and step and step % cfg.scene_refresh == 0:
            mix.refresh(step // cfg.scene_refresh, patch=cfg.patch_size if cfg.aux_weight > 0 else None)
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg) * group["scale"]
        parts = next(it)
        loss_total = _optimise(model, processor, opt, params, parts, label_ids, cfg, aux, step)
        running.append(loss_total / max(1, sum(len(part) for part in parts)))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            mean = float(np.mean(running))
            history.append({"step": step + 1, "loss": mean, "elapsed_s": time.time() - start})
            bar.set_postfix(loss=f"{mean:.3f}")
            running = []
    if aux is not None:
        aux.remove()
    context_log = context_stage(model, processor, cfg, progress=progress) if cfg.context_steps else None
    model.requires_grad_(True)
    model.eval()
    log = {"history": history, "wall_s": time.time() - start, "scene_drawing_s": drawn_s,
           "params": sum(p.numel() for p in model.parameters())}
    if pre_log is not None:
        log["pretrain"] = pre_log
    if context_log is not None:
        log["context_stage"] = context_log
    return model, processor, log


def context_stage(model: Any, processor: Any, cfg: TinyVLMConfig, *, log_every: int = 50,
                  progress: bool = True) -> dict[str, Any]:
    """Train `model` in place for `cfg.context_steps` steps in which a share `context_share` of the
    examples are rendered context sentences (`TrainingMix.rendered_context`) and the rest come
    from the full mix (`TrainingMix.sample`), with its own AdamW at `context_lr` (warm-up over a
    tenth of the stage, cosine decay to 5%), the tower and projector frozen as in the VLM stage;
    returns the log (losses, wall time).

    It starts from whatever `model` holds and draws everything from its own random streams and
    freshly drawn pools (`_CONTEXT_STREAM`), not from the VLM stage's: run on a saved model of the
    same recipe without the stage, it gives the weights a full run gives (`train_tiny_vlm.py
    --context-from DIR`)."""
    if cfg.context_steps <= 0:
        raise ValueError(f"context_stage runs context_steps steps: it must be > 0 (got {cfg.context_steps})")
    torch.set_num_threads(cfg.threads)
    start = time.time()
    pool = ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size, same_colour_share=cfg.same_colour_share,
                          stream=_CONTEXT_STREAM)
    shapes = (ShapePool.draw(cfg.n_shape_scenes, cfg.seed, cfg.image_size, stream=_CONTEXT_STREAM)
              if cfg.n_shape_scenes else None)
    mix = TrainingMix(pool, cfg, shapes)
    mix.rng = np.random.default_rng([cfg.seed, 13, _CONTEXT_STREAM])
    tok = processor.tokenizer
    label_ids = {c: tok.convert_tokens_to_ids(c) for c in COLOURS + SHAPES}
    groups = _param_groups(model, None, cfg)
    params = [p for group in groups for p in group["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.context_lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    warm = max(1, cfg.context_steps // 10)
    model.train()
    history, running = [], []
    bar = tqdm(range(cfg.context_steps), desc="context stage", disable=not progress, mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.context_lr, warm, cfg.context_steps) * group["scale"]
        drawn = [mix.rendered_context() if mix.rng.random() < cfg.context_share else mix.sample()
                 for _ in range(cfg.batch_size)]
        # the asked-word-only steps are the VLM stage's first: pass a step past them
        loss_total = _optimise(model, processor, opt, params, _split(drawn), label_ids, cfg, None, cfg.steps + step)
        running.append(loss_total / cfg.batch_size)
        if (step + 1) % log_every == 0 or step + 1 == cfg.context_steps:
            mean = float(np.mean(running))
            history.append({"step": step + 1, "loss": mean, "elapsed_s": time.time() - start})
            bar.set_postfix(loss=f"{mean:.3f}")
            running = []
    model.requires_grad_(True)
    model.eval()
    return {"history": history, "wall_s": time.time() - start}


def _param_groups(model: Any, aux: Any, cfg: TinyVLMConfig) -> list[dict[str, Any]]:
    """The optimiser's groups: the vision tower at `tower_lr_scale` x the learning rate, the
    projector at `projector_lr_scale` x, the rest at 1x. A part whose scale is 0 is frozen instead
    (no gradients: the tower's backward is then skipped; `train` turns them back on at the end)."""
    parts = ((model.model.vision_tower, cfg.tower_lr_scale), (model.model.multi_modal_projector, cfg.projector_lr_scale))
    scaled = {id(p) for module, _ in parts for p in module.parameters()}
    groups = []
    for module, scale in parts:
        if scale == 0:
            module.requires_grad_(False)
        else:
            groups.append({"params": list(module.parameters()), "scale": scale})
    rest = [p for p in model.parameters() if id(p) not in scaled] + (list(aux.head.parameters()) if aux else [])
    return groups + [{"params": rest, "scale": 1.0}]


def _pretrain_progress(progress: bool):
    if not progress:
        return None
    return lambda h: print(f"pretraining step {h['step']}: loss {h['loss']:.3f}, batch accuracy "
                           f"{h['batch_accuracy']:.3f}, {h['elapsed_s'] / 60:.1f} min", flush=True)


class _Aux:
    """The auxiliary patch head and a hook that keeps the tower states the projector reads
    (`vision_feature_layer` = -2: the output of the tower's second-to-last layer)."""

    def __init__(self, model: Any, cfg: TinyVLMConfig) -> None:
        self.head = PatchHead(cfg.vision_hidden)
        self.states: torch.Tensor | None = None
        tower = model.model.vision_tower
        layer = getattr(tower, "vision_model", tower).encoder.layers[cfg.vision_layers - 2]
        self._handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: Any, args: Any, output: Any) -> None:
        out = output[0] if isinstance(output, tuple) else output
        self.states = out[:, 1:, :]  # the class token is not an image token

    def remove(self) -> None:
        self._handle.remove()


def _backward(model: Any, processor: Any, part: Sequence[Example], label_ids: dict[str, int], cfg: TinyVLMConfig,
              aux: _Aux | None, step: int = 0) -> float:
    """Backward of one part of a batch (all with an image, or none); returns its summed answer loss
    (at the answer position; the asked word's loss, when on, is trained but not returned)."""
    inputs = _encode(processor, part)
    labels = torch.tensor([label_ids[e.label] for e in part])
    ce = torch.nn.functional.cross_entropy
    # every position's logits only when the asked word's loss needs them
    all_logits = model(**inputs, **({} if cfg.asked_loss > 0 else {"logits_to_keep": 1})).logits
    loss = ce(all_logits[:, -1, :], labels, reduction="sum") / cfg.batch_size
    answer = float(loss.detach()) * cfg.batch_size
    if cfg.asked_loss > 0:
        if step < cfg.asked_only_steps:
            loss = 0.0 * loss
        where = asked_positions(processor, part, inputs["input_ids"], cfg.instruction_placement)
        has = (where >= 0).nonzero().flatten()
        if len(has):
            loss = loss + cfg.asked_loss * ce(all_logits[has, where[has]], labels[has], reduction="sum") / cfg.batch_size
    if aux is not None and part[0].image is not None and aux.states is not None:
        loss = loss + cfg.aux_weight * aux.head.loss(aux.states, [e.patches for e in part]) * len(part) / cfg.batch_size
        aux.states = None
    loss.backward()
    return answer


def save(model: Any, processor: Any, out: str | Path, *, card: str | None = None,
         metadata: dict[str, Any] | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    if metadata is not None:
        (out / "training.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    if card is not None:
        (out / "MODEL_CARD.md").write_text(card)
    return out
