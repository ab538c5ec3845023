"""The training stages of the small VLM beyond its mix: the auxiliary head, the tower's
pretraining stage, the per-part learning rates, the asked word's loss, the reader's projector,
fresh pools and the word renderings (tests/test_tiny_vlm.py has the mix and the shipped model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooks.loading import load_vlm
from modality_lens.tiny_vlm import ScenePool, TinyVLMConfig, TrainingMix, build_model, save, train
from modality_lens.tiny_vlm.reading import READ_QUESTION, ShapePool
from tests.test_tiny_vlm import TINY


def test_the_auxiliary_head_trains_the_tower_and_is_not_saved(tmp_path):
    cfg = TinyVLMConfig(**{**TINY, "aux_weight": 1.0, "vision_layers": 2})
    with_aux, processor, _ = train(cfg, progress=False)
    plain, _, _ = train(TinyVLMConfig(**{**TINY, "vision_layers": 2}), progress=False)
    assert with_aux.state_dict().keys() == plain.state_dict().keys()  # a stock model: no head in it
    tower = [p for n, p in with_aux.named_parameters() if "vision_tower" in n]
    assert not all(torch.equal(a, b) for a, b in zip(tower, [p for n, p in plain.named_parameters()
                                                             if "vision_tower" in n]))
    hooks = [h for layer in with_aux.model.vision_tower.encoder.layers for h in layer._forward_hooks.values()]
    assert not any(getattr(h, "__name__", "") == "_keep" for h in hooks)  # the training hook is gone
    assert load_vlm(save(with_aux, processor, tmp_path / "m")).self_check_report.ok


def _pretrain_setup(**overrides):
    from modality_lens.tiny_vlm.recipe import build_processor

    cfg = TinyVLMConfig(**{**TINY, "vision_layers": 2, "pretrain_steps": 3, "pretrain_batch": 8,
                           "pretrain_aux": 1.0, **overrides})
    torch.set_num_threads(cfg.threads)  # as train() does: a stage run alone must round as it does inside train()
    processor = build_processor(cfg)
    pool = ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size, patch=cfg.patch_size)
    shapes = ShapePool.draw(cfg.n_shape_scenes, cfg.seed, cfg.image_size, patch=cfg.patch_size)
    return cfg, processor, pool, shapes


def test_pretraining_moves_only_the_tower_and_is_deterministic():
    from modality_lens.tiny_vlm.pretrain import pretrain_tower

    cfg, processor, pool, shapes = _pretrain_setup()
    runs = []
    for _ in range(2):
        model = build_model(cfg, len(processor.tokenizer))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        log = pretrain_tower(model, processor, cfg, pool, shapes, log_every=1)
        runs.append((model, log))
        moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert moved and all(".vision_tower." in f".{n}" for n in moved), sorted(moved)[:3]
        # the tower's last layer is not read (vision_feature_layer = -2) and gets no gradient
        assert not any(f"layers.{cfg.vision_layers - 1}." in n for n in moved)
    (a, log_a), (b, log_b) = runs
    assert [h["loss"] for h in log_a["history"]] == [h["loss"] for h in log_b["history"]]
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert a.state_dict().keys() == build_model(cfg, len(processor.tokenizer)).state_dict().keys()



def test_the_pretraining_batch_takes_its_tiers_and_shares_from_the_config():
    """By default a batch draws what the stage drew before `pretrain_max_tier` and
    `pretrain_shares` existed (colour scenes uniform over the whole pool: recomputed here from the
    step's generator); with them, the colour scenes come from the allowed tiers only and the three
    tasks take round(batch x share) examples each."""
    import dataclasses

    from modality_lens.tiny_vlm.pretrain import READ, _STREAM, _batch

    cfg, _, pool, shapes = _pretrain_setup()
    _, query, answer, _, keys = _batch(cfg, 5, 8, pool, shapes, True)
    i = np.random.default_rng([cfg.seed, _STREAM, 5]).integers(len(pool), size=4)  # the old draw
    assert query[:4].tolist() == pool.target_shape[i].tolist() and answer[:4].tolist() == pool.target_colour[i].tolist()
    assert (query[6:] == READ).all()  # 4 colour, 2 shape, 2 words
    assert keys[:4] == [("colour", int(k)) for k in i] and keys[6:] == [None, None]  # fresh words are not pooled
    low = dataclasses.replace(cfg, pretrain_max_tier=2, pretrain_shares=(0.75, 0.0, 0.25))
    where = {id(image): k for k, image in enumerate(pool.images)}
    tiers = set()
    for step in range(20):
        images, query, _, labels, _ = _batch(low, step, 8, pool, shapes, True)
        assert (query[6:] == READ).all() and not (query[:6] == READ).any() and labels[6:] == [None, None]
        tiers |= {int(pool.visual_tier[where[id(image)]]) for image in images[:6]}
    assert tiers == {0, 1, 2}  # only, and each of them


def test_pooled_pixels_are_the_processors_to_the_last_bit():
    """`_pixels` processes a pooled image once and reuses it; the stack must equal what the image
    processor returns for the whole list at once, in every step, cached or not."""
    from modality_lens.tiny_vlm.pretrain import _batch, _pixels

    cfg, processor, pool, shapes = _pretrain_setup()
    cache: dict = {}
    for step in range(6):
        images, _, _, _, keys = _batch(cfg, step, 8, pool, shapes, True)
        want = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        got = _pixels(processor.image_processor, images, keys, cache)
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert cache and all(key is not None for key in cache)  # only pooled images are kept
    assert len(cache) <= len(pool) + len(shapes)


def test_pretraining_settings_out_of_range_are_refused_before_any_work():
    from modality_lens.tiny_vlm import check_config

    for bad, says in (({"pretrain_shares": (0.5, 0.5, 0.5)}, "sum to 1"), ({"pretrain_shares": (1.0, 0.0)}, "three"),
                      ({"pretrain_max_tier": 14}, "a visual tier, 0-13"), ({"pretrain_max_tier": -1}, "0-13")):
        with pytest.raises(ValueError, match=says):
            check_config(TinyVLMConfig(**{**TINY, **bad}))
    cfg, processor, pool, shapes = _pretrain_setup(pretrain_max_tier=0)
    from modality_lens.tiny_vlm.pretrain import pretrain_tower

    no_tier0 = ScenePool.draw(6, cfg.seed, cfg.image_size, tiers=range(1, 7), patch=cfg.patch_size)
    with pytest.raises(ValueError, match="no colour scene of visual tier <= pretrain_max_tier"):
        pretrain_tower(build_model(cfg, len(processor.tokenizer)), processor, cfg, no_tier0, shapes)

def test_word_patch_labels_mark_each_patch_with_ink_by_hand():
    """A white 16 x 24 canvas, patches of 8: ink (darkest channel < 200) in patches (0, 2) and
    (1, 0), a light grey pixel (channel 210) in patch (0, 0) and a yellow one in (1, 1); the
    labels are the word on the inked patches, background (6) elsewhere, row-major."""
    from PIL import Image

    from modality_lens.tiny_vlm.aux import word_patch_labels

    canvas = np.full((16, 24, 3), 255, dtype=np.uint8)
    canvas[3, 20] = 0          # patch (0, 2)
    canvas[15, 7] = (130, 50, 180)  # patch (1, 0), purple: min 50
    canvas[0, 0] = 210         # patch (0, 0): too light to be ink
    canvas[9, 12] = (245, 205, 0)   # patch (1, 1), yellow: min 0
    got = word_patch_labels(Image.fromarray(canvas), 8, 4)
    assert got.tolist() == [6, 6, 4, 4, 4, 6]


def test_the_word_patch_head_loss_is_the_cross_entropy_over_labelled_patches():
    """The loss over a batch of one labelled image and one without labels is the mean
    cross-entropy of the labelled image's patches alone, worked out with log_softmax."""
    from modality_lens.tiny_vlm.aux import WordPatchHead

    torch.manual_seed(0)
    head, states = WordPatchHead(5), torch.randn(2, 3, 5)
    labels = [None, np.array([1, 6, 2])]
    logp = torch.log_softmax(head.word(states[1]), dim=-1)
    want = -(logp[0, 1] + logp[1, 6] + logp[2, 2]) / 3
    assert torch.allclose(head.loss(states, labels), want)
    assert float(head.loss(states, [None, None])) == 0.0


def test_the_word_loss_changes_the_pretrained_tower_deterministically():
    from modality_lens.tiny_vlm import check_config
    from modality_lens.tiny_vlm.pretrain import pretrain_tower

    towers = []
    for weight in (0.0, 1.0, 1.0):
        cfg, processor, pool, shapes = _pretrain_setup(pretrain_word_aux=weight)
        model = build_model(cfg, len(processor.tokenizer))
        pretrain_tower(model, processor, cfg, pool, shapes)
        towers.append([p.detach() for p in model.model.vision_tower.parameters()])
        assert model.state_dict().keys() == build_model(cfg, len(processor.tokenizer)).state_dict().keys()
    plain, worded, again = towers
    assert all(torch.equal(a, b) for a, b in zip(worded, again))
    assert not all(torch.equal(a, b) for a, b in zip(plain, worded))
    with pytest.raises(ValueError, match="pretrain_word_aux .* >= 0"):
        check_config(TinyVLMConfig(**{**TINY, "pretrain_word_aux": -1.0}))


def test_pretraining_refuses_missing_pools():
    from modality_lens.tiny_vlm.pretrain import pretrain_tower

    cfg, processor, pool, shapes = _pretrain_setup()
    model = build_model(cfg, len(processor.tokenizer))
    with pytest.raises(ValueError, match="n_shape_scenes"):
        pretrain_tower(model, processor, cfg, pool, None)
    unlabelled = ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size)
    with pytest.raises(ValueError, match="patch labels"):
        pretrain_tower(model, processor, cfg, unlabelled, shapes)


def test_the_tower_learns_at_its_own_rate_in_the_vlm_stage():
    """tower_lr_scale = 0: the VLM stage leaves the tower as it was and trains everything else."""
    cfg = TinyVLMConfig(**{**TINY, "tower_lr_scale": 0.0})
    trained, processor, _ = train(cfg, progress=False)
    start = dict(build_model(cfg, len(processor.tokenizer)).named_parameters())  # seeded: the initial weights
    after = dict(trained.named_parameters())
    tower = [n for n in after if "vision_tower" in n]
    assert tower and all(torch.equal(after[n], start[n]) for n in tower)
    assert not torch.equal(after["lm_head.weight"], start["lm_head.weight"])
    assert all(p.requires_grad for p in trained.parameters())  # frozen for the stage only


def _record_fit_text(monkeypatch, reading) -> list[tuple[str, str, int]]:
    """(text, font, max_pixels) of every later call to `reading.fit_text`, in order."""
    calls: list[tuple[str, str, int]] = []
    real = reading.fit_text

    def recording(text, size, *, font="sans", max_pixels=None, **kw):
        calls.append((text, font, max_pixels))
        return real(text, size, font=font, max_pixels=max_pixels, **kw)

    monkeypatch.setattr(reading, "fit_text", recording)
    return calls


def test_training_words_never_take_the_evaluation_tier0_sizes(monkeypatch):
    """The pixel sizes `word_image` draws words at (recorded from its calls to `fit_text`) never
    include one that `word_image_tier0` uses for the same word and font at the evaluation's
    scales; they still span from 6 px to above the largest tier-0 size."""
    from interp.datasets.drawing import COLOURS
    from modality_lens.tiny_vlm import reading

    calls = _record_fit_text(monkeypatch, reading)
    evaluated = {}
    for word in COLOURS:
        for font in reading.FONT_NAMES:
            for scale in reading.TIER0_SCALES:
                calls.clear()
                reading.word_image_tier0(word, 64, font, scale)
                evaluated.setdefault((word, font), set()).add(calls[-1][2])
    calls.clear()
    rng = np.random.default_rng(0)
    for _ in range(2000):
        reading.word_image(COLOURS[int(rng.integers(len(COLOURS)))], 64, rng)
    drawn: dict = {}
    for word, font, pixels in calls:
        drawn.setdefault((word, font), set()).add(pixels)
    assert len(drawn) == len(evaluated) == 18
    for key, sizes in drawn.items():
        assert not sizes & evaluated[key], key
        assert min(sizes) <= 7 and max(sizes) > max(evaluated[key]), (key, sorted(sizes))


def test_the_asked_word_is_found_in_the_question_not_in_the_context():
    """`asked_positions` points at the question's shape (colour) word: the token there is the asked
    word and what follows it is the rest of the question and the template, tokenized on its own;
    a context that names the same shape earlier does not move it; no asked word gives -1."""
    from hooks.prompts import render_prompt
    from interp.datasets.text import COLOUR_QUESTION, INSTRUCTION, SHAPE_QUESTION
    from modality_lens.tiny_vlm.mix import Example
    from modality_lens.tiny_vlm.recipe import build_processor
    from modality_lens.tiny_vlm.train import _encode, asked_positions

    processor = build_processor(TinyVLMConfig(**TINY))
    tok = processor.tokenizer
    image = ScenePool.draw(1, 0, 64).images[0]
    colour_q = f"{COLOUR_QUESTION.format(shape='circle')} {INSTRUCTION}"
    examples = [
        Example("both", colour_q, "The circle is red. The square is blue.", image, "red"),
        Example("vision", f"{SHAPE_QUESTION.format(colour='green')} {INSTRUCTION}", None, image, "star"),
        Example("read", f"{READ_QUESTION} {INSTRUCTION}", None, image, "red"),
        Example("instructed", f"{colour_q} use the text to answer .", "The circle is red.", image, "red"),
    ]
    inputs = _encode(processor, examples)
    where = asked_positions(processor, examples, inputs["input_ids"], "end").tolist()
    assert where[2] == where[3] == -1
    assert asked_positions(processor, examples[3:], _encode(processor, examples[3:])["input_ids"], "start")[0] >= 0
    for k, word, rest in ((0, "circle", colour_q.split("circle", 1)[1]), (1, "green", examples[1].question.split("green", 1)[1])):
        row = inputs["input_ids"][k]
        assert tok.convert_ids_to_tokens(int(row[where[k]])) == word
        tail = tok.convert_ids_to_tokens(row[where[k] + 1:].tolist())
        expected_tail = tok.tokenize(rest) + tok.tokenize(render_prompt(processor, question="x", with_image=False)
                                                          .rsplit("x", 1)[1])
        assert tail == expected_tail
    first = (inputs["input_ids"][0] == tok.convert_tokens_to_ids("circle")).nonzero().flatten().tolist()
    assert len(first) == 2 and where[0] == first[1]  # the context's "circle" comes first


def test_the_asked_word_loss_trains_deterministically_and_changes_the_model():
    cfg = TinyVLMConfig(**{**TINY, "asked_loss": 1.0, "asked_only_steps": 1})
    pool = ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size)
    a, _, log_a = train(cfg, pool=pool, progress=False, log_every=1)
    b, _, log_b = train(cfg, pool=pool, progress=False, log_every=1)
    assert [h["loss"] for h in log_a["history"]] == [h["loss"] for h in log_b["history"]]
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    plain, _, _ = train(TinyVLMConfig(**TINY), pool=pool, progress=False)
    assert not torch.equal(plain.lm_head.weight, a.lm_head.weight)
    with pytest.raises(ValueError, match="asked_loss > 0"):
        train(TinyVLMConfig(**{**TINY, "asked_only_steps": 5}), pool=pool, progress=False)


def test_the_projector_copied_from_the_reader_computes_the_readers_mlp():
    """copy_reader_projector: the projector's output equals the reader's input MLP on the same
    states (nn.Sequential against the HF module); a reader of another width is refused."""
    from modality_lens.tiny_vlm.pretrain import Reader, copy_reader_projector

    cfg = TinyVLMConfig(**TINY)
    model = build_model(cfg, 40)
    torch.manual_seed(3)
    reader = Reader(cfg.vision_hidden, dim=cfg.text_hidden)
    states = torch.randn(2, 5, cfg.vision_hidden)
    assert not torch.allclose(model.model.multi_modal_projector(states), reader.proj(states))
    copy_reader_projector(reader, model)
    torch.testing.assert_close(model.model.multi_modal_projector(states), reader.proj(states), rtol=0, atol=0)
    with pytest.raises(ValueError, match="text width"):
        copy_reader_projector(Reader(cfg.vision_hidden, dim=cfg.text_hidden * 2), model)


def test_a_frozen_projector_from_the_reader_stays_as_pretraining_left_it():
    """projector_from_reader + projector_lr_scale = 0: after the VLM stage the projector still
    equals the one the pretraining stage wrote (run alone on the same seed), the tower likewise
    with tower_lr_scale = 0, while the language model moved."""
    from modality_lens.tiny_vlm.pretrain import pretrain_tower

    cfg, processor, pool, shapes = _pretrain_setup(projector_from_reader=True, projector_lr_scale=0.0,
                                                   tower_lr_scale=0.0)
    model = build_model(cfg, len(processor.tokenizer))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    pretrain_tower(model, processor, cfg, pool, shapes)
    pretrained = {n: p.detach().clone() for n, p in model.named_parameters()}
    projector = [n for n in pretrained if "multi_modal_projector" in n]
    assert projector and all(not torch.equal(pretrained[n], initial[n]) for n in projector)
    trained, _, _ = train(cfg, pool=pool, progress=False)
    after = dict(trained.named_parameters())
    frozen = [n for n in after if "multi_modal_projector" in n or "vision_tower" in n]
    assert all(torch.equal(after[n], pretrained[n]) for n in frozen)
    assert not torch.equal(after["lm_head.weight"], pretrained["lm_head.weight"])
    with pytest.raises(ValueError, match="pretrain_steps > 0"):
        train(TinyVLMConfig(**{**TINY, "projector_from_reader": True}), pool=pool, progress=False)


def test_refreshed_scene_pools_are_new_scenes_and_reproducible():
    """TrainingMix.refresh(k): pools of the same sizes, other scenes than the first pool's, the
    same scenes for the same k; stream 0 is the pool drawn without a stream."""
    cfg = TinyVLMConfig(**TINY)
    pool = ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size)
    assert all(a.tobytes() == b.tobytes() for a, b in
               zip(pool.images, ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size, stream=0).images))
    shapes = ShapePool.draw(cfg.n_shape_scenes, cfg.seed, cfg.image_size)
    mixes = [TrainingMix(pool, cfg, shapes) for _ in range(2)]
    for mix in mixes:
        mix.refresh(1)
    a, b = mixes
    assert len(a.pool) == len(pool) and len(a.shapes) == len(shapes)
    assert [x.tobytes() for x in a.pool.images] == [x.tobytes() for x in b.pool.images]
    assert [x.tobytes() for x in a.shapes.images] == [x.tobytes() for x in b.shapes.images]
    old = {x.tobytes() for x in pool.images}
    assert not old & {x.tobytes() for x in a.pool.images}
    assert not {x.tobytes() for x in shapes.images} & {x.tobytes() for x in a.shapes.images}
    # the refreshed pool's records describe its own scenes: tiers in turn as before
    assert list(a.pool.visual_tier) == list(pool.visual_tier)
    cfg_refresh = TinyVLMConfig(**{**TINY, "steps": 4, "scene_refresh": 2})
    m1, _, l1 = train(cfg_refresh, pool=pool, progress=False, log_every=1)
    m2, _, l2 = train(cfg_refresh, pool=pool, progress=False, log_every=1)
    assert [h["loss"] for h in l1["history"]] == [h["loss"] for h in l2["history"]]
    plain, _, _ = train(TinyVLMConfig(**{**TINY, "steps": 4}), pool=pool, progress=False)
    assert not torch.equal(plain.lm_head.weight, m1.lm_head.weight)


def test_large_share_draws_words_from_the_upper_half_of_the_sizes(monkeypatch):
    from interp.datasets.drawing import COLOURS
    from interp.datasets.render import fit_pixels
    from modality_lens.tiny_vlm import reading

    calls = _record_fit_text(monkeypatch, reading)
    rng = np.random.default_rng(1)
    for _ in range(60):
        reading.word_image(COLOURS[int(rng.integers(len(COLOURS)))], 64, rng, large_share=1.0)
    assert len(calls) == 60
    for word, font, pixels in calls:
        assert pixels >= fit_pixels(word, (64, 64), font=font, margin=0) // 2, (word, font, pixels)


def test_the_asked_only_steps_draw_vision_only_colour_and_shape_questions():
    """`asked_only_vision`: during the first `asked_only_steps` every example is a vision-only
    colour or shape question (no context, no reading, no instruction), shape questions at about
    `shape_share`; afterwards the full mix is back."""
    from interp.datasets.drawing import COLOURS, SHAPES
    from modality_lens.tiny_vlm.train import batches

    cfg = TinyVLMConfig(**{**TINY, "n_scenes": 200, "n_shape_scenes": 40, "read_share": 0.2, "shape_share": 0.25,
                           "asked_loss": 1.0, "asked_only_steps": 40, "asked_only_vision": True, "steps": 100})
    pool = ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size)
    mix = TrainingMix(pool, cfg, ShapePool.draw(cfg.n_shape_scenes, cfg.seed, cfg.image_size))
    it = batches(mix, 50)
    first = [e for _ in range(cfg.asked_only_steps) for part in next(it) for e in part]
    assert len(first) == 2000
    assert all(e.kind == "vision" and e.image is not None and e.context is None and e.preamble is None
               for e in first)
    shape_q = [e for e in first if e.label in SHAPES]
    assert all(e.label in COLOURS for e in first if e not in shape_q)
    assert abs(len(shape_q) / len(first) - cfg.shape_share) < 0.04  # binomial SE about 0.01
    later = [e for _ in range(10) for part in next(it) for e in part]
    assert {e.kind for e in later} >= {"text", "both", "read", "instructed"}


def test_the_copy_steps_draw_vision_only_questions_and_train_the_answer_position():
    """`copy_steps`: after the asked-only steps, that many more steps draw vision-only colour and
    shape questions only, and in them the answer position's loss is trained (its gradient reaches
    the last position), where during the asked-only steps it is not; then the full mix."""
    from interp.datasets.drawing import COLOURS, SHAPES
    from modality_lens.tiny_vlm import build_processor, check_config
    from modality_lens.tiny_vlm.train import _backward, batches

    cfg = TinyVLMConfig(**{**TINY, "n_scenes": 200, "n_shape_scenes": 40, "read_share": 0.2, "shape_share": 0.25,
                           "asked_loss": 1.0, "asked_only_steps": 5, "asked_only_vision": True, "copy_steps": 20,
                           "steps": 100})
    pool = ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size)
    mix = TrainingMix(pool, cfg, ShapePool.draw(cfg.n_shape_scenes, cfg.seed, cfg.image_size))
    it = batches(mix, 50)
    staged = [e for _ in range(cfg.asked_only_steps + cfg.copy_steps) for part in next(it) for e in part]
    assert len(staged) == 1250 and all(e.kind == "vision" and e.context is None for e in staged)
    later = [e for _ in range(10) for part in next(it) for e in part]
    assert {e.kind for e in later} >= {"text", "both", "read"}

    processor = build_processor(cfg)
    tok = processor.tokenizer
    model = build_model(cfg, len(tok))
    label_ids = {w: tok.convert_tokens_to_ids(w) for w in COLOURS + SHAPES}
    part = staged[:4]
    # the gradient of the answer position's logits: a hook on the head's output keeps it
    grads = {}
    model.lm_head.register_full_backward_hook(lambda m, gin, gout: grads.__setitem__("out", gout[0]))
    for step, answer_trained in ((0, False), (cfg.asked_only_steps, True)):
        model.zero_grad()
        _backward(model, processor, part, label_ids, cfg, None, step)
        assert bool(grads["out"][:, -1].abs().sum() > 0) == answer_trained
    with pytest.raises(ValueError, match="copy_steps"):
        check_config(TinyVLMConfig(**{**TINY, "copy_steps": 3}))


def test_the_context_stage_continues_a_saved_model_as_a_full_run_does(tmp_path):
    """`train` with `context_steps` equals `train` without, saved, loaded and given `context_stage`:
    the stage's draws do not depend on the VLM stage's, so a shipped model can be continued."""
    import dataclasses

    from transformers import LlavaForConditionalGeneration

    from modality_lens.tiny_vlm.train import context_stage

    cfg = TinyVLMConfig(**{**TINY, "context_steps": 3, "context_share": 0.5})
    full, processor, log = train(cfg, progress=False)
    plain, _, plain_log = train(dataclasses.replace(cfg, context_steps=0), progress=False)
    assert "context_stage" not in plain_log and len(log["context_stage"]["history"]) == 1
    loaded = LlavaForConditionalGeneration.from_pretrained(save(plain, processor, tmp_path / "plain"))
    before = {n: p.detach().clone() for n, p in loaded.named_parameters()}
    stage_log = context_stage(loaded, processor, cfg, progress=False)
    assert [h["loss"] for h in stage_log["history"]] == [h["loss"] for h in log["context_stage"]["history"]]
    assert all(torch.equal(p, q) for p, q in zip(full.parameters(), loaded.parameters()))
    moved = {n for n, p in loaded.named_parameters() if not torch.equal(p, before[n])}
    # the default recipe trains the whole model in the VLM stage: so does the context stage
    assert any("language_model" in n for n in moved)
    frozen = dataclasses.replace(cfg, tower_lr_scale=0.0, projector_lr_scale=0.0)
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "plain")
    context_stage(again, processor, frozen, progress=False)
    moved = {n for n, p in again.named_parameters() if not torch.equal(p, before[n])}
    assert moved and not any("vision_tower" in n or "multi_modal_projector" in n for n in moved), sorted(moved)[:3]
    assert all(p.requires_grad for p in again.parameters())  # as train() leaves a model


def test_a_rendered_context_is_the_sentence_stating_its_label_drawn_on_the_canvas():
    from interp.datasets.drawing import COLOURS, SHAPES
    from interp.datasets.render import fit_text
    from interp.datasets.text import COLOUR_QUESTION, text_context
    from modality_lens.tiny_vlm.reading import FONT_NAMES

    cfg = TinyVLMConfig(**TINY)
    mix = TrainingMix(ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size), cfg)
    twin = np.random.default_rng([cfg.seed, 13])  # the mix's stream, drawn by hand
    for _ in range(12):
        e = mix.rendered_context()
        shape, colour = SHAPES[int(twin.integers(len(SHAPES)))], COLOURS[int(twin.integers(len(COLOURS)))]
        sentence = text_context(int(twin.integers(2)), shape, colour, twin)
        font = FONT_NAMES[int(twin.integers(len(FONT_NAMES)))]
        assert shape in sentence and colour in sentence  # the sentence states the colour of the shape asked
        assert e.kind == "read" and e.context is None and e.label == colour
        assert e.question.startswith(COLOUR_QUESTION.format(shape=shape))
        assert e.image.tobytes() == fit_text(sentence, cfg.image_size, font=font, min_pixels=4).tobytes()


def test_the_context_stage_refuses_bad_settings():
    with pytest.raises(ValueError, match="context_share"):
        train(TinyVLMConfig(**{**TINY, "context_steps": 2, "context_share": 1.5}), progress=False)
    with pytest.raises(ValueError, match="context_lr"):
        train(TinyVLMConfig(**{**TINY, "context_steps": 2, "context_lr": 0.0}), progress=False)
