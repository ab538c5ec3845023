"""The conflict case (I, T, Q) of METHOD §1.1 and its three prompts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from interp.datasets.text import INSTRUCTION
from interp.vocabulary import CONTROLS

CASE_KINDS: tuple[str | None, ...] = (None, *CONTROLS)
"""The ``control`` values of a case: ``None`` (a conflict case), then the two control kinds of
:data:`interp.vocabulary.CONTROLS`. The generators seed each kind's text with its index here."""

JSONL_KEYS = (
    "id", "group_id", "image", "question", "context", "image_answer", "text_answer",
    "image_candidates", "text_candidates", "visual_tier", "text_tier", "control",
    "target_box", "seed", "task",
)
"""Keys of every ``cases.jsonl`` line, in the order they are written."""


def build_prompt(question: str, context: str = "", instruction: str = INSTRUCTION) -> str:
    """``[context] + question + instruction`` joined by single spaces (METHOD §1.6)."""
    return " ".join(part for part in (context.strip(), question.strip(), instruction.strip()) if part)


@dataclass(frozen=True)
class Case:
    """One conflict case.

    ``image`` is a ``PIL.Image.Image`` while in memory (fresh from a generator) or the
    ``Path`` of its file (after ``load_dataset`` or an MC² import); ``open_image()`` gives an
    RGB image either way. ``question`` is the bare question ("What colour is the star?");
    the one-word instruction is the module constant ``INSTRUCTION`` and is added by the
    prompt properties. ``image_candidates`` / ``text_candidates`` are synonym lists with the
    answer itself first. ``target_box`` is (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
    ``seed`` re-creates a synthetic case (see ``colour.py``); ``None`` for imported ones.
    ``image_name``: the file name the image gets in a dataset folder; cases that share an
    image (the same scene under different text tiers) share the name.
    """

    id: str
    group_id: str
    image: Image.Image | Path
    question: str
    context: str
    image_answer: str
    text_answer: str
    image_candidates: tuple[str, ...]
    text_candidates: tuple[str, ...]
    visual_tier: int | None
    text_tier: int | None
    control: str | None
    target_box: tuple[int, int, int, int] | None
    seed: int | None
    task: str = "colour"
    image_name: str | None = field(default=None, compare=False)

    # The three passes of METHOD §1.1 share the question and the instruction.
    @property
    def vision_prompt(self) -> str:
        """Text of the vision-only pass (with the image): question + instruction."""
        return build_prompt(self.question)

    @property
    def text_prompt(self) -> str:
        """Text of the text-only pass (no image): context + question + instruction."""
        return build_prompt(self.question, self.context)

    @property
    def prompt(self) -> str:
        """Text of the conflict pass (with the image): context + question + instruction."""
        return build_prompt(self.question, self.context)

    @property
    def instruction(self) -> str:
        return INSTRUCTION

    @property
    def expected_answer(self) -> str:
        """The answer supported by the relevant modality: the image's, except for an
        image-irrelevant control, where only the text speaks of the subject asked about."""
        return self.text_answer if self.control == "image_irrelevant" else self.image_answer

    def open_image(self) -> Image.Image:
        """The image as RGB (decoded from disk when ``image`` is a path)."""
        if isinstance(self.image, Image.Image):
            return self.image if self.image.mode == "RGB" else self.image.convert("RGB")
        with Image.open(self.image) as img:
            return img.convert("RGB")

    def image_size(self) -> tuple[int, int]:
        """(W, H) of the image, read from the file header when on disk."""
        if isinstance(self.image, Image.Image):
            return self.image.size
        with Image.open(self.image) as img:
            return img.size

    def to_record(self, image_path: str) -> dict[str, Any]:
        """The ``cases.jsonl`` line, with ``image`` given relative to the dataset folder."""
        return {
            "id": self.id,
            "group_id": self.group_id,
            "image": image_path,
            "question": self.question,
            "context": self.context,
            "image_answer": self.image_answer,
            "text_answer": self.text_answer,
            "image_candidates": list(self.image_candidates),
            "text_candidates": list(self.text_candidates),
            "visual_tier": self.visual_tier,
            "text_tier": self.text_tier,
            "control": self.control,
            "target_box": list(self.target_box) if self.target_box is not None else None,
            "seed": self.seed,
            "task": self.task,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], folder: Path) -> "Case":
        """Inverse of ``to_record``: ``image`` becomes ``folder / record["image"]``."""
        box = record.get("target_box")
        return cls(
            id=record["id"],
            group_id=record["group_id"],
            image=Path(folder) / record["image"],
            question=record["question"],
            context=record["context"],
            image_answer=record["image_answer"],
            text_answer=record["text_answer"],
            image_candidates=tuple(record["image_candidates"]),
            text_candidates=tuple(record["text_candidates"]),
            visual_tier=record["visual_tier"],
            text_tier=record["text_tier"],
            control=record["control"],
            target_box=tuple(box) if box is not None else None,
            seed=record["seed"],
            task=record.get("task", "colour"),
            image_name=Path(record["image"]).name,
        )
