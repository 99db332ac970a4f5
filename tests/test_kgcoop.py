"""KgCoOp: the knowledge-guided term and the training loss against an independent restatement of the release's
formula (CLIP's own encode_text / encode_image, CoOp's reference splice), templates, parameter count at
ViT-B/16, and base-to-new end to end (training changes only the prompt; evaluation never builds t0)."""
import clip
import pytest
import torch
import torch.nn.functional as F

import mmpt
import trainers  # noqa: F401  (declares the methods)
from dassl.utils import ConfigError, RunError
from mmpt.clip_backbone import build_random_clip, load_clip_by_name
from mmpt.templates import CUSTOM_TEMPLATES
from tests.e2e import assert_only_prompts_differ, run_train, small_clip_model, trainer_node
from tests.test_baselines import coop_reference_features
from trainers import kgcoop

CLASSNAMES = ["banded", "golden_retriever", "sea lion of the north", "cat"]
CONFIG = "configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model()


def hand_written_reference(clip_model, template, classnames):
    """t0: CLIP's encode_text of the filled template, L2-normalised."""
    tokens = clip.tokenize([template.format(name.replace("_", " ")) for name in classnames])
    with torch.no_grad():
        features = clip_model.encode_text(tokens)
    return features / features.norm(dim=-1, keepdim=True)


def kg_term_reference(prompted, hand_written):
    """1 - (1/C) sum_c <t_c, t0_c> / max(|t_c| |t0_c|, eps), written out (the release's CosineSimilarity)."""
    dots = (prompted * hand_written).sum(-1)
    norms = (prompted.norm(dim=-1) * hand_written.norm(dim=-1)).clamp_min(1e-7)
    return 1 - (dots / norms).sum() / prompted.shape[0]


def perturbed(model, scale=0.05):
    torch.manual_seed(1)
    with torch.no_grad():
        model.prompt_learner.ctx.add_(torch.randn_like(model.prompt_learner.ctx) * scale)
    return model


def test_knowledge_guided_term_matches_the_formula(small_clip):
    template = kgcoop.dataset_template("DescribableTextures")
    assert template == "a photo of a {}, a type of texture."  # KgCoOp's DTD template, not CoOp's
    model = perturbed(kgcoop.KgCoOpCLIP(small_clip, CLASSNAMES, trainer_node(kgcoop, "KGCOOP", TEMPLATE=template)))
    ctx = model.prompt_learner.ctx
    prompted = coop_reference_features(small_clip, ctx, CLASSNAMES, "end")
    hand_written = hand_written_reference(small_clip, model.template, CLASSNAMES)
    expected = kg_term_reference(prompted, hand_written)
    got = model.knowledge_guided_loss(model.class_features())
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert 1e-4 < got.item() < 1  # the perturbed context is away from the hand-written features
    torch.testing.assert_close(model.hand_written_class_features(), hand_written, atol=1e-5, rtol=1e-5)
    # the gradient reaches the context through the prompted features only
    (grad,) = torch.autograd.grad(got, ctx)
    (expected_grad,) = torch.autograd.grad(expected, ctx)
    torch.testing.assert_close(grad, expected_grad, atol=1e-6, rtol=1e-4)


def test_hand_written_features_fp32_once_and_not_saved(small_clip):
    model = kgcoop.KgCoOpCLIP(small_clip, CLASSNAMES, trainer_node(kgcoop, "KGCOOP",
                                                                  TEMPLATE=kgcoop.dataset_template("OxfordPets")))
    assert model.hand_written.cached_class_features is None  # nothing computed until a training step needs it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = model.hand_written_class_features()
    assert first.dtype == torch.float32 and not first.requires_grad
    assert model.hand_written_class_features() is first  # cached
    torch.testing.assert_close(first, hand_written_reference(small_clip, "a photo of a {}, a type of pet.",
                                                             CLASSNAMES), atol=1e-5, rtol=1e-5)
    assert not {"hand_written_features", "hand_written_token_ids"} & set(model.state_dict())
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]


def kgcoop_cfg(**node_values):
    import trainers
    from dassl.config import get_cfg_default

    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    cfg.MODEL.BACKBONE.NAME = "random-tiny-ViT"
    for key, value in node_values.items():
        cfg.TRAINER.KGCOOP[key] = value
    return cfg


def test_templates(small_clip, capsys):
    """The trainer fills TEMPLATE in from DATASET.NAME unless the config sets it; the model reads TEMPLATE."""
    def trainer_template(dataset, **node_values):
        cfg = kgcoop_cfg(**node_values)
        cfg.DATASET.NAME = dataset
        cfg.freeze()
        node = kgcoop.KgCoOp.__new__(kgcoop.KgCoOp).model_config(cfg)
        return kgcoop.KgCoOpCLIP(small_clip, CLASSNAMES, node).template

    assert CUSTOM_TEMPLATES["DescribableTextures"] == "{} texture."  # zero-shot CLIP keeps CoOp's
    assert trainer_template("EuroSAT") == "a centered satellite photo of {}."
    assert trainer_template("ImageNetSketch") == "a photo of a {}."
    assert trainer_template("EuroSAT", TEMPLATE="itap of a {}.") == "itap of a {}."
    assert trainer_template("MyOwnDataset") == "a photo of a {}." and "MyOwnDataset" in capsys.readouterr().out
    # without a trainer (no dataset): the generic template
    assert kgcoop.KgCoOpCLIP(small_clip, CLASSNAMES, trainer_node(kgcoop, "KGCOOP")).template == "a photo of a {}."


def test_parameter_count_at_vit_b16():
    """2,048 = 4 tokens of "a photo of a" x 512 (the release's unused modules are left out); counted on the
    built model without running it."""
    clip_model = build_random_clip("random-ViT-B/16").requires_grad_(False)
    model = kgcoop.KgCoOp.model_class(clip_model, CLASSNAMES, trainer_node(kgcoop, "KGCOOP"))
    assert sum(p.numel() for p in model.prompt_learner.parameters()) == 2_048
    assert model.hand_written.cached_class_features is None
    random_init = kgcoop.KgCoOpCLIP(clip_model, CLASSNAMES, trainer_node(kgcoop, "KGCOOP", CTX_INIT="", N_CTX=16))
    assert sum(p.numel() for p in random_init.prompt_learner.parameters()) == 8_192


@pytest.mark.parametrize("key,value", [("W", -1.0), ("W", "8"), ("TEMPLATE", "a photo"),
                                       ("CLASS_TOKEN_POSITION", "start"), ("N_CTX", 0)])
def test_bad_values_are_one_clear_error(key, value):
    cfg = kgcoop_cfg(**{key: value}, **({"CTX_INIT": ""} if key == "N_CTX" else {}))
    with pytest.raises(ConfigError, match=rf"^TRAINER\.KGCOOP\.{key}={value!r}: expected"):
        kgcoop.KgCoOp.__new__(kgcoop.KgCoOp).check_cfg(cfg)


def test_create_model_gives_coops_model(small_clip):
    """Built without a trainer: CoOp's prompts and logits (same context -> same logits), one trainable tensor;
    a bad value is the same one-line ConfigError as from a config file."""
    model = mmpt.create_model("KgCoOp", small_clip, CLASSNAMES, PREC="fp32", TEMPLATE="itap of a {}.")
    coop = mmpt.create_model("CoOp", small_clip, CLASSNAMES, PREC="fp32", N_CTX=4, CTX_INIT="a photo of a")
    assert isinstance(model, kgcoop.CoOpCLIP) and model.template == "itap of a {}."
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images), coop(images))
    with pytest.raises(ConfigError, match=r"^TRAINER\.KGCOOP\.W=-2\.0: expected"):
        mmpt.create_model("KgCoOp", small_clip, CLASSNAMES, W=-2.0)


def test_base_to_new_end_to_end(tmp_path):
    """Train on the base half (2 epochs): only the context moves, and the logged loss is CE + 8 x KG term. The
    trained trainer's loss on a batch equals the formula computed with CLIP's own code; gradients too. Then
    evaluate the checkpoint on the new half: no t0 is built there."""
    train_dir, log, trainer = run_train(tmp_path, "KgCoOp", CONFIG, dataset="OxfordPets", subsample="base",
                                        return_trainer=True)
    assert "Finish training" in log and "* accuracy:" in log and "loss_kg" in log
    model = trainer.model
    assert model.template == "a photo of a {}, a type of pet."
    clip_model = load_clip_by_name("random-tiny-ViT", seed=0)  # the weights the run started from
    base_names = trainer.dm.dataset.classnames

    # training changed the context and nothing else
    initial_ctx = clip_model.token_embedding.weight[clip.tokenize("a photo of a")[0, 1:5]]
    assert not torch.allclose(model.prompt_learner.ctx, initial_ctx)
    assert_only_prompts_differ(model, clip_model)  # every CLIP tensor compared

    # the loss of one training step against the release's formula, on CLIP's own code path
    batch = next(iter(trainer.train_loader_x))
    captured = []
    trainer.backward_and_update = captured.append
    trainer.batch_idx, trainer.num_batches = 0, 2
    summary = trainer.forward_backward(batch)
    ctx = model.prompt_learner.ctx
    images, labels = batch["img"], batch["label"]
    with torch.no_grad():
        image_features = F.normalize(clip_model.encode_image(images), dim=-1)
    prompted = coop_reference_features(clip_model, ctx, base_names, "end")
    hand_written = hand_written_reference(clip_model, "a photo of a {}, a type of pet.", base_names)
    logits = clip_model.logit_scale.exp() * image_features @ prompted.t()
    expected = F.cross_entropy(logits, labels) + 8.0 * kg_term_reference(prompted, hand_written)
    (loss,) = captured
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    assert summary["loss"] == pytest.approx(summary["loss_ce"] + 8.0 * summary["loss_kg"], abs=1e-5)
    assert summary["loss_kg"] > 1e-3  # the pet template differs from the prompt: the term is live
    (grad,) = torch.autograd.grad(loss, ctx)
    (expected_grad,) = torch.autograd.grad(expected, ctx)
    torch.testing.assert_close(grad, expected_grad, atol=1e-4 * expected_grad.abs().max().item(), rtol=1e-4)

    _, log, evaluator = run_train(tmp_path, "KgCoOp", CONFIG, dataset="OxfordPets", subsample="new", eval_only=True, model_dir=train_dir,
                                  load_epoch=2, return_trainer=True)
    assert "model.pth.tar-2" in log and "* accuracy:" in log
    assert set(evaluator.dm.dataset.classnames).isdisjoint(base_names)
    torch.testing.assert_close(evaluator.model.prompt_learner.ctx, ctx)
    assert evaluator.model.hand_written.cached_class_features is None

    # a checkpoint of the release (its unused bias_vectors / meta_net and CoOp's class buffers) loads
    width = ctx.shape[-1]
    release = {"ctx": torch.full_like(ctx, 0.5), "bias_vectors": torch.zeros(1, width),
               "meta_net.linear1.weight": torch.zeros(width, width), "token_prefix": torch.zeros(3, 1, width)}
    evaluator.load_state_dict_into("prompt_learner", release, "release/model.pth.tar-100")
    assert bool((evaluator.model.prompt_learner.ctx == 0.5).all())
    with pytest.raises(RunError, match="does not fit"):  # a one-line train.py error
        evaluator.load_state_dict_into("prompt_learner", {"ctx": ctx, "adapter.fc": ctx}, "other.pth")
