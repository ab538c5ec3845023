"""Image perturbations (interp.datasets.perturb): level 0 is the image, seeds give bytes, levels grow."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from PIL import Image

from interp.datasets.colour import colour_cases
from interp.datasets.perturb import (
    PERTURBATIONS,
    diffusion_alphabar,
    diffusion_levels,
    diffusion_noise,
    diffusion_step,
    edge_crop,
    occlude,
    perturb,
)
from interp.errors import ArgumentError, CaseError


@pytest.fixture(scope="module")
def case():
    return next(itertools.islice(colour_cases(1, 3, image_size=64), 0, None))


def _pixels(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float64)


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_level_zero_returns_the_image_bit_for_bit(name, case):
    img = case.open_image()
    out = perturb(name, img, 0.0, 7, box=case.target_box)
    assert out is not img  # a copy: perturbing never changes the case's image
    assert out.mode == img.mode and out.size == img.size and out.tobytes() == img.tobytes()
    rgba = Image.new("RGBA", (20, 12), (10, 200, 30, 77))
    assert PERTURBATIONS[name](rgba, 0, 1, box=(2, 2, 10, 10)).tobytes() == rgba.tobytes()


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_the_same_seed_gives_the_same_bytes(name, case):
    img = case.open_image()
    a = perturb(name, img, 0.6, 123, box=case.target_box)
    b = perturb(name, img, 0.6, np.random.default_rng(123), box=case.target_box)
    assert a.tobytes() == b.tobytes()


def test_another_seed_gives_other_noise(case):
    img = case.open_image()
    assert diffusion_noise(img, 0.5, 1).tobytes() != diffusion_noise(img, 0.5, 2).tobytes()


@pytest.mark.parametrize("name", sorted(PERTURBATIONS))
def test_distance_to_the_original_grows_with_the_level(name, case):
    img = case.open_image()
    base = _pixels(img)
    levels = [0.0, 0.125, 0.25, 0.5, 0.75, 1.0]
    distance = [np.abs(_pixels(perturb(name, img, lv, 5, box=case.target_box)) - base).mean() for lv in levels]
    assert distance[0] == 0.0
    assert all(b >= a for a, b in zip(distance, distance[1:])), distance
    assert distance[-1] > distance[1] > 0


def test_the_alphabar_schedule_matches_an_independent_computation():
    # METHOD §3.2 written out in plain Python floats, step by step.
    product, expected = 1.0, []
    for i in range(1000):
        x = -6.0 + 12.0 * i / 999
        beta = (1.0 / (1.0 + math.exp(-x))) * (5e-3 - 1e-5) + 1e-5
        product *= 1.0 - beta
        expected.append(product)
    np.testing.assert_allclose(diffusion_alphabar(), expected, rtol=0, atol=1e-12)


def test_probe_levels_land_on_the_method_steps():
    assert [diffusion_step(lv) for lv in diffusion_levels(8)] == [round(i * 999 / 8) for i in range(9)]
    assert [diffusion_step(lv) for lv in diffusion_levels(8)][:3] == [0, 125, 250]
    assert diffusion_step(1.0) == 999


def test_diffusion_noise_is_the_forward_process_on_the_pixel_scale():
    img = Image.new("RGB", (8, 8), (200, 40, 127))
    out = diffusion_noise(img, 0.5, 9)
    t = round(0.5 * 999)
    abar = diffusion_alphabar()[t]
    eps = np.random.default_rng(9).standard_normal((8, 8, 3))
    x0 = np.asarray(img, dtype=np.float64) / 127.5 - 1
    expected = np.round((np.clip(np.sqrt(abar) * x0 + np.sqrt(1 - abar) * eps, -1, 1) + 1) * 127.5)
    np.testing.assert_array_equal(np.asarray(out), expected.astype(np.uint8))


def test_occlusion_covers_the_share_of_the_box():
    img = Image.new("RGB", (40, 40), (255, 0, 0))
    box = (4, 8, 24, 28)  # 20 x 20
    full = np.asarray(occlude(img, 1.0, 0, box=box))
    grey = np.all(full == 128, axis=-1)
    assert grey.sum() == 400 and grey[8:28, 4:24].all()
    quarter = np.all(np.asarray(occlude(img, 0.25, 0, box=box)) == 128, axis=-1)
    assert quarter.sum() == 100  # a 10 x 10 square, sqrt(0.25) of each side
    ys, xs = np.nonzero(quarter)
    assert xs.min() >= 4 and xs.max() < 24 and ys.min() >= 8 and ys.max() < 28


def test_crop_keeps_the_target_in_view_and_zooms_in():
    img = Image.new("RGB", (40, 40), (0, 0, 0))
    img.paste((255, 255, 255), (16, 16, 24, 24))
    out = np.asarray(edge_crop(img, 1.0, 0, box=(16, 16, 24, 24)))
    white = out.mean(axis=-1) > 200
    assert 8 * 8 * 4 * 0.8 < white.sum() < 8 * 8 * 4 * 1.2  # a 2x zoom quadruples its area
    ys, xs = np.nonzero(white)
    assert min(xs.min(), ys.min()) <= 1 or max(xs.max(), ys.max()) >= 38  # it touches an edge


def test_numpy_images_are_accepted():
    arr = np.full((16, 16, 3), 90, dtype=np.uint8)
    assert np.asarray(perturb("blur", arr, 0, 0)).tobytes() == arr.tobytes()
    assert perturb("noise", arr, 1.0, 0).size == (16, 16)


@pytest.mark.parametrize("level", [-0.1, 1.5, float("nan"), "0.5", True])
def test_a_level_outside_zero_one_is_refused(level):
    with pytest.raises(ArgumentError, match=r"\[0, 1\]"):
        perturb("blur", Image.new("RGB", (8, 8)), level, 0)


def test_an_unknown_perturbation_is_refused_with_the_names():
    with pytest.raises(ArgumentError, match="choose from noise, blur, occlusion, crop"):
        perturb("fog", Image.new("RGB", (8, 8)), 0.5, 0)


def test_occlusion_without_a_box_is_refused():
    with pytest.raises(CaseError, match="target's box"):
        perturb("occlusion", Image.new("RGB", (8, 8)), 0.5, 0)
    with pytest.raises(CaseError, match="target's box"):
        occlude(Image.new("RGB", (8, 8)), 0.5, 0)
    with pytest.raises(CaseError, match="outside"):
        occlude(Image.new("RGB", (8, 8)), 0.5, 0, box=(0, 0, 9, 4))


def test_probe_count_below_one_is_refused():
    with pytest.raises(ArgumentError, match="N must be an integer >= 1"):
        diffusion_levels(0)
