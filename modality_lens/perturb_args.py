"""The arguments of the perturbation study, checked before a model is loaded or a file written.

`check_perturb_arguments` returns a `PerturbArguments`; the command line uses `levels_option`
and `perturbations_option` as argparse types, so a bad option stops while parsing (exit 2),
and API callers get the same `interp.errors.ArgumentError` with the same words. Light on purpose:
no torch until a case set is read (`modality_lens.cases`, imported when used).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from interp.datasets.perturb import PERTURBATIONS, check_level, check_perturbation, diffusion_levels
from interp.errors import ArgumentError, CaseError, DatasetError
from interp.datasets.cli import DEFAULT_N_PER_CELL as BUILTIN_N_PER_CELL
from modality_lens.arguments import BUILTIN_DATASETS, check_run_arguments, positive_int
from modality_lens.shipped import auto_image_size

__all__ = ["PerturbArguments", "check_perturb_arguments", "levels_option", "perturbations_option", "unit_cases",
           "check_boxes"]


def perturbations_option(value: Any) -> tuple[str, ...]:
    """Perturbation names, comma-separated text or a sequence, each known and none twice."""
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    if not names or any(not n for n in names):
        raise ArgumentError(f"--perturbations needs one or more of {', '.join(PERTURBATIONS)}, comma-separated")
    for name in names:
        check_perturbation(name)
    if len(set(names)) != len(names):
        raise ArgumentError(f"--perturbations names a perturbation twice: {','.join(names)}")
    return tuple(names)


def levels_option(value: Any) -> tuple[float, ...]:
    """Levels in [0, 1] (comma-separated text or a sequence), sorted, with 0 (the original) added."""
    parts = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    out = set()
    for part in parts:
        try:
            number = float(part) if isinstance(part, str) else part
        except ValueError:
            raise ArgumentError(f"--levels must be numbers in [0, 1], comma-separated; got {part!r}") from None
        out.add(check_level(number))
    if not out:
        raise ArgumentError("--levels needs at least one level in [0, 1]")
    return tuple(sorted(out | {0.0}))


@dataclass(frozen=True)
class PerturbArguments:
    """The checked arguments of `modality_lens.perturb.run_perturb`."""

    perturbations: tuple[str, ...]
    levels: tuple[float, ...]
    conflict: bool
    n_samples: int
    vcd_alpha: float
    vcd_beta: float
    batch_size: int
    limit: int | None
    seed: int
    n_per_cell: int
    image_size: int | str | None
    n_boot: int
    dataset: str | None
    out: Path
    threads: int | None

    def read_folder(self) -> tuple[list[Any], dict] | None:
        """A dataset folder's cases (every case validated, boxes checked), before a model is loaded."""
        if self.dataset in (None, *BUILTIN_DATASETS):
            return None
        from modality_lens.cases import load_cases

        cases, info = load_cases(self.dataset, seed=self.seed, n_per_cell=self.n_per_cell, image_size=None)
        check_boxes([c for c in cases if c.control is None], self.perturbations)
        return cases, info

    def builtin(self, vlm: Any) -> tuple[list[Any], dict]:
        """The built-in set drawn at the model's input size (`image_size="auto"`)."""
        from modality_lens.cases import load_cases

        size = auto_image_size(vlm.processor) if self.image_size == "auto" else self.image_size
        return load_cases(self.dataset, seed=self.seed, n_per_cell=self.n_per_cell, image_size=size)

    def run_info(self, vlm: Any, spec: Any, data_info: dict, n_units: int, engine: Any) -> dict[str, Any]:
        """run.json's fields, as the main job writes them (`spec`: the `pipeline.ModelSpec`), plus the
        study's arguments; the engine's settings when it is not the local one."""
        import torch

        arguments = {k: v for k, v in asdict(self).items() if k not in ("out", "dataset", "seed")}
        arguments.update({"perturbations": list(self.perturbations), "levels": list(self.levels),
                          "dtype": str(vlm.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
                          "n_units": n_units, **engine.arguments()})
        return {"job": "perturb", "model": spec.model_info(vlm), "dataset": data_info, "seed": self.seed,
                "arguments": arguments, "device": vlm.placement}


def _real(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= float(value) <= high):
        raise ArgumentError(f"{name} must be a number in [{low}, {high}]; got {value!r}")
    return float(value)


def check_perturb_arguments(*, perturbations: Any, levels: Any, n_levels: Any, conflict: Any, n_samples: Any,
                            vcd_alpha: Any, vcd_beta: Any, threads: Any, **run: Any) -> PerturbArguments:
    """Every argument of the study, checked; ``run`` are the main job's (`arguments.check_run_arguments`)."""
    n_levels = positive_int("--n-levels (the number of probe steps N)", n_levels)
    chosen = levels_option(levels) if levels is not None else diffusion_levels(n_levels)
    names = perturbations_option(perturbations) if perturbations is not None else tuple(PERTURBATIONS)
    n_samples = positive_int("--n-samples (sampled answers N)", n_samples)
    run["n_per_cell"] = BUILTIN_N_PER_CELL if run.get("n_per_cell") is None else run["n_per_cell"]
    checked = check_run_arguments(**run)
    return PerturbArguments(
        perturbations=names, levels=chosen, conflict=bool(conflict), n_samples=n_samples,
        vcd_alpha=_real("--vcd-alpha", vcd_alpha, 0.0, math.inf), vcd_beta=_real("--vcd-beta", vcd_beta, 0.0, 1.0),
        batch_size=checked["batch_size"], limit=checked["limit"], seed=checked["seed"],
        n_per_cell=checked["n_per_cell"], image_size=checked["image_size"], n_boot=checked["n_boot"],
        dataset=checked["dataset"], out=checked["out"],
        threads=None if threads is None else positive_int("--threads", threads))


def check_boxes(cases: Sequence[Any], perturbations: Sequence[str]) -> None:
    """Occlusion covers the target's box: every case must have one (CaseError naming those without)."""
    if "occlusion" not in perturbations:
        return
    missing = [c.id for c in cases if c.target_box is None]
    if missing:
        raise CaseError(f"occlusion needs each image's target box, but {len(missing)} case(s) have none "
                        f"(e.g. {', '.join(missing[:3])}); add target_box to those lines of cases.jsonl, or leave "
                        "occlusion out: --perturbations noise,blur,crop. Nothing was written.")


def unit_cases(cases: Sequence[Any], conflict: bool, limit: int | None) -> list[tuple[Any, str]]:
    """(case, pass) units: one vision-only unit per distinct (image, question) of the conflict cases, in
    order (the first ``limit`` of them), then, with ``conflict``, one conflict unit per conflict case of
    those images."""
    seen: dict[tuple[str, str], Any] = {}
    for case in cases:
        if case.control is None:
            seen.setdefault((str(case.image_name or case.id), case.question), case)
    if not seen:
        raise DatasetError("the case set holds no conflict case (only controls), so there is no image answer to "
                           "test; use a dataset with conflict cases")
    vision = list(seen.values())[:limit]
    units = [(c, "vision") for c in vision]
    if conflict:
        keys = {(str(c.image_name or c.id), c.question) for c in vision}
        units += [(c, "conflict") for c in cases
                  if c.control is None and (str(c.image_name or c.id), c.question) in keys]
    return units
