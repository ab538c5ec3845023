"""The words every layer of modality-lens uses, each defined once.

- :data:`PASSES`: the three forward passes of a case (METHOD §1.1): the image without the
  context ("vision"), the context without the image ("text"), both together ("conflict").
- :data:`LABELS`: which modality a conflict answer follows: "text", "vision", or "other"
  (neither answer).
- :data:`LAYER_CLASSES`: the logit lens's class of one layer (METHOD §1.5): the text answer's
  candidates lead ("text"), the image answer's ("vision"), or neither is the top-1 token
  ("irrelevant").
- :data:`CONTROLS`: the two control kinds of a dataset case; a conflict case has control None.
- :func:`normalise_answer`: the form answers are compared in, everywhere (matching an answer
  to its candidates, refusing a case whose two answers are the same word, deduplicating
  synonyms on import).
"""

from __future__ import annotations

import unicodedata
from typing import Literal

__all__ = ["CONTROLS", "LABELS", "LAYER_CLASSES", "PASSES", "Label", "normalise_answer"]

PASSES: tuple[str, ...] = ("vision", "text", "conflict")
"""The passes of a case, in the order they are run and recorded."""

Label = Literal["text", "vision", "other"]
LABELS: tuple[str, ...] = ("text", "vision", "other")
"""Following labels of a conflict answer (METHOD §1.1)."""

LAYER_CLASSES: tuple[str, ...] = ("text", "vision", "irrelevant")
"""Per-layer classes of the logit lens (METHOD §1.5)."""

CONTROLS: tuple[str, ...] = ("text_irrelevant", "image_irrelevant")
"""Control kinds: ``text_irrelevant``, the context speaks of a subject other than the one asked
about; ``image_irrelevant``, the question asks about a subject absent from the image. A conflict
case has ``control`` None."""


def normalise_answer(s: str) -> str:
    """``s`` in the form answers are compared in: case, whitespace and punctuation removed.

    Steps: Unicode NFKC (full-width letters, ligatures); case-fold ("Red", "RED" -> "red");
    dashes and underscores become spaces ("light-blue" -> "light blue"); every other Unicode
    punctuation character is deleted ("red." -> "red", "peacock's" -> "peacocks"); runs of
    whitespace collapse to one space, trimmed at both ends.
    """
    if not isinstance(s, str):
        raise TypeError(f"an answer must be a string, got {type(s).__name__}")
    out = []
    for ch in unicodedata.normalize("NFKC", s).casefold():
        cat = unicodedata.category(ch)
        if cat in ("Pd", "Pc"):
            out.append(" ")
        elif not cat.startswith("P"):
            out.append(ch)
    return " ".join("".join(out).split())
