"""Perturbations of a case's image, deterministic for a seed (METHOD §3.2, issue #20).

Each perturbation is a function ``f(image, level, rng, *, box=None) -> PIL.Image`` over PIL and
numpy only, so it works on a user's own images as well as on the datasets' scenes:

- ``image``: a ``PIL.Image.Image`` (any mode; RGB is returned for every level > 0, and level 0
  returns a copy of the image itself, bit for bit) or a numpy ``uint8`` array ``(H, W[, 3])``.
- ``level``: a float on the closed scale **0 (untouched) .. 1 (the strongest)**, stated per
  function below; the distance to the original grows with the level.
- ``rng``: a ``numpy.random.Generator`` or an integer seed; the same seed gives the same bytes.
  The study seeds one generator per (case, perturbation) and reuses that seed at every level,
  so the levels of one case share their random draws (common random numbers: the noise
  ``eps`` of the diffusion levels is one draw, scaled by the schedule; the occluder sits at one
  relative place and grows there).
- ``box``: the target's box ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive
  (``Case.target_box``); occlusion needs it, the crop uses it when given.

``PERTURBATIONS`` maps each name to its function; :func:`perturb` checks the name, the level and
the box first (an :class:`~interp.errors.ArgumentError` or :class:`~interp.errors.CaseError`
naming the fix) and then applies it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

from interp.errors import ArgumentError, CaseError

__all__ = [
    "DIFFUSION_STEPS", "DIFFUSION_PROBES", "PERTURBATIONS", "OCCLUDER_GREY", "BLUR_MAX_RADIUS", "CROP_MIN_SCALE",
    "diffusion_betas", "diffusion_alphabar", "diffusion_step", "diffusion_levels", "diffusion_noise",
    "gaussian_blur", "occlude", "edge_crop", "perturb", "check_level", "check_perturbation",
]

DIFFUSION_STEPS = 1000
"""Steps of the forward diffusion process (METHOD §3.2)."""
DIFFUSION_PROBES = 8
"""N of the probe steps ``t_i = round(i * 999 / N)``, i = 0..N (METHOD §3.2)."""
OCCLUDER_GREY = (128, 128, 128)
"""Fill of the occluder **[ours]**: mid grey, a colour none of the colour set's answers names."""
BLUR_MAX_RADIUS = 0.125
"""Gaussian-blur radius at level 1, as a share of the image's shorter side **[ours]** (4 px on a
32 px image, 28 px on 224 px: the target's colour survives, its outline does not)."""
CROP_MIN_SCALE = 0.5
"""Side of the crop window at level 1, as a share of the image side **[ours]** (a 2x zoom)."""

Rng = np.random.Generator | int


# --------------------------------------------------------------------------- checks
def check_level(level: Any) -> float:
    """``level`` as a float in [0, 1]; else an ArgumentError naming the scale."""
    if isinstance(level, bool) or not isinstance(level, (int, float, np.integer, np.floating)):
        raise ArgumentError(f"a perturbation level must be a number in [0, 1]; got {level!r}")
    value = float(level)
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise ArgumentError(f"a perturbation level must lie in [0, 1] (0 = the original image, 1 = the strongest); "
                            f"got {level!r}")
    return value


def _generator(rng: Rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise ArgumentError(f"rng must be a numpy Generator or an integer seed; got {type(rng).__name__}")


def _as_image(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ArgumentError("an image array must be uint8 of shape (H, W) or (H, W, 3)")
        return Image.fromarray(image)
    raise ArgumentError(f"an image must be a PIL image or a uint8 numpy array; got {type(image).__name__}")


def _check_box(box: Any, size: tuple[int, int]) -> tuple[int, int, int, int]:
    try:
        x0, y0, x1, y1 = (int(v) for v in box)
    except (TypeError, ValueError):
        raise CaseError(f"a target box is (x0, y0, x1, y1) in pixels; got {box!r}") from None
    w, h = size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise CaseError(f"target box {box!r} is empty or outside the {w}x{h} image; it must satisfy "
                        "0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height")
    return x0, y0, x1, y1


def _unchanged(image: Image.Image) -> Image.Image:
    return image.copy()


# --------------------------------------------------------------------------- diffusion noise
def diffusion_betas(steps: int = DIFFUSION_STEPS) -> np.ndarray:
    """``beta = sigmoid(linspace(-6, 6, steps)) * (5e-3 - 1e-5) + 1e-5`` (METHOD §3.2), float64."""
    x = np.linspace(-6.0, 6.0, steps)
    return 1.0 / (1.0 + np.exp(-x)) * (5e-3 - 1e-5) + 1e-5


def diffusion_alphabar(steps: int = DIFFUSION_STEPS) -> np.ndarray:
    """``alphabar_t = prod_{s=0..t} (1 - beta_s)`` for t = 0..steps-1 (the DDPM / VCD indexing)."""
    return np.cumprod(1.0 - diffusion_betas(steps))


def diffusion_step(level: float) -> int:
    """Diffusion step of a level: ``t = round(level * 999)``; the probe level ``i / N`` gives
    ``t_i = round(i * 999 / N)`` (``diffusion_levels``). Level 0 is t = 0, the clean image."""
    return int(round(check_level(level) * (DIFFUSION_STEPS - 1)))


def diffusion_levels(n: int = DIFFUSION_PROBES) -> tuple[float, ...]:
    """The probe levels ``i / n``, i = 0..n (t = 0 first: the original)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ArgumentError(f"the number of probe steps N must be an integer >= 1; got {n!r}")
    return tuple(i / int(n) for i in range(int(n) + 1))


def diffusion_noise(image: Any, level: float, rng: Rng, *, box: Any = None) -> Image.Image:
    """The forward diffusion process at step ``t = round(level * 999)`` (METHOD §3.2).

    ``x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps``, ``eps ~ N(0, I)`` from ``rng``,
    with ``x_0`` the RGB pixels mapped to [-1, 1] (``p / 127.5 - 1``, as diffusion models take
    them) and ``x_t`` clipped to [-1, 1] and rounded back to uint8 **[ours]** (the perturbation
    is applied to the image, before any processor, so it is the same for every model).

    Level scale: 0 = t 0 = the original image, unchanged **[ours]** (the DDPM index would add
    ``sqrt(1 - alphabar_0) = 0.0035`` of noise at t = 0; the "plus t = 0" probe of METHOD §3.2
    is the clean reference ``C(original)``); 1 = t 999, ``alphabar = 0.081``. ``box`` is unused.
    """
    img = _as_image(image)
    t = diffusion_step(level)
    gen = _generator(rng)
    if t == 0:
        return _unchanged(img)
    x0 = np.asarray(img.convert("RGB"), dtype=np.float64) / 127.5 - 1.0
    abar = diffusion_alphabar()[t]
    eps = gen.standard_normal(x0.shape)
    xt = np.clip(math.sqrt(abar) * x0 + math.sqrt(1.0 - abar) * eps, -1.0, 1.0)
    return Image.fromarray(np.round((xt + 1.0) * 127.5).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------- blur
def gaussian_blur(image: Any, level: float, rng: Rng, *, box: Any = None) -> Image.Image:
    """Gaussian blur of radius ``level * BLUR_MAX_RADIUS * min(W, H)`` pixels (PIL's GaussianBlur).

    Level scale: 0 = the original (radius 0), 1 = a radius of 1/8 of the shorter side
    (:data:`BLUR_MAX_RADIUS`). Deterministic: ``rng`` and ``box`` are unused.
    """
    img = _as_image(image)
    lv = check_level(level)
    _generator(rng)
    radius = lv * BLUR_MAX_RADIUS * min(img.size)
    if radius == 0:
        return _unchanged(img)
    return img.convert("RGB").filter(ImageFilter.GaussianBlur(radius))


# --------------------------------------------------------------------------- occlusion
def occlude(image: Any, level: float, rng: Rng, *, box: Any = None) -> Image.Image:
    """A grey rectangle (:data:`OCCLUDER_GREY`) over a share ``level`` of the target's box.

    Level scale: the occluded share of the box's area, 0 = nothing (the original), 1 = the
    whole box. The rectangle has the box's aspect ratio (sides ``sqrt(level)`` times the box's,
    rounded) and sits at a relative place ``(u, v) ~ U(0, 1)^2`` drawn from ``rng``: its left
    edge at ``x0 + u (w_box - w)``. For one seed the rectangles of growing levels are nested
    (the left/top edges only move out, the right/bottom ones only move out), so the occluded
    region, and the distance to the original, grow with the level.

    Raises:
        CaseError: no ``box`` (occlusion needs the target's box: the datasets' ``target_box``),
            or a box outside the image.
    """
    img = _as_image(image)
    lv = check_level(level)
    gen = _generator(rng)
    if box is None:
        raise CaseError("occlusion needs the target's box (x0, y0, x1, y1): pass box=case.target_box; this case "
                        "has none (an imported image?), so use another perturbation or add the box")
    x0, y0, x1, y1 = _check_box(box, img.size)
    u, v = gen.random(2)
    if lv == 0:
        return _unchanged(img)
    bw, bh = x1 - x0, y1 - y0
    w, h = bw * math.sqrt(lv), bh * math.sqrt(lv)
    left, top = x0 + u * (bw - w), y0 + v * (bh - h)
    out = img.convert("RGB")
    pixels = np.array(out)
    pixels[int(round(top)):int(round(top + h)), int(round(left)):int(round(left + w))] = OCCLUDER_GREY
    return Image.fromarray(pixels, "RGB")


# --------------------------------------------------------------------------- crop (viewpoint)
_SIDES = ("left", "right", "top", "bottom")


def _window(size: tuple[int, int], box: tuple[int, int, int, int], scale: float, side: str) -> tuple[int, ...]:
    """Crop window of side ``scale`` x the image with the target pushed towards ``side``."""
    w, h = size
    cw, ch = max(1, round(w * scale)), max(1, round(h * scale))
    bx0, by0, bx1, by1 = box
    cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2
    clamp = lambda v, hi: int(min(max(round(v), 0), hi))  # noqa: E731
    left, top = clamp(cx - cw / 2, w - cw), clamp(cy - ch / 2, h - ch)
    if side == "left":
        left = clamp(bx0, w - cw)
    elif side == "right":
        left = clamp(bx1 - cw, w - cw)
    elif side == "top":
        top = clamp(by0, h - ch)
    else:
        top = clamp(by1 - ch, h - ch)
    return left, top, left + cw, top + ch


def edge_crop(image: Any, level: float, rng: Rng, *, box: Any = None) -> Image.Image:
    """A crop that pushes the target towards one edge, resized back (a stand-in for a viewpoint change).

    The window's side is ``1 - level (1 - CROP_MIN_SCALE)`` of the image's (level 0 = the whole
    image, the original; level 1 = half of each side, a 2x zoom); it is placed so that the
    target's box touches the window's edge on a side drawn from ``rng`` (left, right, top or
    bottom; the same side at every level of one seed), as far as the image allows, and centred
    on the target along the other axis. The crop is resized to the original size (bicubic).
    Without ``box`` the target is taken to be the central quarter of the image **[ours]**.
    """
    img = _as_image(image)
    lv = check_level(level)
    gen = _generator(rng)
    w, h = img.size
    target = _check_box(box, img.size) if box is not None else (w // 4, h // 4, w - w // 4, h - h // 4)
    side = _SIDES[int(gen.integers(0, len(_SIDES)))]
    if lv == 0:
        return _unchanged(img)
    window = _window(img.size, target, 1.0 - lv * (1.0 - CROP_MIN_SCALE), side)
    return img.convert("RGB").crop(window).resize((w, h), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- registry
Perturbation = Callable[..., Image.Image]

PERTURBATIONS: dict[str, Perturbation] = {
    "noise": diffusion_noise,
    "blur": gaussian_blur,
    "occlusion": occlude,
    "crop": edge_crop,
}
"""Every perturbation by name (``modality-lens perturb --perturbations``)."""


def check_perturbation(name: Any) -> Perturbation:
    """The function of a perturbation name; an ArgumentError listing the known names otherwise."""
    if name not in PERTURBATIONS:
        raise ArgumentError(f"unknown perturbation {name!r}; choose from {', '.join(PERTURBATIONS)}")
    return PERTURBATIONS[name]


def perturb(name: str, image: Any, level: float, rng: Rng, *, box: Any = None) -> Image.Image:
    """``PERTURBATIONS[name](image, level, rng, box=box)`` after checking name, level and box.

    Raises:
        ArgumentError: an unknown name or a level outside [0, 1].
        CaseError: occlusion without a box, or a box outside the image.
    """
    fn = check_perturbation(name)
    check_level(level)
    if name == "occlusion" and box is None:
        raise CaseError("occlusion needs the target's box: this image has none (target_box is null); "
                        "choose another perturbation for it")
    return fn(image, level, rng, box=box)
