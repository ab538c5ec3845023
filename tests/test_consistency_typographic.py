"""The typographic conflict: the sign images, and a run directory that is the main job's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from interp.datasets.formats import SIGN_MIN_WIDTH, sign_images


def test_sign_images_share_their_pixels():
    scene = Image.new("RGB", (240, 180), (200, 30, 30))
    signed, alone = sign_images(scene, "The circle is blue.")
    a, s = np.asarray(alone), np.asarray(signed)
    assert signed.size == alone.size and signed.size[1] > 180
    assert (s[:180] == np.asarray(scene)).all()  # the scene is intact above its sign
    assert (a[:180] == 255).all()  # the sign alone: the scene area left white
    assert (a[180:] == s[180:]).all() and (a[180:] < 128).any()  # the same sign pixels, with ink
    small, _ = sign_images(Image.new("RGB", (32, 32), (0, 0, 255)), "The circle is blue.")
    assert small.size[0] >= SIGN_MIN_WIDTH
    with pytest.raises(ValueError, match="fraction"):
        sign_images(scene, "x", fraction=0)


def test_typographic_run_is_a_main_job_run_directory(tmp_path):
    from modality_lens.consistency_typographic import run_typographic, typographic_items
    from modality_lens.cases import load_cases

    case = load_cases("colour", seed=0, n_per_cell=1, image_size=32, limit=1)[0][0]
    items = typographic_items(case)
    assert all(it.context is None for it in items.values())  # no text context in any pass
    v, t, c = (np.asarray(items[k].image) for k in ("vision", "text", "conflict"))
    scene_rows = (t == 255).all(axis=(1, 2))
    assert (v[scene_rows] == c[scene_rows]).all() and (t[~scene_rows] == c[~scene_rows]).all()
    squares = typographic_items(case, square=True)
    for name, item in squares.items():  # the same picture, centred on a white square
        w, h = items[name].image.size
        big = np.asarray(item.image)
        assert item.image.size == (h, h) and h > w
        left = (h - w) // 2
        assert (big[:, left:left + w] == np.asarray(items[name].image)).all()
        assert (big[:, :left] == 255).all() and (big[:, left + w:] == 255).all()
    run = run_typographic(model="tiny:llava", n_per_cell=1, limit=12, batch_size=6, out=str(tmp_path / "t"),
                          n_boot=20, progress=False, threads=1)
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["n_cases"] == 12 and "balance_point" in summary and "oscillation" in summary
    info = json.loads((run.path / "run.json").read_text())
    # tiny:llava's processor crops every image to a 32 px square: the passes' images are padded to squares
    assert info["job"] == "typographic" and info["arguments"]["sign_square"] is True
    assert (run.path / "report.html").exists()
