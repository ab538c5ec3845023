"""Every supported class saved to a directory loads through load_vlm(DIR) and `modality-lens check DIR`.

Each directory is written in the layout transformers' save_pretrained writes on a machine with
torchvision (the stock processor class name in processor_config.json, the video processor's
settings under "video_processor"); where torchvision is missing, as here, the images-only
processors of `hooks.processors` write that layout themselves. The lens of the loaded pair must
equal the in-memory pair's.
"""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from hooks.loading import LoadNote, load_vlm
from hooks.processors import HAS_TORCHVISION
from hooks.tiny import FAMILIES, tiny_model
from modality_lens.cli import main

# the stock processor class each family's directory names, and whether it has a video processor
STOCK = {
    "llava": ("LlavaProcessor", False), "llava_next": ("LlavaNextProcessor", False),
    "llava_onevision": ("LlavaOnevisionProcessor", True), "qwen2_vl": ("Qwen2VLProcessor", True),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", True), "qwen3_vl": ("Qwen3VLProcessor", True),
    "gemma3": ("Gemma3Processor", False), "paligemma": ("PaliGemmaProcessor", False),
    "paligemma2": ("PaliGemmaProcessor", False), "idefics3": ("Idefics3Processor", False),
    "mllama": ("MllamaProcessor", False), "internvl": ("InternVLProcessor", True),
    "mistral3": ("PixtralProcessor", False),
}
# settings a stock video processor's to_dict writes besides the ones the tiny builders set
STOCK_VIDEO_EXTRAS = {"do_resize": True, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
                      "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_convert_rgb": True}


def test_the_table_covers_every_family():
    assert set(STOCK) == set(FAMILIES)


def _write_stock_layout(family: str, path) -> tuple:
    model, processor = tiny_model(family)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    config_file = path / "processor_config.json"
    config = json.loads(config_file.read_text())
    name, video = STOCK[family]
    assert config["processor_class"] == name
    if video:
        assert config["video_processor"]["video_processor_type"].endswith("VideoProcessor")
        config["video_processor"].update(STOCK_VIDEO_EXTRAS)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return model, processor


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    family = request.param
    path = tmp_path_factory.mktemp(family)
    model, processor = _write_stock_layout(family, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_dir = load_vlm(path)
    notes = [str(w.message) for w in caught if issubclass(w.category, LoadNote)]
    return family, path, from_dir, load_vlm((model, processor)), notes


def test_a_saved_directory_gives_the_in_memory_lens(saved, items):
    family, path, from_dir, in_memory, notes = saved
    assert type(from_dir.model).__name__ == type(in_memory.model).__name__
    assert from_dir.self_check_report.ok
    for name in ("conflict", "text"):
        a = from_dir.passes(items, (name,))[name]
        b = in_memory.passes(items, (name,))[name]
        assert a.inputs["input_ids"].tolist() == b.inputs["input_ids"].tolist()
        assert [g.answer_position for g in a.geometry] == [g.answer_position for g in b.geometry]
        diff = (from_dir.lens(a).logits - in_memory.lens(b).logits).abs().max().item()
        assert diff <= 1e-5, f"{family} {name}: {diff}"


def test_images_only_is_said_once(saved):
    family, path, from_dir, _, notes = saved
    video = STOCK[family][1]
    if HAS_TORCHVISION:
        assert notes == [] and from_dir.notes == ()
    elif video:
        assert len(notes) == 1 and len(from_dir.notes) == 1
        assert "images only" in notes[0] and "torchvision" in notes[0] and STOCK[family][0] in notes[0]
    else:
        assert len(notes) == len(from_dir.notes) <= 1


def test_check_command_on_the_directory(saved, capsys):
    family, path, from_dir, _, _ = saved
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadNote)
        assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "self-check ok" in out and type(from_dir.model).__name__ in out
    if STOCK[family][1] and not HAS_TORCHVISION:
        assert out.count("images only") == 1


def test_a_loaded_images_only_processor_saves_the_stock_layout_again(saved, tmp_path):
    family, path, from_dir, _, _ = saved
    if not STOCK[family][1]:
        pytest.skip("no video processor")
    from_dir.processor.save_pretrained(tmp_path)
    again = json.loads((tmp_path / "processor_config.json").read_text())
    before = json.loads((path / "processor_config.json").read_text())
    assert again["processor_class"] == STOCK[family][0]
    assert again["video_processor"] == before["video_processor"]


def test_a_hub_style_directory_of_qwen2_5_vl(tmp_path, items):
    """The layout most Qwen2.5-VL checkpoints on the hub have: preprocessor_config.json (the image
    processor, naming the processor class), chat_template.json, tokenizer files, no processor_config.json."""
    model, processor = _write_stock_layout("qwen2_5_vl", tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    image = dict(config["image_processor"], processor_class=config["processor_class"])
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
    template = (tmp_path / "chat_template.jinja").read_text()
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    for name in ("processor_config.json", "chat_template.jinja"):
        (tmp_path / name).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadNote)
        from_dir = load_vlm(tmp_path)
    assert type(from_dir.processor).__name__ == "Qwen2_5_VLProcessor"
    in_memory = load_vlm((model, processor))
    a = from_dir.lens(from_dir.passes(items, ("conflict",))["conflict"]).logits
    b = in_memory.lens(in_memory.passes(items, ("conflict",))["conflict"]).logits
    assert (a - b).abs().max().item() <= 1e-5


def test_a_processor_config_that_gives_no_image_processor_is_refused(tmp_path):
    """AutoProcessor falls back to the bare tokenizer when processor_class names no class it
    knows; that loads "fine" and then ignores every image, so it must be refused."""
    from interp.errors import ModelSourceError

    _write_stock_layout("llava", tmp_path)
    config_file = tmp_path / "processor_config.json"
    config_file.write_text(config_file.read_text().replace('"LlavaProcessor"', '"NoSuchProcessor"'))
    tokenizer_config = tmp_path / "tokenizer_config.json"
    tokenizer_config.write_text(tokenizer_config.read_text().replace('"LlavaProcessor"', '"NoSuchProcessor"'))
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    with pytest.raises(ModelSourceError, match="processor"):
        load_vlm(tmp_path)
