"""Baseline trainers (ZeroshotCLIP, CoOp, CoCoOp, VPT, IVLP, MaPLe): trainable-parameter counts against each
method's formula, CoOp / CoCoOp / ZeroshotCLIP features against CLIP's own computation (CoOp's reference
code path: embeddings spliced by hand, CLIP's transformer run sequence-first), and each trainer end to end."""
import re

import clip
import pytest
import torch
import torch.nn.functional as F

from dassl.utils import ConfigError
from mmpt.clip_backbone import build_random_clip
from mmpt.templates import template_for
from tests.e2e import run_train, small_clip_model, trainer_node
from trainers import cocoop, coop, ivlp, maple, vpt, zsclip

# names of 1, 2 and 4 tokens, so front / middle class positions group classes of different lengths
CLASSNAMES = ["dog", "golden_retriever", "sea lion of the north", "cat"]


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model()


def trainable(model):
    return sum(p.numel() for p in model.prompt_learner.parameters())


def perturb_prompts(model, scale=0.05):
    """Move every prompt parameter away from its initialisation so that nothing matches by chance."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * scale)
    return model


# ---- the methods' parameter formulas, written out independently of the trainers ----
def coop_count(d_t, n, n_classes=1):
    return n_classes * n * d_t


def cocoop_count(d_t, embed, n):
    hidden = embed // 16
    return n * d_t + (embed * hidden + hidden) + (hidden * d_t + d_t)


def vpt_count(d_v, n, depth):
    return depth * n * d_v


def ivlp_count(d_t, d_v, n_t, depth_t, n_v, depth_v):
    return depth_t * n_t * d_t + depth_v * n_v * d_v


def maple_count(d_t, d_v, n, depth):
    return n * d_t + (depth - 1) * n * d_t + depth * (d_t * d_v + d_v)


def build_all(clip_model, classnames, depth):
    """(label, model) for every prompt trainer at `depth` layers (text 64 / vision 96 / joint 48 for the small CLIP)."""
    return [
        ("CoOp n=16", coop.CoOpCLIP(clip_model, classnames, trainer_node(coop, "COOP"))),
        ("CoOp CSC n=8", coop.CoOpCLIP(clip_model, classnames, trainer_node(coop, "COOP", N_CTX=8, CSC=True))),
        ("CoOp ctxv1", coop.CoOpCLIP(clip_model, classnames, trainer_node(coop, "COOP", CTX_INIT="a photo of a"))),
        ("CoCoOp ctxv1", cocoop.CoCoOpCLIP(clip_model, classnames,
                                           trainer_node(cocoop, "COCOOP", CTX_INIT="a photo of a"))),
        ("VPT", vpt.VPTCLIP(clip_model, classnames, trainer_node(vpt, "VPT", PROMPT_DEPTH_VISION=depth))),
        ("IVLP", ivlp.IVLPCLIP(clip_model, classnames, trainer_node(ivlp, "IVLP", PROMPT_DEPTH_TEXT=depth,
                                                                  PROMPT_DEPTH_VISION=depth))),
        ("MaPLe", maple.MaPLeCLIP(clip_model, classnames, trainer_node(maple, "MAPLE", PROMPT_DEPTH=depth))),
    ]


def test_parameter_counts_match_formulas(small_clip):
    d_t, d_v, embed, depth, n_classes = 64, 96, 48, 3, len(CLASSNAMES)
    expected = {
        "CoOp n=16": coop_count(d_t, 16),
        "CoOp CSC n=8": coop_count(d_t, 8, n_classes),
        "CoOp ctxv1": coop_count(d_t, 4),  # "a photo of a" = 4 tokens: N_CTX is ignored
        "CoCoOp ctxv1": cocoop_count(d_t, embed, 4),
        "VPT": vpt_count(d_v, 4, depth),
        "IVLP": ivlp_count(d_t, d_v, 2, depth, 2, depth),
        "MaPLe": maple_count(d_t, d_v, 2, depth),
    }
    got = {label: trainable(model) for label, model in build_all(small_clip, CLASSNAMES, depth)}
    assert got == expected


def test_parameter_counts_at_vit_b16():
    """ViT-B/16 shapes (d_t 512, d_v 768, joint 512, 12 layers; random weights, about a second to build)."""
    clip_model = build_random_clip("random-ViT-B/16").requires_grad_(False)
    models = dict(build_all(clip_model, CLASSNAMES, 12))
    models["VPT"] = vpt.VPTCLIP(clip_model, CLASSNAMES, trainer_node(vpt, "VPT"))  # the config's 4 x 12
    models["IVLP"] = ivlp.IVLPCLIP(clip_model, CLASSNAMES, trainer_node(ivlp, "IVLP"))  # 2 + 2, depth 9
    models["MaPLe"] = maple.MaPLeCLIP(clip_model, CLASSNAMES, trainer_node(maple, "MAPLE"))  # n 2, depth 9
    got = {label: trainable(model) for label, model in models.items()}
    assert got == {  # the figures the papers / their repositories print
        "CoOp n=16": 8_192, "CoOp CSC n=8": 4 * 4_096, "CoOp ctxv1": 2_048, "CoCoOp ctxv1": 35_360,
        "VPT": 36_864, "IVLP": 23_040, "MaPLe": 3_555_072,
    }


# ---- CoOp against CoOp's own code path ----
def coop_reference_features(clip_model, ctx, classnames, position):
    """CoOp's PromptLearner + TextEncoder: tokenise "X .. X <name>.", splice [SOS | ctx | name | rest] (or the
    name in front / in the middle of ctx), add positions, run CLIP's transformer, read EOT; normalised."""
    n_ctx = ctx.shape[-2]
    names = [name.replace("_", " ") for name in classnames]
    tokens = torch.cat([clip.tokenize(" ".join(["X"] * n_ctx) + " " + name + ".") for name in names])
    with torch.no_grad():
        embedding = clip_model.token_embedding(tokens)
    prefix, suffix = embedding[:, :1], embedding[:, 1 + n_ctx:]
    ctx = ctx.expand(len(names), -1, -1) if ctx.dim() == 2 else ctx
    rows = []
    for i, name in enumerate(names):
        name_len = len(clip.tokenize(name)[0].nonzero()) - 2
        name_part, rest = suffix[i:i + 1, :name_len], suffix[i:i + 1, name_len:]
        c = ctx[i:i + 1]
        if position == "end":
            rows.append(torch.cat([prefix[i:i + 1], c, name_part, rest], 1))
        elif position == "front":
            rows.append(torch.cat([prefix[i:i + 1], name_part, c, rest], 1))
        else:
            half = n_ctx // 2
            rows.append(torch.cat([prefix[i:i + 1], c[:, :half], name_part, c[:, half:], rest], 1))
    x = torch.cat(rows) + clip_model.positional_embedding
    x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = clip_model.ln_final(x)
    features = x[torch.arange(len(names)), tokens.argmax(-1)] @ clip_model.text_projection
    return F.normalize(features, dim=-1)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_coop_class_features_match_coop_code(small_clip, position, csc):
    model = perturb_prompts(coop.CoOpCLIP(small_clip, CLASSNAMES, trainer_node(
        coop, "COOP", N_CTX=4, CSC=csc, CLASS_TOKEN_POSITION=position)))
    with torch.no_grad():
        got = model.class_features()
        expected = coop_reference_features(small_clip, model.prompt_learner.ctx, CLASSNAMES, position)
    assert got.shape == (len(CLASSNAMES), 48)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_coop_ctx_init_starts_from_the_words(small_clip):
    """CTX_INIT: the context is the words' embeddings, so before training the class features equal CLIP's
    encode_text("a photo of a <name>.")."""
    model = coop.CoOpCLIP(small_clip, CLASSNAMES, trainer_node(coop, "COOP", CTX_INIT="a_photo of a"))
    words = clip.tokenize("a photo of a")[0, 1:5]
    torch.testing.assert_close(model.prompt_learner.ctx.detach(), small_clip.token_embedding.weight[words])
    sentences = clip.tokenize([f"a photo of a {name.replace('_', ' ')}." for name in CLASSNAMES])
    with torch.no_grad():
        expected = F.normalize(small_clip.encode_text(sentences), dim=-1)
        torch.testing.assert_close(model.class_features(), expected, atol=1e-5, rtol=1e-5)


def test_coop_random_init(small_clip):
    torch.manual_seed(3)
    model = coop.CoOpCLIP(small_clip, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=16, CSC=True))
    ctx = model.prompt_learner.ctx.detach()
    assert ctx.shape == (len(CLASSNAMES), 16, 64)
    assert 0.015 < ctx.std().item() < 0.025 and abs(ctx.mean().item()) < 0.005  # N(0, 0.02)
    with pytest.raises(ConfigError, match="TRAINER.COOP.CLASS_TOKEN_POSITION='back'"):
        coop.CoOp.make_config(CLASS_TOKEN_POSITION="back")


# ---- CoCoOp: text features are per image, = CoOp's text path with ctx + meta_net(f_i) ----
def test_cocoop_text_features_depend_on_the_image(small_clip):
    model = perturb_prompts(cocoop.CoCoOpCLIP(small_clip, CLASSNAMES, trainer_node(
        cocoop, "COCOOP", CTX_INIT="a photo of a")), scale=0.5)
    torch.manual_seed(2)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        image_features = F.normalize(small_clip.encode_image(images), dim=-1)
        per_image = model.per_image_class_features(image_features, model.compute_prompts())
        logits = model(images)
        learner = model.prompt_learner
        expected = torch.stack([
            coop_reference_features(small_clip, learner.ctx + learner.meta_net(f)[None], CLASSNAMES, "end")
            for f in image_features])
    assert per_image.shape == (2, len(CLASSNAMES), 48)
    torch.testing.assert_close(per_image, expected, atol=1e-5, rtol=1e-5)
    assert (per_image[0] - per_image[1]).abs().max() > 1e-3
    expected_logits = small_clip.logit_scale.exp() * torch.einsum("be,bce->bc", image_features, expected)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-5)


# ---- ZeroshotCLIP: CLIP's own zero-shot classifier ----
def test_zeroshot_logits_equal_clip(small_clip):
    template = template_for("OxfordPets")
    assert template == "a photo of a {}, a type of pet."
    assert template_for("NoSuchDataset") == "a photo of a {}."
    with pytest.raises(ConfigError, match="TRAINER.ZSCLIP.TEMPLATE='a photo'"):
        zsclip.ZeroshotCLIP.build_method_model(small_clip, CLASSNAMES, trainer_node(zsclip, "ZSCLIP", TEMPLATE="a photo"))
    model = zsclip.ZeroshotCLIPModel(small_clip, CLASSNAMES, trainer_node(zsclip, "ZSCLIP", TEMPLATE=template))
    assert trainable(model) == 0
    torch.manual_seed(4)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        text = F.normalize(small_clip.encode_text(clip.tokenize(
            [template.format(name.replace("_", " ")) for name in CLASSNAMES])), dim=-1)
        image = F.normalize(small_clip.encode_image(images), dim=-1)
        torch.testing.assert_close(model(images), small_clip.logit_scale.exp() * image @ text.T,
                                   atol=1e-4, rtol=1e-5)


# ---- MaPLe: visual prompt of layer l = F_l(text prompt of layer l) ----
def test_maple_visual_prompts_are_projected_text_prompts(small_clip):
    model = perturb_prompts(maple.MaPLeCLIP(small_clip, CLASSNAMES, trainer_node(maple, "MAPLE", PROMPT_DEPTH=3)))
    prompts = model.compute_prompts()
    text, vision = prompts.text, prompts.vision
    learner = model.prompt_learner
    assert [t.shape for t in text] == [(2, 64)] * 3 and [v.shape for v in vision] == [(2, 96)] * 3
    projections = [learner.proj, *learner.compound_prompt_projections]
    for layer, (t, v, project) in enumerate(zip(text, vision, projections)):
        torch.testing.assert_close(v, t @ project.weight.T + project.bias, msg=f"layer {layer}")
    # "a photo of a" with n = 2: the first two words are learnable, "of a" stays in the sentence
    assert clip.tokenize("a photo of a dog.")[0].tolist() == model.token_ids[0].tolist()


def test_maple_state_dict_keys_are_the_releases(small_clip):
    # released MaPLe checkpoints load by name: ctx, proj, compound_prompts_text.<i>, compound_prompt_projections.<i>
    model = maple.MaPLeCLIP(small_clip, CLASSNAMES, trainer_node(maple, "MAPLE", PROMPT_DEPTH=3))
    keys = set(model.prompt_learner.state_dict())
    expected = {"ctx", "proj.weight", "proj.bias"} | {f"compound_prompts_text.{i}" for i in range(2)} | {
        f"compound_prompt_projections.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
    assert keys == expected


def test_depth_beyond_the_backbone_is_a_clear_error(small_clip):
    with pytest.raises(ConfigError, match=r"TRAINER.MAPLE.PROMPT_DEPTH=9: expected an int in 1..3"):
        maple.MaPLe.build_method_model(small_clip, CLASSNAMES, trainer_node(maple, "MAPLE"))


# ---- end to end: train 2 epochs on a generated dataset, evaluate; a training step moves prompts only ----
TINY = dict(d_t=64, d_v=64, embed=64)  # random-tiny-ViT: widths 64, 2 layers per tower
E2E_CASES = [
    ("CoOp", "CoOp/vit_b16_ep50.yaml", ("TRAINER.COOP.N_CTX", "4", "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle"),
     coop_count(64, 4)),
    ("CoCoOp", "CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", ("DATALOADER.TRAIN_X.BATCH_SIZE", "2"),
     cocoop_count(64, 64, 4)),
    ("VPT", "VPT/vit_b16_c2_ep5_batch4_4.yaml", ("TRAINER.VPT.PROMPT_DEPTH_VISION", "2"), vpt_count(64, 4, 2)),
    ("IVLP", "IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml",
     ("TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "1"), ivlp_count(64, 64, 2, 2, 2, 1)),
    ("MaPLe", "MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", ("TRAINER.MAPLE.PROMPT_DEPTH", "2"), maple_count(64, 64, 2, 2)),
]


def assert_step_moves_only_prompts(trainer):
    """One more optimisation step through the trainer's own forward_backward: every prompt tensor changes,
    every CLIP tensor stays bit-identical."""
    model = trainer.model
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    for group in trainer.optim.param_groups:
        group["lr"] = 0.01  # the cosine schedule ends at lr 0
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 2  # not the last batch: no scheduler step
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    prompt_tensors = {name for name in before if name.startswith("prompt_learner.")}
    assert prompt_tensors and changed == prompt_tensors


@pytest.mark.parametrize("trainer_name,config,opts,expected_count", E2E_CASES, ids=[c[0] for c in E2E_CASES])
def test_trainer_end_to_end(tmp_path, trainer_name, config, opts, expected_count):
    output_dir, log, trainer = run_train(tmp_path, trainer_name, f"configs/trainers/{config}", opts=opts,
                                         return_trainer=True)
    assert "* accuracy:" in log and "Finish training" in log
    assert int(re.search(r"Trainable parameters: ([\d,]+)", log).group(1).replace(",", "")) == expected_count
    assert (output_dir / "prompt_learner" / "model.pth.tar-2").is_file()
    # only a text side with nothing to learn (VPT) reuses its class features across training steps
    assert trainer.text_is_constant == (trainer_name == "VPT")
    if trainer.text_is_constant:
        with torch.no_grad():
            torch.testing.assert_close(trainer.constant_class_features, trainer.model.class_features())
    assert_step_moves_only_prompts(trainer)


def test_zeroshot_end_to_end(tmp_path):
    _, log = run_train(tmp_path, "ZeroshotCLIP", "configs/trainers/ZeroshotCLIP/vit_b16.yaml", dataset="OxfordPets",
                       eval_only=True)
    assert "a photo of a {}, a type of pet." in log
    assert "* accuracy:" in log


def test_base_to_new_reloads_prompts_for_other_classes(tmp_path):
    """MaPLe trained on the base half evaluates the new half from its checkpoint (class ids are not saved)."""
    opts = ("TRAINER.MAPLE.PROMPT_DEPTH", "2", "OPTIM.MAX_EPOCH", "1")
    config = "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"
    train_dir, _ = run_train(tmp_path, "MaPLe", config, opts=opts, subsample="base")
    _, log = run_train(tmp_path, "MaPLe", config, opts=opts, subsample="new", eval_only=True, model_dir=train_dir,
                       load_epoch=1)
    assert "Loading weights to prompt_learner" in log and "* accuracy:" in log
