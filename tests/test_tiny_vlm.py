"""The shipped small VLM: the training code runs and is deterministic; the checkpoint loads and reads colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hooks.interventions import instruction_direction, steering_effect
from hooks.loading import load_vlm
from interp.datasets.colour import COLOURS, SHAPES, colour_cases
from interp.datasets.text import words
from modality_lens.cases import case_item, case_pairs
from modality_lens.pipeline import iter_rows
from interp.datasets.drawing import COLOUR_RGB
from modality_lens.tiny_vlm import (DEFAULT_DIR, TEXT_RELIABILITY, ScenePool, TinyVLMConfig, TrainingMix, build_model,
                                    instruction_following, save, train)
from modality_lens.tiny_vlm.reading import READ_QUESTION, ShapePool

TINY = dict(steps=3, batch_size=8, n_scenes=28, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=2,
            text_intermediate=64, warmup=1, threads=1, n_shape_scenes=8)


def test_a_few_training_steps_run_deterministically_and_save_a_loadable_model(tmp_path):
    cfg = TinyVLMConfig(**TINY)
    pool = ScenePool.draw(cfg.n_scenes, cfg.seed, cfg.image_size)
    model_a, processor, log = train(cfg, pool=pool, progress=False, log_every=1)
    assert len(log["history"]) == 3 and all(h["loss"] == h["loss"] for h in log["history"])  # finite
    model_b, _, log_b = train(cfg, pool=pool, progress=False, log_every=1)
    assert [h["loss"] for h in log["history"]] == [h["loss"] for h in log_b["history"]]
    for (name, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), name
    other, _, _ = train(TinyVLMConfig(**{**TINY, "seed": 1}), pool=pool, progress=False)
    assert not torch.equal(other.lm_head.weight, model_a.lm_head.weight)
    out = save(model_a, processor, tmp_path / "m")
    vlm = load_vlm(out)
    assert vlm.self_check_report.ok
    assert type(vlm.model).__name__ == "LlavaForConditionalGeneration"


def test_training_mix_follows_the_documented_reliabilities():
    cfg = TinyVLMConfig(**TINY)
    pool = ScenePool.draw(28, 0, 64)
    mix = TrainingMix(pool, cfg)
    examples = [mix.sample() for _ in range(3000)]
    instructed = [e for e in examples if e.kind == "instructed"]
    assert abs(len(instructed) / len(examples) - cfg.instructed_share) < 0.02
    for ex in examples:  # uninstructed: the label is the scene's own colour, whatever the context says
        if ex.kind not in ("instructed", "conflict", "read"):
            assert ex.label == COLOURS[pool.target_colour[ex.scene]], ex
    conflicting = 0
    for ex in instructed:  # instructed: the named modality's colour
        true, wrong = COLOURS[pool.target_colour[ex.scene]], COLOURS[pool.absent_colour[ex.scene]]
        assert ex.stated in (true, wrong)
        stated = ex.stated
        conflicting += stated == wrong
        assert ex.image is not None and ex.context
        names_text, names_image = " the text " in f" {ex.question} ", " the image " in f" {ex.question} "
        assert names_text != names_image, ex  # one instruction, naming one modality
        assert ex.label == (stated if names_text else true), ex
    assert abs(conflicting / len(instructed) - cfg.instructed_conflict) < 0.1
    draws = [mix.context("star", "circle", "red", "blue") for _ in range(6000)]
    relevant = [d for d in draws if d[3]]
    assert abs(1 - len(relevant) / len(draws) - cfg.text_irrelevant_share) < 0.02
    for tier, reliability in enumerate(TEXT_RELIABILITY):
        at = [d for d in relevant if d[2] == tier]
        share_true = sum(d[1] == "red" for d in at) / len(at)
        assert abs(share_true - reliability) < 0.05, (tier, share_true)
    direct = [d for d in relevant if d[2] == 0]
    assert all((d[1] in d[0]) for d in direct)  # a direct statement names the stated colour


shipped = pytest.mark.skipif(not (DEFAULT_DIR / "config.json").is_file(), reason="data/tiny_vlm not built yet")


@shipped
def test_shipped_checkpoint_is_small_loads_and_passes_the_self_check():
    weights = list(DEFAULT_DIR.glob("*.safetensors"))
    assert weights and sum(p.stat().st_size for p in weights) <= 15 * 2**20
    assert (DEFAULT_DIR / "MODEL_CARD.md").is_file()
    vlm = load_vlm(DEFAULT_DIR)
    assert vlm.self_check_report.ok


@shipped
def test_shipped_checkpoint_reads_easy_colours_and_text():
    """An independent spot check of the card's tier-0 accuracy on fresh cases (another seed)."""
    vlm = load_vlm(DEFAULT_DIR)
    cases = list(colour_cases(12, 4242, image_size=64, visual_tiers=[0], text_tiers=[0], controls=False))
    rows = [r for rs, _ in iter_rows(vlm, cases, batch_size=12, progress=False) for r in rs]
    assert sum(r["vision_correct"] for r in rows) >= 11
    assert sum(r["text_correct"] for r in rows) >= 11


@shipped
def test_shipped_checkpoint_follows_the_trained_instructions_on_easy_conflicts():
    """Fresh tier-0 conflict cases (another seed than the card's): "use the text" gives the
    text's colour, "use the image" the image's, each on most cases."""
    vlm = load_vlm(DEFAULT_DIR)
    cases = list(colour_cases(12, 4243, image_size=64, visual_tiers=[0], text_tiers=[0], controls=False))
    out = instruction_following(vlm, cases, batch_size=12)
    assert out["n"] == 12
    assert out["text"]["instructed"] >= 10 / 12 and out["image"]["instructed"] >= 10 / 12, out


@shipped
def test_shipped_checkpoint_is_steered_both_ways_by_the_mc2_direction():
    """Issue 8's steering line on fresh cases (seeds other than the docs'): the "use the text"
    minus "use the image" direction, added at the answer position in layers 0-1 with +alpha,
    raises TFR over the cases right in both unimodal passes, and with -alpha lowers it, each
    shift's paired 95% interval excluding 0."""
    vlm = load_vlm(DEFAULT_DIR)

    def items(cases):
        return [case_item(c) for c in cases]

    # groups 0-29 use each ordered (image colour, text colour) pair once: no colour residue
    fit = list(colour_cases(30, 77, image_size=64, visual_tiers=[0], text_tiers=[0], controls=False))
    direction = instruction_direction(vlm, items(fit)).relative()
    held = list(colour_cases(6, 78, image_size=64, controls=False))
    pairs = case_pairs(vlm.tokenizer, held)
    report = steering_effect(vlm, items(held), pairs, direction, alphas=(-0.3, 0.3), layers=(0, 1), n_boot=0,
                             batch_size=112)
    assert report.n_kept >= 60
    down, up = report.tfr_shift_ci(-0.3), report.tfr_shift_ci(0.3)
    assert up[0] > 0 and down[1] < 0, (report.tfr_shift(-0.3), down, report.tfr_shift(0.3), up)


def test_conflict_examples_carry_the_taught_text_prior():
    """Conflict examples: image + a relevant context stating a colour absent from the image; the
    label is the stated colour with probability text_prior[text tier], else the true colour.
    Without conflict examples the random stream (and so the recipe) is what it was."""
    pool = ScenePool.draw(28, 0, 64)
    prior = (0.9, 0.6, 0.3, 0.0)
    cfg = TinyVLMConfig(**{**TINY, "conflict_share": 0.3, "text_prior": prior})
    mix = TrainingMix(pool, cfg)
    examples = [mix.sample() for _ in range(8000)]
    conflicts = [e for e in examples if e.kind == "conflict"]
    assert abs(len(conflicts) / len(examples) - 0.3) < 0.02
    assert abs(sum(e.kind == "instructed" for e in examples) / len(examples) - cfg.instructed_share) < 0.015
    for e in conflicts:
        true, absent = COLOURS[pool.target_colour[e.scene]], COLOURS[pool.absent_colour[e.scene]]
        assert e.image is not None and e.stated == absent != true and e.preamble is None
        if e.text_tier == 0:  # a direct statement names the stated colour
            assert absent in e.context, e
        assert e.label in (true, absent)
    for tier, p in enumerate(prior):
        at = [e for e in conflicts if e.text_tier == tier]
        share = sum(e.label == e.stated for e in at) / len(at)
        assert abs(share - p) < 0.06, (tier, share, len(at))
    plain, with_prior = TrainingMix(pool, TinyVLMConfig(**TINY)), TrainingMix(pool, TinyVLMConfig(
        **{**TINY, "text_prior": prior}))
    assert all(a == b for a, b in zip((plain.sample() for _ in range(300)), (with_prior.sample() for _ in range(300))))


def test_text_distractors_add_one_sentence_about_another_shape_and_colour():
    """With text_distractor_share p, a share p of contexts (of every kind) names a second shape,
    neither the asked nor the example's absent one, in a sentence of its own whose colour is
    neither the scene's nor the stated one; labels follow the same rules. Share 0 leaves the
    random stream (and so the recipe) as it was."""
    pool = ScenePool.draw(28, 0, 64)
    mix = TrainingMix(pool, TinyVLMConfig(**{**TINY, "text_distractor_share": 0.5}))
    with_context = [e for e in (mix.sample() for _ in range(3000)) if e.context is not None]
    n_distracted = 0
    for e in with_context:
        asked = next(s for s in SHAPES if f"colour is the {s}?" in e.question)
        true, absent_shape = COLOURS[pool.target_colour[e.scene]], SHAPES[pool.absent_shape[e.scene]]
        named = {w for w in words(e.context) if w in SHAPES}
        assert named & {asked, absent_shape}, e  # the context itself is still there
        others = named - {asked, absent_shape}
        assert len(others) <= 1, e
        if not others:
            continue
        n_distracted += 1
        other = others.pop()
        sentence = next(s for s in e.context.split(".") if other in words(s))
        colours = [w for w in words(sentence) if w in COLOURS]
        assert len(colours) == 1 and colours[0] not in (true, e.stated), e
        assert e.label == (e.stated if "the text" in e.question else true), e
    assert abs(n_distracted / len(with_context) - 0.5) < 0.04, n_distracted / len(with_context)
    plain, zero = TrainingMix(pool, TinyVLMConfig(**TINY)), TrainingMix(pool, TinyVLMConfig(
        **{**TINY, "text_distractor_share": 0.0}))
    assert all(a == b for a, b in zip((plain.sample() for _ in range(300)), (zero.sample() for _ in range(300))))
    with pytest.raises(ValueError, match="text_distractor_share"):
        TrainingMix(pool, TinyVLMConfig(**TINY, text_distractor_share=1.5))


def test_instruction_placement_moves_only_the_instruction():
    """`instruction_placement="start"` / `"end"` (the default) draw the same examples as
    `"question"`, with the instruction as the preamble / after the question instead of in front
    of it."""
    pool = ScenePool.draw(28, 0, 64)
    before = TrainingMix(pool, TinyVLMConfig(**TINY, instruction_placement="question"))
    start = TrainingMix(pool, TinyVLMConfig(**TINY, instruction_placement="start"))
    end = TrainingMix(pool, TinyVLMConfig(**TINY))
    n_instructed = 0
    for _ in range(600):
        a, b, c = before.sample(), start.sample(), end.sample()
        for other in (b, c):
            assert (a.kind, a.context, a.label, a.scene, a.stated) == (other.kind, other.context, other.label,
                                                                      other.scene, other.stated)
        if a.kind != "instructed":
            assert a == b == c
            continue
        n_instructed += 1
        assert a.preamble is None and b.preamble and a.question == f"{b.preamble} {b.question}"
        instruction, question = b.preamble, b.question
        assert c.preamble is None and c.question == f"{question} {instruction}"
    assert n_instructed > 20


def test_shape_examples_label_the_drawn_shape_and_state_an_absent_one_when_wrong():
    cfg = TinyVLMConfig(**TINY, shape_share=0.5, read_share=0.0)
    shapes = ShapePool.draw(16, 0, 64)
    mix = TrainingMix(ScenePool.draw(8, 0, 64), cfg, shapes)
    examples = [mix.sample() for _ in range(1500)]
    shape_ex = [e for e in examples if e.question.startswith("What shape")]
    assert abs(len(shape_ex) / len(examples) - 0.5) < 0.05
    wrong = 0
    for e in shape_ex:
        true, absent = SHAPES[shapes.target_shape[e.scene]], SHAPES[shapes.absent_shape[e.scene]]
        colour = COLOURS[shapes.target_colour[e.scene]]
        assert e.label == true and f"the {colour} object" in e.question.lower()
        assert (e.image is shapes.images[e.scene]) == (e.kind != "text")
        if e.context is not None:
            assert e.stated in (true, absent)
            wrong += e.stated == absent
            # the drawn scene never shows the wrong shape: its pixels are the target's colour or not
    assert wrong > 0
    rgb = np.asarray(shapes.images[0])
    assert (rgb == COLOUR_RGB[COLOURS[shapes.target_colour[0]]]).all(axis=-1).any()  # the target is drawn


def test_reading_examples_label_what_the_image_says():
    cfg = TinyVLMConfig(**TINY, read_share=0.6, instructed_share=0.1)
    mix = TrainingMix(ScenePool.draw(8, 0, 64), cfg)
    examples = [mix.sample() for _ in range(400)]
    read = [e for e in examples if e.kind == "read"]
    assert abs(len(read) / len(examples) - 0.6) < 0.08
    words_read = [e for e in read if e.question.startswith(READ_QUESTION)]
    asked = [e for e in read if e not in words_read]
    assert words_read and asked
    for e in read:
        assert e.context is None and e.image.size == (64, 64) and e.label in COLOURS
        ink = (np.asarray(e.image.convert("L")) < 250).sum()  # anti-aliased ink counts too (words go down to 6 px)
        assert ink > 10  # something is written or drawn
    for e in asked:  # a rendered sentence or a sign scene: the label's colour is named or drawn
        rgb = np.asarray(e.image)
        drawn = (rgb == COLOUR_RGB[e.label]).all(axis=-1).any()
        assert drawn or not (rgb[..., 0] != rgb[..., 1]).any(), e  # a sign scene shows it; a sentence is grey


def test_local_layers_see_only_their_window():
    """`local_layers=1`: the first decoder layer's output at the last position does not change
    when a token further back than `local_window` changes, and changes when one inside does;
    with full attention (the shipped recipe) it changes either way."""
    def first_layer_last_state(cfg: TinyVLMConfig, ids: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model(cfg, 40).eval()
        with torch.no_grad():
            return model.model.language_model(input_ids=ids, output_hidden_states=True).hidden_states[1][:, -1]

    ids = torch.randint(5, 40, (1, 20), generator=torch.Generator().manual_seed(1))
    far, near = ids.clone(), ids.clone()
    far[0, 5] = 5 if ids[0, 5] != 5 else 6  # 14 tokens back from the last
    near[0, 17] = 5 if ids[0, 17] != 5 else 6  # 2 tokens back
    local = TinyVLMConfig(**{**TINY, "text_layers": 2, "local_layers": 1, "local_window": 4})
    base = first_layer_last_state(local, ids)
    assert torch.equal(first_layer_last_state(local, far), base)
    assert not torch.allclose(first_layer_last_state(local, near), base)
    full = TinyVLMConfig(**{**TINY, "text_layers": 2, "local_layers": 0})
    assert not torch.allclose(first_layer_last_state(full, far), first_layer_last_state(full, ids))
    with pytest.raises(ValueError, match="local_layers"):
        build_model(TinyVLMConfig(**{**TINY, "text_layers": 1, "local_layers": 1}), 40)  # no full layer left


def test_training_mix_refuses_bad_settings():
    pool = ScenePool.draw(4, 0, 64)
    with pytest.raises(ValueError, match="instruction_placement"):
        TrainingMix(pool, TinyVLMConfig(**TINY, instruction_placement="middle"))
    with pytest.raises(ValueError, match="one probability per text tier"):
        TrainingMix(pool, TinyVLMConfig(**TINY, text_reliability=(0.9, 0.8)))
    with pytest.raises(ValueError, match="text_prior needs one probability per text tier"):
        TrainingMix(pool, TinyVLMConfig(**TINY, text_prior=(0.5, 0.5, 0.5, 1.5)))
    with pytest.raises(ValueError, match="conflict_share"):
        TrainingMix(pool, TinyVLMConfig(**TINY, conflict_share=0.95))


def test_reading_metrics_count_answers_against_what_each_image_says():
    """A stand-in model that answers "red" to everything: each share is the share of items whose
    right answer is red, worked out from the item lists by hand."""
    from types import SimpleNamespace

    from modality_lens.tiny_vlm import build_processor
    from modality_lens.tiny_vlm.skills import reading_metrics

    processor = build_processor(TinyVLMConfig(**TINY))
    red = processor.tokenizer.convert_tokens_to_ids("red")

    def always_red(**inputs):
        logits = torch.zeros(inputs["input_ids"].shape[0], 1, len(processor.tokenizer))
        logits[..., red] = 1.0
        return SimpleNamespace(logits=logits)

    vlm = SimpleNamespace(processor=processor, tokenizer=processor.tokenizer, device="cpu", model=always_red)
    m = reading_metrics(vlm, image_size=64, n=12)
    # tier 0: 6 words x 3 fonts x 3 scales, 9 of them "red"; ink: 30 (word, other ink) pairs,
    # 5 with the word red and 5 in red ink
    assert m["word_tier0"]["n"] == 54 and m["word_tier0"]["accuracy"] == pytest.approx(9 / 54)
    assert m["word_ink"]["n"] == 30
    assert m["word_ink"]["accuracy"] == pytest.approx(5 / 30) and m["word_ink"]["answered_ink"] == pytest.approx(5 / 30)
    for key in ("word_placed", "context_tier0", "context_tier1"):
        assert m[key]["n"] == 12 and 0 <= m[key]["accuracy"] <= 1
    # a sign never names the target's colour, so "red" cannot be right on both questions of a scene
    assert m["sign"]["colour_accuracy"] + m["sign"]["colour_answered_sign"] <= 1


@pytest.mark.parametrize("tier", [0, 3, 6, 11])
def test_patch_labels_name_the_object_under_each_patch(tier):
    from interp.datasets.tiers import COLOUR_TIERS
    from interp.datasets.drawing import draw_scene
    from modality_lens.tiny_vlm.aux import object_map, patch_labels

    scene = draw_scene(COLOUR_TIERS[tier], "star", "red", np.random.default_rng(tier), (64, 64),
                       distractor_shapes=["circle", "square", "cross"], distractor_colours=["blue", "green", "orange"])
    rgb, owner = np.asarray(scene.image), object_map(scene)
    assert (rgb[owner == -1] == 255).all()  # background is white
    for k, obj in enumerate(scene.objects):  # every owned pixel wears its owner's colour
        assert (rgb[owner == k] == COLOUR_RGB[obj.colour]).all()
    labels = patch_labels(scene, 8)
    assert labels.shape == (64, 2)
    palette = {v: i for i, v in enumerate(COLOUR_RGB.values())}
    for p, (shape_id, colour_id) in enumerate(labels):  # second method: the patch's pixels
        block = rgb[(p // 8) * 8:(p // 8) * 8 + 8, (p % 8) * 8:(p % 8) * 8 + 8].reshape(-1, 3)
        coloured = [palette[tuple(int(v) for v in px)] for px in block if tuple(px) != (255, 255, 255)]
        if colour_id == len(COLOURS):
            assert shape_id == len(SHAPES)
            continue
        assert coloured.count(colour_id) >= 16  # the owner covers at least a quarter of the patch
    if tier == 0:  # one object: every labelled patch is the target star
        assert {int(s) for s, c in labels if c != len(COLOURS)} == {SHAPES.index("star")}


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


def test_training_words_never_take_the_evaluation_tier0_sizes(monkeypatch):
    """The pixel sizes `word_image` draws words at (recorded from its calls to `fit_text`) never
    include one that `word_image_tier0` uses for the same word and font at the evaluation's
    scales; they still span from 6 px to above the largest tier-0 size."""
    from interp.datasets.drawing import COLOURS
    from modality_lens.tiny_vlm import reading

    calls: list[tuple[str, str, int]] = []
    real = reading.fit_text

    def recording(text, size, *, font="sans", max_pixels=None, **kw):
        calls.append((text, font, max_pixels))
        return real(text, size, font=font, max_pixels=max_pixels, **kw)

    monkeypatch.setattr(reading, "fit_text", recording)
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

    calls: list[tuple[str, str, int]] = []
    real = reading.fit_text

    def recording(text, size, *, font="sans", max_pixels=None, **kw):
        calls.append((text, font, max_pixels))
        return real(text, size, font=font, max_pixels=max_pixels, **kw)

    monkeypatch.setattr(reading, "fit_text", recording)
    rng = np.random.default_rng(1)
    for _ in range(60):
        reading.word_image(COLOURS[int(rng.integers(len(COLOURS)))], 64, rng, large_share=1.0)
    assert len(calls) == 60
    for word, font, pixels in calls:
        assert pixels >= fit_pixels(word, (64, 64), font=font, margin=0) // 2, (word, font, pixels)
