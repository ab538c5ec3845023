"""The training mix of the small trained VLM: pre-drawn scenes and the examples drawn from them.

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
- **reading** (a share `read_share` of all examples; 20% in the shipped recipe): a rendered colour
  word, a rendered context or a colour scene with a sign (`modality_lens.tiny_vlm.reading`);
- **shape task** (a share `shape_share`, with a `ShapePool` of `n_shape_scenes`; 20% in the
  shipped recipe): the shape set's question on its scenes, vision-only / text-only / both;
- **instructed** (a share `instructed_share` of all examples): image + relevant context +
  question with an instruction naming a modality ("use the text to answer .", "answer
  from the image .", ...; `INSTRUCTIONS`). The context states a wrong colour with probability
  `instructed_conflict`; the label is the colour of the named modality. This is the one place a
  label can be the text's colour against the image, and only under an explicit instruction.
  The instruction goes after the question (`instruction_placement="end"`, shipped), before it
  (`"question"`, the recipe of earlier checkpoints) or at the start of the user turn, before
  the image (`"start"`; not shipped: measured in docs/interventions.md, "Measured on the
  full-attention 4-layer model before that").

So the model can learn how far to trust each modality at each difficulty; what it does when
they disagree without an instruction is not taught by any rule, it follows from what it
learned about reliability (`conflict_share > 0` breaks this on purpose, for
experiments: docs/interventions.md has what one such model did). The instructed share gives
the model a real "follow the text" / "follow the image" distinction, so that MC²-style
steering directions (estimated from those instructions,
`hooks.interventions.instruction_direction`) have something to find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from hooks.interventions import INSTRUCTION_PLACEMENTS
from interp.datasets.colour import COLOUR_TIERS, COLOURS, SHAPES
from interp.datasets.drawing import draw_scene, resolve_size
from interp.datasets.text import COLOUR_QUESTION, INSTRUCTION, SHAPE_QUESTION, shape_text_context, text_context
from modality_lens.tiny_vlm.aux import patch_labels
from modality_lens.tiny_vlm.reading import READ_QUESTION, ShapePool, context_image, sign_scene, word_image
from modality_lens.tiny_vlm.recipe import INSTRUCTIONS, TinyVLMConfig

__all__ = ["ScenePool", "Example", "TrainingMix", "check_mix"]


@dataclass
class ScenePool:
    """Pre-drawn scenes (drawing is the slow part of the data): images and what they show."""

    images: list[Any]
    target_colour: np.ndarray
    target_shape: np.ndarray
    absent_colour: np.ndarray  # a non-target colour absent from the scene (a wrong text colour)
    absent_shape: np.ndarray
    visual_tier: np.ndarray
    patches: list[np.ndarray] | None = None  # per scene, `aux.patch_labels` (with `patch=`)

    @classmethod
    def draw(cls, n: int, seed: int, image_size: int, tiers: Sequence[int] = range(14),
             same_colour_share: float = 0.0, patch: int | None = None, stream: int = 0) -> "ScenePool":
        """`n` scenes, visual tiers in turn, drawn like the evaluation set except that in a
        `same_colour_share` of them distractors may also take the target's colour **[ours]**:
        in the evaluation set the target's colour is the one colour worn by a single object,
        a shortcut that makes crowded scenes easy without finding the asked shape at all.
        `stream` > 0 draws another pool of the same seed (`TrainingMix.refresh`)."""
        extra = [stream] if stream else []
        rng = np.random.default_rng([seed, 7, *extra])
        images, tc, ts, ac, ash, vt, patches = [], [], [], [], [], [], []
        tiers = list(tiers)
        for i in range(n):
            tier = tiers[i % len(tiers)]
            c, a = rng.choice(len(COLOURS), 2, replace=False)
            s, s_abs = rng.choice(len(SHAPES), 2, replace=False)
            same = rng.random() < same_colour_share
            spec = COLOUR_TIERS[tier]
            scene = draw_scene(spec, SHAPES[s], COLOURS[c], np.random.default_rng([seed, 11, i, *extra]),
                               resolve_size(image_size, spec.default_size),
                               distractor_shapes=[x for k, x in enumerate(SHAPES) if k not in (s, s_abs)],
                               distractor_colours=[x for k, x in enumerate(COLOURS) if k != a and (same or k != c)])
            images.append(scene.image)
            tc.append(c), ts.append(s), ac.append(a), ash.append(s_abs), vt.append(tier)
            if patch:
                patches.append(patch_labels(scene, patch))
        arr = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
        return cls(images, arr(tc), arr(ts), arr(ac), arr(ash), arr(vt), patches if patch else None)

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Example:
    kind: str  # "vision", "text", "both", "conflict", "instructed", "read"
    question: str
    context: str | None
    image: Any
    label: str
    scene: int = -1  # index in the scene pool
    stated: str | None = None  # the colour the context states (None: no context)
    preamble: str | None = None  # text before the image (the instruction of an instructed example)
    text_tier: int | None = None  # the context's text tier (recorded for conflict examples)
    patches: np.ndarray | None = None  # the image's patch labels for the auxiliary loss (`aux`)


def check_mix(cfg: TinyVLMConfig) -> None:
    """Raise ValueError, naming the field and the fix, for a mix `cfg` cannot draw (shares,
    probabilities, the instruction's placement); `TrainingMix` calls it first."""
    if cfg.instruction_placement not in INSTRUCTION_PLACEMENTS:
        raise ValueError(f"instruction_placement must be one of {INSTRUCTION_PLACEMENTS}, got "
                         f"{cfg.instruction_placement!r}")
    for name in ("text_reliability", "text_prior"):
        probs = getattr(cfg, name)
        if len(probs) != 4 or not all(0 <= p <= 1 for p in probs):
            raise ValueError(f"{name} needs one probability per text tier (4, each in [0, 1]), got {probs}")
    if not 0 <= cfg.instructed_share + cfg.conflict_share <= 1 or cfg.conflict_share < 0:
        raise ValueError(f"conflict_share ({cfg.conflict_share}) must be >= 0 and, with instructed_share "
                         f"({cfg.instructed_share}), sum to at most 1")
    shares = (cfg.instructed_share, cfg.read_share, cfg.shape_share)
    if min(shares) < 0 or sum(shares) > 1:
        raise ValueError(f"instructed_share, read_share and shape_share must be >= 0 and sum to at most 1, "
                         f"got {shares}")
    if not 0 <= cfg.text_distractor_share <= 1:
        raise ValueError(f"text_distractor_share must be a probability in [0, 1], got "
                         f"{cfg.text_distractor_share}")


@dataclass
class TrainingMix:
    """Samples training examples from a scene pool following the documented mix."""

    pool: ScenePool
    cfg: TinyVLMConfig
    shapes: ShapePool | None = None
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        check_mix(self.cfg)
        self.rng = np.random.default_rng([self.cfg.seed, 13])
        self._by_tier: dict[int, np.ndarray] = {}

    def refresh(self, stream: int, patch: int | None = None) -> None:
        """Replace the scene pools by freshly drawn ones of the same sizes (`stream` > 0 picks
        which: the same seed and stream give the same scenes), so that a long run does not see
        the same scenes again and again (`TinyVLMConfig.scene_refresh`)."""
        cfg = self.cfg
        self.pool = ScenePool.draw(len(self.pool), cfg.seed, cfg.image_size, same_colour_share=cfg.same_colour_share,
                                   patch=patch, stream=stream)
        if self.shapes is not None:
            self.shapes = ShapePool.draw(len(self.shapes), cfg.seed, cfg.image_size, patch=patch, stream=stream)
        self._by_tier = {}

    def context(self, shape: str, absent_shape: str, true_colour: str, wrong_colour: str) -> tuple[str, str, int, bool]:
        """(context, stated colour, text tier, relevant): the context states the true colour with
        the tier's reliability, else `wrong_colour`; a share of contexts speak of `absent_shape`
        (not relevant: they say nothing about the asked shape)."""
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
        rng = self.rng
        if self.cfg.text_distractor_share <= 0 or rng.random() >= self.cfg.text_distractor_share:
            return context
        other_shapes = [x for x in SHAPES if x not in shapes]
        free = [c for c in COLOURS if c not in colours]
        other_shape = other_shapes[int(rng.integers(len(other_shapes)))]
        statement = text_context(0, other_shape, free[int(rng.integers(len(free)))], rng)
        return f"{statement} {context}" if rng.random() < 0.5 else f"{context} {statement}"

    def sample(self, max_tier: int | None = None, vision_only: bool = False) -> Example:
        """One example; `max_tier` restricts colour scenes to visual tiers <= max_tier (curriculum).

        The task is drawn first: instructed (`instructed_share`), reading (`read_share`), shape
        (`shape_share`, when a shape pool is given), else the colour task. `vision_only`
        (`TinyVLMConfig.asked_only_vision`): a vision-only shape question (`shape_share`) or
        else a vision-only colour question, nothing else."""
        rng, pool = self.rng, self.pool
        if max_tier is None:
            i = int(rng.integers(len(pool)))
        else:
            allowed = self._by_tier.setdefault(max_tier, np.flatnonzero(pool.visual_tier <= max_tier))
            i = int(allowed[rng.integers(len(allowed))])
        u = rng.random()
        cfg = self.cfg
        if vision_only:
            if self.shapes is not None and u < cfg.shape_share:
                return self._shape(int(rng.integers(len(self.shapes))), kind="vision")
            return self._colour(i, kind="vision")
        if u < cfg.instructed_share:
            return self._instructed(i)
        if u < cfg.instructed_share + cfg.read_share:
            return self._reading()
        if self.shapes is not None and u < cfg.instructed_share + cfg.read_share + cfg.shape_share:
            return self._shape(int(rng.integers(len(self.shapes))))
        # drawn only when used, so that a recipe without conflict examples keeps its random stream
        if cfg.conflict_share > 0 and rng.random() < cfg.conflict_share / (1 - cfg.instructed_share):
            return self._conflict(i)
        return self._colour(i)

    def _colour(self, i: int, kind: str | None = None) -> Example:
        """Colour scene `i`'s question: vision-only, text-only or both (`kind`, else drawn)."""
        rng, pool = self.rng, self.pool
        kind = kind or self._kind()
        shape, true_colour = SHAPES[pool.target_shape[i]], COLOURS[pool.target_colour[i]]
        absent_shape, wrong = SHAPES[pool.absent_shape[i]], COLOURS[pool.absent_colour[i]]
        if kind == "text":  # no image: any other colour can be the wrong one
            wrong = COLOURS[int(rng.choice([k for k in range(len(COLOURS)) if COLOURS[k] != true_colour]))]
        question = f"{COLOUR_QUESTION.format(shape=shape)} {INSTRUCTION}"
        context, stated = None, None
        if kind != "vision":
            context, stated = self.context(shape, absent_shape, true_colour, wrong)[:2]
        image = None if kind == "text" else pool.images[i]
        return Example(kind, question, context, image, true_colour, i, stated,
                       patches=None if image is None else self._patches(pool, i))

    @staticmethod
    def _patches(pool: Any, i: int) -> np.ndarray | None:
        return None if pool.patches is None else pool.patches[i]

    def _kind(self) -> str:
        return ("vision", "text", "both")[int(self.rng.choice(3, p=self.cfg.mix))]

    def _shape(self, j: int, kind: str | None = None) -> Example:
        """Shape-set scene `j`: "What shape is the {colour} object?", vision-only, text-only or
        both as for the colour task (`kind`, else drawn); a wrong text shape is absent from the
        image."""
        rng, sp = self.rng, self.shapes
        kind = kind or self._kind()
        true_shape, colour = SHAPES[sp.target_shape[j]], COLOURS[sp.target_colour[j]]
        wrong, absent_colour = SHAPES[sp.absent_shape[j]], COLOURS[sp.absent_colour[j]]
        question = f"{SHAPE_QUESTION.format(colour=colour)} {INSTRUCTION}"
        context, stated = None, None
        if kind != "vision":
            tier = int(rng.integers(4))
            if rng.random() < self.cfg.text_irrelevant_share:
                stated = [true_shape, wrong][int(rng.integers(2))]
                context = shape_text_context(tier, absent_colour, stated, rng, avoid=(true_shape,))
            else:
                stated = true_shape if rng.random() < self.cfg.text_reliability[tier] else wrong
                context = shape_text_context(tier, colour, stated, rng, avoid=(true_shape,))
        image = None if kind == "text" else sp.images[j]
        return Example(kind, question, context, image, true_shape, j, stated,
                       patches=None if image is None else self._patches(sp, j))

    def _reading(self) -> Example:
        """A reading example (`modality_lens.tiny_vlm.reading`): a rendered colour word (half),
        a rendered tier-0/1 context (a quarter) or a colour scene with a sign (a quarter)."""
        rng, size = self.rng, self.cfg.image_size
        u = rng.random()
        if u < 0.5:
            word = COLOURS[int(rng.integers(len(COLOURS)))]
            return Example("read", f"{READ_QUESTION} {INSTRUCTION}", None, word_image(word, size, rng), word)
        shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))]
        question = f"{COLOUR_QUESTION.format(shape=shape)} {INSTRUCTION}"
        if u < 0.75:
            return self._context_read(shape, colour)
        word = COLOURS[int(rng.integers(len(COLOURS)))]
        c_abs = COLOURS[int(rng.choice([k for k, c in enumerate(COLOURS) if c != colour]))]
        image, _ = sign_scene(int(rng.integers(5)), shape, colour, word, size, rng,
                              distractor_shapes=[s for s in SHAPES if s != shape],
                              distractor_colours=[c for c in COLOURS if c not in (colour, c_abs)])
        if rng.random() < 0.5:
            return Example("read", f"{READ_QUESTION} {INSTRUCTION}", None, image, word)
        return Example("read", question, None, image, colour)

    def rendered_context(self) -> Example:
        """A rendered tier-0/1 context sentence about a random shape and colour, asked that
        shape's colour (the reading task's context branch; the context stage's examples)."""
        rng = self.rng
        shape, colour = SHAPES[int(rng.integers(len(SHAPES)))], COLOURS[int(rng.integers(len(COLOURS)))]
        return self._context_read(shape, colour)

    def _context_read(self, shape: str, colour: str) -> Example:
        rng = self.rng
        sentence = text_context(int(rng.integers(2)), shape, colour, rng)
        return Example("read", f"{COLOUR_QUESTION.format(shape=shape)} {INSTRUCTION}", None,
                       context_image(sentence, self.cfg.image_size, rng), colour)

    def _conflict(self, i: int) -> Example:
        """Scene `i` with a relevant context stating a colour absent from the image, no
        instruction; the label is the stated colour with probability `text_prior[text tier]`,
        else the true colour (the taught text prior)."""
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

