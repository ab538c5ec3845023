"""load_vlm on local directories (what a hub download gives), and the `check` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from hooks.loading import ModelSourceError, load_vlm
from hooks.tiny import tiny_model
from interp.errors import UnsupportedModelError



def _save(family: str, path):
    model, processor = tiny_model(family)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor


@pytest.mark.parametrize("family", ["llava", "paligemma2", "gemma3"])
def test_directory_round_trip_gives_the_same_lens(tmp_path, family, items):
    model, processor = _save(family, tmp_path)
    assert list(tmp_path.glob("*.safetensors"))
    from_dir = load_vlm(tmp_path)
    in_memory = load_vlm((model, processor))
    assert from_dir.self_check_report.ok
    assert type(from_dir.model).__name__ == type(model).__name__
    a = from_dir.lens(from_dir.passes(items, ("conflict",))["conflict"]).logits
    b = in_memory.lens(in_memory.passes(items, ("conflict",))["conflict"]).logits
    assert (a - b).abs().max().item() <= 1e-5


def test_dtype_option(tmp_path):
    _save("llava", tmp_path)
    vlm = load_vlm(tmp_path, dtype="bfloat16")
    assert vlm.dtype == torch.bfloat16
    assert vlm.self_check_report.ok and vlm.self_check_report.dtype == "bfloat16"
    with pytest.raises(ModelSourceError, match="unknown dtype"):
        load_vlm(tmp_path, dtype="float7")


def test_unsupported_class_directory_is_refused_before_loading(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    with pytest.raises(UnsupportedModelError, match="Qwen2_5_VLForConditionalGeneration"):
        load_vlm(tmp_path)


def test_bad_directories(tmp_path):
    with pytest.raises(ModelSourceError, match="no config.json"):
        load_vlm(tmp_path)
    _save("llava", tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(ModelSourceError, match="safetensors"):
        load_vlm(tmp_path)


def test_directory_without_processor(tmp_path):
    model, _ = tiny_model("llava")
    model.save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match="processor"):
        load_vlm(tmp_path)


def test_hub_id_offline_gives_a_clear_error():
    # huggingface_hub reads HF_HUB_OFFLINE when it is imported, so this runs in a fresh process
    done = _cli("check", "modality-lens-test/no-such-model")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "hub model 'modality-lens-test/no-such-model'" in done.stderr
    with pytest.raises(ModelSourceError, match="neither an existing directory"):
        load_vlm("./no/such/dir")


def _cli(*args):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "modality_lens.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_check_command_on_a_saved_model_and_on_an_unsupported_one(tmp_path):
    good = tmp_path / "good"
    _save("llava", good)
    done = _cli("check", str(good))
    assert done.returncode == 0, done.stderr
    assert "self-check ok" in done.stdout and "LlavaForConditionalGeneration" in done.stdout

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"]}))
    done = _cli("check", str(bad))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "no adapter for BertForMaskedLM" in done.stderr and "MllamaForConditionalGeneration" in done.stderr
    assert len(done.stderr.splitlines()) < 25


def test_passes_of_no_items_say_so():
    vlm = load_vlm(tiny_model("llava"))
    with pytest.raises(ValueError, match="no prompt items"):
        vlm.passes([], ("conflict",))
