"""Dataset folders on disk, the MC² import and the `modality-lens dataset` command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modality_lens.cli import main
from interp.datasets import colour_cases, load_dataset, load_mc2, save_dataset, shape_cases
from interp.errors import DatasetError

SMALL = dict(image_size=64, visual_tiers=[0, 6, 13], text_tiers=[0, 3])
META = {"generator": "colour", "parameters": {"n_per_cell": 2}, "seed": 0}


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    save_dataset(colour_cases(2, 0, **SMALL), tmp_path / "a", META, progress=False)
    save_dataset(colour_cases(2, 0, **SMALL), tmp_path / "b", META, progress=False)
    save_dataset(colour_cases(2, 1, **SMALL), tmp_path / "c", META, progress=False)
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a == b  # every PNG, cases.jsonl and dataset.json byte for byte
    pngs = [k for k in a if k.endswith(".png")]
    assert len(pngs) == 2 * 3  # one scene per (group, visual tier)
    assert a["cases.jsonl"] != c["cases.jsonl"]
    assert any(a[k] != c.get(k) for k in pngs)
    assert a["dataset.json"] != c["dataset.json"]


def test_folder_layout_and_round_trip(tmp_path):
    cases = list(colour_cases(1, 3, **SMALL))
    info = save_dataset(cases, tmp_path / "ds", META, progress=False)
    lines = (tmp_path / "ds" / "cases.jsonl").read_text().splitlines()
    assert len(lines) == 1 * 3 * 2 * 3 == info["n_cases"]
    record = json.loads(lines[0])
    assert set(record) >= {"id", "group_id", "image", "question", "context", "image_answer",
                           "text_answer", "image_candidates", "text_candidates", "visual_tier",
                           "text_tier", "control", "target_box", "seed"}
    assert record["control"] is None and not Path(record["image"]).is_absolute()
    on_disk = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert {"generator", "parameters", "seed", "content_hash"} <= set(on_disk)
    # the content hash, recomputed here from its definition
    h = hashlib.sha256((tmp_path / "ds" / "cases.jsonl").read_bytes())
    seen = []
    for line in lines:
        rel = json.loads(line)["image"]
        if rel not in seen:
            seen.append(rel)
            h.update(f"{rel} {hashlib.sha256((tmp_path / 'ds' / rel).read_bytes()).hexdigest()}\n".encode())
    assert on_disk["content_hash"] == "sha256:" + h.hexdigest()

    loaded = load_dataset(tmp_path / "ds")
    assert [c.id for c in loaded] == [c.id for c in cases]
    for before, after in zip(cases, loaded):
        assert after.prompt == before.prompt and after.target_box == before.target_box
        assert after.seed == before.seed and after.text_candidates == before.text_candidates
        assert np.array_equal(np.asarray(after.open_image()), np.asarray(before.image))


def test_load_reports_missing_broken_and_changed(tmp_path):
    save_dataset(colour_cases(1, 0, **SMALL), tmp_path / "ds", META, progress=False)
    folder = tmp_path / "ds"
    image = folder / "images" / "colour-g00000-v06.png"
    original = image.read_bytes()
    image.write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="do not decode.*colour-g00000-v06-t0-conflict"):
        load_dataset(folder)
    image.unlink()
    with pytest.raises(DatasetError, match="missing.*colour-g00000-v06-t3-imageirr"):
        load_dataset(folder)
    image.write_bytes(original)
    load_dataset(folder)
    jsonl = folder / "cases.jsonl"
    jsonl.write_text(jsonl.read_text().replace("What colour", "Which colour", 1))
    with pytest.raises(DatasetError, match="content hash"):
        load_dataset(folder)
    (folder / "dataset.json").unlink()
    with pytest.raises(DatasetError, match="no dataset.json"):
        load_dataset(folder)


def test_refuses_to_overwrite_and_a_crash_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "ds"
    save_dataset(colour_cases(1, 0, **SMALL), folder, META, progress=False)
    before = _tree(folder)
    with pytest.raises(DatasetError, match="not empty"):
        save_dataset(colour_cases(1, 1, **SMALL), folder, META, progress=False)

    def crashing():
        yield from list(colour_cases(1, 1, **SMALL))[:5]
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        save_dataset(crashing(), folder, META, overwrite=True, progress=False)
    assert _tree(folder) == before  # the old dataset is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no partial folder left

    save_dataset(colour_cases(1, 1, **SMALL), folder, META, overwrite=True, progress=False)
    assert _tree(folder) != before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.txt").write_text("precious")
    with pytest.raises(DatasetError, match="holds no dataset"):
        save_dataset(colour_cases(1, 1, **SMALL), other, META, overwrite=True, progress=False)
    assert (other / "thesis.txt").read_text() == "precious"


# --- MC² import ---------------------------------------------------------------------------


def _mc2_fixture(tmp_path: Path) -> tuple[Path, Path]:
    images = tmp_path / "coco"
    images.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / "COCO_val2014_000000000042.jpg")
    Image.new("RGB", (20, 20), (10, 10, 200)).save(images / "bus.png")
    (images / "COCO_val2014_000000000007.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    items = [
        {"id": "q1", "image_id": 42, "task": "color", "question": "What color is the car?",
         "answer_vision": "red", "answer_text": "blue", "context": "The car is blue.",
         "answer_img_candidate_list": ["crimson", "Red", "navy"],
         "answer_text_candidate_list": ["navy", "azure"]},
        {"id": "q2", "image_id": "bus", "task": "color", "question": "What color is the bus?",
         "answer_vision": "blue", "answer_text": "yellow", "context": "The bus is yellow."},
        {"id": "q3", "image_id": 7, "task": "count", "question": "How many cats are there?",
         "answer_vision": "two", "answer_text": "three", "context": "There are three cats."},
        {"id": "q4", "image_id": 99, "task": "color", "question": "What color is the sky?",
         "answer_vision": "blue", "answer_text": "green", "context": "The sky is green."},
    ]
    path = tmp_path / "mc2.json"
    path.write_text(json.dumps(items))
    return path, images


def test_mc2_missing_images_error_lists_ids(tmp_path):
    path, images = _mc2_fixture(tmp_path)
    with pytest.raises(DatasetError) as info:
        load_mc2(path, images)
    message = str(info.value)
    assert "q3" in message and "q4" in message and "q1" not in message and "q2" not in message


def test_mc2_skip_missing_records_what_was_skipped(tmp_path):
    path, images = _mc2_fixture(tmp_path)
    imported = load_mc2(path, images, skip_missing=True)
    assert [c.id for c in imported.cases] == ["q1", "q2"]
    assert [(s["id"], s["reason"].split(":")[0]) for s in imported.skipped] == [
        ("q3", "undecodable"), ("q4", "missing")]
    car = imported.cases[0]
    assert car.image == images / "COCO_val2014_000000000042.jpg"
    assert car.task == "mc2:color" and car.visual_tier is None and car.target_box is None
    # answer first, duplicates of it dropped, "navy" (in both lists) dropped from both
    assert car.image_candidates == ("red", "crimson")
    assert car.text_candidates == ("blue", "azure")
    assert car.prompt == "The car is blue. What color is the car? Please use one word to answer this question."


def test_mc2_rejects_items_without_required_keys(tmp_path):
    path, images = _mc2_fixture(tmp_path)
    path.write_text(json.dumps([{"id": "bad", "image_id": 42, "question": "What?"}]))
    with pytest.raises(DatasetError, match="bad .missing keys"):
        load_mc2(path, images)


# --- the command line ---------------------------------------------------------------------


def test_cli_colour_end_to_end(tmp_path, capsys):
    out = tmp_path / "colour"
    argv = ["dataset", "colour", "--out", str(out), "--n-per-cell", "2", "--seed", "5",
            "--image-size", "64", "--visual-tiers", "0,7-8", "--text-tiers", "1"]
    assert main(argv) == 0
    cases = load_dataset(out)
    assert len(cases) == 2 * 3 * 1 * 3
    assert {c.visual_tier for c in cases} == {0, 7, 8} and {c.text_tier for c in cases} == {1}
    info = json.loads((out / "dataset.json").read_text())
    assert info["generator"] == "colour" and info["seed"] == 5
    assert info["parameters"]["visual_tiers"] == [0, 7, 8]
    before = _tree(out)
    assert main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert _tree(out) == before
    assert main(argv + ["--force"]) == 0
    assert _tree(out) == before  # same seed, same bytes
    assert main(["dataset", "check", str(out)]) == 0


def test_cli_shapes_and_bad_arguments(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["dataset", "shapes", "--out", str(out), "--n-per-cell", "1", "--seed", "0",
                 "--image-size", "64x48", "--no-controls"]) == 0
    cases = load_dataset(out)
    assert len(cases) == 4 * 4 and {c.open_image().size for c in cases} == {(64, 48)}
    assert main(["dataset", "shapes", "--out", str(tmp_path / "x"), "--n-per-cell", "1",
                 "--seed", "0", "--visual-tiers", "5"]) == 2
    assert "visual tiers [5] do not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_mc2(tmp_path, capsys):
    path, images = _mc2_fixture(tmp_path)
    out = tmp_path / "imported"
    argv = ["dataset", "mc2", "--json", str(path), "--images", str(images), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "q3" in err and "q4" in err and "--skip-missing" in err
    assert main(argv + ["--skip-missing"]) == 0
    cases = load_dataset(out)
    assert [c.id for c in cases] == ["q1", "q2"]
    assert cases[0].open_image().size == (40, 30)
    info = json.loads((out / "dataset.json").read_text())
    assert [s["id"] for s in info["skipped"]] == ["q3", "q4"] and info["generator"] == "mc2"


def test_shape_set_is_deterministic_too(tmp_path):
    for name in "ab":
        save_dataset(shape_cases(1, 8, image_size=64), tmp_path / name, META, progress=False)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


# --- image paths stay inside the folder; defaults of the generators ---------------------------


def _point_first_line_at(folder: Path, image: str) -> None:
    lines = (folder / "cases.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record["image"] = image
    (folder / "cases.jsonl").write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")


@pytest.mark.parametrize("how", ["dotdot", "symlink", "symlinked folder", "absolute"])
def test_an_image_path_out_of_the_folder_is_refused(tmp_path, how):
    folder = tmp_path / "ds"
    save_dataset(colour_cases(1, 0, **SMALL), folder, META, progress=False)
    outside = tmp_path / "outside.png"
    outside.write_bytes(next((folder / "images").glob("*.png")).read_bytes())
    if how == "dotdot":
        _point_first_line_at(folder, "../outside.png")
    elif how == "symlink":
        (folder / "images" / "link.png").symlink_to(outside)
        _point_first_line_at(folder, "images/link.png")
    elif how == "symlinked folder":
        (folder / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
        _point_first_line_at(folder, "elsewhere/outside.png")
    else:
        _point_first_line_at(folder, str(outside))
    with pytest.raises(DatasetError, match="line 1: image .*(outside the dataset folder|absolute path)"):
        load_dataset(folder, check_images=False)


def test_a_symlink_that_stays_inside_the_folder_is_fine(tmp_path):
    folder = tmp_path / "ds"
    save_dataset(colour_cases(1, 0, **SMALL), folder, META, progress=False)
    first = json.loads((folder / "cases.jsonl").read_text().splitlines()[0])["image"]
    (folder / "images" / "alias.png").symlink_to(folder / first)
    _point_first_line_at(folder, "images/alias.png")
    assert load_dataset(folder, check_images=False)[0].image == folder / "images" / "alias.png"


def test_dataset_generators_default_to_the_main_jobs_settings(tmp_path, capsys):
    from modality_lens.shipped import shipped_image_size

    assert main(["dataset", "shapes", "--out", str(tmp_path / "s")]) == 0
    info = json.loads((tmp_path / "s" / "dataset.json").read_text())
    assert info["seed"] == 0 and info["parameters"]["n_per_cell"] == 16
    size = shipped_image_size()
    assert size is not None and info["parameters"]["image_size"] == size
    first = next((tmp_path / "s" / "images").glob("*.png"))
    assert Image.open(first).size == (size, size)
