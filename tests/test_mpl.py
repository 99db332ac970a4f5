"""MPL: the add / remove / carry schedule against an independent loop over CLIP's own blocks, the MaPLe special
case, text truncation with the text-side schedule, the ViT-B/16 parameter count, and base-to-new end to end."""
import clip
import pytest
import torch
import torch.nn.functional as F
from clip.model import CLIP
from dassl.utils import ConfigError

from tests.e2e import config_from_file, small_clip_model, trainer_node
from mmpt.encoders import TowerSchedule
from trainers import mpl

CLASSNAMES = ["dog", "golden_retriever", "a very long class name of a thing", "cat"]


def mpl_node(**overrides):
    return trainer_node(mpl, "MPL", **overrides)


@pytest.fixture(scope="module")
def small_clip():
    """A 5-layer random CLIP (vision width 96 != text width 64) so that depth 4 leaves a carry-only layer."""
    return small_clip_model(perturb=False, layers=5)


def build_model(clip_model, **overrides):
    torch.manual_seed(1)
    model = mpl.MPLCLIP(clip_model, CLASSNAMES, mpl_node(**overrides))
    with torch.no_grad():  # move every parameter away from its initialisation so that nothing matches by chance
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


# ---- the independent reference: CLIP's own blocks run through nn.MultiheadAttention, sequence-first ----
def run_block(block, x, mask=None):
    h = block.ln_1(x)
    x = x + block.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
    return x + block.mlp(block.ln_2(x))


def reference_image_features(clip_model, images, prompts, n_rm):
    """prompts[0] appended after the patches; before block l (1 <= l < len(prompts)) the last n_rm[l - 1] tokens
    are dropped and prompts[l] appended. Returns the unnormalised feature and each block's input."""
    visual = clip_model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], 1))
    block_inputs = []
    for layer, block in enumerate(visual.transformer.resblocks):
        if 1 <= layer < len(prompts):
            x = torch.cat([x[:, : x.shape[1] - n_rm[layer - 1]], prompts[layer].expand(x.shape[0], -1, -1)], 1)
        block_inputs.append(x)
        x = run_block(block, x.transpose(0, 1)).transpose(0, 1)
    return visual.ln_post(x[:, 0]) @ visual.proj, block_inputs


def reference_text_features(clip_model, token_ids, prompts, n_rm=None):
    """Untruncated (77 tokens + prompts). prompts[0] replaces positions 1..n; before block l the last n_rm[l - 1]
    tokens of the prompt region [1, 1 + k) are dropped (None: all k) and prompts[l] is appended to it."""
    x = clip_model.token_embedding(token_ids)
    k = prompts[0].shape[0]
    x = torch.cat([x[:, :1], prompts[0].expand(x.shape[0], -1, -1), x[:, 1 + k:]], 1) + clip_model.positional_embedding
    eot = token_ids.argmax(-1)
    for layer, block in enumerate(clip_model.transformer.resblocks):
        if 1 <= layer < len(prompts):
            keep = 0 if n_rm is None else k - n_rm[layer - 1]
            new = prompts[layer].expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, : 1 + keep], new, x[:, 1 + k:]], 1)
            eot = eot + keep + new.shape[1] - k
            k = keep + new.shape[1]
        mask = torch.full((x.shape[1], x.shape[1]), float("-inf")).triu(1)
        x = run_block(block, x.transpose(0, 1), mask).transpose(0, 1)
    x = clip_model.ln_final(x)
    return x[torch.arange(x.shape[0]), eot] @ clip_model.text_projection


def class_token_ids(n_ctx, ctx_init):
    return clip.tokenize([f"{mpl.prompt_prefix(n_ctx, ctx_init)} {name.replace('_', ' ')}." for name in CLASSNAMES])


# ---- schedule ----
def test_release_schedule_counts_and_validation():
    schedule = mpl.MPLSchedule(1, 9, 2, 1)
    assert schedule.visual_counts == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert mpl.MPLSchedule(1, 9).visual_counts == schedule.visual_counts  # None = the release's 2 / 1
    assert mpl.MPLSchedule(2, 4, [1, 2, 0], [2, 1, 0]).visual_counts == [2, 2, 5, 5]
    assert mpl.MPLSchedule(1, 3).text_counts == [1, 1, 1]  # text schedule off: MaPLe's replacement
    with pytest.raises(ConfigError, match=r"N_RM_OP must be <= N_ADD_OP \* N_CTX.*N_RM_OP = 3, N_ADD_OP = 1, N_CTX = 2"):
        mpl.MPLSchedule(2, 9, 1, 3)
    with pytest.raises(ConfigError, match="N_RM_OP = 2 at layer 1 removes more than the 1 prompt tokens"):
        mpl.MPLSchedule(1, 9, 2, 2)
    with pytest.raises(ConfigError, match=r"N_ADD_OP = \[2, 2\]: expected .* list of 3"):
        mpl.MPLSchedule(1, 4, [2, 2], 1)
    with pytest.raises(ConfigError, match="TEXT_N_RM_OP must be <= TEXT_N_ADD_OP"):
        mpl.MPLSchedule(1, 4, 2, 1, text_n_add=1, text_n_rm=2)


def test_template_and_context_init(small_clip):
    one_class = mpl.MPLCLIP(small_clip, ["golden_retriever"], mpl_node(PROMPT_DEPTH=4))
    assert one_class.sentences.texts == ["X a photo of a golden retriever."] and one_class.sentences.placeholders == 1
    model = mpl.MPLCLIP(small_clip, CLASSNAMES, mpl_node(PROMPT_DEPTH=4))
    x_embedding = small_clip.token_embedding.weight[clip.tokenize("X")[0, 1]]
    assert torch.equal(model.prompt_learner.ctx[0], x_embedding)
    assert model.prompt_learner.ctx.requires_grad


# ---- the vision tower follows the schedule, carrying the previous layer's outputs ----
@pytest.mark.parametrize("n_ctx, n_add, n_rm", [(1, 2, 1), (2, [1, 3, 2], [2, 0, 4])])
def test_visual_schedule_against_reference(small_clip, n_ctx, n_add, n_rm):
    model = build_model(small_clip, N_CTX=n_ctx, PROMPT_DEPTH=4, N_ADD_OP=n_add, N_RM_OP=n_rm)
    schedule = model.schedule
    images = torch.randn(3, 3, 32, 32)
    n_patch_tokens = 1 + 16
    mlp_inputs = []
    hooks = [block.mlp.register_forward_hook(lambda mod, inp, out: mlp_inputs.append(inp[0]))
             for block in small_clip.visual.transformer.resblocks]
    try:
        with torch.no_grad():
            features = model.image_features(images)
            prompts, remove = model.compute_prompts().vision, model.compute_prompts().vision_remove
            assert remove == [None, *schedule.n_rm]
            mlp_inputs_model, mlp_inputs[:] = list(mlp_inputs), []
            expected, block_inputs = reference_image_features(small_clip, images, prompts, schedule.n_rm)
            mlp_inputs_reference = [x.transpose(0, 1) for x in mlp_inputs]
    finally:
        for hook in hooks:
            hook.remove()
    counts = schedule.visual_counts + [schedule.visual_counts[-1]]  # layer 4 (>= J) carries
    assert len(mlp_inputs_model) == 5
    # the token count seen inside each block is CLS + patches + the scheduled prompt count
    assert [x.shape[1] - n_patch_tokens for x in mlp_inputs_model] == counts
    assert [x.shape[1] - n_patch_tokens for x in block_inputs] == counts
    for got, want in zip(mlp_inputs_model, mlp_inputs_reference):
        torch.testing.assert_close(got.reshape(want.shape), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features, F.normalize(expected, dim=-1), atol=1e-5, rtol=1e-5)


def test_carried_tokens_are_previous_outputs_not_parameters(small_clip):
    """Re-inserting the parameters instead of carrying the contextualised tokens gives different features."""
    model = build_model(small_clip, N_CTX=1, PROMPT_DEPTH=4, N_ADD_OP=2, N_RM_OP=1)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        prompts = model.compute_prompts().vision
        features = model.image_features(images)
        carried, _ = reference_image_features(small_clip, images, prompts, model.schedule.n_rm)
        # the "re-inserted" variant: every layer's prompt region is rebuilt from raw parameters
        rebuilt = [prompts[0]]
        for layer in range(1, len(prompts)):
            rebuilt.append(torch.cat([rebuilt[-1][: rebuilt[-1].shape[0] - 1], prompts[layer]]))
        reinserted, _ = reference_image_features(small_clip, images, rebuilt, [r.shape[0] for r in rebuilt[:-1]])
    torch.testing.assert_close(features, F.normalize(carried, dim=-1), atol=1e-5, rtol=1e-5)
    assert (features - F.normalize(reinserted, dim=-1)).abs().max() > 1e-3


def test_text_features_against_reference(small_clip):
    model = build_model(small_clip, N_CTX=1, PROMPT_DEPTH=4)
    with torch.no_grad():
        prompts, remove = model.compute_prompts().text, model.compute_prompts().text_remove
        assert remove is None  # text schedule off: the deep text prompts replace (MaPLe)
        expected = reference_text_features(small_clip, class_token_ids(1, "a photo of a"), prompts)
        torch.testing.assert_close(model.class_features(), F.normalize(expected, dim=-1), atol=1e-5, rtol=1e-5)


# ---- beyond the release: the text-side schedule, truncated == untruncated == reference ----
def test_text_schedule_truncation_is_exact(small_clip):
    model = build_model(small_clip, N_CTX=2, PROMPT_DEPTH=4, TEXT_N_ADD_OP=[2, 1, 3], TEXT_N_RM_OP=[1, 2, 2])
    assert model.schedule.text_counts == [2, 5, 5, 9]
    token_ids = class_token_ids(2, "a photo of a")
    with torch.no_grad():
        prompts, remove = model.compute_prompts().text, model.compute_prompts().text_remove
        assert remove == [None, 1, 2, 2]
        truncated = model.text_encoder.with_options(truncate=True)(token_ids, TowerSchedule(prompts, remove))
        untruncated = model.text_encoder.with_options(truncate=False)(token_ids, TowerSchedule(prompts, remove))
        expected = reference_text_features(small_clip, token_ids, prompts, [1, 2, 2])
        features = model.class_features()
    torch.testing.assert_close(truncated, untruncated, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(untruncated, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features, F.normalize(expected, dim=-1), atol=1e-5, rtol=1e-5)
    # the vision slots of layer l read the first n tokens of T_l
    visual = model.compute_prompts().vision
    slot = model.prompt_learner.compound_prompt_projections[0][1]
    torch.testing.assert_close(visual[1][2:4], slot(prompts[1][:2]))


# ---- MaPLe is MPL with N_ADD_OP = 1, N_RM_OP = N_CTX ----
def maple_logits_independent(clip_model, learner, token_ids, images):
    """MaPLe as METHODS.md defines it, computed from MPL's parameters: T_l replaces the text prompts; the
    visual prompts of layer l, F_l(T_l), replace ALL visual prompt tokens (remove n, add n)."""
    n = learner.ctx.shape[0]
    text_prompts = [learner.ctx, *learner.compound_prompts_text]
    visual_prompts = [learner.proj(learner.ctx)] + [slots[0](t) for t, slots in
                                                    zip(learner.compound_prompts_text, learner.compound_prompt_projections)]
    text = F.normalize(reference_text_features(clip_model, token_ids, text_prompts), dim=-1)
    image = F.normalize(reference_image_features(clip_model, images, visual_prompts, [n] * len(text_prompts))[0], dim=-1)
    return clip_model.logit_scale.exp() * image @ text.t()


def maple_with_mpl_parameters(clip_model, mpl_model, n_ctx, depth):
    """trainers/maple.py's MaPLe on the same sentences (CTX_INIT "X .. X a photo of a" learns the X's, as MPL)
    holding MPL's parameters: ctx, T_l, proj, and F_{1,l} as MaPLe's F_l."""
    from trainers import maple as maple_module

    node = trainer_node(maple_module, "MAPLE", N_CTX=n_ctx, PROMPT_DEPTH=depth,
                        CTX_INIT=mpl.prompt_prefix(n_ctx, "a photo of a"))
    maple = maple_module.MaPLeCLIP(clip_model, CLASSNAMES, node).eval()
    assert torch.equal(maple.token_ids, mpl_model.token_ids)
    assert torch.equal(maple.prompt_learner.ctx, mpl.initial_context(clip_model, n_ctx, "a photo of a"))  # same init
    source, target = mpl_model.prompt_learner, maple.prompt_learner
    with torch.no_grad():
        target.ctx.copy_(source.ctx)
        for dst, src in zip(target.compound_prompts_text, source.compound_prompts_text):
            dst.copy_(src)
        target.proj.load_state_dict(source.proj.state_dict())
        for maple_projection, slots in zip(target.compound_prompt_projections, source.compound_prompt_projections):
            maple_projection.load_state_dict(slots[0].state_dict())
    return maple


@pytest.mark.parametrize("n_ctx", [1, 2])
def test_add1_rm_n_equals_maple(small_clip, n_ctx):
    model = build_model(small_clip, N_CTX=n_ctx, PROMPT_DEPTH=4, N_ADD_OP=1, N_RM_OP=n_ctx)
    assert model.schedule.visual_counts == [n_ctx] * 4
    assert sum(p.numel() for p in model.prompt_learner.parameters()) == \
        n_ctx * 64 + 3 * n_ctx * 64 + 4 * (64 * 96 + 96)  # = MaPLe's count
    maple = maple_with_mpl_parameters(small_clip, model, n_ctx, 4)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits = model(images)
        expected = maple_logits_independent(small_clip, model.prompt_learner, class_token_ids(n_ctx, "a photo of a"), images)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(logits, maple(images), atol=1e-5, rtol=1e-6)
        # and the release's schedule (add 2, rm 1) differs from MaPLe on the same model
        assert (mpl.MPLCLIP(small_clip, CLASSNAMES, mpl_node(N_CTX=n_ctx, PROMPT_DEPTH=4)).schedule.visual_counts
                != model.schedule.visual_counts)


def test_depth_beyond_backbone_is_a_clear_error(small_clip):
    with pytest.raises(ConfigError, match=r"TRAINER.MPL.PROMPT_DEPTH=9: expected an int in 1..5"):
        mpl.MPL.build_method_model(small_clip, CLASSNAMES, mpl_node(PROMPT_DEPTH=9))


# ---- the release's parameter count on the real ViT-B/16 architecture ----
@pytest.fixture(scope="module")
def vit_b16():
    from mmpt.clip_backbone import build_random_clip
    return build_random_clip("random-ViT-B/16", seed=0)


def test_config_files():
    base2new = config_from_file("configs/trainers/MPL/vit_b4_c1_add2_rm1.yaml")
    cross = config_from_file("configs/trainers/MPL/vit_b4_c1_add2_rm1_cross_datasets.yaml")
    for cfg, depth, lr, epochs in ((base2new, 9, 0.0035, 5), (cross, 3, 0.0026, 2)):
        node = cfg.TRAINER.MPL
        assert (node.N_CTX, node.CTX_INIT, node.PROMPT_DEPTH, node.N_ADD_OP, node.N_RM_OP) == \
            (1, "a photo of a", depth, 2, 1)
        assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == \
            ("sgd", lr, epochs, 4)
        assert (cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == \
            ("cosine", 1, "constant", 1e-5)
        assert (cfg.MODEL.BACKBONE.NAME, cfg.INPUT.INTERPOLATION, tuple(cfg.INPUT.SIZE)) == ("ViT-B/16", "bicubic", (224, 224))
        assert list(cfg.INPUT.TRANSFORMS) == ["random_resized_crop", "random_flip", "normalize"]
        assert node.TEXT_N_ADD_OP is None and node.PREC == "amp"


def test_release_parameter_count_vit_b16(vit_b16, capsys):
    cfg = config_from_file("configs/trainers/MPL/vit_b4_c1_add2_rm1.yaml")
    model = mpl.MPL.build_method_model(vit_b16, ["cat", "dog"], mpl.MPL.config_from_node(cfg.TRAINER.MPL))
    printed = model.describe()
    assert sum(p.numel() for p in model.prompt_learner.parameters()) == 6_702_336
    d_t, d_v = 512, 768
    assert dict(model.prompt_learner.parameter_breakdown()) == {
        "shallow text context": d_t, "deep text prompts (layers 1..8)": 8 * d_t, "shallow projection": d_t * d_v + d_v,
        "deep projections (16 = add slots x layers)": 16 * (d_t * d_v + d_v)}
    assert "after each layer: 1 2 3 4 5 6 7 8 9" in printed


# ---- end to end: base-to-new training, then new-class testing from the checkpoint ----
def test_base2new_train_then_test_new(tmp_path):
    from tests.e2e import run_train

    config = "configs/trainers/MPL/vit_b4_c1_add2_rm1.yaml"
    opts = ["TRAINER.MPL.PROMPT_DEPTH", "2", "DATASET.NUM_SHOTS", "2"]  # random-tiny-ViT has 2 layers
    train_dir, log = run_train(tmp_path, "MPL", config, opts=opts, subsample="base")
    tiny = 64 + 64 + 3 * (64 * 64 + 64)  # ctx, T_1, proj, F_{1,1}, F_{2,1}
    assert f"Trainable parameters: {tiny}\n  of which: shallow text context 64, deep text prompts" in log
    assert "after each layer: 1 2" in log and "epoch [2/2]" in log and "* accuracy:" in log
    checkpoint = train_dir / "prompt_learner" / "model.pth.tar-2"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert sorted(saved) == sorted(["ctx", "proj.weight", "proj.bias", "compound_prompts_text.0",
                                    "compound_prompt_projections.0.0.weight", "compound_prompt_projections.0.0.bias",
                                    "compound_prompt_projections.0.1.weight", "compound_prompt_projections.0.1.bias"])
    _, log_new = run_train(tmp_path, "MPL", config, opts=opts, subsample="new", eval_only=True,
                           model_dir=train_dir, load_epoch=2)
    assert "model.pth.tar-2" in log_new and "(epoch = 2)" in log_new and "* accuracy:" in log_new
    assert "epoch [" not in log_new  # evaluation only


def test_resnet_backbone_is_refused_in_one_line():
    resnet_clip = CLIP(embed_dim=48, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8,
                       vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                       transformer_heads=2, transformer_layers=2)
    with pytest.raises(ConfigError, match="need a ViT backbone") as info:
        mpl.MPLCLIP(resnet_clip, CLASSNAMES, mpl_node(PROMPT_DEPTH=2))
    assert "\n" not in str(info.value)
