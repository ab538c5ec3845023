"""Text contexts of the four text tiers (METHOD §1.6), their word lists, and the vocabulary.

One machinery serves both synthetic sets; only the wording differs:

- colour set: the subject is a shape ("the star") and the attribute a colour ("... is blue");
- shape set: the subject is a coloured object ("the red object") and the attribute a shape
  ("... is a circle").

Tiers (A = subject, T = text answer, B = an object absent from the image, D = a real-world
object whose attribute is T):

0. direct: "The A is T."
1. indirect simple: "The A's colour is the same as a B. The B is T."
2. indirect: "The A's colour is the same as D." with D from a table of real-world objects.
3. 2-D spatial chain **[ours: the paper has it for CLEVR only]**: objects laid on a grid with
   left/right/above/below relations; the subject's attribute is that of "the object <rel> the
   S2". Three templates add a decoy object of another value X on the perpendicular axis, one
   has two hops; the answer is fixed by construction, never by chance.

Every template set has at least five templates; which one is used is drawn from ``rng``.
Words are lower-case friendly: apart from the capital starting a sentence, everything the
generators emit is lower case, so a word-level tokenizer built from ``vocabulary()`` (after
lower-casing and whitespace + punctuation splitting, see ``words``) covers every prompt.
"""

from __future__ import annotations

import re
import string
from typing import Literal

import numpy as np

from interp.datasets.drawing import COLOURS, SHAPES

Kind = Literal["colour", "shape"]

INSTRUCTION = "Please use one word to answer this question."
"""Appended to every question (METHOD §1.6). ``Case.question`` does not contain it."""

COLOUR_QUESTION = "What colour is the {shape}?"
SHAPE_QUESTION = "What shape is the {colour} object?"

COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson", "scarlet"),
    "yellow": ("yellow", "golden"),
    "blue": ("blue", "azure"),
    "green": ("green",),
    "purple": ("purple", "violet"),
    "orange": ("orange",),
}
"""Answer candidates per colour, the colour itself first (MC²-style synonym lists)."""

SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "round", "disc", "disk"),
    "square": ("square",),
    "triangle": ("triangle", "triangular"),
    "diamond": ("diamond", "rhombus"),
    "hexagon": ("hexagon", "hexagonal"),
    "star": ("star",),
    "cross": ("cross", "plus"),
}

COLOUR_OBJECTS: dict[str, tuple[str, ...]] = {
    "red": ("a ripe tomato", "a ripe strawberry", "a fire truck", "a ladybug", "a ripe cherry"),
    "yellow": ("a ripe banana", "a lemon", "a sunflower", "an egg yolk", "a canary"),
    "blue": ("a clear sky", "a sapphire", "a peacock's neck", "a cornflower", "the deep ocean"),
    "green": ("fresh grass", "a lime", "a frog", "an emerald", "a cucumber"),
    "purple": ("an eggplant", "a lavender flower", "an amethyst", "a ripe plum"),
    "orange": ("a carrot", "a pumpkin", "a tangerine", "a goldfish", "a ripe apricot"),
}
"""Tier-2 table: real-world objects whose colour is the key (none names a colour word)."""

SHAPE_OBJECTS: dict[str, tuple[str, ...]] = {
    "circle": ("a coin", "a wheel", "a full moon", "a dinner plate", "a clock face"),
    "square": ("a chessboard field", "a sticky note", "a floor tile", "a dice face"),
    "triangle": ("a slice of pizza", "a yield sign", "a sail", "a coat hanger"),
    "diamond": ("a kite", "a baseball infield", "a lozenge", "a harlequin patch"),
    "hexagon": ("a honeycomb cell", "a bolt head", "a pencil's end", "a benzene ring"),
    "star": ("a starfish", "a sheriff's badge", "a christmas tree topper", "a carambola slice"),
    "cross": ("a plus sign", "a first aid sign", "a hospital sign", "the swiss emblem"),
}
"""Tier-2 table for the shape set: real-world objects whose shape is the key."""

# Objects that never appear in the images: B of tier 1 and S1..S3 of tier 3.
COLOUR_NOUNS = ("cup", "book", "hat", "flag", "bag", "scarf", "ribbon", "pencil")
SHAPE_NOUNS = ("sticker", "badge", "token", "tile", "sign", "button", "patch", "magnet")

RELATIONS = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
_OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}
_PERPENDICULAR = {"left": ("above", "below"), "right": ("above", "below"),
                  "above": ("left", "right"), "below": ("left", "right")}

_TEMPLATES: dict[Kind, dict[int, tuple[str, ...]]] = {
    "colour": {
        0: (
            "The {A} is {T}.",
            "The colour of the {A} is {T}.",
            "The {A} in the picture is {T}.",
            "Note that the {A} is {T}.",
            "The {A} is painted {T}.",
            "Everyone can see that the {A} is {T}.",
        ),
        1: (
            "The {A}'s colour is the same as a {B}. The {B} is {T}.",
            "The {A} has the same colour as the {B}. The {B} is {T}.",
            "The {B} is {T}. The {A} has the colour of the {B}.",
            "The {A} and the {B} share one colour. The {B} is {T}.",
            "The colour of the {A} matches the {B}, and the {B} is {T}.",
        ),
        2: (
            "The {A}'s colour is the same as {D}.",
            "The {A} has the colour of {D}.",
            "The {A} is the same colour as {D}.",
            "The colour of the {A} matches {D}.",
            "The {A} looks like {D} in colour.",
        ),
        3: (
            "There is {aT} {S1}. {R1cap} the {S1} is a {S2}. "
            "The {A}'s colour is the same as the object {R1o} the {S2}.",
            "There is {aT} {S1} and {aX} {S3}. The {S2} is {R1} the {S1} and {R2o} the {S3}. "
            "The {A}'s colour is the same as the object {R1o} the {S2}.",
            "{aTcap} {S1} is {R1o} a {S2}, and {aX} {S3} is {R2} the {S2}. "
            "The {A} has the same colour as the object {R1o} the {S2}.",
            "There is {aT} {S1}. {R1cap} the {S1} is a {S2}, and {R2} the {S2} is a {S3}. "
            "The {A}'s colour is the same as the object {R1o} the object {R2o} the {S3}.",
            "{aXcap} {S3} and {aT} {S1} are on a table. The {S2} is {R1} the {S1}, and the {S3} "
            "is {R2} the {S2}. The {A} has the same colour as the object {R1o} the {S2}.",
        ),
    },
    "shape": {
        0: (
            "The {A} is a {T}.",
            "The shape of the {A} is a {T}.",
            "The {A} in the picture is a {T}.",
            "Note that the {A} is a {T}.",
            "The {A} is drawn as a {T}.",
            "Everyone can see that the {A} is a {T}.",
        ),
        1: (
            "The {A}'s shape is the same as a {B}. The {B} is a {T}.",
            "The {A} has the same shape as the {B}. The {B} is a {T}.",
            "The {B} is a {T}. The {A} has the shape of the {B}.",
            "The {A} and the {B} share one shape. The {B} is a {T}.",
            "The shape of the {A} matches the {B}, and the {B} is a {T}.",
        ),
        2: (
            "The {A}'s shape is the same as {D}.",
            "The {A} has the shape of {D}.",
            "The {A} is the same shape as {D}.",
            "The shape of the {A} matches {D}.",
            "The {A} looks like {D} in shape.",
        ),
        3: (
            "There is {aT} {S1}. {R1cap} the {S1} is a {S2}. "
            "The {A}'s shape is the same as the object {R1o} the {S2}.",
            "There is {aT} {S1} and {aX} {S3}. The {S2} is {R1} the {S1} and {R2o} the {S3}. "
            "The {A}'s shape is the same as the object {R1o} the {S2}.",
            "{aTcap} {S1} is {R1o} a {S2}, and {aX} {S3} is {R2} the {S2}. "
            "The {A} has the same shape as the object {R1o} the {S2}.",
            "There is {aT} {S1}. {R1cap} the {S1} is a {S2}, and {R2} the {S2} is a {S3}. "
            "The {A}'s shape is the same as the object {R1o} the object {R2o} the {S3}.",
            "{aXcap} {S3} and {aT} {S1} are on a table. The {S2} is {R1} the {S1}, and the {S3} "
            "is {R2} the {S2}. The {A} has the same shape as the object {R1o} the {S2}.",
        ),
    },
}

TEXT_TIERS = (0, 1, 2, 3)


def article(word: str) -> str:
    """``"a blue"`` / ``"an orange"``: the indefinite article that goes before ``word``."""
    return ("an " if word[:1] in "aeiou" else "a ") + word


def subject_phrase(kind: Kind, subject: str) -> str:
    """What the question and context call the subject: ``"star"`` or ``"red object"``."""
    return subject if kind == "colour" else f"{subject} object"


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def render_context(
    kind: Kind,
    text_tier: int,
    subject: str,
    value: str,
    rng: np.random.Generator,
    avoid: tuple[str, ...] = (),
) -> str:
    """The context of ``text_tier`` saying that ``subject``'s attribute is ``value``.

    ``kind`` is ``"colour"`` (subject a shape, value a colour) or ``"shape"`` (subject a
    colour, value a shape). ``avoid``: attribute values the context must not name (the image
    answer), used when tier 3 picks its decoy value X.
    """
    if text_tier not in TEXT_TIERS:
        raise ValueError(f"text tier must be one of {TEXT_TIERS}, got {text_tier!r}")
    values = COLOURS if kind == "colour" else SHAPES
    nouns = COLOUR_NOUNS if kind == "colour" else SHAPE_NOUNS
    objects = COLOUR_OBJECTS if kind == "colour" else SHAPE_OBJECTS
    if value not in values:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {values}")
    template = _pick(rng, _TEMPLATES[kind][text_tier])
    fields = {"A": subject_phrase(kind, subject), "T": value}
    if text_tier == 1:
        fields["B"] = _pick(rng, nouns)
    elif text_tier == 2:
        fields["D"] = _pick(rng, objects[value])
    elif text_tier == 3:
        s1, s2, s3 = (nouns[i] for i in rng.permutation(len(nouns))[:3])
        d1 = _pick(rng, tuple(RELATIONS))
        d2 = _pick(rng, _PERPENDICULAR[d1])
        decoys = tuple(v for v in values if v != value and v not in avoid)
        x = _pick(rng, decoys)
        fields.update(
            S1=s1, S2=s2, S3=s3, aT=article(value), aX=article(x),
            aTcap=article(value).capitalize(), aXcap=article(x).capitalize(),
            R1=RELATIONS[d1], R1cap=RELATIONS[d1].capitalize(), R1o=RELATIONS[_OPPOSITE[d1]],
            R2=RELATIONS[d2], R2o=RELATIONS[_OPPOSITE[d2]],
        )
    return template.format(**fields)


def text_context(text_tier: int, shape: str, colour: str, rng: np.random.Generator,
                 avoid: tuple[str, ...] = ()) -> str:
    """Colour set: a context of ``text_tier`` saying the ``shape`` is ``colour``."""
    return render_context("colour", text_tier, shape, colour, rng, avoid)


def shape_text_context(text_tier: int, colour: str, shape: str, rng: np.random.Generator,
                       avoid: tuple[str, ...] = ()) -> str:
    """Shape set: a context of ``text_tier`` saying the ``colour`` object is a ``shape``."""
    return render_context("shape", text_tier, colour, shape, rng, avoid)


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """Lower-case ``text`` and split it at whitespace and around every punctuation mark.

    ``"The star's colour."`` -> ``["the", "star", "'", "s", "colour", "."]``. This is the
    splitting ``vocabulary()`` assumes.
    """
    return _WORD.findall(text.lower())


def vocabulary() -> set[str]:
    """Every token (words and punctuation marks, after ``words``) that the colour and shape
    generators can emit in a question, context, instruction, answer or candidate list.

    Built from the templates' literal text and every value each placeholder can take, so it
    is exact: placeholders always sit between spaces or punctuation.
    """
    def literal(template: str) -> str:
        return " ".join(lit for lit, *_ in string.Formatter().parse(template))

    texts: list[str] = [INSTRUCTION, literal(COLOUR_QUESTION), literal(SHAPE_QUESTION), "object"]
    for kind_templates in _TEMPLATES.values():
        for templates in kind_templates.values():
            texts.extend(literal(t) for t in templates)
    texts.extend(COLOURS)
    texts.extend(SHAPES)
    texts.extend(article(v) for v in COLOURS + SHAPES)
    for table in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, COLOUR_OBJECTS, SHAPE_OBJECTS):
        for values in table.values():
            texts.extend(values)
    texts.extend(COLOUR_NOUNS + SHAPE_NOUNS)
    texts.extend(RELATIONS.values())
    vocab: set[str] = set()
    for text in texts:
        vocab.update(words(text))
    return vocab
