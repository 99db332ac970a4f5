"""MMRL against an independent restatement of its specification (tests/mmrl_reference.py: clip's own modules, the
official token layout): both logit sets and the evaluation rule, each loss term and one step's gradients, fp32;
the trainable count at ViT-B/16; the config files, the experiment layout and the per-dataset options; base-to-new
through train.py (the fused logits on the trained classes, the class-token logits on the new ones)."""
import pytest
import torch

import mmpt
import trainers  # noqa: F401  (declares the methods)
from dassl.utils import ConfigError
from mmpt.experiments import layout
from tests import mmrl_reference as ref
from tests.e2e import config_from_file, run_train, small_clip_model, train_killed_in_epoch_2
from trainers import mmrl
from trainers.mmrl import MMRL

CLASSNAMES = ["dog", "golden_retriever", "sea lion", "cat", "tabby cat"]
TEMPLATE = "a photo of a {}, a type of pet."
CONFIGS = "configs/trainers/MMRL/"
B2N, IMAGENET, FEWSHOT, XD = (CONFIGS + name + ".yaml" for name in
                              ("vit_b16", "vit_b16_imagenet", "vit_b16_few_shot", "vit_b16_cross_datasets"))


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model(layers=4)


def build(small_clip, rep_layers=(2, 3, 4), **fields):
    torch.manual_seed(1)
    model = mmpt.create_model("MMRL", small_clip, CLASSNAMES, N_REP_TOKENS=3, REP_DIM=16, REP_LAYERS=list(rep_layers),
                              TEMPLATE=TEMPLATE, PREC="fp32", **fields)
    with torch.no_grad():  # the aligners start identical (official): move every tensor off its initialisation
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


def reference_params(learner):
    """The model's trainable tensors as the restatement's plain tensors (fresh leaves)."""
    leaf = lambda t: t.detach().clone().requires_grad_(True)
    return {"R": leaf(learner.compound_rep_tokens),
            "v_weight": [leaf(a.weight) for a in learner.compound_rep_tokens_r2vproj],
            "v_bias": [leaf(a.bias) for a in learner.compound_rep_tokens_r2vproj],
            "t_weight": [leaf(a.weight) for a in learner.compound_rep_tokens_r2tproj],
            "t_bias": [leaf(a.bias) for a in learner.compound_rep_tokens_r2tproj],
            "proj_rep": leaf(learner.proj_rep)}


def batch():
    generator = torch.Generator().manual_seed(2)
    return torch.randn(3, 3, 32, 32, generator=generator), torch.tensor([0, 4, 2])


# ---------------------------------------------------------------- eval logits
@pytest.mark.parametrize("rep_layers", [(2, 3, 4), (3,), (2, 4)])  # (2, 4): block 3 carries block 2's tokens on
def test_logit_sets_and_rule_match_the_restatement(small_clip, rep_layers):
    model = build(small_clip, rep_layers)
    images, _ = batch()
    token_ids = ref.template_token_ids(TEMPLATE, CLASSNAMES)
    with torch.no_grad():
        expected = ref.forward(small_clip, images, token_ids, reference_params(model.prompt_learner), list(rep_layers))
        logits = model.outputs(images).logits
        trained = model.predict(images, on_trained_classes=True)
        unseen = model.predict(images, on_trained_classes=False)
    torch.testing.assert_close(logits["itm"], expected["class"], atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(logits["readout"], expected["rep"], atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(trained, expected["fusion"], atol=2e-4, rtol=1e-5)
    torch.testing.assert_close(unseen, expected["class"], atol=2e-4, rtol=1e-5)
    assert (expected["class"] - expected["rep"]).abs().max() > 1e-2  # the two sets differ: the rule is visible


def test_no_representation_tokens_before_the_first_layer(small_clip):
    prompts = build(small_clip, (3, 4)).compute_prompts()
    assert prompts.text[:2] == [None, None] and prompts.vision[:2] == [None, None]  # blocks 1, 2: plain CLIP
    assert prompts.text[2].shape == (3, 64) and prompts.vision[3].shape == (3, 96)


@pytest.mark.parametrize("choice,expected", [("fusion", "fusion"), ("class", "class"), ("rep", "rep")])
def test_eval_logits_forces_one_set(small_clip, choice, expected):
    model = build(small_clip, EVAL_LOGITS=choice)
    images, _ = batch()
    with torch.no_grad():
        out = ref.forward(small_clip, images, ref.template_token_ids(TEMPLATE, CLASSNAMES),
                          reference_params(model.prompt_learner), [2, 3, 4])
        for on_trained in (True, False):
            torch.testing.assert_close(model.predict(images, on_trained_classes=on_trained), out[expected],
                                       atol=2e-4, rtol=1e-5)


def test_probability_fusion(small_clip):
    model = build(small_clip, FUSION="probs")
    images, _ = batch()
    with torch.no_grad():
        out = ref.forward(small_clip, images, ref.template_token_ids(TEMPLATE, CLASSNAMES),
                          reference_params(model.prompt_learner), [2, 3, 4])
        mixture = 0.7 * out["class"].softmax(-1) + 0.3 * out["rep"].softmax(-1)
        torch.testing.assert_close(model.predict(images, on_trained_classes=True).softmax(-1), mixture,
                                   atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------- loss terms and gradients
def test_each_loss_term_and_the_gradients_match_the_restatement(small_clip):
    model = build(small_clip, REG_WEIGHT=3.0)
    images, labels = batch()
    config = MMRL.make_config(N_REP_TOKENS=3, REP_DIM=16, REP_LAYERS=[2, 3, 4], TEMPLATE=TEMPLATE, REG_WEIGHT=3.0)
    model.zero_grad(set_to_none=True)
    outputs = MMRL.training_outputs(model, images, labels)
    loss, summary = MMRL.training_loss(model, config, outputs)
    loss.backward()

    params = reference_params(model.prompt_learner)
    token_ids = ref.template_token_ids(TEMPLATE, CLASSNAMES)
    out = ref.forward(small_clip, images, token_ids, params, [2, 3, 4])
    z_i, z_t = ref.frozen_references(small_clip, images, token_ids)
    terms = ref.loss_terms(out, labels, z_i, z_t, alpha=0.7, reg_weight=3.0)
    # logged: CE(class) unweighted, (1 - ALPHA) CE(rep) (its declared weight is 1), the regularisers as 1 - cos
    expected_log = {"loss_ce": terms["ce_class"] / 0.7, "loss_ce_rep": terms["ce_rep"],
                    "loss_image": terms["image_reg"] / 3.0, "loss_text": terms["text_reg"] / 3.0}
    for name, value in expected_log.items():
        assert abs(summary[name] - value.item()) < 1e-5 * max(1, abs(value.item())), name
        assert value.item() > 1e-4, name  # no term vanishes by chance
    total = sum(terms.values())
    torch.testing.assert_close(loss.detach(), total.detach(), atol=1e-5, rtol=1e-5)
    leaves = [params["R"], *params["v_weight"], *params["v_bias"], *params["t_weight"], *params["t_bias"],
              params["proj_rep"]]
    grads = torch.autograd.grad(total, leaves)
    learner = model.prompt_learner
    ours = [learner.compound_rep_tokens, *[a.weight for a in learner.compound_rep_tokens_r2vproj],
            *[a.bias for a in learner.compound_rep_tokens_r2vproj],
            *[a.weight for a in learner.compound_rep_tokens_r2tproj],
            *[a.bias for a in learner.compound_rep_tokens_r2tproj], learner.proj_rep]
    for param, grad in zip(ours, grads):
        assert grad.abs().max() > 0
        torch.testing.assert_close(param.grad, grad, atol=1e-6, rtol=1e-4)
    for name, param in model.named_parameters():  # only the representation learner learns
        assert (param.grad is not None) == name.startswith("prompt_learner."), name


# ---------------------------------------------------------------- parameter counts, configs, layout
def test_parameter_counts_at_vit_b16():
    """K d_r + L_r (d_r d_v + d_v) + L_r (d_r d_t + d_t) + d_v E at ViT-B/16 (built, never run)."""
    from mmpt.clip_backbone import build_random_clip

    clip_model = build_random_clip("random-ViT-B/16").requires_grad_(False)
    counts = {}
    for name, config, fields in (("b2n", B2N, {}), ("xd", XD, {}), ("eurosat", B2N, {"REP_DIM": 2048})):
        node = config_from_file(config).TRAINER.MMRL
        node.merge_from_list([item for k, v in fields.items() for item in (k, v)])
        model = MMRL.build_method_model(clip_model, CLASSNAMES, MMRL.config_from_node(node))
        counts[name] = sum(p.numel() for p in model.prompt_learner.parameters())
    formula = lambda d_r: 5 * d_r + 7 * (d_r * 768 + 768) + 7 * (d_r * 512 + 512) + 768 * 512
    assert counts == {"b2n": 4_992_256, "xd": 4_992_256, "eurosat": 18_762_496}
    assert formula(512) == 4_992_256 and formula(2048) == 18_762_496


@pytest.mark.parametrize("config,batch,epochs,warmup,reg", [(B2N, 4, 10, 1, 1.0), (IMAGENET, 32, 5, 1, 1.0),
                                                            (FEWSHOT, 32, 50, 1, 0.5), (XD, 32, 1, 0, 0.2)])
def test_config_files(config, batch, epochs, warmup, reg):
    cfg = config_from_file(config)
    n = cfg.TRAINER.MMRL
    assert (n.N_REP_TOKENS, n.REP_DIM, list(n.REP_LAYERS), n.ALPHA, n.REG_WEIGHT) == (5, 512, list(range(6, 13)),
                                                                                    0.7, reg)
    assert (n.LOGIT_SCALE, n.FUSION, n.EVAL_LOGITS, n.PROJ_REP_INIT, n.ALIGNER_INIT) == \
        (100.0, "logits", "auto", "random", "shared")  # the official behaviour
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WEIGHT_DECAY) == \
        ("adamw", 0.001, epochs, warmup, 5e-4)
    assert cfg.DATALOADER.TRAIN_X.BATCH_SIZE == batch and tuple(cfg.INPUT.RRCROP_SCALE) == (0.5, 1.0)


@pytest.mark.parametrize("dataset,reg,rep_dim", [("stanford_cars", "7.0", None), ("eurosat", "0.01", "2048"),
                                                 ("imagenet", "0.5", None), ("oxford_pets", "0.2", None)])
def test_layout_per_dataset(dataset, reg, rep_dim):
    for stage, protocol in (("base2new_train", "b2n"), ("base2new_test_new", "b2n"), ("fewshot", "fewshot")):
        job = layout.build_job(stage, "MMRL", dataset, 1, 16)
        argv = " ".join(job.argv)
        assert f"TRAINER.MMRL.REG_WEIGHT {reg}" in argv, (stage, argv)
        assert ("TRAINER.MMRL.REP_DIM 2048" in argv) == (rep_dim is not None)
        imagenet = dataset == "imagenet"
        assert job.cfg == ("vit_b16_imagenet" if imagenet else {"b2n": "vit_b16", "fewshot": "vit_b16_few_shot"}[protocol])
    xd = layout.build_job("xd_test", "MMRL", dataset, 1)
    assert xd.cfg == "vit_b16_cross_datasets" and "REG_WEIGHT" not in " ".join(xd.argv)


def test_bad_values_are_one_line_errors(small_clip):
    with pytest.raises(ConfigError, match=r"TRAINER.MMRL.REP_LAYERS=\[1, 2\]: expected increasing"):
        MMRL.make_config(REP_LAYERS=[1, 2])
    with pytest.raises(ConfigError, match=r"TRAINER.MMRL.FUSION='mean'"):
        MMRL.make_config(FUSION="mean")
    with pytest.raises(ConfigError, match=r"REP_LAYERS=\[2, 5\]: the backbone has 4 blocks"):
        build(small_clip, (2, 5))


def test_official_checkpoint_names(small_clip):
    learner = build(small_clip).prompt_learner
    official = {"representation_learner." + k: v for k, v in learner.state_dict().items() if k != "proj_rep"}
    official.update({"image_encoder.proj_rep": learner.proj_rep, "prompt_embeddings": torch.zeros(5, 77, 64),
                     "image_encoder.conv1.weight": torch.zeros(1)})
    mapped = mmrl.official_state_dict(official)
    assert set(mapped) == set(learner.state_dict()) - {k for k in learner.state_dict() if "classes_trained_on" in k}


# ---------------------------------------------------------------- end to end (train.py, base-to-new)
TINY = ("TRAINER.MMRL.REP_LAYERS", "[2]", "TRAINER.MMRL.REP_DIM", "16", "OPTIM.MAX_EPOCH", "2",
        "OPTIM.WARMUP_EPOCH", "0", "DATASET.NUM_SHOTS", "4", "TRAIN.CHECKPOINT_FREQ", "1")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """2 epochs on the base half through train.py, recording which logit set every evaluation used."""
    from mmpt.prompted_clip import LogitRule

    tmp_path = tmp_path_factory.mktemp("mmrl")
    picks = []
    original = LogitRule.pick

    def recording_pick(self, logits, on_trained_classes):
        picks.append(on_trained_classes)
        return original(self, logits, on_trained_classes)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(LogitRule, "pick", recording_pick)
        output_dir, log, trainer = run_train(tmp_path, "MMRL", B2N, opts=TINY, subsample="base", return_trainer=True)
        base_picks = list(picks)
        picks.clear()
        _, new_log, evaluator = run_train(tmp_path, "MMRL", B2N, opts=TINY, subsample="new", eval_only=True,
                                          model_dir=output_dir, load_epoch=2, return_trainer=True)
    return tmp_path, output_dir, log, trainer, base_picks, new_log, evaluator, list(picks)


def test_base_to_new_uses_the_fusion_on_base_and_the_class_logits_on_new(base_run):
    _, _, log, trainer, base_picks, new_log, evaluator, new_picks = base_run
    assert "Finish training" in log and "* accuracy:" in log and "* accuracy:" in new_log
    for term in ("loss_ce", "loss_ce_rep", "loss_image", "loss_text"):
        assert term in log, term
    assert base_picks and all(base_picks)  # the final test of training: the trained (base) classes
    assert new_picks and not any(new_picks)  # new classes: unseen
    assert set(evaluator.dm.dataset.classnames).isdisjoint(trainer.dm.dataset.classnames)
    assert evaluator.model.fixed_logit_scale == 100.0
    for key, value in evaluator.model.prompt_learner.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, trainer.model.prompt_learner.state_dict()[key]), key


def test_kill_and_resume_end_bit_identical(base_run):
    tmp_path, _, _, uninterrupted, *_ = base_run
    output_dir = tmp_path / "output" / "killed"
    train_killed_in_epoch_2(tmp_path, MMRL, B2N, output_dir, opts=TINY, subsample="base")
    resumed = run_train(tmp_path, "MMRL", B2N, opts=TINY, subsample="base", output_dir=output_dir,
                        return_trainer=True)[2]
    assert resumed.start_epoch == 1
    expected = uninterrupted.model.prompt_learner.state_dict()
    for key, value in resumed.model.prompt_learner.state_dict().items():
        if torch.is_tensor(value):
            assert torch.equal(value, expected[key]), key
