"""Activation patching, attention knockout and steering on tiny models of several families.

Every reference is computed independently of `hooks.patching`: plain forwards of the model
(no nnsight), plain PyTorch forward hooks for the patched and steered runs, and invariances
that only hold when an intervention does what it claims (e.g. a knocked-out context cannot
change the answer).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hooks import patching as P
from hooks.loading import load_vlm
from hooks.prompts import PromptItem, append_tokens
from hooks.tiny import tiny_model
from interp.candidates import CandidatePair, answer_tokens, candidate_pair
from interp.errors import CaseError
from interp.logit_lens import trajectory_from_logits
from interp.uncertainty import dh_rel, entropy

FAMILIES = ("llava", "qwen2_5_vl", "gemma3", "paligemma2")
QUESTION = "What colour is the circle ? Please use one word to answer this question ."


def _image(colour, size=(48, 32)) -> Image.Image:
    im = Image.new("RGB", size, (255, 255, 255))
    ImageDraw.Draw(im).ellipse([4, 4, size[0] - 5, size[1] - 5], fill=colour)
    return im


RED, BLUE, GREEN, PURPLE = (220, 30, 30), (30, 60, 220), (30, 200, 30), (150, 30, 200)
# Source and target rows share their layout (same question, contexts of 5 words, same image size).
SOURCE = [PromptItem(QUESTION, "The circle is blue .", _image(RED)),
          PromptItem(QUESTION, "The circle is green .", _image(PURPLE))]
TARGET = [PromptItem(QUESTION, "The circle is purple .", _image(BLUE)),
          PromptItem(QUESTION, "The circle is red .", _image(GREEN))]
ANSWERS = [("purple", "blue"), ("red", "green")]  # (text, vision) answers of the target rows


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request):
    return load_vlm(tiny_model(request.param))


def _pairs(vlm):
    return [candidate_pair(vlm.tokenizer, t, v) for t, v in ANSWERS]


def _conflict(vlm, items):
    return vlm.passes(items, ("conflict",))["conflict"]


def _plain(vlm, inputs) -> torch.Tensor:
    """Last-position logits of a plain forward (no nnsight), full vocabulary."""
    vlm.adapter.reset_state(vlm.model)
    with torch.no_grad():
        return vlm.model(**inputs).logits[:, -1, :].float()


def _module(vlm, layer: int, site: str):
    block = vlm.layers[layer]
    return {"resid_pre": block, "resid_post": block, "attn_out": block.self_attn, "mlp_out": block.mlp}[site]


def _hooked(vlm, inputs, layer: int, site: str, edit) -> torch.Tensor:
    """A plain forward where `edit(tensor)` changes the site's value in place (PyTorch hooks)."""
    module = _module(vlm, layer, site)
    if site == "resid_pre":
        handle = module.register_forward_pre_hook(lambda mod, args: edit(args[0]))
    else:
        handle = module.register_forward_hook(lambda mod, args, out: edit(out[0] if isinstance(out, tuple) else out))
    try:
        return _plain(vlm, inputs)
    finally:
        handle.remove()


def _plain_adding(vlm, inputs, layers, add) -> torch.Tensor:
    """Plain-forward logits with `add(layer, output)` editing each listed layer's output in place."""
    handles = [vlm.layers[layer].register_forward_hook(
        lambda mod, args, out, layer=layer: add(layer, out[0] if isinstance(out, tuple) else out)) for layer in layers]
    try:
        return _plain(vlm, inputs)
    finally:
        for h in handles:
            h.remove()


def _captured(vlm, inputs, layer: int, site: str) -> torch.Tensor:
    store = []
    _hooked(vlm, inputs, layer, site, lambda t: store.append(t.detach().clone()))
    return store[0]


def _reference_patch(vlm, source, target, layer, site, src_pos, tgt_pos) -> torch.Tensor:
    """Target logits with source values written at the given per-row positions, by plain hooks."""
    values = _captured(vlm, source.inputs, layer, site)

    def write(t):
        for b, (s, p) in enumerate(zip(src_pos, tgt_pos)):
            t[b, list(p)] = values[b, list(s)]

    return _hooked(vlm, target.inputs, layer, site, write)


# --------------------------------------------------------------------------- patching
@pytest.mark.parametrize("site", ["resid_pre", "resid_post"])
def test_patching_every_position_reproduces_the_source(vlm, site):
    source, target, pairs = _conflict(vlm, SOURCE), _conflict(vlm, TARGET), _pairs(vlm)
    assert [g.length for g in source.geometry] == [g.length for g in target.geometry]
    want_source, want_target = _plain(vlm, source.inputs), _plain(vlm, target.inputs)
    assert (want_source - want_target).abs().max() > 1e-3, "source and target must differ"
    for layer in range(vlm.n_layers):
        result = P.patch(vlm, source, target, pairs, layers=layer, group="all", site=site, keep_logits=True)
        assert (result.intervened.logits - want_source).abs().max().item() <= 1e-4, f"layer {layer}"
        assert (result.clean.logits - want_target).abs().max().item() <= 1e-5
        assert (result.source.logits - want_source).abs().max().item() <= 1e-5


def test_patching_nothing_leaves_the_target_unchanged(vlm):
    source, target, pairs = _conflict(vlm, SOURCE), _conflict(vlm, TARGET), _pairs(vlm)
    want = _plain(vlm, target.inputs)
    nothing = P.PositionMap(((), ()), ((), ()))
    for site in P.SITES:
        result = P.patch(vlm, source, target, pairs, layers=range(vlm.n_layers), group=nothing, site=site,
                         keep_logits=True)
        assert (result.intervened.logits - want).abs().max().item() <= 1e-6, site
    # "context" is empty in both vision-only passes: a sweep row that patches nothing
    vision_src = vlm.passes(SOURCE, ("vision",))["vision"]
    vision_tgt = vlm.passes(TARGET, ("vision",))["vision"]
    sweep = P.patching_sweep(vlm, vision_src, vision_tgt, pairs, groups=("context", "image"))
    assert (sweep.group_sizes[:, 0] == 0).all() and (sweep.group_sizes[:, 1] > 0).all()
    assert sweep.effect[:, 0].abs().max().item() <= 1e-6
    assert sweep.effect[:, 1].abs().max().item() > 1e-4  # the image group does something


def test_image_patch_at_the_embeddings_equals_swapping_the_image(vlm):
    """Target rows have contexts of other lengths than the source: the image group maps by order."""
    source = _conflict(vlm, SOURCE)
    target_items = [PromptItem(QUESTION, "It is red .", _image(BLUE)),
                    PromptItem(QUESTION, "The circle 's colour is the same as a ripe tomato .", _image(GREEN))]
    target = _conflict(vlm, target_items)
    assert [g.length for g in source.geometry] != [g.length for g in target.geometry]
    swapped = _conflict(vlm, [PromptItem(QUESTION, t.context, s.image) for s, t in zip(SOURCE, target_items)])
    pairs = [candidate_pair(vlm.tokenizer, "red", "blue"), candidate_pair(vlm.tokenizer, "purple", "green")]
    result = P.patch(vlm, source, target, pairs, layers=0, group="image", site="resid_pre", keep_logits=True)
    want = _plain(vlm, swapped.inputs)
    assert (result.intervened.logits - want).abs().max().item() <= 1e-4
    assert (result.intervened.logits - result.clean.logits).abs().max().item() > 1e-3
    assert result.effect.abs().max().item() > 0


def test_group_sizes_must_agree_unless_mapped_explicitly(vlm):
    source = _conflict(vlm, SOURCE)
    target = _conflict(vlm, [PromptItem(QUESTION, "It is red .", _image(BLUE)),
                             PromptItem(QUESTION, "It is purple .", _image(GREEN))])
    pairs = _pairs(vlm)
    with pytest.raises(P.PatchingError, match="PositionMap"):
        P.patch(vlm, source, target, pairs, layers=1, group="context")
    # an explicit map: the last 4 context tokens of the source onto the 4 of the target
    src = [tuple(P.positions(source, "context")[b][-4:]) for b in range(2)]
    tgt = [tuple(P.positions(target, "context")[b]) for b in range(2)]
    result = P.patch(vlm, source, target, pairs, layers=1, group=P.PositionMap(tuple(src), tuple(tgt)),
                     keep_logits=True)
    want = _reference_patch(vlm, source, target, 1, "resid_post", src, tgt)
    assert (result.intervened.logits - want).abs().max().item() <= 1e-5


@pytest.mark.parametrize("site", ["attn_out", "mlp_out", "resid_post"])
def test_patching_a_site_matches_plain_pytorch_hooks(vlm, site):
    source, target, pairs = _conflict(vlm, SOURCE), _conflict(vlm, TARGET), _pairs(vlm)
    layer = 1
    for group in ("image", "context", "question"):
        pos = P.positions(target, group)
        want = _reference_patch(vlm, source, target, layer, site, pos, pos)
        got = P.patch(vlm, source, target, pairs, layers=layer, group=group, site=site, keep_logits=True)
        assert (got.intervened.logits - want).abs().max().item() <= 1e-5, group
    assert (got.intervened.logits - got.clean.logits).abs().max().item() > 1e-5


def test_sweep_matches_the_hook_reference_in_every_cell(vlm):
    source, target, pairs = _conflict(vlm, SOURCE), _conflict(vlm, TARGET), _pairs(vlm)
    sweep = P.patching_sweep(vlm, source, target, pairs, max_rows=6)  # 3 configurations per forward
    assert sweep.effect.shape == (2, len(P.GROUPS), vlm.n_layers)
    assert sweep.layers == tuple(range(vlm.n_layers))
    for g, group in enumerate(P.GROUPS):
        pos = P.positions(target, group)
        for layer in sweep.layers:
            want = P.readout(_reference_patch(vlm, source, target, layer, "resid_post", pos, pos), pairs)
            assert torch.allclose(sweep.patched.logit_diff[:, g, layer], want.logit_diff, atol=1e-4)
            assert torch.allclose(sweep.patched.log_p_text[:, g, layer], want.log_p_text, atol=1e-4)
    clean = P.readout(_plain(vlm, target.inputs), pairs)
    assert torch.allclose(sweep.clean.logit_diff, clean.logit_diff, atol=1e-5)
    labels = sweep.patched.labels(pairs)  # batch rows, each over group x layer
    assert len(labels) == 2 and len(labels[1]) == len(P.GROUPS) * vlm.n_layers
    top = int(sweep.patched.top1[1, 2, 1])
    assert labels[1][2 * vlm.n_layers + 1] == {"text": "text", "vision": "vision"}.get(pairs[1].classify(top), "other")
    # at the last layer only the answer position reaches the logits (PaliGemma's prompt ends with
    # the question, so there the question group holds the answer position)
    for g, group in enumerate(P.GROUPS[:3]):
        for b, pos in enumerate(P.positions(target, group)):
            if target.geometry[b].answer_position not in pos:
                assert abs(sweep.effect[b, g, -1].item()) <= 1e-5, (group, b)
    assert torch.allclose(sweep.effect[:, 3, -1], sweep.source.logit_diff - sweep.clean.logit_diff, atol=1e-4)


def test_readout_agrees_with_the_logit_lens_trajectory(vlm):
    target = _conflict(vlm, TARGET)
    tok = vlm.tokenizer
    # several ids per side (synonyms) exercise the log-sum-exp
    pairs = [candidate_pair(tok, "purple", "blue", text_synonyms=["grape"], vision_synonyms=["sky", "sea"]),
             candidate_pair(tok, "red", "green", text_synonyms=["tomato"])]
    logits = _plain(vlm, target.inputs)
    got = P.readout(logits, pairs)
    for b, pair in enumerate(pairs):
        traj = trajectory_from_logits(pair, logits[b:b + 1].numpy())
        assert got.logit_diff[b].item() == pytest.approx(traj.logit_diff[0], abs=1e-5)
        assert got.log_p_text[b].exp().item() == pytest.approx(traj.p_text[0], abs=1e-6)
        assert got.log_p_vision[b].exp().item() == pytest.approx(traj.p_vision[0], abs=1e-6)
    assert torch.allclose(got.entropy, entropy(logits), atol=1e-6)


def test_a_prefix_pair_is_read_after_the_forced_prefix():
    vlm = load_vlm(tiny_model("llava"))
    tok = vlm.tokenizer
    the = tok.convert_tokens_to_ids("the")
    text, vision = answer_tokens(tok, "purple"), answer_tokens(tok, "blue")
    prefixed = [CandidatePair(text, vision, (the,), text.first_ids, vision.first_ids)] * 2
    target = _conflict(vlm, TARGET)
    forced = append_tokens(target, [[the], [the]])
    result = P.knockout(vlm, target, prefixed, keys=[[], []], keep_logits=True)
    assert (result.clean.logits - _plain(vlm, forced.inputs)).abs().max().item() <= 1e-5


def test_positions_resolve_through_the_geometry():
    vlm = load_vlm(tiny_model("llava"))
    target = _conflict(vlm, [TARGET[0], PromptItem(QUESTION, "It is red .", _image(GREEN))])
    g = target.geometry
    assert g[1].n_pad > 0
    assert P.positions(target, "all")[1] == list(range(g[1].n_pad, g[1].length))
    assert P.positions(target, "after:context")[0] == list(range(g[0].context_span[1], g[0].length))
    assert P.positions(target, "answer") == [[g[0].length - 1], [g[1].length - 1]]
    with pytest.raises(P.PatchingError, match="outside the prompt"):
        P.positions(target, [[5], [0]])  # row 1 starts with padding
    with pytest.raises(P.PatchingError, match="unknown position group"):
        P.positions(target, "picture")
    vision = vlm.passes(TARGET, ("vision",))["vision"]
    with pytest.raises(P.PatchingError, match="no 'context'"):
        P.positions(vision, "after:context")
    with pytest.raises(P.PatchingError, match="out of range"):
        P.patch(vlm, target, target, _pairs(vlm), layers=vlm.n_layers)
    with pytest.raises(P.PatchingError, match="unknown site"):
        P.patch(vlm, target, target, _pairs(vlm), layers=0, site="resid_mid")


def test_plot_patching_draws_the_group_by_layer_grid():
    import matplotlib

    matplotlib.use("Agg")
    vlm = load_vlm(tiny_model("llava"))
    sweep = P.patching_sweep(vlm, _conflict(vlm, SOURCE), _conflict(vlm, TARGET), _pairs(vlm), layers=[0, 2])
    fig = P.plot_patching(sweep)
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (len(P.GROUPS), 2)
    assert np.allclose(np.asarray(image), sweep.mean("effect").numpy(), atol=1e-6)
    assert sweep.to_dict()["layers"] == [0, 2]


# --------------------------------------------------------------------------- knockout
@pytest.fixture(params=["sdpa", "eager"])
def attention(request, vlm):
    before = P.attention_implementation(vlm)
    try:
        vlm.model.set_attn_implementation(request.param)
    except ValueError as err:  # Gemma 2 (PaliGemma 2) has no sdpa attention
        pytest.skip(str(err)[:80])
    assert P.attention_implementation(vlm) == request.param
    yield request.param
    vlm.model.set_attn_implementation(before)


def test_knockout_of_an_empty_span_is_the_identity(vlm, attention):
    pairs = _pairs(vlm)
    padded = _conflict(vlm, [TARGET[0], PromptItem(QUESTION, "It is red .", _image(GREEN))])
    assert any(g.n_pad for g in padded.geometry)
    single = _conflict(vlm, TARGET[:1])  # no padding: sdpa gets no mask and the causal one is built
    for batch, rows in ((padded, pairs), (single, pairs[:1])):
        result = P.knockout(vlm, batch, rows, queries="all", keys=[[]] * len(batch), keep_logits=True)
        assert (result.intervened.logits - _plain(vlm, batch.inputs)).abs().max().item() <= 1e-6


def _all_but_context(batch):
    return [sorted(set(a) - set(c)) for a, c in zip(P.positions(batch, "all"), P.positions(batch, "context"))]


def test_knocked_out_context_cannot_change_the_answer(vlm, attention):
    """With every other position blocked from the context in every layer, two contexts of the same
    length must give the same answer distribution; without the knockout they do not."""
    pairs = _pairs(vlm)
    a = _conflict(vlm, [PromptItem(QUESTION, "The circle is blue .", _image(RED))] * 2)
    b = _conflict(vlm, [PromptItem(QUESTION, "The circle is green .", _image(RED)),
                        PromptItem(QUESTION, "It is a green .", _image(RED))])
    ka = P.knockout(vlm, a, pairs, queries=_all_but_context(a), keys="context", keep_logits=True)
    kb = P.knockout(vlm, b, pairs, queries=_all_but_context(b), keys="context", keep_logits=True)
    assert (ka.clean.logits - kb.clean.logits).abs().max().item() > 1e-3
    assert (ka.intervened.logits - kb.intervened.logits).abs().max().item() <= 1e-5
    assert (ka.intervened.logits - ka.clean.logits).abs().max().item() > 1e-3


def test_knockout_gives_the_same_result_with_eager_and_sdpa(vlm):
    pairs = _pairs(vlm)
    batch = _conflict(vlm, [TARGET[0], PromptItem(QUESTION, "It is red .", _image(GREEN))])
    before = P.attention_implementation(vlm)
    out = {}
    try:
        for impl in ("eager", "sdpa"):
            try:
                vlm.model.set_attn_implementation(impl)
            except ValueError:
                pytest.skip(f"{vlm.adapter.family} has no {impl} attention")
            out[impl] = P.knockout(vlm, batch, pairs, queries="after:context", keys="context", layers=[1, 2],
                                   keep_logits=True)
    finally:
        vlm.model.set_attn_implementation(before)
    assert (out["eager"].intervened.logits - out["sdpa"].intervened.logits).abs().max().item() <= 1e-5
    assert (out["eager"].intervened.logits - out["eager"].clean.logits).abs().max().item() > 1e-4


def test_knockout_refuses_other_attention_implementations(monkeypatch):
    vlm = load_vlm(tiny_model("llava"))
    monkeypatch.setattr(P, "attention_implementation", lambda _: "flash_attention_2")
    with pytest.raises(P.PatchingError, match="set_attn_implementation"):
        P.knockout(vlm, _conflict(vlm, TARGET), _pairs(vlm))


# --------------------------------------------------------------------------- steering
def test_steering_with_alpha_zero_is_the_identity(vlm):
    target, pairs = _conflict(vlm, TARGET), _pairs(vlm)
    direction = P.instruction_direction(vlm, TARGET)
    assert direction.norms.max() > 0  # (Gemma-3's sliding-window layers may not see the instruction)
    for where in ("answer", "all"):
        result = P.steer(vlm, target, pairs, direction, alpha=0.0, where=where, keep_logits=True)
        assert (result.intervened.logits - _plain(vlm, target.inputs)).abs().max().item() <= 1e-6


def test_steering_matches_a_plain_hook_that_adds_the_direction(vlm):
    target, pairs = _conflict(vlm, TARGET), _pairs(vlm)
    direction = P.instruction_direction(vlm, TARGET)
    alpha, layers = 3.0, (1, 2)

    def add(layer, out):
        out[:, -1] += alpha * direction.vectors[layer]  # the answer position of a left-padded batch

    want = _plain_adding(vlm, target.inputs, layers, add)
    got = P.steer(vlm, target, pairs, direction, alpha=alpha, layers=layers, keep_logits=True)
    assert (got.intervened.logits - want).abs().max().item() <= 1e-5
    assert got.effect.abs().max().item() > 1e-4


def test_instruction_direction_is_the_mean_difference_of_hidden_states(vlm):
    direction = P.instruction_direction(vlm, TARGET, text_instruction="use the text .",
                                        image_instruction="use the image .")
    states = []
    for instruction in ("use the text .", "use the image ."):
        batch = _conflict(vlm, P.with_instruction(TARGET, instruction))
        assert all(instruction in p for p in batch.prompts)
        vlm.adapter.reset_state(vlm.model)
        with torch.no_grad():
            hidden = vlm.model(**batch.inputs, output_hidden_states=True).hidden_states
        # hidden_states[-1] is taken after the final norm: read the last layer's output by a hook
        last = _captured(vlm, batch.inputs, vlm.n_layers - 1, "resid_post")
        states.append(torch.stack([h[:, -1] for h in hidden[1:-1]] + [last[:, -1]], dim=1))  # (batch, layer, d)
    want = states[0].mean(0) - states[1].mean(0)
    assert torch.allclose(direction.vectors, want, atol=1e-5)
    assert torch.allclose(direction.state_norms, torch.cat(states).norm(dim=-1).mean(0), atol=1e-5)
    relative, moved = direction.relative(), direction.norms > 0
    assert torch.allclose(relative.norms[moved], direction.state_norms[moved], rtol=1e-5)
    assert (relative.norms[~moved] == 0).all()
    cosine = torch.nn.functional.cosine_similarity(relative.vectors[moved], direction.vectors[moved], dim=-1)
    assert torch.allclose(cosine, torch.ones_like(cosine), atol=1e-5)
    assert direction.n_plus == direction.n_minus == len(TARGET)


# rows of different lengths (left padding), so end-aligned positions differ in padded index
UNEVEN = TARGET + [PromptItem(QUESTION, "The small circle is green and round .", _image(RED))]


def _end_states(vlm, batch, k):
    """(batch, layer, k, d): each layer's output at the last k positions (hidden_states; the
    last layer's by a hook, since hidden_states[-1] is taken after the final norm)."""
    vlm.adapter.reset_state(vlm.model)
    with torch.no_grad():
        hidden = vlm.model(**batch.inputs, output_hidden_states=True).hidden_states
    last = _captured(vlm, batch.inputs, vlm.n_layers - 1, "resid_post")
    return torch.stack([h[:, -k:] for h in hidden[1:-1]] + [last[:, -k:]], dim=1)


def test_a_last_positions_direction_is_the_end_aligned_mean_difference(vlm):
    k = 5
    kwargs = dict(text_instruction="use the text .", image_instruction="use the image .")
    direction = P.instruction_direction(vlm, UNEVEN, positions=k, **kwargs)
    assert direction.positions == k and direction.vectors.shape == (vlm.n_layers, k, direction.vectors.shape[-1])
    states = [_end_states(vlm, _conflict(vlm, P.with_instruction(UNEVEN, text)), k) for text in kwargs.values()]
    assert torch.allclose(direction.vectors, states[0].mean(0) - states[1].mean(0), atol=1e-5)
    assert torch.allclose(direction.state_norms, torch.cat(states).norm(dim=-1).mean((0, 2)), atol=1e-5)
    one = P.instruction_direction(vlm, UNEVEN, **kwargs)  # the answer position alone is the last slot
    assert torch.allclose(direction.vectors[:, -1], one.vectors, atol=1e-6)
    relative, moved = direction.relative(), direction.norms > 0
    assert torch.allclose(relative.norms[moved], direction.state_norms[moved], rtol=1e-5)
    scale = relative.state_norms / direction.norms  # one scale for all k positions of a layer
    for layer in torch.nonzero(moved).flatten():
        assert torch.allclose(relative.vectors[layer], direction.vectors[layer] * scale[layer], rtol=1e-4, atol=1e-6)
    with pytest.raises(P.PatchingError, match="at least 1"):
        P.instruction_direction(vlm, UNEVEN, positions=0, **kwargs)
    with pytest.raises(P.PatchingError, match="fewer than"):
        P.instruction_direction(vlm, UNEVEN, positions=10_000, **kwargs)


def test_steering_over_the_last_positions_matches_a_plain_hook(vlm):
    k, alpha, layers = 4, 2.0, (0, 2)
    batch = _conflict(vlm, UNEVEN)
    pairs = _pairs(vlm) + [candidate_pair(vlm.tokenizer, "green", "red")]
    direction = P.instruction_direction(vlm, UNEVEN, positions=k)

    def add(layer, out):
        out[:, -k:] += alpha * direction.vectors[layer]  # slot j at the j-th of the last k positions

    want = _plain_adding(vlm, batch.inputs, layers, add)
    got = P.steer(vlm, batch, pairs, direction, alpha=alpha, layers=layers, keep_logits=True)
    assert (got.intervened.logits - want).abs().max().item() <= 1e-5
    assert got.effect.abs().max().item() > 1e-4
    zero = P.steer(vlm, batch, pairs, direction, alpha=0.0, keep_logits=True)
    assert (zero.intervened.logits - _plain(vlm, batch.inputs)).abs().max().item() <= 1e-6
    with pytest.raises(P.PatchingError, match="where='answer'"):
        P.steer(vlm, batch, pairs, direction, alpha=1.0, where="all")


def test_instructions_with_unknown_words_are_refused():
    vlm = load_vlm(tiny_model("llava"))
    with pytest.raises(CaseError, match="zebra"):
        P.instruction_direction(vlm, TARGET, text_instruction="use the zebra .")


def _steering_setup():
    """Tiny llava, four items with their pairs, and an instruction direction scaled to norm 5
    (strong enough to move some answers of a random model)."""
    vlm = load_vlm(tiny_model("llava"))
    items = TARGET + SOURCE
    pairs = [candidate_pair(vlm.tokenizer, t, v) for t, v in ANSWERS + [("blue", "red"), ("green", "purple")]]
    direction = P.instruction_direction(vlm, items)
    direction = P.SteeringDirection(direction.vectors / direction.norms[:, None] * 5.0, "text", "image", 4, 4)
    return vlm, items, pairs, direction


def test_steering_effect_counts_what_a_hooked_forward_answers():
    vlm, items, pairs, direction = _steering_setup()
    report = P.steering_effect(vlm, items, pairs, direction, alphas=(-2.0, 2.0), layers=[2, 3],
                               correct_only=False, n_boot=0)
    assert [r.alpha for r in report.rows] == [-2.0, 0.0, 2.0]
    batches = vlm.passes(items, ("vision", "text", "conflict"))
    h_v = entropy(_plain(vlm, batches["vision"].inputs))
    h_t = entropy(_plain(vlm, batches["text"].inputs))
    assert np.allclose(report.dh_rel, dh_rel(h_t.numpy(), h_v.numpy()), atol=1e-5)
    for row in report.rows:
        handles = []
        for layer in (2, 3):
            def hook(mod, args, out, layer=layer, alpha=row.alpha):
                out[:, -1] += alpha * direction.vectors[layer]
            handles.append(vlm.layers[layer].register_forward_hook(hook))
        try:
            top1 = _plain(vlm, batches["conflict"].inputs).argmax(-1)
        finally:
            for h in handles:
                h.remove()
        want = [{"text": "text", "vision": "vision"}.get(p.classify(int(t)), "other") for p, t in zip(pairs, top1)]
        assert list(row.labels) == want
        assert row.ratios.n_text == want.count("text") and row.ratios.n_vision == want.count("vision")
        assert row.curve.status == "too_few_cases"
    means = [r.mean_logit_diff for r in report.rows]
    assert len(set(np.round(means, 6))) == 3  # the alphas move the logit difference
    assert report.to_dict()["rows"][1]["tfr_shift"] in (0.0, None)


def test_tfr_shift_interval_matches_the_binomial_law_of_paired_resamples():
    """k of m kept cases turn from vision to text under steering, the rest stay vision: a paired
    resample's shift is (changed cases drawn) / m ~ Binomial(m, k/m) / m, whose quantiles the
    bootstrap interval must match (to one case); unpaired resampling would be wider."""
    from scipy.stats import binom

    from interp.following import tfr_vfr

    m, k = 80, 20
    base = ("vision",) * m + ("other",) * 5
    steered = ("text",) * k + ("vision",) * (m - k) + ("other",) * 5
    kept = (True,) * m + (False,) * 5
    rows = tuple(P.SteeringRow(a, lab, tfr_vfr(l for l, kk in zip(lab, kept) if kk), None, 0.0)
                 for a, lab in ((0.0, base), (1.0, steered)))
    report = P.SteeringReport((1,), "answer", m + 5, kept, (0.0,) * (m + 5), rows)
    assert report.tfr_shift(1.0) == pytest.approx(k / m)
    lo, hi = report.tfr_shift_ci(1.0, n_boot=4000, seed=3)
    assert abs(lo - binom.ppf(0.025, m, k / m) / m) <= 1 / m + 1e-12
    assert abs(hi - binom.ppf(0.975, m, k / m) / m) <= 1 / m + 1e-12
    none = P.SteeringReport((1,), "answer", 3, (True,) * 3, (0.0,) * 3,
                            tuple(P.SteeringRow(a, ("other",) * 3, tfr_vfr(["other"] * 3), None, 0.0)
                                  for a in (0.0, 1.0)))
    assert none.tfr_shift_ci(1.0) is None  # TFR undefined: no interval, not a number


def test_steering_in_chunks_and_windows_equals_one_batch_per_window():
    vlm, items, pairs, direction = _steering_setup()
    kw = dict(alphas=(-2.0, 2.0), correct_only=False, n_boot=0)
    whole = [P.steering_effect(vlm, items, pairs, direction, layers=w, **kw) for w in ([2, 3], [0])]
    chunked = P.steering_effects(vlm, items, pairs, direction, windows=([2, 3], [0]), batch_size=3, **kw)
    for a, b in zip(whole, chunked):
        assert a.layers == b.layers and a.kept == b.kept
        assert np.allclose(a.dh_rel, b.dh_rel, atol=1e-5)
        for ra, rb in zip(a.rows, b.rows):
            assert ra.alpha == rb.alpha and ra.labels == rb.labels
            assert ra.mean_logit_diff == pytest.approx(rb.mean_logit_diff, abs=1e-4)
    assert whole[0].rows[0].labels != whole[1].rows[0].labels or \
        whole[0].rows[0].mean_logit_diff != pytest.approx(whole[1].rows[0].mean_logit_diff)  # windows differ
    with pytest.raises(P.PatchingError, match="batch_size"):
        P.steering_effects(vlm, items, pairs, direction, batch_size=0)


def test_with_instruction_places_the_instruction_where_asked():
    from hooks.prompts import PromptItem

    items = [PromptItem("what colour ?", "it is red .", None), PromptItem("what shape ?", None, None, "be brief .")]
    start = P.with_instruction(items, " use the text . ", placement="start")
    assert [it.preamble for it in start] == ["use the text .", "be brief . use the text ."]
    assert [(it.question, it.context) for it in start] == [(it.question, it.context) for it in items]
    question = P.with_instruction(items, "use the text .", placement="question")
    assert [it.question for it in question] == ["use the text . what colour ?", "use the text . what shape ?"]
    assert [it.preamble for it in question] == [None, "be brief ."]
    end = P.with_instruction(items, "use the text .")  # the default: where data/tiny_vlm was trained with it
    assert [it.question for it in end] == ["what colour ? use the text .", "what shape ? use the text ."]
    assert [it.preamble for it in end] == [None, "be brief ."]
    with pytest.raises(ValueError, match="placement"):
        P.with_instruction(items, "use the text .", placement="middle")


def test_optimized_direction_is_what_steer_applies_and_respects_its_bound(vlm):
    target, pairs = _conflict(vlm, TARGET), _pairs(vlm)
    layer = 1
    got = P.optimize_direction(vlm, target, pairs, layer=layer, max_norm=0.5, steps=8)
    # the state norm it scales by: the mean norm of resid_post at the answer position (plain hook)
    seen = []
    handle = vlm.layers[layer].register_forward_hook(lambda mod, args, out: seen.append(
        (out[0] if isinstance(out, tuple) else out)[:, -1].norm(dim=-1).mean().item()))
    try:
        _plain(vlm, target.inputs)
    finally:
        handle.remove()
    assert got.direction.state_norms[layer].item() == pytest.approx(seen[0], rel=1e-5)
    assert got.direction.norms[layer].item() <= 0.5 * seen[0] * (1 + 1e-5)
    others = [l for l in range(vlm.n_layers) if l != layer]
    assert (got.direction.vectors[others] == 0).all()
    # its objective values are those of the nnsight steering path with alpha 1 (and 0)
    steered = P.steer(vlm, target, pairs, got.direction, alpha=1.0, layers=[layer])
    assert got.history[0] == pytest.approx(steered.clean.logit_diff.mean().item(), abs=1e-4)
    assert got.final == pytest.approx(steered.intervened.logit_diff.mean().item(), abs=1e-4)
    assert len(got.history) == 8 and got.final > got.history[0]


def test_optimized_direction_first_step_follows_the_finite_difference_gradient():
    """Adam's first step moves each coordinate by lr in the sign of the gradient: compare the
    signs with central differences of the objective taken through `steer` (no autograd)."""
    vlm = load_vlm(tiny_model("llava"))
    target, pairs = _conflict(vlm, TARGET), _pairs(vlm)
    got = P.optimize_direction(vlm, target, pairs, layer=0, max_norm=100.0, steps=1, lr=0.01)
    v = got.direction.vectors[0].float()
    assert torch.allclose(v.abs(), torch.full_like(v, 0.01), rtol=1e-3)
    eps, checked = 1e-2, 0
    for i in torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:12].tolist():
        basis = torch.zeros_like(got.direction.vectors)
        basis[0, i] = 1.0
        e = P.SteeringDirection(basis, "e", "0", 1, 1)
        up = P.steer(vlm, target, pairs, e, alpha=eps, layers=[0]).intervened.logit_diff.mean().item()
        down = P.steer(vlm, target, pairs, e, alpha=-eps, layers=[0]).intervened.logit_diff.mean().item()
        fd = (up - down) / (2 * eps)
        if abs(fd) > 1e-4:
            checked += 1
            assert np.sign(fd) == np.sign(v[i].item()), (i, fd, v[i].item())
    assert checked >= 6


def test_optimize_direction_refuses_bad_arguments():
    vlm = load_vlm(tiny_model("llava"))
    target, pairs = _conflict(vlm, TARGET), _pairs(vlm)
    with pytest.raises(P.PatchingError, match="steps"):
        P.optimize_direction(vlm, target, pairs, layer=0, steps=0)
    with pytest.raises(P.PatchingError, match="max_norm"):
        P.optimize_direction(vlm, target, pairs, layer=0, max_norm=0)
