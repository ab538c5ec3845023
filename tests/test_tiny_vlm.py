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
    with full attention (`local_layers=0`) it changes either way."""
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
    with pytest.raises(ValueError, match="patch_size 12 does not divide image_size 64"):
        build_model(TinyVLMConfig(**{**TINY, "image_size": 64, "patch_size": 12}), 40)  # 4 px would be dropped


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


def test_patch_labels_match_a_patch_by_patch_count():
    """The vectorised labels against a second method: per patch, the owners' pixel counts with
    np.unique, the most frequent owner (the lowest index among ties) if it covers a quarter."""
    from interp.datasets.drawing import draw_scene
    from interp.datasets.tiers import COLOUR_TIERS
    from modality_lens.tiny_vlm.aux import object_map, patch_labels

    def by_hand(scene, patch):
        owner = object_map(scene)
        out = []
        for py in range(0, 64 - 64 % patch, patch):
            for px in range(0, 64 - 64 % patch, patch):
                block = owner[py:py + patch, px:px + patch].ravel()
                ids, counts = np.unique(block[block >= 0], return_counts=True)
                if len(ids) and counts.max() >= patch * patch / 4:
                    obj = scene.objects[int(ids[counts.argmax()])]
                    out.append((SHAPES.index(obj.shape), COLOURS.index(obj.colour)))
                else:
                    out.append((len(SHAPES), len(COLOURS)))
        return np.asarray(out, dtype=np.int64)

    ties = 0
    for tier in range(len(COLOUR_TIERS)):
        for k in range(4):
            scene = draw_scene(COLOUR_TIERS[tier], SHAPES[k], COLOURS[k], np.random.default_rng([tier, k]), (64, 64),
                               distractor_shapes=[s for s in SHAPES if s != SHAPES[k]],
                               distractor_colours=[c for c in COLOURS if c != COLOURS[k]])
            for patch in (8, 5, 16):  # 5 leaves a remainder the tower would not see
                got, want = patch_labels(scene, patch), by_hand(scene, patch)
                assert got.dtype == want.dtype and got.shape == want.shape and (got == want).all(), (tier, k, patch)
            owner = object_map(scene)
            blocks = owner.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64)
            for b in blocks:
                ids, counts = np.unique(b[b >= 0], return_counts=True)
                ties += int(len(ids) > 1 and (counts == counts.max()).sum() > 1 and counts.max() >= 16)
    assert ties > 0  # the tie rule was exercised


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
