"""The text tower's frozen-block cache (TextOptions.cache_frozen_blocks, mmpt/frozen_blocks.py): for methods whose
first text input is deep (MMRL's representation tokens, MMA's adapters) the states entering that block are
computed once per class list. Logits and gradients over two training steps are bit-identical to the full pass on
every encoder path (plain, shared prefix, chunks, checkpointing, per prompt set) and under autocast; the leading
blocks do not run again while the class list, the weights and the autocast state are unchanged, and run again
when one of them changes; nothing enters the state dict; a method with a shallow prompt (TCP) is not cached.
The image tower's counterpart: MMRL's frozen image pass starts from its prompted pass's states."""
import pytest
import torch
import torch.nn.functional as F

import mmpt
import trainers  # noqa: F401  (declares the methods)
from mmpt.encoders import PromptedImageEncoder, TowerSchedule
from mmpt.frozen_blocks import first_input_layer
from tests.e2e import small_clip_model
from trainers.mmrl import MMRL

CLASSNAMES = ["dog", "golden_retriever", "sea lion", "cat", "tabby cat", "great white shark", "owl"]
METHODS = {
    "MMRL": dict(N_REP_TOKENS=3, REP_DIM=16, REP_LAYERS=[3, 4], TEMPLATE="a photo of a {}, a type of pet."),
    "MMA": dict(ADAPTER_START=3, ADAPTER_END=4, ADAPTER_DIM=8, TEXT_CTX_INIT="a photo of a"),
}
PATHS = {"shared prefix": {}, "plain": dict(share_prefix=False), "chunks + checkpointing": dict(
    chunk_size=3, checkpoint=True), "plain chunks": dict(share_prefix=False, chunk_size=2, truncate=False)}


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model(layers=4)


def build(small_clip, method, **levers):
    torch.manual_seed(1)
    model = mmpt.create_model(method, small_clip, CLASSNAMES, PREC="fp32", **METHODS[method])
    with torch.no_grad():
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    model.set_text_options(**levers)
    return model


def two_steps(model, autocast_dtype=None):
    """Two SGD steps (the second reuses the first's cached states): logits and gradients of each."""
    generator = torch.Generator().manual_seed(2)
    images, labels = torch.randn(3, 3, 32, 32, generator=generator), torch.tensor([0, 4, 6])
    optimizer = torch.optim.SGD(model.prompt_learner.parameters(), lr=0.5)
    record = []
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits = model.outputs(images).logits  # MMRL: "itm" and "readout"
        sum(F.cross_entropy(value.float(), labels) for value in logits.values()).backward()
        record.append((torch.cat(list(logits.values())).detach(), [p.grad.clone() for p in model.prompt_learner.parameters()]))
        optimizer.step()
    return record


def assert_bit_identical(ours, full):
    for (logits, grads), (full_logits, full_grads) in zip(ours, full):
        assert torch.equal(logits, full_logits)
        assert all(torch.equal(g, h) for g, h in zip(grads, full_grads))


class BlockCalls:
    """Counts the text tower's block-0 runs (calls of its ln_1) and the last block's."""

    def __init__(self, model):
        blocks = model.text_encoder.transformer.resblocks
        self.first = self.last = 0
        blocks[0].ln_1.register_forward_hook(lambda *a: setattr(self, "first", self.first + 1))
        blocks[-1].ln_1.register_forward_hook(lambda *a: setattr(self, "last", self.last + 1))


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("method", list(METHODS))
def test_logits_and_gradients_equal_the_full_pass(small_clip, method, path):
    cached = build(small_clip, method, **PATHS[path])
    full = build(small_clip, method, cache_frozen_blocks=False, **PATHS[path])
    assert_bit_identical(two_steps(cached), two_steps(full))
    assert cached.text_encoder.frozen_block_cache.states and not full.text_encoder.frozen_block_cache.states


@pytest.mark.parametrize("method", list(METHODS))
def test_under_autocast_equal_the_full_pass_under_autocast(small_clip, method):
    """The states cached by an fp32 pass are not reused under autocast (they would differ in the last bits)."""
    ours, full = build(small_clip, method), build(small_clip, method, cache_frozen_blocks=False)
    with torch.no_grad():
        ours.class_features()
    assert ours.text_encoder.frozen_block_cache.states
    assert_bit_identical(two_steps(ours, torch.bfloat16), two_steps(full, torch.bfloat16))


def test_leading_blocks_run_once_per_class_list_and_weights(small_clip):
    model = build(small_clip, "MMRL")
    calls = BlockCalls(model)
    with torch.no_grad():
        first = model.class_features()
        once = (calls.first, calls.last)
        assert once[0] > 0
        again = model.class_features()
        assert (calls.first, calls.last) == (once[0], 2 * once[1])  # block 0 did not run again, the last one did
        assert torch.equal(first, again)
        # another class list (same count, one name changed): computed afresh, equal to its own full pass
        other = mmpt.create_model("MMRL", small_clip, CLASSNAMES[:-1] + ["sea turtle"], PREC="fp32", **METHODS["MMRL"])
        other.prompt_learner.load_state_dict(model.prompt_learner.state_dict())
        other.text_encoder.frozen_block_cache = model.text_encoder.frozen_block_cache  # the same cache object
        changed = other.class_features()
        other.set_text_options(cache_frozen_blocks=False)
        assert torch.equal(changed, other.class_features()) and not torch.equal(changed, first)
        # the frozen weights changed in place (a loaded backbone): the stale states are not used
        assert torch.equal(model.class_features(), first)  # back to the first class list: bound to it again
        weight = model.text_encoder.transformer.resblocks[0].mlp.c_fc.weight
        original, before = weight.clone(), calls.first
        assert torch.equal(model.class_features(), first) and calls.first == before
        weight.mul_(1.5)
        moved = model.class_features()
        assert calls.first == before + once[0] and not torch.equal(moved, first)
        model.set_text_options(cache_frozen_blocks=False)
        assert torch.equal(moved, model.class_features())
        weight.copy_(original)


def test_not_in_the_state_dict_and_no_cache_without_a_deep_first_input(small_clip):
    model = build(small_clip, "MMRL")
    keys = set(model.state_dict())
    with torch.no_grad():
        model.class_features()
    assert model.text_encoder.frozen_block_cache.states and set(model.state_dict()) == keys
    assert not any("frozen" in key for key in keys)
    tcp = mmpt.create_model("TCP", small_clip, CLASSNAMES, INJECT_LAYER=2, PREC="fp32")
    with torch.no_grad():
        tcp.class_features()
    assert not tcp.text_encoder.frozen_block_cache.states  # its shallow context enters at layer 0


def test_first_input_layer_reads_the_whole_schedule():
    p = torch.zeros(2, 4)
    assert first_input_layer(TowerSchedule(), 12) == 12
    assert first_input_layer(TowerSchedule(prompts=[p]), 12) == 0
    assert first_input_layer(TowerSchedule(prompts=[None, None, p]), 12) == 2
    assert first_input_layer(TowerSchedule(adapters=[None, None, None, lambda x: x]), 12) == 3
    assert first_input_layer(TowerSchedule(prompts=[None] * 5 + [p], remove=[None, None, 1]), 12) == 2


def test_per_prompt_set_path_equals_the_full_pass(small_clip):
    """Grouped prompt sets (CoCoOp's path) entering at a deep layer: the cache keeps one entry per set count."""
    encoder = mmpt.create_model("MMA", small_clip, CLASSNAMES, PREC="fp32", **METHODS["MMA"]).text_encoder
    ids = mmpt.create_model("MMA", small_clip, CLASSNAMES, PREC="fp32", **METHODS["MMA"]).token_ids
    sets = torch.randn(3, 2, 64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    schedule = TowerSchedule(prompts=[None, None, sets])
    ours = encoder.per_prompt_set(ids, schedule)
    (grad,) = torch.autograd.grad(ours.sum(), sets)
    again = encoder.per_prompt_set(ids, schedule)
    full = encoder.with_options(cache_frozen_blocks=False).per_prompt_set(ids, schedule)
    assert torch.equal(ours, full) and torch.equal(again, full)
    assert torch.equal(grad, torch.autograd.grad(full.sum(), sets)[0])


def test_frozen_image_pass_starts_from_the_prompted_pass(small_clip):
    """MMRL's frozen CLIP image features of the batch start from the prompted pass's states before its first
    input (blocks 0..s-1 run once per step): equal to a full frozen pass bit for bit; not reused for images changed
    in place or under another autocast state."""
    model = build(small_clip, "MMRL")
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    full = PromptedImageEncoder(small_clip, share_leading_blocks=False)  # on the same blocks: references first
    with torch.no_grad():
        expected = F.normalize(full(images).float(), dim=-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected_bf16 = F.normalize(full(images).float(), dim=-1)
        expected_halved = F.normalize(full(images * 0.5).float(), dim=-1)
    runs = []
    model.image_encoder.visual.transformer.resblocks[0].ln_1.register_forward_hook(lambda *a: runs.append(1))
    outputs = MMRL.training_outputs(model, images, torch.tensor([0, 1, 2]))
    assert len(runs) == 1  # the prompted pass; the frozen one started at block s
    assert torch.equal(outputs.extra["frozen_image"], expected)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(model.frozen.image_features(model, images), expected_bf16)
        assert len(runs) == 2
        model.outputs(images)  # the same images again, in fp32: from the first pass's states
        assert len(runs) == 2
        images.mul_(0.5)
        assert torch.equal(model.frozen.image_features(model, images), expected_halved)
        assert len(runs) == 3
