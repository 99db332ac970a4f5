"""The prompted encoders against independent computations: CLIP's own encode_text / encode_image, and CLIP's own
blocks (nn.MultiheadAttention, sequence-first, CLIP's causal mask) with the prompts spliced in by forward hooks."""
import contextlib

import clip
import pytest
import torch
from clip.model import CLIP

from mmpt.clip_backbone import build_random_clip
from mmpt.encoders import PromptedImageEncoder, PromptedTextEncoder, TextOptions, TowerSchedule
from mmpt.prompted_clip import PromptedCLIP, Prompts, normal_prompts
from mmpt.sentences import ClassSentences, init_text_context, placeholder_words, readable
from dassl.utils import ConfigError
from tests.e2e import perturb_constant_parameters

ATOL = 1e-5
SENTENCES = ["X X a photo of a dog.", "X X a photo of a great white shark.", "X X cat.",
             "X X a photo of a yellow lady's slipper, a type of flower."]


@pytest.fixture(scope="module")
def tiny():
    return build_random_clip("random-tiny-ViT", seed=0)


@pytest.fixture(scope="module")
def deep_clip():
    """5 layers per tower, vision width 96 != text width 64, so MPL-style schedules have room to grow."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = CLIP(48, 32, 5, 96, 8, 77, 49408, 64, 2, 5)
        perturb_constant_parameters(model)
    return model.float().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def token_ids():
    return clip.tokenize(SENTENCES)


def randn(*shape, seed=0, scale=0.5):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def widths(model):
    return model.ln_final.weight.shape[0], model.visual.conv1.out_channels


def images_for(model, n=3, seed=7):
    size = model.visual.input_resolution
    return randn(n, 3, size, size, seed=seed, scale=1.0)


# ---- independent references: CLIP's own modules, prompts spliced in by hooks --------------------------------

@contextlib.contextmanager
def hooked(handles):
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def splice_hook(layer, prompts, remove, state, region_start):
    """Pre-hook for resblocks[layer] (input [L, N, d]): remove from the end of the region, then append."""
    def hook(module, args):
        x = args[0]
        added = prompts[layer] if layer < len(prompts) else None
        removed = remove[layer] if remove is not None and layer < len(remove) else None
        if added is None and not removed:
            return None
        k = state["k"]
        removed = (k if added is not None else 0) if removed is None else removed
        if added is None:
            added = x.new_zeros(0, x.shape[-1])
        # [n, d] shared or [N, n, d] per sequence -> sequence-first [n, N, d]
        added = added.unsqueeze(1).expand(-1, x.shape[1], -1) if added.dim() == 2 else added.transpose(0, 1)
        start = region_start(x, k)
        state["k"] = k - removed + added.shape[0]
        state["counts"].append(state["k"])
        return (torch.cat([x[: start + k - removed], added, x[start + k:]]),)
    return hook


def reference_text(model, token_ids, prompts, remove=None):
    """Embeddings with the shallow prompts substituted, + positional embedding, clip_model.transformer (its
    blocks, its causal mask) with hooks for the deeper layers, ln_final at the moved EOT, projection."""
    n0 = prompts[0].shape[-2] if prompts and prompts[0] is not None else 0
    state = {"k": n0, "counts": []}
    x = model.token_embedding(token_ids)
    if n0:
        shallow = prompts[0] if prompts[0].dim() == 3 else prompts[0].expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], shallow, x[:, 1 + n0:]], dim=1)
    x = (x + model.positional_embedding[: x.shape[1]]).permute(1, 0, 2)
    blocks = model.transformer.resblocks
    handles = [blocks[l].register_forward_pre_hook(splice_hook(l, prompts, remove, state, lambda x, k: 1))
               for l in range(1, len(blocks))]
    with hooked(handles):
        x = model.transformer(x).permute(1, 0, 2)
    eot = token_ids.argmax(-1) + state["k"] - n0
    return model.ln_final(x)[torch.arange(x.shape[0]), eot] @ model.text_projection


def reference_image(model, images, prompts, remove=None):
    """clip_model.encode_image with the shallow prompts appended by a pre-hook on ln_pre and the deeper ones
    spliced in by pre-hooks on the resblocks. Returns (features, prompt count after each splice)."""
    n0 = prompts[0].shape[-2] if prompts and prompts[0] is not None else 0
    state = {"k": n0, "counts": [n0]}
    visual = model.visual

    def append_shallow(module, args):
        x = args[0]
        shallow = prompts[0] if prompts[0].dim() == 3 else prompts[0].expand(x.shape[0], -1, -1)
        return (torch.cat([x, shallow], dim=1),)

    blocks = visual.transformer.resblocks
    handles = [blocks[l].register_forward_pre_hook(splice_hook(l, prompts, remove, state,
                                                               lambda x, k: x.shape[0] - k))
               for l in range(1, len(blocks))]
    if n0:
        handles.append(visual.ln_pre.register_forward_pre_hook(append_shallow))
    with hooked(handles):
        return model.encode_image(images), state["counts"]


# ---- no prompts: exactly CLIP -----------------------------------------------------------------------------------

@pytest.mark.parametrize("truncate", [True, False])
def test_no_prompts_equal_clip(tiny, token_ids, truncate):
    with torch.no_grad():
        ours = PromptedTextEncoder(tiny, TextOptions(truncate=truncate))(token_ids)
        assert torch.allclose(ours, tiny.encode_text(token_ids), atol=ATOL)
        images = images_for(tiny)
        assert torch.allclose(PromptedImageEncoder(tiny)(images), tiny.encode_image(images), atol=ATOL)


def test_resnet_image_tower_plain_and_refuses_prompts():
    model = build_random_clip("random-tiny-RN", seed=0)
    images = images_for(model, n=2)
    encoder = PromptedImageEncoder(model)
    with torch.no_grad():
        assert torch.allclose(encoder(images), model.encode_image(images), atol=ATOL)
    with pytest.raises(ValueError, match="ViT"):
        encoder(images, TowerSchedule([torch.zeros(1, 64)]))


# ---- text prompts ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_sequence", [False, True])
def test_shallow_text_prompts_replace_placeholder_embeddings(tiny, token_ids, per_sequence):
    d_t, _ = widths(tiny)
    shape = (len(SENTENCES), 2, d_t) if per_sequence else (2, d_t)
    ctx = randn(*shape, seed=1)
    with torch.no_grad():
        expected = reference_text(tiny, token_ids, [ctx])
        for truncate in (True, False):
            got = PromptedTextEncoder(tiny, TextOptions(truncate=truncate))(token_ids, TowerSchedule([ctx]))
            assert torch.allclose(got, expected, atol=ATOL)
        assert not torch.allclose(expected, tiny.encode_text(token_ids), atol=1e-3)  # the prompts matter


def test_deep_text_replacement_equals_hooked_clip(deep_clip, token_ids):
    d_t, _ = widths(deep_clip)
    prompts = [randn(2, d_t, seed=s) for s in range(4)]  # layers 0..3 of 5; layer 4 carries
    prompts[2] = None  # a layer without fresh prompts carries its tokens on
    with torch.no_grad():
        expected = reference_text(deep_clip, token_ids, prompts)
        got = PromptedTextEncoder(deep_clip)(token_ids, TowerSchedule(prompts))
        assert torch.allclose(got, expected, atol=ATOL)
        shallow_only = reference_text(deep_clip, token_ids, prompts[:1])
        assert not torch.allclose(got, shallow_only, atol=1e-3)  # the deep prompts matter


def test_text_add_remove_schedule_moves_eot_and_truncation_stays_exact(deep_clip, token_ids):
    """Region 2 -> (rm 1, add 3) 4 -> (rm 0, add 1) 5 -> (rm 4, add 0) 1: the EOT moves with the region."""
    d_t, _ = widths(deep_clip)
    prompts = [randn(2, d_t, seed=1), randn(3, d_t, seed=2), randn(len(SENTENCES), 1, d_t, seed=3), None]
    remove = [None, 1, 0, 4]
    short = token_ids[:, : int(token_ids.argmax(-1).max()) + 1]  # the reference's mask holds 77 tokens at most
    with torch.no_grad():
        expected = reference_text(deep_clip, short, prompts, remove)
        encoder = PromptedTextEncoder(deep_clip)
        schedule = TowerSchedule(prompts, remove)
        assert torch.allclose(encoder.with_options(truncate=True)(token_ids, schedule), expected, atol=ATOL)
        assert torch.allclose(encoder.with_options(truncate=False)(token_ids, schedule), expected, atol=ATOL)


@pytest.mark.parametrize("chunk_size, checkpoint", [(3, False), (0, True), (1, True)])
def test_chunked_and_checkpointed_text_equal_plain_with_gradients(deep_clip, token_ids, chunk_size, checkpoint):
    d_t, _ = widths(deep_clip)
    encoder = PromptedTextEncoder(deep_clip)

    def features_and_grads(**options):
        prompts = [randn(2, d_t, seed=1), randn(len(SENTENCES), 2, d_t, seed=2), randn(2, d_t, seed=3)]
        prompts = [p.requires_grad_() for p in prompts]
        features = encoder.with_options(**options)(token_ids, TowerSchedule(prompts))
        (features * randn(*features.shape, seed=9)).sum().backward()
        return features.detach(), [p.grad for p in prompts]

    plain, plain_grads = features_and_grads()
    got, got_grads = features_and_grads(chunk_size=chunk_size, checkpoint=checkpoint)
    assert torch.allclose(got, plain, atol=ATOL)
    for grad, expected in zip(got_grads, plain_grads):
        assert expected.abs().sum() > 0
        assert torch.allclose(grad, expected, atol=ATOL)


# ---- visual prompts ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_image", [False, True])
def test_deep_visual_replacement_equals_hooked_clip(deep_clip, per_image):
    _, d_v = widths(deep_clip)
    images = images_for(deep_clip)
    shape = (len(images), 3, d_v) if per_image else (3, d_v)
    prompts = [randn(*shape, seed=s) for s in range(4)]
    with torch.no_grad():
        expected, _ = reference_image(deep_clip, images, prompts)
        assert torch.allclose(PromptedImageEncoder(deep_clip)(images, TowerSchedule(prompts)), expected, atol=ATOL)
        shallow_only, _ = reference_image(deep_clip, images, prompts[:1])
        assert not torch.allclose(expected, shallow_only, atol=1e-3)


def test_mpl_add_remove_carry_on_vision(deep_clip):
    """n = 1, add 2, remove 1 per layer up to depth 4: 1, 2, 3, 4 prompt tokens, carried through layer 4."""
    _, d_v = widths(deep_clip)
    images = images_for(deep_clip)
    prompts = [randn(1, d_v, seed=0)] + [randn(2, d_v, seed=s) for s in range(1, 4)]
    remove = [None, 1, 1, 1]
    with torch.no_grad():
        expected, counts = reference_image(deep_clip, images, prompts, remove)
        assert counts == [1, 2, 3, 4]
        got = PromptedImageEncoder(deep_clip)(images, TowerSchedule(prompts, remove))
        assert torch.allclose(got, expected, atol=ATOL)
        replaced, _ = reference_image(deep_clip, images, prompts)  # carrying differs from replacing
        assert not torch.allclose(got, replaced, atol=1e-3)


def test_bad_schedules_fail_with_one_line_errors(tiny, token_ids):
    d_t, d_v = widths(tiny)
    with pytest.raises(ValueError, match="text prompts: 3 layers given, the tower has 2"):
        PromptedTextEncoder(tiny)(token_ids, TowerSchedule([randn(2, d_t)] * 3))
    with pytest.raises(ValueError, match="cannot remove 3 prompt tokens"):
        PromptedImageEncoder(tiny)(images_for(tiny), TowerSchedule([randn(2, d_v), randn(1, d_v)], [None, 3]))
    with pytest.raises(ValueError, match="expected"):
        PromptedTextEncoder(tiny)(token_ids, TowerSchedule([randn(2, d_t + 1)]))


# ---- PromptedCLIP base -------------------------------------------------------------------------------------------

class OneShallowOneDeep(PromptedCLIP):
    def __init__(self, clip_model, texts):
        super().__init__(clip_model, ClassSentences(texts, placeholders=2))
        d_t, d_v = widths(clip_model)
        self.prompt_learner = torch.nn.Module()
        self.prompt_learner.ctx = torch.nn.Parameter(init_text_context(clip_model, 2, "a photo"))
        self.prompt_learner.visual = torch.nn.Parameter(randn(2, 1, d_v, seed=5))

    def compute_prompts(self):
        return Prompts(text=[self.prompt_learner.ctx], vision=list(self.prompt_learner.visual))


def test_prompted_clip_logits_and_state(tiny):
    texts = ["a photo of a dog.", "a photo of a cat."]
    model = OneShallowOneDeep(tiny, texts).eval()
    images = images_for(tiny, n=2)
    with torch.no_grad():
        # initialised from "a photo", the shallow context reproduces the plain sentences
        text = torch.nn.functional.normalize(tiny.encode_text(clip.tokenize(texts)), dim=-1)
        assert torch.allclose(model.class_features(), text, atol=ATOL)
        image, _ = reference_image(tiny, images, list(model.prompt_learner.visual))
        image = torch.nn.functional.normalize(image, dim=-1)
        assert torch.allclose(model(images), tiny.logit_scale.exp() * image @ text.t(), atol=1e-4)
        assert torch.allclose(model(images, class_features=text), model(images), atol=1e-5)
    assert not any(key.endswith("token_ids") for key in model.state_dict())  # class-independent checkpoints
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"prompt_learner.ctx", "prompt_learner.visual"}


def test_init_text_context(tiny):
    ids = clip.tokenize("a photo of a")[0, 1:3]
    assert torch.equal(init_text_context(tiny, 2, "a photo of a"), tiny.token_embedding.weight[ids])
    random_ctx = init_text_context(tiny, 4)
    assert random_ctx.shape == (4, 64) and 0.01 < random_ctx.std() < 0.03
    with pytest.raises(ConfigError, match="CTX_INIT"):
        init_text_context(tiny, 5, "a photo of a")


def test_prefix_and_normal_prompts():
    assert placeholder_words(3) == "X X X" and readable("a_photo of a") == "a photo of a"
    prompts = normal_prompts(3, 4, 64)
    assert isinstance(prompts, torch.nn.Parameter) and prompts.shape == (3, 4, 64)
    assert 0.01 < prompts.std() < 0.03
