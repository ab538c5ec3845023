"""Large models: the memory estimate made before loading (against a count of an instantiated model),
the refusal of a model that does not fit (exit 2, nothing loaded or written), and --device-map auto
(on the CPU: the same records as without it)."""

from __future__ import annotations

import math
import sys

import pyarrow.parquet as pq
import pytest
import torch
import transformers as T

from hooks import memory
from hooks.loading import load_vlm
from interp.errors import ArgumentError, ModelSourceError


def _tiny_config(tie: bool) -> T.LlavaConfig:
    """A LLaVA small enough to count by hand: a 2-layer CLIP tower, a 2-layer Qwen2 language model."""
    vision = T.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                image_size=32, patch_size=8)
    text = T.Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tie)
    return T.LlavaConfig(vision_config=vision, text_config=text, image_token_index=299, tie_word_embeddings=tie)


@pytest.mark.parametrize("tie", [False, True])
def test_the_estimate_is_the_models_parameters_times_the_dtypes_bytes(tmp_path, tie):
    config = _tiny_config(tie)
    model = T.LlavaForConditionalGeneration(config).to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())  # the hand count: a shared tensor is one parameter
    model.save_pretrained(tmp_path)
    assert memory.checkpoint_count(tmp_path) == (n, torch.bfloat16)  # from the safetensors headers
    assert memory.config_count(config, T.LlavaForConditionalGeneration)[0] == n  # from the config, on meta
    for dtype, size in ((torch.float32, 4), (torch.bfloat16, 2), (torch.float16, 2)):
        assert memory.estimate_bytes(n, dtype) == (n * size, math.ceil(n * size * 1.2))
    assert memory.weight_dtype(None, torch.bfloat16) == memory.weight_dtype("auto", torch.bfloat16) == torch.bfloat16
    assert memory.weight_dtype(torch.float16, torch.bfloat16) == torch.float16
    assert memory.weight_dtype(None, None) == torch.float32


def test_available_memory_sums_the_gpus_for_auto_and_takes_one_device_otherwise(monkeypatch):
    gib = 1 << 30
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: ((i + 1) * gib, 80 * gib))  # free 1, 2, 3 GiB
    assert memory.available_bytes(None, "auto")[0] == 6 * gib
    assert memory.available_bytes(torch.device("cuda:1"), None)[0] == 2 * gib


def _shipped_parameters() -> int:
    """The shipped model's parameters, counted on the loaded model (not from the files)."""
    from modality_lens.shipped import default_model

    return sum(p.numel() for p in load_vlm(default_model(), self_check=False).model.parameters())


def test_a_model_that_does_not_fit_is_refused_before_loading(tmp_path, monkeypatch, capsys):
    from hooks import loading
    from modality_lens.cli import main

    n = _shipped_parameters()
    capsys.readouterr()  # the load's progress bar
    monkeypatch.setattr(memory, "available_bytes", lambda device, device_map: (1000, "the test's target"))
    monkeypatch.setattr(loading, "_load_pretrained", lambda *a, **k: pytest.fail("the weights were loaded"))
    out = tmp_path / "run"
    assert main(["run", "--limit", "8", "--out", str(out), "--dtype", "float32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("modality-lens run: error:") and "\n" not in err
    weights = n * 4
    assert f"{n:,} parameters in float32" in err and f"{weights * 1.2 / 2**20:.2f} MiB" in err
    assert "the test's target has 1000 bytes available" in err
    for fix in ("--dtype bfloat16", "--device-map auto", "a smaller model", "--skip-memory-check"):
        assert fix in err
    assert not out.exists()


def test_skip_memory_check_loads_anyway(monkeypatch):
    from modality_lens.shipped import default_model

    monkeypatch.setattr(memory, "available_bytes", lambda device, device_map: (1000, "the test's target"))
    with pytest.raises(ModelSourceError, match="needs about"):
        load_vlm(default_model(), self_check=False)
    assert load_vlm(default_model(), memory_check=False).self_check_report.ok


def test_device_map_auto_on_the_cpu_gives_the_same_records(tmp_path):
    from hooks.tiny import tiny_model
    from modality_lens.pipeline import run

    model, processor = tiny_model("llava")
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    args = dict(model=str(tmp_path / "model"), limit=16, batch_size=8, n_per_cell=1, n_boot=20, progress=False,
                figures=False, threads=1)
    plain = run(out=str(tmp_path / "plain"), **args)
    mapped = run(out=str(tmp_path / "mapped"), device_map="auto", **args)
    for name in ("cases.parquet", "layers.parquet"):
        assert pq.read_table(mapped.path / name).equals(pq.read_table(plain.path / name)), name
    assert mapped.read_summary() == plain.read_summary()
    assert mapped.read_run_info()["device"] == "auto: cpu" and plain.read_run_info()["device"] == "cpu"


def test_device_map_refusals(tmp_path, monkeypatch):
    from modality_lens.shipped import default_model

    with pytest.raises(ArgumentError, match="not both"):
        load_vlm(default_model(), device="cpu", device_map="auto")
    with pytest.raises(ArgumentError, match="use auto"):
        load_vlm(default_model(), device_map="balanced")
    with pytest.raises(ArgumentError, match="not to a model already in memory or tiny:FAMILY"):
        load_vlm("tiny:llava", device_map="auto")
    monkeypatch.setitem(sys.modules, "accelerate", None)  # `import accelerate` now raises ImportError
    with pytest.raises(ModelSourceError, match=r"needs accelerate.*pip install 'accelerate"):
        load_vlm(default_model(), device_map="auto")
