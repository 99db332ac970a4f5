"""Every performance lever (docs PERFORMANCE.md 1-6) gives the straightforward computation's result.

fp32, CPU, the tiny random backbone. The straightforward computation is the reference implementations' one
(benchmarks/reference.py: CLIP's own blocks with nn.MultiheadAttention on the full 77-token context), written
independently of mmpt's encoders.
"""
import contextlib
import copy

import clip
import pytest
import torch
import torch.nn.functional as F

from benchmarks.models import build_method, load_cfg, config_path
from benchmarks.reference import ReferenceImageEncoder, ReferenceTextEncoder
from mmpt.clip_backbone import build_random_clip
from mmpt.encoders import PromptedImageEncoder, PromptedTextEncoder, TextOptions, TowerSchedule
from dassl.utils import ConfigError

ATOL = 1e-5
CLASSNAMES = ["dog", "great white shark", "tabby cat", "fire truck", "yellow lady's slipper", "red wine"]


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    return build_random_clip("random-tiny-ViT", 0)


@pytest.fixture(scope="module")
def token_ids():
    # "X X" are the placeholders the shallow prompts replace; lengths differ so the EOTs differ
    return clip.tokenize([f"X X a photo of a {name}." for name in CLASSNAMES])


def deep_prompts(n_layers, n_tokens, width, generator_seed, per_sequence=None):
    """Shallow + deep prompts for every layer, shared ([n, d]) or one per sequence ([N, n, d])."""
    generator = torch.Generator().manual_seed(generator_seed)
    shape = (n_tokens, width) if per_sequence is None else (per_sequence, n_tokens, width)
    return [torch.randn(*shape, generator=generator) * 0.1 for _ in range(n_layers)]


@contextlib.contextmanager
def text_block_inputs(clip_model):
    """Records the shape of every text block's input and counts nn.MultiheadAttention calls (levers really on)."""
    shapes, mha_calls, hooks = [], [], []
    for block in clip_model.transformer.resblocks:
        hooks.append(block.ln_1.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape))))
        hooks.append(block.attn.register_forward_pre_hook(lambda module, args: mha_calls.append(1)))
    try:
        yield shapes, mha_calls
    finally:
        for hook in hooks:
            hook.remove()


def text_setup(clip_model, per_sequence=None):
    width = clip_model.ln_final.weight.shape[0]
    return deep_prompts(len(clip_model.transformer.resblocks), 2, width, 1, per_sequence)


# lever 1: text truncation --------------------------------------------------------------------------------------

def test_truncated_text_equals_77_tokens_with_deep_prompts(clip_model, token_ids):
    prompts = text_setup(clip_model)
    encoder = PromptedTextEncoder(clip_model, TextOptions(share_prefix=False))  # the plain pass (tests/test_shared_prefix.py: the other)
    with text_block_inputs(clip_model) as (shapes, _):
        truncated = encoder.with_options(truncate=True)(token_ids, TowerSchedule(prompts))
    assert {shape[1] for shape in shapes} == {int(token_ids.argmax(-1).max()) + 1}  # the tower ran short
    full = encoder.with_options(truncate=False)(token_ids, TowerSchedule(prompts))
    assert torch.allclose(truncated, full, atol=ATOL)
    # and both equal the reference implementation's 77-token computation
    assert torch.allclose(truncated, ReferenceTextEncoder(clip_model)(token_ids, TowerSchedule(prompts)), atol=ATOL)


def test_truncated_text_equals_77_tokens_when_prompts_are_added(clip_model, token_ids):
    """MPL's text-side schedule grows the prompt region: the EOT moves, truncation must still be exact."""
    width = clip_model.ln_final.weight.shape[0]
    prompts = [torch.randn(2, width) * 0.1, torch.randn(3, width) * 0.1]
    remove = [None, 1]  # layer 1: drop 1 of the 2 shallow tokens, append 3: region grows to 4
    encoder = PromptedTextEncoder(clip_model)
    truncated = encoder.with_options(truncate=True)(token_ids, TowerSchedule(prompts, remove))
    reference = ReferenceTextEncoder(clip_model)(token_ids, TowerSchedule(prompts, remove))
    assert torch.allclose(truncated, reference, atol=ATOL)


# lever 3: SDPA with the blocks' own weights == CLIP's own nn.MultiheadAttention block forward ---------------

def test_sdpa_text_tower_equals_clip_blocks(clip_model, token_ids):
    with torch.no_grad():
        plain = PromptedTextEncoder(clip_model)(token_ids)
        assert torch.allclose(plain, clip_model.encode_text(token_ids), atol=ATOL)
    prompts = text_setup(clip_model, per_sequence=len(CLASSNAMES))
    with text_block_inputs(clip_model) as (_, mha_calls):
        ours = PromptedTextEncoder(clip_model, TextOptions(truncate=False))(token_ids, TowerSchedule(prompts))
    assert not mha_calls  # the attention ran through SDPA, not nn.MultiheadAttention
    assert torch.allclose(ours, ReferenceTextEncoder(clip_model)(token_ids, TowerSchedule(prompts)), atol=ATOL)


def test_sdpa_vision_tower_equals_clip_blocks(clip_model):
    images = torch.randn(3, 3, clip_model.visual.input_resolution, clip_model.visual.input_resolution)
    with torch.no_grad():
        assert torch.allclose(PromptedImageEncoder(clip_model)(images), clip_model.encode_image(images), atol=ATOL)
    width = clip_model.visual.conv1.out_channels
    n_layers = len(clip_model.visual.transformer.resblocks)
    for remove in (None, [None] + [1] * (n_layers - 1)):  # deep replacement (MaPLe) and MPL's remove / carry
        prompts = deep_prompts(n_layers, 2, width, 2)
        ours = PromptedImageEncoder(clip_model)(images, TowerSchedule(prompts, remove))
        reference = ReferenceImageEncoder(clip_model)(images, TowerSchedule(prompts, remove))
        assert torch.allclose(ours, reference, atol=ATOL), remove


# lever 5: chunked + checkpointed text tower == plain (features and gradients) --------------------------------

@pytest.mark.parametrize("chunk_size, checkpoint", [(4, False), (0, True), (4, True), (1, True)])
def test_chunked_checkpointed_text_equals_plain(clip_model, token_ids, chunk_size, checkpoint):
    encoder = PromptedTextEncoder(clip_model, TextOptions(share_prefix=False))  # block calls counted below: the plain pass

    def features_and_grads(**options):
        prompts = [p.clone().requires_grad_() for p in text_setup(clip_model)]
        features = encoder.with_options(**options)(token_ids, TowerSchedule(prompts))
        weights = torch.linspace(-1, 1, features.numel()).reshape(features.shape)
        (features * weights).sum().backward()
        return features.detach(), [p.grad for p in prompts]

    plain, plain_grads = features_and_grads()
    with text_block_inputs(clip_model) as (shapes, _):
        lever, lever_grads = features_and_grads(chunk_size=chunk_size, checkpoint=checkpoint)
    n_layers, n_chunks = len(clip_model.transformer.resblocks), -(-len(CLASSNAMES) // (chunk_size or len(CLASSNAMES)))
    # each chunk runs every block once forward, and once more in backward when checkpointed
    assert len(shapes) == n_layers * n_chunks * (2 if checkpoint else 1)
    assert max(shape[0] for shape in shapes) == (chunk_size or len(CLASSNAMES))
    assert torch.allclose(lever, plain, atol=ATOL)
    for got, expected in zip(lever_grads, plain_grads):
        assert torch.allclose(got, expected, rtol=1e-4, atol=ATOL)  # sums in another order
        assert expected.abs().sum() > 0  # the gradient reaches every layer's prompts


# lever 2: class features once per evaluation == recomputed per batch -----------------------------------------

@pytest.fixture(scope="module")
def mudpt_model(clip_model):
    cfg = load_cfg("MuDPT", config_path("MuDPT"), "random-tiny-ViT")
    cfg.TRAINER.MUDPT.PROMPT_DEPTH = 2  # the tiny backbone has 2 layers
    return build_method("MuDPT", cfg, CLASSNAMES, clip_model).eval()


def test_cached_class_features_equal_per_batch(clip_model, mudpt_model):
    images = torch.randn(4, 3, clip_model.visual.input_resolution, clip_model.visual.input_resolution)
    with torch.no_grad():
        cached = mudpt_model.class_features()
        per_batch = [mudpt_model(batch) for batch in images.split(2)]
        with_cache = [mudpt_model(batch, class_features=cached) for batch in images.split(2)]
    for got, expected in zip(with_cache, per_batch):
        assert got.shape == (2, len(CLASSNAMES))
        assert torch.allclose(got, expected, atol=1e-4)



def test_trainer_evaluation_computes_class_features_once(tmp_path):
    """PromptTrainer.test(): one text-tower pass per evaluation (CACHE_TEXT_FEATURES), the same logits as the
    reference codebases' once-per-test-batch computation (CACHE_TEXT_FEATURES False)."""
    from tests.e2e import run_train

    _, _, trainer = run_train(tmp_path, "CoOp", config_path("CoOp", "vit_b16_ep50.yaml"), eval_only=True,
                              opts=("DATALOADER.TEST.BATCH_SIZE", "4"), return_trainer=True)
    n_batches = len(trainer.test_loader)
    assert n_batches > 1
    model = trainer.model
    calls = []
    original_class_features = model.class_features
    model.class_features = lambda *args, **kwargs: calls.append(1) or original_class_features(*args, **kwargs)
    outputs = []
    original_process = trainer.evaluator.process
    trainer.evaluator.process = lambda output, label: outputs.append(output.clone()) or original_process(output, label)

    def evaluate(cache):
        trainer.cfg.defrost()
        trainer.config.CACHE_TEXT_FEATURES = cache  # the typed config the trainer was built from
        calls.clear(), outputs.clear()
        accuracy = trainer.test()
        return accuracy, len(calls), torch.cat(outputs)

    cached_accuracy, cached_calls, cached = evaluate(True)
    per_batch_accuracy, per_batch_calls, per_batch = evaluate(False)
    assert (cached_calls, per_batch_calls) == (1, n_batches)
    assert torch.allclose(cached, per_batch, atol=1e-4)
    assert cached_accuracy == per_batch_accuracy


# lever 4: precision ------------------------------------------------------------------------------------------

def test_precision_policy(monkeypatch):
    from mmpt.precision import PRECISIONS, Precision

    assert Precision("fp16", "cuda").dtype == torch.float16 and Precision("fp16", "cuda").use_grad_scaler
    assert Precision("bf16", "cuda").dtype == torch.bfloat16 and not Precision("bf16", "cuda").use_grad_scaler
    assert Precision("fp32", "cuda").dtype is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert Precision("amp", "cuda").dtype == torch.bfloat16  # default: bf16 autocast, no scaler
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert Precision("amp", "cuda").use_grad_scaler  # GPUs without bf16 fall back to fp16 + GradScaler
    for prec in PRECISIONS:
        assert Precision(prec, "cpu").dtype is None  # the CPU always runs fp32
    with pytest.raises(ConfigError, match="PREC='fp8'"):
        Precision("fp8", "cpu")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_prompted_model_under_autocast_is_finite_and_close_to_fp32(clip_model, mudpt_model, dtype):
    """The encoders' dtype handling under autocast (the CUDA path), run with CPU autocast; prompts stay fp32."""
    images = torch.randn(2, 3, clip_model.visual.input_resolution, clip_model.visual.input_resolution)
    labels = torch.tensor([0, 3])
    reference = mudpt_model(images).float()
    with torch.autocast("cpu", dtype=dtype):
        logits = mudpt_model(images)
    loss = F.cross_entropy(logits.float(), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.allclose(logits.float(), reference, atol=0.05 * reference.abs().max().item() + 0.05)
    for param in mudpt_model.prompt_learner.parameters():
        assert param.dtype == torch.float32 and param.grad is not None and torch.isfinite(param.grad).all()
        param.grad = None


def test_logits_and_residual_streams_stay_fp32_under_autocast(clip_model, mudpt_model):
    """Under bf16 autocast the blocks' matmuls run in bf16, but both towers' residual streams and the logits stay
    fp32 (bf16 logits of ~30 are rounded to steps of 0.25)."""
    images = torch.randn(2, 3, clip_model.visual.input_resolution, clip_model.visual.input_resolution)
    stream_dtypes = []
    blocks = [*clip_model.transformer.resblocks, *clip_model.visual.transformer.resblocks]
    hooks = [b.ln_1.register_forward_pre_hook(lambda module, args: stream_dtypes.append(args[0].dtype))
             for b in blocks]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = mudpt_model(images)
    finally:
        for hook in hooks:
            hook.remove()
    assert logits.dtype == torch.float32
    assert stream_dtypes and set(stream_dtypes) == {torch.float32}
    # the logits are computed from the features in fp32: recomputing them that way gives the same numbers
    with torch.autocast("cpu", dtype=torch.bfloat16):
        prompts = mudpt_model.compute_prompts()
        class_features = mudpt_model.class_features(prompts)
        image_features = mudpt_model.image_features(images, prompts)
    expected = mudpt_model.logit_scale.exp() * image_features.float() @ class_features.float().t()
    torch.testing.assert_close(logits, expected, rtol=1e-6, atol=1e-5)


def test_grad_scaler_skips_overflowing_step_without_touching_prompts(clip_model, mudpt_model):
    """PromptTrainer.backward_and_update with an fp16 GradScaler: a step whose gradients overflow is skipped
    (prompts bit-identical, the scale halves); the next finite step updates the prompts.

    Precision("fp16") builds a CUDA GradScaler; without a GPU its CPU twin (same unscale / inf check / skip
    logic) stands in, and the overflow is injected into a gradient."""
    from mmpt.prompt_trainer import PromptTrainer

    mudpt_model = copy.deepcopy(mudpt_model)  # the steps below change its prompts
    trainer = PromptTrainer.__new__(PromptTrainer)  # only backward_and_update's state is needed
    params = list(mudpt_model.prompt_learner.parameters())
    trainer.optim = torch.optim.SGD(params, lr=0.1)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    images = torch.randn(2, 3, clip_model.visual.input_resolution, clip_model.visual.input_resolution)
    labels = torch.tensor([0, 3])

    def step():
        loss = F.cross_entropy(mudpt_model(images).float(), labels)
        assert torch.isfinite(loss)
        trainer.backward_and_update(loss)

    before = [p.detach().clone() for p in params]
    overflow = params[0].register_hook(lambda grad: grad * float("inf"))
    step()
    overflow.remove()
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert trainer.scaler.get_scale() == 2.0 ** 15
    step()
    assert all(torch.isfinite(p).all() for p in params)
    assert any(not torch.equal(p, b) for p, b in zip(params, before))
    # an fp16 forward that overflowed (infinite loss) is skipped too, not a crash
    before = [p.detach().clone() for p in params]
    scale = trainer.scaler.get_scale()
    trainer.backward_and_update(F.cross_entropy(mudpt_model(images).float(), labels) * float("inf"))
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert trainer.scaler.get_scale() == scale / 2


# lever 6: data decoding and transforms in worker processes ---------------------------------------------------

def _loader(tmp_path, num_workers, is_train=True):
    from PIL import Image

    from dassl.config import get_cfg_default
    from dassl.data import build_data_loader
    from dassl.data.datasets.base_dataset import Datum
    from dassl.data.transforms import build_transform

    image_path = tmp_path / "image.png"
    Image.new("RGB", (40, 40), (200, 30, 10)).save(image_path)
    cfg = get_cfg_default()
    cfg.INPUT.SIZE = (32, 32)
    cfg.DATALOADER.NUM_WORKERS = num_workers
    data = [Datum(str(image_path), label % 2, 0, f"class{label % 2}") for label in range(8)]
    return build_data_loader(cfg, data_source=data, batch_size=4, tfm=build_transform(cfg, is_train=is_train),
                             is_train=is_train)


def test_data_loader_decodes_in_workers(tmp_path):
    loader = _loader(tmp_path, num_workers=2)
    assert loader.num_workers == 2
    assert loader.pin_memory == torch.cuda.is_available()  # pinned host memory only pays off for a GPU copy
    batch = next(iter(loader))
    assert batch["img"].shape == (4, 3, 32, 32)
    assert _loader(tmp_path, num_workers=0).num_workers == 0


def test_evaluation_loaders_keep_their_workers_training_loaders_reseed_each_epoch(tmp_path):
    # evaluation: no re-fork per evaluation; training: workers re-seeded from the (resumable) main RNG each epoch
    assert _loader(tmp_path, num_workers=2, is_train=False).persistent_workers
    assert not _loader(tmp_path, num_workers=2, is_train=True).persistent_workers
    assert not _loader(tmp_path, num_workers=0, is_train=False).persistent_workers


def test_evaluation_loader_leaves_the_global_rng_alone(tmp_path):
    # a resumed run replays the global RNG from its checkpoint: evaluation passes must not consume it
    loader = _loader(tmp_path, num_workers=1, is_train=False)
    state = torch.get_rng_state()
    for _ in range(2):
        list(loader)
    assert torch.equal(torch.get_rng_state(), state)
