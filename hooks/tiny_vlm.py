"""The small trained VLM shipped in `data/tiny_vlm`: its recipe, training loop and metrics.

A real `LlavaForConditionalGeneration` (CLIP vision tower, projector, Llama-style language
model: a `Qwen2` one, whose first decoder layer attends only to the last `local_window` = 8
tokens and the others to everything) with a word-level tokenizer over the colour set's
vocabulary, trained from scratch on the CPU on the colour tasks of `interp.datasets.colour`,
then saved with `save_pretrained`, so `load_vlm("data/tiny_vlm")` takes exactly the path of a
hub model.

Training mix **[ours]** (in the shipped recipe the label is the scene's true colour, never
the text's colour against the image, except under an explicit instruction):

- **vision-only**: question + image, every visual tier;
- **text-only**: context + question, no image. The context states the true colour with a
  probability `TEXT_RELIABILITY[tier]` that falls with the text tier, otherwise another
  colour; a share of contexts speak of another shape (text-irrelevant: no information);
- **both**: image + context + question, the context drawn exactly as for text-only. When it
  states a wrong colour, that colour is absent from the image, as in the evaluation set.
- **conflict** (a share `conflict_share` of all examples; 0 unless set): image + a relevant
  context stating a colour absent from the image, no instruction; the label is the stated
  colour with probability `text_prior[text tier]`, else the true colour. A taught text prior:
  the one way an uninstructed label can side with the text against the image.
- **text distractors** (a share `text_distractor_share` of all contexts, of every kind; 0
  unless set): one more sentence giving another shape another colour (`TrainingMix.distract`);
  measured in docs/interventions.md, not shipped.
- **instructed** (a share `instructed_share` of all examples): image + relevant context +
  question with an instruction naming a modality ("use the text to answer .", "answer
  from the image .", ...; `INSTRUCTIONS`). The context states a wrong colour with probability
  `instructed_conflict`; the label is the colour of the named modality. This is the one place a
  label can be the text's colour against the image, and only under an explicit instruction.
  The instruction goes after the question (`instruction_placement="end"`, shipped), before it
  (`"question"`, the recipe of earlier checkpoints) or at the start of the user turn, before
  the image (`"start"`; not shipped: TFR fell to 0.18 with no balance point).

Architecture **[ours, measured]** (docs/interventions.md): with full attention in every layer,
the answer position reads the context's colour word in layer 0 with a query that comes from
its own token, the same in every prompt, and no steering vector added to the residual stream
can reach that read. With a local first layer (`local_layers=1`, window 8) the answer
position's first layer sees the end of the prompt only: the template and, when there is one,
the instruction after the question, but not the context or the image. Its first-layer state
then carries the instruction and nothing of the content, and the later layers read both
modalities with queries made from it: that is where an MC² direction (the mean difference of
that state under the two instructions) acts, and it moves TFR both ways. `local_layers=0`
builds the full-attention `Llama` model of the earlier checkpoints.

So the model can learn how far to trust each modality at each difficulty; what it does when
they disagree without an instruction is not taught by any rule, it follows from what it
learned about reliability (issue 12; `conflict_share > 0` breaks this on purpose, for
experiments: docs/interventions.md has what one such model did). The instructed share gives the model a real "follow the text" /
"follow the image" distinction, so that MC²-style steering directions (estimated from those
instructions, `hooks.patching.instruction_direction`) have something to find.

Measured **[ours]** on the full-attention predecessor (held-out seed 1000, 32 groups per
cell): reliabilities 0.97/0.9/0.8/0.65 without instructed examples gave TFR 0.21 and no
crossing of the logistic curve inside the data; 0.99/0.93/0.85/0.70 with 10% instructed
examples gave TFR 0.24 and a balance point of -1.12 (16 groups per cell: 0.30 and -0.83).
Training that recipe for 3500 steps instead of 2500 did not raise the Spearman rho of H_v
against the visual tier (0.72 against 0.76 at 16 groups per cell) and lowered TFR (0.25
against 0.30). The shipped recipe (the same data, the local first layer, the instruction after
the question; 16 groups per cell): TFR 0.29, balance point -0.93, Spearman rho of H_v 0.83.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import transformers as T
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers

from hooks.patching import DEFAULT_PLACEMENT, INSTRUCTION_PLACEMENTS
from hooks.tiny import chat_template

__all__ = ["TinyVLMConfig", "TEXT_RELIABILITY", "INSTRUCTIONS", "build_tokenizer", "build_processor", "build_model",
           "ScenePool", "TrainingMix", "train", "save", "evaluate", "DEFAULT_DIR"]

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny_vlm"

TEXT_RELIABILITY: tuple[float, ...] = (0.99, 0.93, 0.85, 0.7)
"""P(the context states the true colour) per text tier, in training **[ours]**."""

# words a researcher's prompts around the colour task may use (steering instructions, etc.)
EXTRA_WORDS = ("user", "assistant", "from", "text", "image", "follow", "ignore", "trust", "only", "look", "at",
               "read", "not", "colour", "color", "answer", "the", "based")
INSTRUCTIONS: tuple[str, ...] = ("use the {m} to answer .", "answer from the {m} .", "trust only the {m} .")
"""Instruction templates of the instructed examples; `{m}` is "text" or "image". The first is
`hooks.patching.TEXT_INSTRUCTION` / `IMAGE_INSTRUCTION`."""
SPECIALS = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "<image>": 4}


@dataclass
class TinyVLMConfig:
    """Everything that defines a training run (written to the model card)."""

    seed: int = 0
    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 3
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 384
    steps: int = 2500
    batch_size: int = 48
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    n_scenes: int = 12000
    same_colour_share: float = 0.8
    text_reliability: tuple[float, ...] = TEXT_RELIABILITY
    text_irrelevant_share: float = 0.1
    mix: tuple[float, float, float] = (0.5, 0.2, 0.3)  # vision-only, text-only, both (of the uninstructed)
    instructed_share: float = 0.1  # of all examples: image + context + an instruction naming the modality
    instructed_conflict: float = 0.5  # P(the context of an instructed example states a wrong colour)
    instruction_placement: str = DEFAULT_PLACEMENT  # "end" (after the question), "question" (before it), "start"
    conflict_share: float = 0.0  # of all examples: image + a relevant context stating a wrong colour, no instruction
    text_prior: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)  # per text tier: P(a conflict example's label is the text's)
    text_distractor_share: float = 0.0  # of all contexts: one more statement giving another shape another colour
    local_layers: int = 1  # first decoder layers with sliding-window attention (0: full attention, a Llama model)
    local_window: int = 8  # the window of those layers, in tokens
    threads: int = 2
    curriculum_share: float = 0.15  # first share of the steps: visual tiers 0..curriculum_max_tier only
    curriculum_max_tier: int = 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_tokenizer() -> T.PreTrainedTokenizerFast:
    """Word-level, lower-casing tokenizer over every word the colour generator can emit."""
    from interp.datasets.text import vocabulary

    words = sorted(set(vocabulary()) | set(EXTRA_WORDS) | {":", "\n"} - set(SPECIALS))
    vocab = dict(SPECIALS)
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                     unk_token="<unk>", extra_special_tokens={"image_token": "<image>"},
                                     padding_side="left")


def build_processor(cfg: TinyVLMConfig, tokenizer: Any = None) -> T.LlavaProcessor:
    tokenizer = tokenizer or build_tokenizer()
    size = cfg.image_size
    image_processor = T.CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return T.LlavaProcessor(image_processor, tokenizer, patch_size=cfg.patch_size,
                            vision_feature_select_strategy="default", num_additional_image_tokens=1,
                            chat_template=chat_template("<image>\n", bos="<s>"))


def build_model(cfg: TinyVLMConfig, vocab_size: int) -> T.LlavaForConditionalGeneration:
    n_image_tokens = (cfg.image_size // cfg.patch_size) ** 2
    vision = T.CLIPVisionConfig(hidden_size=cfg.vision_hidden, intermediate_size=4 * cfg.vision_hidden,
                                num_hidden_layers=cfg.vision_layers, num_attention_heads=cfg.vision_heads,
                                image_size=cfg.image_size, patch_size=cfg.patch_size,
                                projection_dim=cfg.vision_hidden)
    common = dict(vocab_size=vocab_size, hidden_size=cfg.text_hidden, intermediate_size=cfg.text_intermediate,
                  num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
                  num_key_value_heads=cfg.text_heads, max_position_embeddings=256,
                  pad_token_id=SPECIALS["<pad>"], bos_token_id=SPECIALS["<s>"], eos_token_id=SPECIALS["</s>"])
    if cfg.local_layers <= 0:
        text = T.LlamaConfig(**common)
    else:  # Llama-style with per-layer attention types; the local layers see only the last `local_window` tokens
        if not 0 < cfg.local_layers < cfg.text_layers or cfg.local_window < 1:
            raise ValueError(f"local_layers must leave at least one full-attention layer (0 < {cfg.local_layers} < "
                             f"{cfg.text_layers}) and local_window must be >= 1 (got {cfg.local_window})")
        types = ["sliding_attention"] * cfg.local_layers + ["full_attention"] * (cfg.text_layers - cfg.local_layers)
        text = T.Qwen2Config(**common, use_sliding_window=True, sliding_window=cfg.local_window, layer_types=types,
                             tie_word_embeddings=False)
    config = T.LlavaConfig(vision_config=vision, text_config=text, image_token_index=SPECIALS["<image>"],
                           image_seq_length=n_image_tokens, vision_feature_layer=-2,
                           vision_feature_select_strategy="default")
    torch.manual_seed(cfg.seed)
    return T.LlavaForConditionalGeneration(config)


@dataclass
class ScenePool:
    """Pre-drawn scenes (drawing is the slow part of the data): images and what they show."""

    images: list[Any]
    target_colour: np.ndarray
    target_shape: np.ndarray
    absent_colour: np.ndarray  # a non-target colour absent from the scene (a wrong text colour)
    absent_shape: np.ndarray
    visual_tier: np.ndarray

    @classmethod
    def draw(cls, n: int, seed: int, image_size: int, tiers: Sequence[int] = range(14),
             same_colour_share: float = 0.0) -> "ScenePool":
        """`n` scenes, visual tiers in turn, drawn like the evaluation set except that in a
        `same_colour_share` of them distractors may also take the target's colour **[ours]**:
        in the evaluation set the target's colour is the one colour worn by a single object,
        a shortcut that makes crowded scenes easy without finding the asked shape at all."""
        from interp.datasets.colour import COLOUR_TIERS, COLOURS, SHAPES
        from interp.datasets.drawing import draw_scene, resolve_size

        rng = np.random.default_rng([seed, 7])
        images, tc, ts, ac, ash, vt = [], [], [], [], [], []
        tiers = list(tiers)
        for i in range(n):
            tier = tiers[i % len(tiers)]
            c, a = rng.choice(len(COLOURS), 2, replace=False)
            s, s_abs = rng.choice(len(SHAPES), 2, replace=False)
            same = rng.random() < same_colour_share
            spec = COLOUR_TIERS[tier]
            scene = draw_scene(spec, SHAPES[s], COLOURS[c], np.random.default_rng([seed, 11, i]),
                               resolve_size(image_size, spec.default_size),
                               distractor_shapes=[x for k, x in enumerate(SHAPES) if k not in (s, s_abs)],
                               distractor_colours=[x for k, x in enumerate(COLOURS) if k != a and (same or k != c)])
            images.append(scene.image)
            tc.append(c), ts.append(s), ac.append(a), ash.append(s_abs), vt.append(tier)
        arr = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
        return cls(images, arr(tc), arr(ts), arr(ac), arr(ash), arr(vt))

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Example:
    kind: str  # "vision", "text", "both", "conflict", "instructed"
    question: str
    context: str | None
    image: Any
    label: str
    scene: int = -1  # index in the scene pool
    stated: str | None = None  # the colour the context states (None: no context)
    preamble: str | None = None  # text before the image (the instruction of an instructed example)
    text_tier: int | None = None  # the context's text tier (recorded for conflict examples)


@dataclass
class TrainingMix:
    """Samples training examples from a scene pool following the documented mix."""

    pool: ScenePool
    cfg: TinyVLMConfig
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        if self.cfg.instruction_placement not in INSTRUCTION_PLACEMENTS:
            raise ValueError(f"instruction_placement must be one of {INSTRUCTION_PLACEMENTS}, got "
                             f"{self.cfg.instruction_placement!r}")
        for name in ("text_reliability", "text_prior"):
            probs = getattr(self.cfg, name)
            if len(probs) != 4 or not all(0 <= p <= 1 for p in probs):
                raise ValueError(f"{name} needs one probability per text tier (4, each in [0, 1]), got {probs}")
        if not 0 <= self.cfg.instructed_share + self.cfg.conflict_share <= 1 or self.cfg.conflict_share < 0:
            raise ValueError(f"conflict_share ({self.cfg.conflict_share}) must be >= 0 and, with instructed_share "
                             f"({self.cfg.instructed_share}), sum to at most 1")
        if not 0 <= self.cfg.text_distractor_share <= 1:
            raise ValueError(f"text_distractor_share must be a probability in [0, 1], got "
                             f"{self.cfg.text_distractor_share}")
        self.rng = np.random.default_rng([self.cfg.seed, 13])
        self._by_tier: dict[int, np.ndarray] = {}

    def context(self, shape: str, absent_shape: str, true_colour: str, wrong_colour: str) -> tuple[str, str, int, bool]:
        """(context, stated colour, text tier, relevant): the context states the true colour with
        the tier's reliability, else `wrong_colour`; a share of contexts speak of `absent_shape`
        (not relevant: they say nothing about the asked shape)."""
        from interp.datasets.text import text_context

        rng = self.rng
        tier = int(rng.integers(4))
        if rng.random() < self.cfg.text_irrelevant_share:
            stated = [true_colour, wrong_colour][int(rng.integers(2))]
            context = text_context(tier, absent_shape, stated, rng, avoid=(true_colour,))
            return self.distract(context, (shape, absent_shape), (true_colour, stated)), stated, tier, False
        stated = true_colour if rng.random() < self.cfg.text_reliability[tier] else wrong_colour
        context = text_context(tier, shape, stated, rng, avoid=(true_colour,))
        return self.distract(context, (shape, absent_shape), (true_colour, stated)), stated, tier, True

    def distract(self, context: str, shapes: tuple[str, ...], colours: tuple[str, ...]) -> str:
        """With probability `text_distractor_share`, `context` with one more sentence, before or
        after it, saying that a shape not in `shapes` is a colour not in `colours` (a tier-0
        statement) **[ours]**. The answer position cannot then take the stated colour by a
        lookup that ignores which shape was asked: a context names two colours, and only the
        question says which one counts. Off (0) in the shipped recipe; nothing is drawn then, so
        the random stream is unchanged."""
        from interp.datasets.colour import COLOURS, SHAPES
        from interp.datasets.text import text_context

        rng = self.rng
        if self.cfg.text_distractor_share <= 0 or rng.random() >= self.cfg.text_distractor_share:
            return context
        other_shapes = [x for x in SHAPES if x not in shapes]
        free = [c for c in COLOURS if c not in colours]
        other_shape = other_shapes[int(rng.integers(len(other_shapes)))]
        statement = text_context(0, other_shape, free[int(rng.integers(len(free)))], rng)
        return f"{statement} {context}" if rng.random() < 0.5 else f"{context} {statement}"

    def sample(self, max_tier: int | None = None) -> Example:
        """One example; `max_tier` restricts the scene to visual tiers <= max_tier (curriculum)."""
        from interp.datasets.colour import COLOURS, SHAPES
        from interp.datasets.text import COLOUR_QUESTION, INSTRUCTION

        rng, pool = self.rng, self.pool
        if max_tier is None:
            i = int(rng.integers(len(pool)))
        else:
            allowed = self._by_tier.setdefault(max_tier, np.flatnonzero(pool.visual_tier <= max_tier))
            i = int(allowed[rng.integers(len(allowed))])
        if rng.random() < self.cfg.instructed_share:
            return self._instructed(i)
        # drawn only when used, so that a recipe without conflict examples keeps its random stream
        if self.cfg.conflict_share > 0 and rng.random() < self.cfg.conflict_share / (1 - self.cfg.instructed_share):
            return self._conflict(i)
        kind = ("vision", "text", "both")[int(rng.choice(3, p=self.cfg.mix))]
        shape, true_colour = SHAPES[pool.target_shape[i]], COLOURS[pool.target_colour[i]]
        absent_shape, wrong = SHAPES[pool.absent_shape[i]], COLOURS[pool.absent_colour[i]]
        if kind == "text":  # no image: any other colour can be the wrong one
            wrong = COLOURS[int(rng.choice([k for k in range(len(COLOURS)) if COLOURS[k] != true_colour]))]
        question = f"{COLOUR_QUESTION.format(shape=shape)} {INSTRUCTION}"
        context, stated = None, None
        if kind != "vision":
            context, stated = self.context(shape, absent_shape, true_colour, wrong)[:2]
        image = None if kind == "text" else pool.images[i]
        return Example(kind, question, context, image, true_colour, i, stated)

    def _conflict(self, i: int) -> Example:
        """Scene `i` with a relevant context stating a colour absent from the image, no
        instruction; the label is the stated colour with probability `text_prior[text tier]`,
        else the true colour (the taught text prior)."""
        from interp.datasets.colour import COLOURS, SHAPES
        from interp.datasets.text import COLOUR_QUESTION, INSTRUCTION, text_context

        rng, pool = self.rng, self.pool
        shape, true_colour = SHAPES[pool.target_shape[i]], COLOURS[pool.target_colour[i]]
        stated = COLOURS[pool.absent_colour[i]]
        tier = int(rng.integers(4))
        context = self.distract(text_context(tier, shape, stated, rng, avoid=(true_colour,)), (shape,),
                                (true_colour, stated))
        label = stated if rng.random() < self.cfg.text_prior[tier] else true_colour
        question = f"{COLOUR_QUESTION.format(shape=shape)} {INSTRUCTION}"
        return Example("conflict", question, context, pool.images[i], label, i, stated, text_tier=tier)

    def _instructed(self, i: int) -> Example:
        """Scene `i` with a relevant context and an instruction naming the modality to answer from;
        the label is that modality's colour (the text's may disagree with the image)."""
        from interp.datasets.colour import COLOURS, SHAPES
        from interp.datasets.text import COLOUR_QUESTION, INSTRUCTION, text_context

        rng, pool = self.rng, self.pool
        shape, true_colour = SHAPES[pool.target_shape[i]], COLOURS[pool.target_colour[i]]
        stated = COLOURS[pool.absent_colour[i]] if rng.random() < self.cfg.instructed_conflict else true_colour
        context = self.distract(text_context(int(rng.integers(4)), shape, stated, rng, avoid=(true_colour,)), (shape,),
                                (true_colour, stated))
        modality = ("text", "image")[int(rng.integers(2))]
        instruction = INSTRUCTIONS[int(rng.integers(len(INSTRUCTIONS)))].format(m=modality)
        question = f"{COLOUR_QUESTION.format(shape=shape)} {INSTRUCTION}"
        label = stated if modality == "text" else true_colour
        if self.cfg.instruction_placement == "question":
            return Example("instructed", f"{instruction} {question}", context, pool.images[i], label, i, stated)
        if self.cfg.instruction_placement == "end":
            return Example("instructed", f"{question} {instruction}", context, pool.images[i], label, i, stated)
        return Example("instructed", question, context, pool.images[i], label, i, stated, preamble=instruction)


def _encode(processor: Any, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    from hooks.prompts import render_prompt

    prompts = [render_prompt(processor, question=e.question, context=e.context, with_image=e.image is not None,
                             preamble=e.preamble) for e in examples]
    if examples[0].image is not None:
        out = processor(text=prompts, images=[[e.image] for e in examples], return_tensors="pt", padding=True)
    else:
        out = processor(text=prompts, return_tensors="pt", padding=True)
    return dict(out)


def _lr(step: int, cfg: TinyVLMConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def batches(mix: TrainingMix, batch_size: int) -> Iterator[tuple[list[Example], list[Example]]]:
    """Forever: (examples with an image, examples without) making up one batch.

    Curriculum **[ours]**: during the first `curriculum_share` of the steps, scenes come from
    visual tiers <= `curriculum_max_tier` only. Measured: with every tier from the start, the
    vision pathway stayed at chance (loss ln 6) for 600 steps; on the easy tiers alone it reads
    colours within ~150 steps, and then carries over to the harder tiers.
    """
    cfg = mix.cfg
    step = 0
    while True:
        max_tier = cfg.curriculum_max_tier if step < cfg.curriculum_share * cfg.steps else None
        drawn = [mix.sample(max_tier) for _ in range(batch_size)]
        step += 1
        yield [e for e in drawn if e.image is not None], [e for e in drawn if e.image is None]


def train(cfg: TinyVLMConfig, *, pool: ScenePool | None = None, log_every: int = 50, progress: bool = True,
          model: Any = None, processor: Any = None) -> tuple[Any, Any, dict[str, Any]]:
    """Train from scratch; returns (model, processor, log). Deterministic for a seed, thread count,
    torch build and machine (two processes on one machine gave identical weights; a retrain on
    another machine rounded differently from the first steps)."""
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    start = time.time()
    processor = processor or build_processor(cfg)
    tok = processor.tokenizer
    model = model or build_model(cfg, len(tok))
    pool = pool or ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size, same_colour_share=cfg.same_colour_share)
    drawn_s = time.time() - start
    mix = TrainingMix(pool, cfg)
    label_ids = {c: tok.convert_tokens_to_ids(c) for c in ("red", "yellow", "blue", "green", "purple", "orange")}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    model.train()
    history, running = [], []
    it = batches(mix, cfg.batch_size)
    bar = tqdm(range(cfg.steps), desc="training", disable=not progress, mininterval=5)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(step, cfg)
        with_image, without = next(it)
        loss_total, n_total = 0.0, 0
        opt.zero_grad(set_to_none=True)
        for part in (with_image, without):
            if not part:
                continue
            inputs = _encode(processor, part)
            labels = torch.tensor([label_ids[e.label] for e in part])
            logits = model(**inputs, logits_to_keep=1).logits[:, -1, :]
            loss = torch.nn.functional.cross_entropy(logits, labels, reduction="sum") / cfg.batch_size
            loss.backward()
            loss_total += float(loss.detach()) * cfg.batch_size
            n_total += len(part)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running.append(loss_total / max(1, n_total))
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            mean = float(np.mean(running))
            history.append({"step": step + 1, "loss": mean, "elapsed_s": time.time() - start})
            bar.set_postfix(loss=f"{mean:.3f}")
            running = []
    model.eval()
    log = {"history": history, "wall_s": time.time() - start, "scene_drawing_s": drawn_s,
           "params": sum(p.numel() for p in model.parameters())}
    return model, processor, log


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


def evaluate(vlm: Any, *, n_per_cell: int = 4, seed: int = 1000, image_size: int = 64, batch_size: int = 32,
             progress: bool = True, placement: str = DEFAULT_PLACEMENT) -> dict[str, Any]:
    """Held-out metrics on the built-in colour set (conflict cases, no controls).

    Returns per-tier accuracy and mean entropy for each modality, the Spearman correlation of
    the tier means with the tier, and the following statistics of the conflict cases kept by
    the correct-in-both filter (with the fitted following curve).
    """
    from scipy.stats import spearmanr

    from interp.curves import fit_following
    from interp.datasets.colour import colour_cases
    from interp.following import tfr_vfr
    from interp.pipeline import iter_rows

    cases = list(colour_cases(n_per_cell, seed, image_size=image_size, controls=False))
    rows: list[dict[str, Any]] = []
    for case_rows, _ in iter_rows(vlm, cases, batch_size=batch_size, progress=progress):
        rows.extend(case_rows)

    def per_tier(tier_key: str, correct_key: str, h_key: str) -> dict[str, Any]:
        tiers = sorted({r[tier_key] for r in rows})
        acc = [float(np.mean([r[correct_key] for r in rows if r[tier_key] == t])) for t in tiers]
        ent = [float(np.mean([r[h_key] for r in rows if r[tier_key] == t])) for t in tiers]
        rho = float(spearmanr(tiers, ent).statistic) if len(tiers) > 2 else None
        return {"tiers": tiers, "accuracy": acc, "mean_entropy": ent, "spearman_entropy_vs_tier": rho}

    kept = [r for r in rows if r["kept"]]
    correct = {r["case_id"]: bool(r["vision_correct"] and r["text_correct"]) for r in rows}
    conflict = [c for c in cases if c.control is None]
    instructed = instruction_following(vlm, conflict, kept=[correct[c.id] for c in conflict],
                                       batch_size=batch_size, placement=placement)
    ratios = tfr_vfr([r["label"] for r in kept])
    decided = [r for r in kept if r["label"] in ("text", "vision")]
    curve = fit_following(np.array([r["dh_rel"] for r in decided]), np.array([r["label"] == "text" for r in decided]),
                          seed=seed)
    return {
        "n_cases": len(rows),
        "vision": per_tier("visual_tier", "vision_correct", "h_v"),
        "text": per_tier("text_tier", "text_correct", "h_t"),
        "n_kept": len(kept),
        "kept_share": len(kept) / max(1, len(rows)),
        "labels_kept": {k: sum(r["label"] == k for r in kept) for k in ("text", "vision", "other")},
        "tfr": ratios.tfr, "vfr": ratios.vfr,
        "following_curve": curve.to_dict(),
        "instruction_following": instructed,
    }


def instruction_following(vlm: Any, cases: Sequence[Any], *, kept: Sequence[bool] | None = None,
                          batch_size: int = 32, placement: str = DEFAULT_PLACEMENT) -> dict[str, Any]:
    """Conflict pass of each case under each modality instruction of `INSTRUCTIONS[0]` (the
    phrasing `hooks.patching` steers with), placed as `hooks.patching.with_instruction` does
    (`placement`: where the model was trained with it): the share of cases answered with the instructed
    modality's colour ("text": the context's, "image": the scene's), and with the other one;
    over every case and over the `kept` ones (e.g. right in both unimodal passes)."""
    from hooks.patching import read_answer, with_instruction
    from hooks.prompts import PromptItem
    from interp.candidates import candidate_pair
    from interp.datasets.text import INSTRUCTION

    out: dict[str, Any] = {"n": len(cases), "placement": placement}
    for modality, own in (("text", "text"), ("image", "vision")):
        labels: list[str] = []
        for start in range(0, len(cases), batch_size):
            chunk = cases[start:start + batch_size]
            items = [PromptItem(f"{c.question} {INSTRUCTION}", c.context, c.open_image()) for c in chunk]
            pairs = [candidate_pair(vlm.tokenizer, c.text_answer, c.image_answer, tuple(c.text_candidates)[1:],
                                    tuple(c.image_candidates)[1:]) for c in chunk]
            instructed = with_instruction(items, INSTRUCTIONS[0].format(m=modality), placement=placement)
            batch = vlm.passes(instructed, ("conflict",))["conflict"]
            labels += read_answer(vlm, batch, pairs).labels(pairs)
        other = "vision" if own == "text" else "text"
        sub = [lab for lab, k in zip(labels, kept or ()) if k]
        out[modality] = {"instructed": labels.count(own) / max(1, len(labels)),
                         "other": labels.count(other) / max(1, len(labels)),
                         "kept_instructed": sub.count(own) / len(sub) if sub else None,
                         "kept_other": sub.count(other) / len(sub) if sub else None}
    out["n_kept"] = sum(kept) if kept is not None else None
    return out
