"""MMA against an independent restatement of its spec (clip's own blocks, attention modules and LayerNorms, the
adapter formulas written out from parameter tensors, the gradient-scale layers written out): eval logits, the
loss, one step's gradients in fp32, the gradient scaling itself; the ViT-B/16 parameter count; every encoder
path; configs and errors; base-to-new end to end."""
import dataclasses
from pathlib import Path

import clip
import pytest
import torch
import torch.nn.functional as F

import mmpt
import trainers  # noqa: F401  (declares the methods)
from dassl.utils import ConfigError
from mmpt.clip_backbone import build_random_clip
from tests.e2e import config_from_file, small_clip_model, trainer_node
from trainers import mma

CLASSNAMES = ["dog", "golden_retriever", "sea lion", "cat", "tabby cat"]
CONFIGS = "configs/trainers/MMA/"


def node(**overrides):
    return trainer_node(mma, "MMA", **overrides)


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model()  # 3 layers per tower, text width 64, vision 96


# ---------------------------------------------------------------- the restatement (spec formulas, clip's modules)
class ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, c):
        ctx.c = c
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * ctx.c, None


def branch(params, tower, level, normed, s):
    """s * U(ReLU(S(ReLU(D h)))) from the tensors under their official names."""
    p = lambda name: params[f"{tower}_adapter.{level}.{name}"]
    z = torch.relu(normed @ p("down.0.weight").t() + p("down.0.bias"))
    z = torch.relu(z @ params[f"shared_adapter.{level}.0.weight"].t() + params[f"shared_adapter.{level}.0.bias"])
    return s * (z @ p("up.weight").t() + p("up.bias"))


def adapted_blocks(blocks, x, params, tower, start, end, s, grad_scale):
    """clip's own ResidualAttentionBlocks (sequence-first, nn.MultiheadAttention, its masks) with the branch
    y = GS(s A(ln_1(GS(x, s))), 1/s) added to the outputs of levels start..end (1-based)."""
    for index, block in enumerate(blocks):
        out = block(x)
        level = index + 1
        if start <= level <= end:
            x_in = ScaleGradient.apply(x, s) if grad_scale else x
            y = branch(params, tower, level, block.ln_1(x_in), s)
            out = out + (ScaleGradient.apply(y, 1 / s) if grad_scale else y)
        x = out
    return x


def reference_logits(clip_model, params, images, classnames, start, end, s, grad_scale=True):
    tokens = clip.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in classnames])
    x = clip_model.token_embedding(tokens) + clip_model.positional_embedding
    x = adapted_blocks(clip_model.transformer.resblocks, x.permute(1, 0, 2), params, "text", start, end, s,
                       grad_scale).permute(1, 0, 2)
    text = clip_model.ln_final(x)[torch.arange(len(classnames)), tokens.argmax(-1)] @ clip_model.text_projection
    visual = clip_model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], 1) + visual.positional_embedding
    x = adapted_blocks(visual.transformer.resblocks, visual.ln_pre(x).permute(1, 0, 2), params, "visual", start,
                       end, s, grad_scale).permute(1, 0, 2)
    image = visual.ln_post(x[:, 0]) @ visual.proj
    image, text = image / image.norm(dim=-1, keepdim=True), text / text.norm(dim=-1, keepdim=True)
    return clip_model.logit_scale.exp() * image @ text.t()


def reference_params(model):
    """Leaf copies of the model's adapter tensors (the reference's own inputs)."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in model.prompt_learner.state_dict().items()}


def build(clip_model, **overrides):
    torch.manual_seed(3)
    return mmpt.create_model("MMA", clip_model, CLASSNAMES, PREC="fp32", **overrides)


# the tiny backbone: levels 2..3 of 3, bottleneck 8; a large scale so the adapters move the logits visibly
TINY = dict(ADAPTER_START=2, ADAPTER_END=3, ADAPTER_DIM=8, ADAPTER_SCALE=0.5)


def batch():
    generator = torch.Generator().manual_seed(4)
    return torch.randn(3, 3, 32, 32, generator=generator), torch.tensor([0, 4, 2])


@pytest.mark.parametrize("overrides", [TINY, dict(TINY, ADAPTER_START=1, ADAPTER_SCALE=0.001),
                                       dict(TINY, ADAPTER_START=3, GRAD_SCALE=False)])
def test_logits_loss_and_gradients_match_the_restatement(small_clip, overrides):
    model = build(small_clip, **overrides)
    images, labels = batch()
    start, end, s = overrides["ADAPTER_START"], overrides["ADAPTER_END"], overrides["ADAPTER_SCALE"]
    grad_scale = overrides.get("GRAD_SCALE", True)
    params = reference_params(model)
    expected = reference_logits(small_clip, params, images, CLASSNAMES, start, end, s, grad_scale)
    logits = model(images)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        plain = small_clip.logit_scale.exp() * F.normalize(small_clip.encode_image(images), dim=-1) @ \
            F.normalize(small_clip.encode_text(clip.tokenize([f"a photo of a {n.replace('_', ' ')}."
                                                              for n in CLASSNAMES])), dim=-1).t()
    assert (logits - plain).abs().max() > (1e-3 if s > 0.01 else 1e-6)  # the adapters are live

    loss, expected_loss = F.cross_entropy(logits, labels), F.cross_entropy(expected, labels)
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    loss.backward()
    expected_loss.backward()
    grads = {name: p.grad for name, p in model.prompt_learner.named_parameters()}
    assert set(grads) == set(params)
    for name, param in params.items():
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], param.grad, atol=1e-4 * param.grad.abs().max().item(), rtol=1e-4,
                                   msg=name)
    assert not any(p.grad is not None for n, p in model.named_parameters() if not n.startswith("prompt_learner."))


def test_gradient_scaling_is_one_over_s_on_the_adapters_only(small_clip):
    """The official layers' consequence (spec section 4): the adapters' gradients are 1/s times the true ones
    (the restatement without the layers), the forward pass is unchanged."""
    s = 0.01
    model = build(small_clip, **dict(TINY, ADAPTER_SCALE=s))
    images, labels = batch()
    params = reference_params(model)
    true_logits = reference_logits(small_clip, params, images, CLASSNAMES, 2, 3, s, grad_scale=False)
    F.cross_entropy(true_logits, labels).backward()
    logits = model(images)
    torch.testing.assert_close(logits, true_logits, atol=1e-4, rtol=1e-5)
    F.cross_entropy(logits, labels).backward()
    for name, param in model.prompt_learner.named_parameters():
        torch.testing.assert_close(param.grad * s, params[name].grad, rtol=1e-4,
                                   atol=1e-4 * params[name].grad.abs().max().item(), msg=name)


# ---------------------------------------------------------------- every encoder path
@pytest.mark.parametrize("levers", [dict(TRUNCATE_TEXT=False, TEXT_SHARED_PREFIX=False), dict(TEXT_CHUNK_SIZE=2),
                                    dict(TEXT_CHECKPOINT=True), dict(TEXT_SHARED_PREFIX=False)])
def test_text_levers_are_exact(small_clip, levers):
    """Shared prefix (default), plain, truncated or not, chunked, checkpointed: same features and gradients."""
    reference = build(small_clip, **TINY)
    model = build(small_clip, **TINY, **levers)
    features = model.class_features()
    expected = reference.class_features()
    torch.testing.assert_close(features, expected, atol=2e-6, rtol=1e-5)
    weights = torch.randn(features.shape, generator=torch.Generator().manual_seed(5))  # (normalised: not |f|^2)
    (features * weights).sum().backward()
    (expected * weights).sum().backward()
    for (name, param), (_, ref) in zip(model.prompt_learner.named_parameters(),
                                       reference.prompt_learner.named_parameters()):
        if ref.grad is None:  # visual-only tensors get no text gradient
            assert param.grad is None and "visual" in name, name
            continue
        torch.testing.assert_close(param.grad, ref.grad, atol=1e-5 * ref.grad.abs().max().item(), rtol=1e-4,
                                   msg=name)


def test_vision_checkpointing_is_exact(small_clip):
    model = build(small_clip, **TINY)
    images, _ = batch()
    prompts = model.compute_prompts()
    plain = model.image_encoder(images, prompts.vision_schedule())
    model.image_encoder.checkpoint = True
    checkpointed = model.image_encoder(images, prompts.vision_schedule())
    torch.testing.assert_close(checkpointed, plain, atol=0, rtol=0)
    (g_plain,) = torch.autograd.grad(plain.sum(), model.prompt_learner.visual_adapter[2].up.weight)
    (g_ckpt,) = torch.autograd.grad(checkpointed.sum(), model.prompt_learner.visual_adapter[2].up.weight)
    torch.testing.assert_close(g_ckpt, g_plain)


def test_text_trains_and_the_shared_projection_gets_both_towers(small_clip):
    model = build(small_clip, **TINY)
    prompts = model.compute_prompts()
    assert not prompts.text_is_constant and not prompts.depends_on_image  # text trains; evaluation caches
    assert [a is None for a in prompts.text_adapters] == [True, False, False]  # 0-based block 0 = level 1
    shared = model.prompt_learner.shared_adapter[2][0].weight
    (from_text,) = torch.autograd.grad(model.class_features(prompts).sum(), shared)
    (from_images,) = torch.autograd.grad(model.image_features(batch()[0], prompts).sum(), shared)
    assert from_text.abs().sum() > 0 and from_images.abs().sum() > 0


# ---------------------------------------------------------------- tensors, counts, checkpoints, errors
def test_official_names_init_and_parameter_count_at_vit_b16():
    """674,560 = 8 levels x (text 33,312 + vision 49,952 + shared 1,056); the official names and init."""
    clip_model = build_random_clip("random-ViT-B/16").requires_grad_(False)
    model = mma.MMA.model_class(clip_model, ["a", "b"], node())
    learner = model.prompt_learner
    shapes = {k: tuple(v.shape) for k, v in learner.state_dict().items()}
    assert len(shapes) == 80 and sum(p.numel() for p in learner.parameters()) == 674_560
    assert shapes["text_adapter.5.down.0.weight"] == (32, 512) and shapes["text_adapter.12.up.weight"] == (512, 32)
    assert shapes["visual_adapter.5.down.0.weight"] == (32, 768) and shapes["visual_adapter.12.up.bias"] == (768,)
    assert shapes["shared_adapter.8.0.weight"] == (32, 32) and not any(".4." in k or ".13." in k for k in shapes)
    assert dict(learner.parameter_breakdown()) == {"text adapters": 266_496, "visual adapters": 399_616,
                                                    "shared adapters": 8_448}
    # kaiming normal (fan_out, relu): std sqrt(2 / out_features); zero biases
    for key, std in [("visual_adapter.5.up.weight", (2 / 768) ** 0.5), ("text_adapter.7.down.0.weight", 0.25)]:
        assert abs(learner.state_dict()[key].std().item() - std) < 0.1 * std, key
    assert all(v.abs().sum() == 0 for k, v in learner.state_dict().items() if k.endswith("bias"))


def test_official_checkpoint_loads(small_clip, tmp_path):
    """An official adapter_learner state dict (its class buffers included) loads; ours holds no class tensor."""
    model = build(small_clip, **TINY)
    assert not {"token_embedding", "tokenized_prompts"} & set(model.prompt_learner.state_dict())
    official = {k: torch.randn_like(v) for k, v in model.prompt_learner.state_dict().items()}
    official.update(token_embedding=torch.zeros(5, 77, 64), tokenized_prompts=torch.zeros(5, 77, dtype=torch.long))
    trainer = mma.MMA.__new__(mma.MMA)
    trainer._models = {"prompt_learner": model.prompt_learner}
    trainer.load_state_dict_into("prompt_learner", official, str(tmp_path / "model.pth.tar-5"))
    assert torch.equal(model.prompt_learner.text_adapter[2].up.weight, official["text_adapter.2.up.weight"])


@pytest.mark.parametrize("overrides,message", [
    (dict(ADAPTER_START=0), r"ADAPTER_START=0: expected an int in 1\.\.3 \(a 1-based block index; the backbone"),
    (dict(ADAPTER_START=3, ADAPTER_END=2), r"ADAPTER_END=2: expected an int in ADAPTER_START\.\.3 = 3\.\.3"),
    (dict(ADAPTER_START=1, ADAPTER_END=12), r"ADAPTER_END=12: expected an int in ADAPTER_START\.\.3 = 1\.\.3"),
    (dict(ADAPTER_START=1.0), r"ADAPTER_START=1\.0: expected an int"),
    (dict(ADAPTER_DIM=64), r"ADAPTER_DIM=64: expected an int >= 1 other than the tower widths 64 / 96"),
    (dict(ADAPTER_SCALE=0.0), r"ADAPTER_SCALE=0.0: expected a number > 0"),
])
def test_bad_values_are_one_line_errors(small_clip, overrides, message):
    with pytest.raises(ConfigError, match=r"^TRAINER\.MMA\." + message):
        mmpt.create_model("MMA", small_clip, CLASSNAMES, **dict(dict(ADAPTER_START=1, ADAPTER_END=3), **overrides))


def test_config_files():
    """The two shipped configs differ only in the batch size (16 / 128); the defaults are the shipped values."""
    small, imnet = (config_from_file(CONFIGS + f"{name}.yaml") for name in ("vit_b16_ep5", "vit_b16_ep5_imnet"))
    assert (small.DATALOADER.TRAIN_X.BATCH_SIZE, imnet.DATALOADER.TRAIN_X.BATCH_SIZE) == (16, 128)
    imnet.DATALOADER.TRAIN_X.BATCH_SIZE = 16
    assert small == imnet
    assert (small.OPTIM.NAME, small.OPTIM.LR, small.OPTIM.MAX_EPOCH, small.OPTIM.WARMUP_EPOCH) == ("sgd", 0.0015, 5, 0)
    assert dict(small.TRAINER.MMA) == dataclasses.asdict(node())
    assert mma.MMA.default_config("b2n", "imagenet", 16) == "vit_b16_ep5_imnet"
    assert mma.MMA.default_config("b2n", "oxford_pets", 16) == "vit_b16_ep5"
    assert mma.MMA.default_config("xd", "imagenet", 16) == "vit_b16_ep5_imnet"


# ---------------------------------------------------------------- base-to-new through the scripts (toy world)
TOY_OPTS = "OPTIM.MAX_EPOCH 2 DATALOADER.TRAIN_X.BATCH_SIZE 8 TRAIN.PRINT_FREQ 100 VERBOSE False"


@pytest.fixture(scope="module")
def base_to_new(tmp_path_factory):
    """scripts/mma/base2new_{train,test}.sh with CFG=toy_demo (toy-ViT, levels 3..4) for 2 epochs."""
    from mmpt.data import toy_world
    from tests.test_scripts import run_script

    tmp = tmp_path_factory.mktemp("mma_b2n")
    data = tmp / "data"
    toy_world.make_dataset("ToyWorld", str(data))
    env = dict(DATA=data, OUTPUT=tmp / "output", CFG="toy_demo", OPTS=TOY_OPTS)
    runs = {}
    for stage in ("base2new_train", "base2new_test"):
        result = run_script(f"scripts/mma/{stage}.sh", "toy_world", 1, **env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        run_dir = next(line.split(" -> ", 1)[1] for line in result.stdout.splitlines() if line.startswith("Running"))
        runs[stage] = Path(run_dir)
    return runs


def test_base_to_new_through_the_scripts(base_to_new):
    import re

    train_log = (base_to_new["base2new_train"] / "log.txt").read_text()
    test_log = (base_to_new["base2new_test"] / "log.txt").read_text()
    assert "Finish training" in train_log and "Trainable parameters: " in train_log
    assert "MMA adapters at levels 3..4, scale 0.001, gradient scaling on" in train_log
    assert "model.pth.tar-2" in test_log and "* accuracy:" in test_log
    base, new = (float(re.findall(r"\* accuracy: ([\d.]+)%", log)[-1]) for log in (train_log, test_log))
    assert base > 100 / 18 * 3 and new > 100 / 18 * 3  # well above chance on both halves
    # the checkpoint holds the adapters only (no class tensor), trained away from their initialisation
    checkpoint = torch.load(base_to_new["base2new_train"] / "prompt_learner" / "model.pth.tar-2", weights_only=False)
    state = checkpoint["state_dict"]
    assert all(k.split(".")[0] in ("text_adapter", "visual_adapter", "shared_adapter") for k in state)
    assert len(state) == 2 * (4 + 4 + 2)  # levels 3, 4: text (4 tensors), visual (4), shared (2)
    assert all(state[k].abs().sum() > 0 for k in state if k.endswith("bias"))  # zero-initialised biases moved


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_forward_and_gradients(small_clip, dtype):
    """Under autocast (what PREC amp / bf16 / fp16 run on CUDA; here on the CPU): fp32 logits near the fp32 ones;
    every adapter's gradient finite and near its fp32 value (vision: the loss; text: a fixed projection of the
    class features, the CE loss's text gradient being too small on this random CLIP to compare); parameters fp32."""
    model = build(small_clip, **TINY)
    images, labels = batch()
    weights = torch.randn(len(CLASSNAMES), 48, generator=torch.Generator().manual_seed(6))

    def gradients(autocast):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            logits = model(images)
            features = model.class_features()
        (F.cross_entropy(logits, labels) + (features.float() * weights).sum()).backward()
        return logits, {n: p.grad.clone() for n, p in model.prompt_learner.named_parameters()}

    exact, exact_grads = gradients(False)
    logits, grads = gradients(True)
    assert logits.dtype == torch.float32
    assert (logits - exact).abs().max() < 0.05 * exact.abs().max()
    for name, param in model.prompt_learner.named_parameters():
        assert param.dtype == torch.float32 and torch.isfinite(grads[name]).all(), name
        error = (grads[name] - exact_grads[name]).norm() / exact_grads[name].norm()
        assert error < 0.1, (name, error.item())
