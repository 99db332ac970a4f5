"""Shared-prefix text encoding (TEXT_SHARED_PREFIX): the prefix every class sentence shares runs once, each
suffix to its own EOT. Its logits and gradients must equal the plain pass (every sentence on all its tokens)
for every trainer, every CoOp class position, CoCoOp's per-image prompt sets, deep prompts and MPL's text
schedule, also chunked and checkpointed; and its features equal the reference encoder's (CLIP's own blocks)."""
import clip
import pytest
import torch
import torch.nn.functional as F

import mmpt.encoders as encoders
from benchmarks.reference import ReferenceTextEncoder
from mmpt.encoders import PromptedTextEncoder, TowerSchedule
from mmpt.shared_prefix import shared_prefix_length
from mmpt.sentences import word_count as word_token_count
from tests.e2e import small_clip_model, trainer_node
from trainers import cocoop, coop, ivlp, maple, mpl, mudpt, vpt, zsclip

# names of 1 to 4 tokens (suffixes of different lengths); two share their first word, one has an apostrophe
CLASSNAMES = ["dog", "great white shark", "great grey owl", "yellow lady's slipper", "cat"]
DEPTH = 3


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model(layers=DEPTH)


def perturbed(model):
    """Prompts moved away from their initialisation (CSC contexts start identical in every class: not here)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


MODELS = {
    "ZeroshotCLIP": lambda c: zsclip.ZeroshotCLIPModel(c, CLASSNAMES, trainer_node(zsclip, "ZSCLIP",
                                                                                  TEMPLATE="a photo of a {}.")),
    "CoOp end": lambda c: coop.CoOpCLIP(c, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4)),
    "CoOp middle": lambda c: coop.CoOpCLIP(c, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4,
                                                                       CLASS_TOKEN_POSITION="middle")),
    "CoOp front": lambda c: coop.CoOpCLIP(c, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4,
                                                                      CLASS_TOKEN_POSITION="front")),
    "CoOp CSC end": lambda c: coop.CoOpCLIP(c, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4, CSC=True)),
    "CoOp CSC middle": lambda c: coop.CoOpCLIP(c, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4, CSC=True,
                                                                           CLASS_TOKEN_POSITION="middle")),
    "CoOp ctxv1": lambda c: coop.CoOpCLIP(c, CLASSNAMES, trainer_node(coop, "COOP", CTX_INIT="a photo of a")),
    "CoCoOp": lambda c: cocoop.CoCoOpCLIP(c, CLASSNAMES, trainer_node(cocoop, "COCOOP", CTX_INIT="a photo of a")),
    "VPT": lambda c: vpt.VPTCLIP(c, CLASSNAMES, trainer_node(vpt, "VPT", PROMPT_DEPTH_VISION=DEPTH)),
    "IVLP": lambda c: ivlp.IVLPCLIP(c, CLASSNAMES, trainer_node(ivlp, "IVLP", PROMPT_DEPTH_TEXT=DEPTH,
                                                                PROMPT_DEPTH_VISION=DEPTH)),
    "MaPLe": lambda c: maple.MaPLeCLIP(c, CLASSNAMES, trainer_node(maple, "MAPLE", PROMPT_DEPTH=DEPTH)),
    "MuDPT": lambda c: mudpt.MuDPTCLIP(c, CLASSNAMES, trainer_node(mudpt, "MUDPT", PROMPT_DEPTH=DEPTH,
                                                                   INJECTION_WIDTH=32, INJECTION_HEADS=2)),
    "MPL": lambda c: mpl.MPLCLIP(c, CLASSNAMES, trainer_node(mpl, "MPL", N_CTX=2, PROMPT_DEPTH=DEPTH)),
    # the text-side schedule: layer 1 drops 1 of 2 tokens and appends 4 (region 5), layer 2 drops 3, appends 4
    "MPL text schedule": lambda c: mpl.MPLCLIP(c, CLASSNAMES, trainer_node(
        mpl, "MPL", N_CTX=2, PROMPT_DEPTH=DEPTH, TEXT_N_ADD_OP=[2, 2], TEXT_N_RM_OP=[1, 3])),
}


def logits_and_gradients(model, images, share_prefix, **options):
    model.set_text_options(share_prefix=share_prefix, **options)
    model.zero_grad(set_to_none=True)
    logits = model(images)
    weights = torch.linspace(-1, 1, logits.numel()).reshape(logits.shape)
    if logits.requires_grad:  # ZeroshotCLIP learns nothing
        ((logits * weights).sum() + F.cross_entropy(logits, torch.tensor([0, 3]))).backward()
    return logits.detach(), {name: p.grad for name, p in model.prompt_learner.named_parameters()}


def close_gradients(got, expected, name=""):
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item(),
                               msg=lambda message: f"{name}: {message}")


@pytest.fixture
def shared_calls(monkeypatch):
    """Counts the blocks run by the shared-prefix path (so a test knows the lever really ran)."""
    calls = []
    original = encoders.run_block_with_prefix

    def counted(*args):
        calls.append(1)
        return original(*args)

    monkeypatch.setattr(encoders, "run_block_with_prefix", counted)
    return calls


# chunks + checkpointing on one model of each text mechanism (shared / per-class shallow, per-image sets, deep
# replacement, remove / append schedule); every model in one pass
CHUNKED = ["CoOp middle", "CoOp CSC end", "CoCoOp", "MaPLe", "MPL text schedule"]
CASES = [(name, {}) for name in MODELS] + [(name, {"chunk_size": 2, "checkpoint": True}) for name in CHUNKED]


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{'chunks+ckpt' if o else 'one pass'}" for n, o in CASES])
def test_logits_and_gradients_equal_the_plain_pass(small_clip, shared_calls, name, options):
    model = perturbed(MODELS[name](small_clip))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain, plain_grads = logits_and_gradients(model, images, False, **options)
    assert not shared_calls
    shared, shared_grads = logits_and_gradients(model, images, True, **options)
    assert shared_calls  # the shared-prefix path ran
    torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-4)
    assert shared_grads.keys() == plain_grads.keys()
    for key, expected in plain_grads.items():
        if expected is None:  # VPT's text side has nothing to learn; a parameter no loss reaches
            assert shared_grads[key] is None, key
            continue
        assert expected.abs().sum() > 0, key
        # float tolerance on the gradient's own scale (the sums run in another order)
        close_gradients(shared_grads[key], expected, key)


def test_csc_contexts_identical_at_init_keep_their_own_gradients(small_clip):
    """CSC starts every class from the same context: equal values must not be mistaken for one shared tensor
    (each class's context gets its own gradient)."""
    model = coop.CoOpCLIP(small_clip, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4, CSC=True)).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    _, plain = logits_and_gradients(model, images, False)
    _, shared = logits_and_gradients(model, images, True)
    close_gradients(shared["ctx"], plain["ctx"])
    assert not torch.allclose(plain["ctx"][0], plain["ctx"][1])


# ---- what is shared -----------------------------------------------------------------------------------------

def test_prefix_length_is_the_longest_common_prefix(small_clip):
    width = small_clip.ln_final.weight.shape[0]
    sentences = [f"X X a photo of a {name}." for name in CLASSNAMES]
    ids = clip.tokenize(sentences)
    shared_words = 1 + word_token_count("X X a photo of a")  # SOS + the words before the class names
    shallow = torch.zeros(2, width)
    assert shared_prefix_length(ids, [shallow], None) == shared_words
    # "great white shark" and "great grey owl" also share "great"
    assert shared_prefix_length(ids[1:3], [shallow], None) == shared_words + word_token_count("great")
    # one sentence: everything before its EOT
    assert shared_prefix_length(ids[:1], None, None) == int(ids[0].argmax())
    # a prompt per sentence: only SOS, or SOS + the tokens declared shared
    per_row = torch.zeros(len(CLASSNAMES), 2, width)
    assert shared_prefix_length(ids, [per_row], None) == 1
    assert shared_prefix_length(ids, [per_row], None, shared_prompt_tokens=1) == 2
    # deep prompts: shared ones keep the prefix; one per sentence, or a region reaching past the prefix, end it
    assert shared_prefix_length(ids, [shallow, shallow], None) == shared_words
    assert shared_prefix_length(ids, [shallow, per_row], None) == 0
    assert shared_prefix_length(ids, [per_row, shallow], None) == 0
    # grouped mode (one prompt set per image): a per-set prompt is shared inside its set
    assert shared_prefix_length(ids, [torch.zeros(3, 2, width)], None, per_row_prompts=False) == shared_words


def test_prefix_runs_once_and_each_suffix_to_its_eot(small_clip):
    width = small_clip.ln_final.weight.shape[0]
    ids = clip.tokenize([f"X X a photo of a {name}." for name in CLASSNAMES])
    prefix = shared_prefix_length(ids, [torch.zeros(2, width)], None)
    shapes = []
    hooks = [block.ln_1.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
             for block in small_clip.transformer.resblocks]
    try:
        PromptedTextEncoder(small_clip)(ids, TowerSchedule([torch.randn(2, width), torch.randn(2, width)]))
    finally:
        for hook in hooks:
            hook.remove()
    suffix_tokens = int((ids.argmax(-1) + 1 - prefix).sum())
    assert shapes == [(1, prefix, width), (1, suffix_tokens, width)] * DEPTH


def test_shared_prefix_equals_the_reference_encoder(small_clip):
    """Against benchmarks/reference.py (CLIP's own blocks on 77 tokens, written independently of mmpt): deep
    replacement and MPL's remove / append schedule, prompts shared or one per sentence."""
    width = small_clip.ln_final.weight.shape[0]
    ids = clip.tokenize([f"X X a photo of a {name}." for name in CLASSNAMES])
    generator = torch.Generator().manual_seed(2)
    shallow, deep, grown = (torch.randn(*shape, generator=generator) * 0.1
                            for shape in [(2, width), (2, width), (3, width)])
    per_row = torch.randn(len(CLASSNAMES), 2, width, generator=generator) * 0.1
    encoder, reference = PromptedTextEncoder(small_clip), ReferenceTextEncoder(small_clip)
    with torch.no_grad():
        for prompts, remove in [([shallow, deep, deep], None), ([shallow, grown, deep], [None, 1, 2]),
                                ([per_row], None)]:
            torch.testing.assert_close(encoder(ids, TowerSchedule(prompts, remove)), reference(ids, TowerSchedule(prompts, remove)),
                                       rtol=1e-5, atol=1e-5)


def test_prompt_sets_equal_one_pass_per_set(small_clip):
    """per_prompt_set (CoCoOp: a prompt set per image): shared prefix per set == a plain pass per set, also
    with deep prompts, chunks smaller than the number of sets and checkpointing; gradients too."""
    width = small_clip.ln_final.weight.shape[0]
    ids = clip.tokenize([f"X X a photo of a {name}." for name in CLASSNAMES])
    generator = torch.Generator().manual_seed(3)
    sets = torch.randn(3, 2, width, generator=generator) * 0.1
    deep = torch.randn(2, width, generator=generator) * 0.1
    encoder = PromptedTextEncoder(small_clip)

    def run(**options):
        prompts = [sets.clone().requires_grad_(), deep.clone().requires_grad_()]
        features = encoder.with_options(**options).per_prompt_set(ids, TowerSchedule(prompts))
        (features * torch.linspace(-1, 1, features.numel()).reshape(features.shape)).sum().backward()
        return features.detach(), [p.grad for p in prompts]

    plain, plain_grads = run(share_prefix=False)
    loop = torch.stack([encoder.with_options(share_prefix=False)(ids, TowerSchedule([sets[g], deep])) for g in range(3)])
    torch.testing.assert_close(plain, loop.detach())
    for options in ({}, {"chunk_size": 4, "checkpoint": True}):
        shared, shared_grads = run(**options)
        assert shared.shape == (3, len(CLASSNAMES), small_clip.text_projection.shape[1])
        torch.testing.assert_close(shared, plain, rtol=1e-5, atol=1e-5)
        for got, expected in zip(shared_grads, plain_grads):
            close_gradients(got, expected)


def test_coop_middle_declares_its_shared_context_half(small_clip):
    """CoOp middle: the sentence form (ClassNameInContext) declares the unified context's first half as shared
    by every class of a pass, so SOS + that half form the prefix; CSC contexts (one per class) share nothing."""
    unified = coop.CoOpCLIP(small_clip, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4, CLASS_TOKEN_POSITION="middle"))
    csc = coop.CoOpCLIP(small_clip, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4, CSC=True,
                                                             CLASS_TOKEN_POSITION="middle"))
    for model, shared in ((unified, 2), (csc, 0)):
        passes = model.sentences.passes(model.compute_prompts().text)
        assert [p.shared_prompt_tokens for p in passes] == [shared] * len(passes)
        for text_pass in passes:
            length = shared_prefix_length(text_pass.token_ids, text_pass.prompts, None,
                                          shared_prompt_tokens=text_pass.shared_prompt_tokens)
            assert length == (1 + shared if len(text_pass.rows) > 1 else int(text_pass.token_ids.argmax(-1).min()))


def test_shared_prompt_tokens_that_differ_are_refused(small_clip):
    width = small_clip.ln_final.weight.shape[0]
    ids = clip.tokenize(["X X dog.", "X X cat."])
    with pytest.raises(ValueError, match="shared_prompt_tokens=1: the first 1 shallow prompt tokens differ"):
        PromptedTextEncoder(small_clip)(ids, TowerSchedule([torch.randn(2, 2, width)], shared_prompt_tokens=1))
    with pytest.raises(ValueError, match="shared_prompt_tokens=3: needs a per-sequence shallow prompt"):
        PromptedTextEncoder(small_clip)(ids, TowerSchedule([torch.randn(2, 2, width)], shared_prompt_tokens=3))
