"""MuDPT: CoOp equivalence, fusion equations and on/off per depth, gradients / frozen CLIP, ViT-B/16 parameter
counts, config files and one-line errors, base-to-new end to end (train on base, --eval-only on new)."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from clip.model import CLIP
from dassl.utils import ConfigError

from tests.e2e import small_clip_model, trainer_node
from trainers import mudpt

CLASSNAMES = ["dog", "golden_retriever", "a very long class name of a thing", "cat"]
CONFIG_DIR = Path("configs/trainers/MuDPT")


def mudpt_node(**overrides):
    # a small joint block for the tiny backbone
    return trainer_node(mudpt, "MUDPT", **{"INJECTION_WIDTH": 32, "INJECTION_HEADS": 2, **overrides})


@pytest.fixture(scope="module")
def small_clip():
    """A 4-layer random CLIP with vision width 96 != text width 64, so a swapped projection cannot pass."""
    return small_clip_model(perturb=False, layers=4)


def build_model(clip_model, classnames=CLASSNAMES, **overrides):
    torch.manual_seed(1)
    model = mudpt.MuDPTCLIP(clip_model, classnames, mudpt_node(**overrides))
    with torch.no_grad():  # move every parameter away from its initialisation so nothing matches by chance
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def images(n=2, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- CoOp equivalence
def reference_coop_text_features(clip_model, classnames, ctx):
    """CoOp's text encoder written out: ctx replaces the n X's after SOS, + positional embedding, CLIP's own
    transformer (sequence-first, causal mask), ln_final at the EOT token, text_projection; L2-normalised."""
    import clip
    n = ctx.shape[0]
    token_ids = clip.tokenize([" ".join(["X"] * n) + " " + name.replace("_", " ") + "." for name in classnames])
    x = clip_model.token_embedding(token_ids)
    x = torch.cat([x[:, :1], ctx.expand(len(classnames), -1, -1), x[:, 1 + n:]], 1) + clip_model.positional_embedding
    x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = clip_model.ln_final(x)[torch.arange(len(classnames)), token_ids.argmax(-1)] @ clip_model.text_projection
    return F.normalize(x, dim=-1)


def test_depth1_no_visual_prompts_no_injection_is_coop(small_clip):
    model = build_model(small_clip, PROMPT_DEPTH=1, N_CTX_VISION=0, INJECTION="none", N_CTX_TEXT=4)
    assert model.prompt_learner.injection is None and model.prompt_learner.visual_ctx is None
    ctx = model.prompt_learner.text_ctx[0].detach()
    with torch.no_grad():
        torch.testing.assert_close(model.class_features(), reference_coop_text_features(small_clip, CLASSNAMES, ctx),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.image_features(images()),
                                   F.normalize(small_clip.encode_image(images()), dim=-1), rtol=1e-5, atol=1e-5)


def test_depth1_text_features_equal_trainers_coop(small_clip):
    coop = pytest.importorskip("trainers.coop")
    model = build_model(small_clip, PROMPT_DEPTH=1, N_CTX_VISION=0, INJECTION="none", N_CTX_TEXT=4, CTX_INIT="")
    coop_model = coop.CoOpCLIP(small_clip, CLASSNAMES, trainer_node(coop, "COOP", N_CTX=4, CTX_INIT=""))
    with torch.no_grad():
        coop_model.prompt_learner.ctx.copy_(model.prompt_learner.text_ctx[0])
        torch.testing.assert_close(model.class_features(), coop_model.class_features(), rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- fusion
def test_fused_prompts_are_prompts_plus_injection(small_clip):
    """linear form: text l gets T_l + V_l W_vt + c (fused levels), vision l gets V_l + T_l W_tv + c (own W at l=0)."""
    model = build_model(small_clip, PROMPT_DEPTH=3, N_CTX_TEXT=2, N_CTX_VISION=2, INJECTION="linear",
                        FUSE_SHALLOW="t2v")
    learner = model.prompt_learner
    inj = learner.injection
    T, V = learner.text_ctx.detach(), learner.visual_ctx.detach()
    with torch.no_grad():
        prompts = model.compute_prompts()
        text, vision = prompts.text, prompts.vision
        v2t = F.linear(V, inj.vision_to_text.weight, inj.vision_to_text.bias)
        torch.testing.assert_close(text[0], T[0], rtol=0, atol=0)  # shallow text not fused under "t2v"
        torch.testing.assert_close(torch.stack(text[1:]), T[1:] + v2t[1:])
        torch.testing.assert_close(vision[0], V[0] + F.linear(T[0], inj.shallow_text_to_vision.weight,
                                                                inj.shallow_text_to_vision.bias))
        torch.testing.assert_close(torch.stack(vision[1:]), V[1:] + F.linear(T[1:], inj.text_to_vision.weight,
                                                                              inj.text_to_vision.bias))


# (injection, FUSE_SHALLOW, depth l, visual->text fused at l, text->vision fused at l)
FUSION_CASES = [
    ("joint", "none", 0, False, False),
    ("joint", "t2v", 0, False, True),
    ("linear", "t2v", 0, False, True),
    ("separate", "both", 0, True, True),
    ("joint", "none", 2, True, True),
    ("linear", "t2v", 2, True, True),
    ("none", "none", 0, False, False),
    ("none", "none", 2, False, False),
]


@pytest.mark.parametrize("injection, fuse_shallow, depth, v2t_on, t2v_on", FUSION_CASES)
def test_prompt_change_crosses_towers_exactly_when_fused(small_clip, injection, fuse_shallow, depth, v2t_on, t2v_on):
    model = build_model(small_clip, PROMPT_DEPTH=3, N_CTX_TEXT=2, N_CTX_VISION=2, INJECTION=injection,
                        FUSE_SHALLOW=fuse_shallow)
    learner, batch = model.prompt_learner, images()
    with torch.no_grad():
        text_before, image_before = model.class_features(), model.image_features(batch)
        original = copy.deepcopy(learner.state_dict())
        learner.visual_ctx[depth] += torch.randn_like(learner.visual_ctx[depth])
        assert not torch.equal(model.image_features(batch), image_before)  # the change is effective
        assert torch.equal(model.class_features(), text_before) != v2t_on
        learner.load_state_dict(original)
        learner.text_ctx[depth] += torch.randn_like(learner.text_ctx[depth])
        assert not torch.equal(model.class_features(), text_before)
        assert torch.equal(model.image_features(batch), image_before) != t2v_on


# ---------------------------------------------------------------- gradients, frozen CLIP
@pytest.mark.parametrize("injection, fuse_shallow", [("joint", "none"), ("separate", "t2v"), ("linear", "t2v")])
def test_gradients_reach_every_prompt_and_injection_parameter(small_clip, injection, fuse_shallow):
    model = build_model(small_clip, PROMPT_DEPTH=3, N_CTX_TEXT=2, N_CTX_VISION=2, INJECTION=injection,
                        FUSE_SHALLOW=fuse_shallow)
    loss = F.cross_entropy(model(images(4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, param in model.prompt_learner.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    # the prompts of every depth get a gradient (not just the tensor as a whole)
    for name in ("text_ctx", "visual_ctx"):
        grad = getattr(model.prompt_learner, name).grad
        assert (grad.flatten(1).abs().sum(1) > 0).all(), name


def test_injection_runs_once_per_forward(small_clip):
    model = build_model(small_clip, PROMPT_DEPTH=3, N_CTX_TEXT=2, N_CTX_VISION=2, INJECTION="joint")
    calls = []
    model.prompt_learner.injection.register_forward_hook(lambda *args: calls.append(1))
    model(images(2))
    assert len(calls) == 1


# ---------------------------------------------------------------- ViT-B/16 parameter counts
@pytest.fixture(scope="module")
def vit_b16():
    from mmpt.clip_backbone import build_random_clip
    return build_random_clip("ViT-B/16", seed=0)


def n_trainable(model):
    return sum(p.numel() for p in model.prompt_learner.parameters())


@pytest.mark.parametrize("injection, expected", [("linear", 1_204_736), ("separate", 11_056_128)])
def test_official_parameter_counts_vit_b16(vit_b16, injection, expected):
    model = mudpt.MuDPTCLIP(vit_b16, ["cat", "dog"], mudpt_node(
        N_CTX_TEXT=2, N_CTX_VISION=2, PROMPT_DEPTH=9, INJECTION=injection, FUSE_SHALLOW="t2v",
        INJECTION_WIDTH=512, INJECTION_HEADS=8))
    assert n_trainable(model) == expected
    breakdown = dict(model.prompt_learner.parameter_breakdown())
    assert breakdown["text prompts"] == 9 * 2 * 512 and breakdown["visual prompts"] == 9 * 2 * 768
    assert sum(breakdown.values()) == expected


def test_joint_parameter_count_formula_vit_b16(vit_b16):
    """Paper config: n = 4, J = 12; joint block width W = 512: lifts, one pre-LN block, two heads."""
    model = mudpt.MuDPTCLIP(vit_b16, ["cat", "dog"], mudpt_node(INJECTION_WIDTH=512, INJECTION_HEADS=8))
    d_t, d_v, w, n, depth = 512, 768, 512, 4, 12
    linear = lambda i, o: (i + 1) * o
    block = 4 * w * w + 4 * w + 2 * w + 8 * w * w + 5 * w + 2 * w  # attention, ln_1, MLP 4x, ln_2
    injection = linear(d_t, w) + linear(d_v, w) + block + linear(w, d_v) + linear(w, d_t)
    assert n_trainable(model) == depth * n * (d_t + d_v) + injection == 4_526_848


# ---------------------------------------------------------------- bad configs
@pytest.mark.parametrize("overrides, message", [
    (dict(N_CTX_TEXT=2, N_CTX_VISION=3), "N_CTX_TEXT=2 != N_CTX_VISION=3"),
    (dict(FUSE_SHALLOW="v2t"), "FUSE_SHALLOW='v2t'"),
    (dict(INJECTION="attention"), "INJECTION='attention'"),
    (dict(INJECTION="none", FUSE_SHALLOW="t2v"), "needs an injection model"),
    (dict(PROMPT_DEPTH=0), "PROMPT_DEPTH=0"),
    (dict(PROMPT_DEPTH=5), r"PROMPT_DEPTH=5: expected an int in 1\.\.4"),
    (dict(PROMPT_DEPTH=2, SENTENCE="paper"), "SENTENCE='paper'"),
])
def test_bad_config_one_line_errors(small_clip, overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        mudpt.MuDPTCLIP(small_clip, CLASSNAMES, mudpt_node(**overrides))
    assert "\n" not in str(info.value)


def test_resnet_backbone_is_refused_in_one_line():
    torch.manual_seed(0)
    resnet_clip = CLIP(embed_dim=32, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8,
                       vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=64,
                       transformer_heads=2, transformer_layers=2)
    with pytest.raises(ConfigError, match="ViT backbone") as info:
        mudpt.MuDPTCLIP(resnet_clip, CLASSNAMES, mudpt_node(PROMPT_DEPTH=1))
    assert "\n" not in str(info.value)


def test_unequal_lengths_allowed_without_fusion(small_clip):
    model = build_model(small_clip, PROMPT_DEPTH=2, N_CTX_TEXT=2, N_CTX_VISION=3, INJECTION="none")
    with torch.no_grad():
        assert model(images()).shape == (2, len(CLASSNAMES))


# ---------------------------------------------------------------- configs, trainer, end to end
def test_config_files_merge_and_build_plans():
    from dassl.config import get_cfg_default
    import trainers
    expected = {  # file -> (n, J, injection, FUSE_SHALLOW, lr, epochs)
        "vit_b16_c4_ep10_batch4_joint.yaml": (4, 12, "joint", "none", 0.0025, 10),
        "vit_b16_c2_ep5_batch4_linear.yaml": (2, 9, "linear", "t2v", 0.0025, 10),
        "vit_b16_c2_ep5_batch4_separate.yaml": (2, 9, "separate", "t2v", 0.0025, 10),
        "vit_b16_c2_ep2_batch4_linear_cross_datasets.yaml": (2, 3, "linear", "t2v", 0.0026, 2),
    }
    assert sorted(p.name for p in CONFIG_DIR.glob("vit_*.yaml")) == sorted(expected)  # the paper configs (not toy_demo)
    for name, (n, depth, injection, fuse, lr, epochs) in expected.items():
        cfg = get_cfg_default()
        trainers.extend_cfg(cfg)
        cfg.merge_from_file(str(CONFIG_DIR / name))
        node = cfg.TRAINER.MUDPT
        assert (node.N_CTX_TEXT, node.N_CTX_VISION, node.PROMPT_DEPTH, node.INJECTION, node.FUSE_SHALLOW) == \
            (n, n, depth, injection, fuse), name
        assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == \
            ("sgd", lr, epochs, 4), name
        assert (cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == \
            ("cosine", 1, "constant", 1e-5), name
        assert (cfg.MODEL.BACKBONE.NAME, cfg.INPUT.INTERPOLATION, node.CTX_INIT) == \
            ("ViT-B/16", "bicubic", "a photo of a"), name
        mudpt.FusionPlan.from_cfg(node)  # valid


# ---------------------------------------------------------------- the class sentence (TRAINER.MUDPT.SENTENCE)
def merged_config(name):
    from dassl.config import get_cfg_default
    import trainers
    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    cfg.merge_from_file(str(CONFIG_DIR / name))
    return cfg


def sentence_model(clip_model, node):
    torch.manual_seed(1)
    return mudpt.MuDPTCLIP(clip_model, CLASSNAMES, node)


def assert_sentences(model, clip_model, sentences, init_words):
    """token ids = the tokenised `sentences`; T_0 = the embeddings of the first n tokens of `init_words`."""
    import clip
    assert torch.equal(model.token_ids, clip.tokenize(sentences))
    shallow = model.prompt_learner.text_ctx[0].detach()
    if init_words:
        ids = clip.tokenize(init_words)[0, 1:1 + shallow.shape[0]]
        with torch.no_grad():
            assert torch.equal(shallow, clip_model.token_embedding(ids).float())


# the sentences of the official MuDPT / UUMuDPT trainers for CLASSNAMES, written out by hand
OFFICIAL_SENTENCES = ["a photo dog.", "a photo golden retriever.", "a photo a very long class name of a thing.",
                      "a photo cat."]


@pytest.mark.parametrize("name", ["vit_b16_c2_ep5_batch4_linear.yaml", "vit_b16_c2_ep5_batch4_separate.yaml",
                                  "vit_b16_c2_ep2_batch4_linear_cross_datasets.yaml"])
def test_official_configs_build_the_official_sentences(small_clip, name):
    node = merged_config(name).TRAINER.MUDPT
    node.PROMPT_DEPTH = 2  # the tiny backbone has 4 layers; depth does not touch the sentence
    assert node.SENTENCE == "official"
    model = sentence_model(small_clip, node)
    assert_sentences(model, small_clip, OFFICIAL_SENTENCES, "a photo")
    # the same model as MaPLe's rule with CTX_INIT "a photo" (the check that made the official logits match)
    node.SENTENCE, node.CTX_INIT = "maple", "a photo"
    same = sentence_model(small_clip, node)
    assert torch.equal(same.token_ids, model.token_ids)
    assert torch.equal(same.prompt_learner.text_ctx, model.prompt_learner.text_ctx)


def test_paper_config_keeps_the_whole_ctx_init(small_clip):
    node = merged_config("vit_b16_c4_ep10_batch4_joint.yaml").TRAINER.MUDPT
    node.PROMPT_DEPTH, node.INJECTION_WIDTH, node.INJECTION_HEADS = 2, 32, 2
    assert node.SENTENCE == "maple"
    model = sentence_model(small_clip, node)
    assert_sentences(model, small_clip, [f"a photo of a {c.replace('_', ' ')}." for c in CLASSNAMES], "a photo of a")


# (N_CTX, CTX_INIT, rule) -> the sentence for "dog" and the words T_0 starts from ("" = random)
SENTENCE_CASES = [
    (1, "a photo of a", "official", "a dog.", "a"),
    (2, "a photo of a", "official", "a photo dog.", "a photo"),
    (3, "a photo of a", "official", "a photo of dog.", "a photo of"),
    (4, "a photo of a", "official", "a photo of a dog.", "a photo of a"),
    (5, "a photo of a", "official", "X X X X X dog.", ""),
    (2, "a_photo_of_a", "official", "a photo dog.", "a photo"),
    (2, "", "official", "X X dog.", ""),
    (1, "a photo of a", "maple", "a photo of a dog.", "a"),
    (2, "a photo of a", "maple", "a photo of a dog.", "a photo"),
    (5, "a photo of a", "maple", "X X X X X dog.", ""),
    (2, "", "maple", "X X dog.", ""),
]


@pytest.mark.parametrize("n_ctx, ctx_init, rule, sentence, init_words", SENTENCE_CASES)
def test_sentence_rules(small_clip, n_ctx, ctx_init, rule, sentence, init_words):
    node = mudpt_node(PROMPT_DEPTH=1, N_CTX_TEXT=n_ctx, N_CTX_VISION=n_ctx, INJECTION="linear",
                      CTX_INIT=ctx_init, SENTENCE=rule)
    model = mudpt.MuDPTCLIP(small_clip, ["dog"], node)
    assert_sentences(model, small_clip, [sentence], init_words)
    if not init_words:  # random start: not the embedding of the X placeholders
        import clip
        with torch.no_grad():
            x_embedding = small_clip.token_embedding(clip.tokenize("X")[0, 1:2]).float()
        assert not torch.allclose(model.prompt_learner.text_ctx[0, :1], x_embedding)


TINY_OPTS = ("TRAINER.MUDPT.PROMPT_DEPTH", "2", "TRAINER.MUDPT.INJECTION_WIDTH", "32",
             "TRAINER.MUDPT.INJECTION_HEADS", "2", "OPTIM.MAX_EPOCH", "1")


def test_training_step_updates_prompts_only(tmp_path):
    """One real trainer step (PromptTrainer's optimizer, precision policy): every prompt / injection tensor moves,
    every CLIP weight stays bit-identical."""
    import train
    from tests.e2e import FAST_OPTS, make_fixture_dataset
    root = make_fixture_dataset(tmp_path / "data", "Caltech101")
    args = ["--root", str(root), "--seed", "1", "--trainer", "MuDPT", "--no-train",
            "--config-file", str(CONFIG_DIR / "vit_b16_c4_ep10_batch4_joint.yaml"),
            "--output-dir", str(tmp_path / "out"), *FAST_OPTS, "DATASET.NAME", "Caltech101", *TINY_OPTS]
    trainer = train.main(train.get_parser().parse_args(args))
    model = trainer.model
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("prompt_learner.")}
    learnable = {k: v.detach().clone() for k, v in model.prompt_learner.named_parameters()}
    assert frozen and all(not p.requires_grad for n, p in model.named_parameters()
                          if not n.startswith("prompt_learner."))
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, len(trainer.train_loader_x)  # as run_epoch sets them
    trainer.forward_backward(next(iter(trainer.train_loader_x)))
    for key, value in model.state_dict().items():
        if key in frozen:
            assert torch.equal(value, frozen[key]), key
    for key, param in model.prompt_learner.named_parameters():
        assert not torch.equal(param.detach(), learnable[key]), key


def test_base2new_train_then_eval_only_on_new(tmp_path):
    from tests.e2e import run_train
    import parse_test_res
    config = CONFIG_DIR / "vit_b16_c2_ep5_batch4_linear.yaml"
    train_dir, log = run_train(tmp_path, "MuDPT", config, subsample="base", opts=TINY_OPTS,
                               output_dir=tmp_path / "train_base" / "seed1")
    assert "* accuracy:" in log
    # the printed breakdown (text prompts, visual prompts, injection) adds up to the printed total
    total = int(log.split("Trainable parameters: ")[1].split()[0])
    groups = log.split("  of which: ")[1].splitlines()[0].split(", ")
    assert [g.rsplit(" ", 1)[0] for g in groups] == ["text prompts", "visual prompts", "injection (linear)"]
    assert sum(int(g.rsplit(" ", 1)[1].replace(",", "")) for g in groups) == total
    assert (train_dir / "prompt_learner" / "model.pth.tar-1").exists()
    accuracy = lambda text: float(text.rsplit("* accuracy:", 1)[1].split("%")[0])
    # reloading the checkpoint reproduces the trained model: same accuracy on the base test set
    _, base_log = run_train(tmp_path, "MuDPT", config, subsample="base", opts=TINY_OPTS, eval_only=True,
                            model_dir=train_dir, load_epoch=1, output_dir=tmp_path / "test_base" / "seed1")
    assert accuracy(base_log) == accuracy(log)
    # ... and loads for the new classes (class token ids are not part of the checkpoint)
    _, new_log = run_train(tmp_path, "MuDPT", config, subsample="new", opts=TINY_OPTS, eval_only=True,
                           model_dir=train_dir, load_epoch=1, output_dir=tmp_path / "test_new" / "seed1")
    assert "Loading weights to prompt_learner" in new_log and "Evaluate on the *test* set" in new_log
    for folder, text, test_log in (("train_base", log, False), ("test_new", new_log, True)):
        parsed = parse_test_res.collect_results(str(tmp_path / folder), test_log=test_log)
        assert parsed["per_run"] == {"seed1": accuracy(text)}, folder
