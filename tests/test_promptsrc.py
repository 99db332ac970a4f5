"""PromptSRC: each loss term against a restatement of the release's formulas (frozen references from CLIP's own
encode_text / encode_image), Gaussian prompt aggregation against an independent loop over a 3-epoch run, kill and
resume, the ViT-B/16 parameter counts, the config files and the experiment layout, base-to-new end to end."""
import clip
import pytest
import torch
import torch.nn.functional as F

from mmpt.experiments import layout
from mmpt.templates import PROMPTSRC_TEMPLATES
from tests.e2e import config_from_file, run_train, small_clip_model, train_killed_in_epoch_2, trainer_node
from trainers import promptsrc
from dassl.utils import ConfigError
from mmpt import frozen_clip
from trainers.promptsrc import PromptSRC, PromptSRCCLIP, gpa_weights

CLASSNAMES = ["dog", "golden_retriever", "sea lion", "cat", "tabby cat"]
CONFIGS = "configs/trainers/PromptSRC/"
B2N_CONFIG = CONFIGS + "vit_b16_c2_ep20_batch4_4+4ctx.yaml"
XD_CONFIG = CONFIGS + "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml"
FEWSHOT_CONFIG = CONFIGS + "vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml"


def node(**overrides):
    return trainer_node(promptsrc, "PROMPTSRC", **overrides)


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model()


@pytest.fixture(scope="module")
def model(small_clip):
    model = PromptSRCCLIP(small_clip, CLASSNAMES, node(PROMPT_DEPTH_TEXT=3, PROMPT_DEPTH_VISION=2))
    torch.manual_seed(1)
    with torch.no_grad():  # prompts away from their initialisation: the prompted and frozen branches differ
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


# ---------------------------------------------------------------- loss terms
def test_templates():
    assert len(PROMPTSRC_TEMPLATES) == 60 == len(set(PROMPTSRC_TEMPLATES))
    assert PROMPTSRC_TEMPLATES[0] == "a photo of a {}." and PROMPTSRC_TEMPLATES[-1] == "itap of the {}."
    assert all(t.count("{}") == 1 for t in PROMPTSRC_TEMPLATES)
    assert not {"itap of a {}.", "a toy {}.", "a plushie {}."} & set(PROMPTSRC_TEMPLATES)  # among CLIP's 20 omitted


def test_each_loss_term_matches_the_release_formula(small_clip, model):
    torch.manual_seed(2)
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 4, 2])
    out = PromptSRC.training_outputs(model, images, labels)
    terms = {"loss_ce": F.cross_entropy(out.logits, labels), **PromptSRC.loss_terms(model, out)}
    loss, summary = PromptSRC.training_loss(model, node(), out)  # the library's sum with the config's weights

    # the frozen references from CLIP's own towers: per class, the unnormalised mean over the 60 templates
    names = [name.replace("_", " ") for name in CLASSNAMES]
    with torch.no_grad():
        sentences = [t.replace("{}", n) for t in PROMPTSRC_TEMPLATES for n in names]  # template-major
        z_text = small_clip.encode_text(clip.tokenize(sentences)).reshape(60, len(names), -1).mean(0)
        z_text = z_text / z_text.norm(dim=-1, keepdim=True)
        z_image = small_clip.encode_image(images)
        z_image = z_image / z_image.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(model.frozen_class_features(), z_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.extra["frozen_image_features"], z_image, atol=1e-5, rtol=0)
    t, f = out.class_features, out.image_features
    torch.testing.assert_close(t, model.class_features(), atol=1e-6, rtol=0)
    torch.testing.assert_close(f, model.image_features(images), atol=1e-6, rtol=0)

    scale = small_clip.logit_scale.exp()
    s, z = scale * f @ t.t(), scale * z_image @ z_text.t()
    B, C, E = len(labels), len(CLASSNAMES), t.shape[1]
    ce = -(s[torch.arange(B), labels] - s.logsumexp(dim=1)).mean()
    l1_text = (t - z_text).abs().sum() / (C * E)
    l1_image = (f - z_image).abs().sum() / (B * E)
    q, p = z.softmax(dim=1), s.softmax(dim=1)
    kl = (q * (q.log() - p.log())).sum() / (B * C)  # KL(frozen || prompted), / (B C): "batchmean" / C
    expected = {"loss_ce": ce, "loss_text": l1_text, "loss_image": l1_image, "loss_logits": kl}
    assert set(terms) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, atol=1e-6, rtol=1e-5, msg=name)
        assert value.item() > 1e-4, name  # no term vanishes by chance
    batchmean = (q * (q.log() - p.log())).sum() / B
    assert abs(terms["loss_logits"].item() * C - batchmean.item()) < 1e-6
    # the training loss: CE + 25 x L1 text + 10 x L1 image + KL (the release's weights, the config's defaults)
    torch.testing.assert_close(loss, ce + 25.0 * l1_text + 10.0 * l1_image + kl, atol=1e-5, rtol=1e-5)
    assert set(summary) == {"loss", *expected, "acc"} and summary["loss_text"] == terms["loss_text"].item()


def test_only_the_prompts_get_gradients(model):
    model.zero_grad(set_to_none=True)
    out = PromptSRC.training_outputs(model, torch.randn(2, 3, 32, 32), torch.tensor([1, 3]))
    frozen_class, frozen_image = model.frozen_class_features(), out.extra["frozen_image_features"]
    for frozen in (frozen_class, frozen_image, model.logits(frozen_image, frozen_class)):
        assert not frozen.requires_grad and frozen.grad_fn is None  # the frozen pass builds no graph
    PromptSRC.training_loss(model, node(), out)[0].backward()
    for name, param in model.named_parameters():
        if name.startswith("prompt_learner."):
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None, name


def test_frozen_text_ensemble_is_computed_once_and_never_saved(small_clip, monkeypatch):
    model = PromptSRCCLIP(small_clip, CLASSNAMES, node(PROMPT_DEPTH_TEXT=3, PROMPT_DEPTH_VISION=3))
    assert model.frozen.cached_class_features is None  # not at construction: evaluation never needs it
    first = model.frozen_class_features()  # all 60 templates in one pass (5 classes)
    assert model.frozen_class_features() is first and first.dtype == torch.float32
    monkeypatch.setattr(frozen_clip, "SEQUENCES_PER_PASS", 25 * len(CLASSNAMES))  # 25 + 25 + 10 templates
    model.frozen.cached_class_features = None
    torch.testing.assert_close(model.frozen_class_features(), first, atol=1e-6, rtol=0)
    assert not any("frozen" in key for key in model.state_dict())
    assert set(model.prompt_learner.state_dict()) == {"ctx", "text_deep", "visual_ctx"}  # IVLP's prompts only


# ---------------------------------------------------------------- Gaussian prompt aggregation
def normal_weights(max_epoch, mean, std):
    """Independent: torch's Normal density at epochs 1..N, normalised."""
    density = torch.distributions.Normal(torch.tensor(mean, dtype=torch.float64), std).log_prob(
        torch.arange(1, max_epoch + 1, dtype=torch.float64)).exp()
    return density / density.sum()


@pytest.mark.parametrize("max_epoch,mean,std", [(20, 15, 1), (20, 6, 10), (50, 30, 30), (50, 45, 5), (3, 2, 1)])
def test_gpa_weights(max_epoch, mean, std):
    weights = gpa_weights(max_epoch, mean, std)
    torch.testing.assert_close(torch.tensor(weights, dtype=torch.float64), normal_weights(max_epoch, mean, std),
                               atol=1e-12, rtol=1e-9)
    assert abs(sum(weights) - 1) < 1e-12


def test_gpa_weights_of_the_shipped_settings():
    """The figures PromptSRC's settings give (1-based epochs)."""
    b2n = gpa_weights(20, 15, 1)
    assert round(b2n[14], 3) == 0.399 and round(b2n[13], 3) == round(b2n[15], 3) == 0.242
    assert round(b2n[12], 3) == 0.054 and round(b2n[11], 4) == 0.0044 and b2n[19] < 2e-6
    xd = gpa_weights(20, 6, 10)
    assert (round(xd[0], 3), round(xd[5], 3), round(xd[19], 3)) == (0.055, 0.063, 0.024)
    sharp = gpa_weights(50, 45, 5)
    assert round(max(sharp), 3) == 0.092 and sharp.index(max(sharp)) == 44 and round(sharp[49], 3) == 0.056


def test_bad_gpa_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"^TRAINER.PROMPTSRC.GPA_STD=0.0: expected a number > 0"):
        PromptSRC.make_config(GPA_STD=0.0)
    with pytest.raises(ValueError, match=r"every epoch 1..20 gets weight 0"):
        gpa_weights(20, 1e4, 1.0)


TINY = ("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2",  # tiny CLIP: 2 layers
        "OPTIM.MAX_EPOCH", "3", "TRAINER.PROMPTSRC.GPA_MEAN", "2.0", "TRAINER.PROMPTSRC.GPA_STD", "1.0",
        "DATASET.NUM_SHOTS", "4", "TRAIN.CHECKPOINT_FREQ", "1")


def prompt_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.prompt_learner.state_dict().items()}


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """3 epochs on the base half, recording the raw prompts at the end of each epoch (before the aggregation)."""
    tmp_path = tmp_path_factory.mktemp("promptsrc")
    recorded = []
    original = PromptSRC.after_epoch

    def recording_after_epoch(self):
        recorded.append(prompt_state(self))
        original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PromptSRC, "after_epoch", recording_after_epoch)
        output_dir, log, trainer = run_train(tmp_path, "PromptSRC", B2N_CONFIG, opts=TINY, subsample="base",
                                             return_trainer=True)
    return tmp_path, output_dir, log, trainer, recorded


def load_checkpoint(output_dir, epoch):
    return torch.load(output_dir / "prompt_learner" / f"model.pth.tar-{epoch}", map_location="cpu", weights_only=True)


def test_aggregated_prompts_after_3_epochs_match_an_independent_loop(base_run):
    _, output_dir, log, trainer, recorded = base_run
    assert len(recorded) == 3 and "Finish training" in log and "* accuracy:" in log
    weights = normal_weights(3, 2.0, 1.0)
    expected = {key: sum(weights[e].item() * recorded[e][key].double() for e in range(3)).float()
                for key in recorded[0]}
    final = prompt_state(trainer)
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value, atol=1e-7, rtol=1e-6)
        assert (final[key] - recorded[2][key]).abs().max() > 1e-5  # the average differs from the last prompts
    # epochs 1-2: raw prompts (what the run continues from); epoch 3: the average, and the accumulator with it
    for epoch in (1, 2):
        checkpoint = load_checkpoint(output_dir, epoch)
        for key, value in checkpoint["state_dict"].items():
            assert torch.equal(value, recorded[epoch - 1][key])
        assert checkpoint["extra_state"]["gpa"]["epochs"] == epoch
    last = load_checkpoint(output_dir, 3)
    for key, value in last["state_dict"].items():
        assert torch.equal(value, final[key])
    assert last["extra_state"]["gpa"]["epochs"] == 3


def test_kill_and_resume_end_with_the_same_aggregated_prompts(base_run):
    tmp_path, _, _, uninterrupted, _ = base_run
    output_dir = tmp_path / "output" / "killed"
    train_killed_in_epoch_2(tmp_path, PromptSRC, B2N_CONFIG, output_dir, opts=TINY, subsample="base")
    # other GPA settings cannot resume this run (the run-config check names the key first)
    with pytest.raises(ValueError, match=r"TRAINER.PROMPTSRC.GPA_MEAN 2.0 -> 3.0"):
        run_train(tmp_path, "PromptSRC", B2N_CONFIG, opts=TINY + ("TRAINER.PROMPTSRC.GPA_MEAN", "3.0"),
                  subsample="base", output_dir=output_dir)
    resumed = run_train(tmp_path, "PromptSRC", B2N_CONFIG, opts=TINY, subsample="base", output_dir=output_dir,
                        return_trainer=True)[2]
    assert resumed.start_epoch == 1  # resumed after epoch 1, killed in epoch 2
    expected = prompt_state(uninterrupted)
    for key, value in prompt_state(resumed).items():
        torch.testing.assert_close(value, expected[key], atol=1e-7, rtol=0)


def test_resume_from_a_checkpoint_without_the_aggregate_is_refused(base_run, tmp_path):
    import shutil

    _, output_dir, _, _, _ = base_run
    copy = tmp_path / "copy"
    shutil.copytree(output_dir / "prompt_learner", copy / "prompt_learner")
    checkpoint = load_checkpoint(copy, 2)
    del checkpoint["extra_state"]
    torch.save(checkpoint, copy / "prompt_learner" / "model.pth.tar-2")
    (copy / "prompt_learner" / "checkpoint").write_text("model.pth.tar-2\n")
    with pytest.raises(ValueError, match=r"holds the prompt average of 0 epochs"):
        run_train(base_run[0], "PromptSRC", B2N_CONFIG, opts=TINY, subsample="base", output_dir=copy)


def test_base_to_new_eval_only_uses_the_aggregated_prompts(base_run):
    tmp_path, output_dir, _, trainer, _ = base_run
    _, log, evaluator = run_train(tmp_path, "PromptSRC", B2N_CONFIG, opts=TINY, subsample="new", eval_only=True,
                                  model_dir=output_dir, load_epoch=3, return_trainer=True)
    assert "model.pth.tar-3" in log and "* accuracy:" in log
    assert set(evaluator.dm.dataset.classnames).isdisjoint(trainer.dm.dataset.classnames)
    expected = prompt_state(trainer)
    for key, value in prompt_state(evaluator).items():
        assert torch.equal(value, expected[key])
    assert evaluator.model.frozen.cached_class_features is None  # evaluation needs no frozen reference


# ---------------------------------------------------------------- parameter counts, configs, layout
def test_parameter_counts_at_vit_b16():
    """J_t n_t d_t + J_v n_v d_v with d_t 512, d_v 768 (the model is built, never run)."""
    from mmpt.clip_backbone import build_random_clip

    clip_model = build_random_clip("random-ViT-B/16").requires_grad_(False)
    counts = {}
    for config in (B2N_CONFIG, FEWSHOT_CONFIG, XD_CONFIG):
        node = config_from_file(config).TRAINER.PROMPTSRC
        model = PromptSRC.build_method_model(clip_model, CLASSNAMES, PromptSRC.config_from_node(node))
        counts[config] = sum(p.numel() for p in model.prompt_learner.parameters())
    assert counts == {B2N_CONFIG: 9 * 4 * 512 + 9 * 4 * 768, FEWSHOT_CONFIG: 46_080, XD_CONFIG: 15_360}
    assert counts[B2N_CONFIG] == 46_080 and 3 * 4 * 512 + 3 * 4 * 768 == 15_360


@pytest.mark.parametrize("config,epochs,depth,gpa", [(B2N_CONFIG, 20, 9, (15, 1)), (XD_CONFIG, 20, 3, (6, 10)),
                                                     (FEWSHOT_CONFIG, 50, 9, (30, 30))])
def test_config_files(config, epochs, depth, gpa):
    cfg = config_from_file(config)
    n = cfg.TRAINER.PROMPTSRC
    assert (n.N_CTX_TEXT, n.N_CTX_VISION, n.CTX_INIT, n.PROMPT_DEPTH_TEXT, n.PROMPT_DEPTH_VISION) == \
        (4, 4, "a photo of a", depth, depth)
    assert (n.TEXT_LOSS_WEIGHT, n.IMAGE_LOSS_WEIGHT, n.GPA_MEAN, n.GPA_STD, n.PREC) == (25, 10, *gpa, "amp")
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.DATALOADER.TRAIN_X.BATCH_SIZE) == \
        ("sgd", 0.0025, epochs, 4)
    assert (cfg.OPTIM.LR_SCHEDULER, cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == \
        ("cosine", 1, "constant", 1e-5)
    assert (cfg.MODEL.BACKBONE.NAME, cfg.INPUT.INTERPOLATION, tuple(cfg.INPUT.SIZE)) == \
        ("ViT-B/16", "bicubic", (224, 224))


def test_declaration_drives_the_layout():
    for stage, protocol in (("base2new_train", "b2n"), ("fewshot", "fewshot"), ("xd_train", "xd")):
        assert layout.default_config("PromptSRC", stage, "dtd", 16) == PromptSRC.default_configs[protocol]
    assert layout.trainer_folders()[PromptSRC.scripts_folder] == "PromptSRC"
    assert PromptSRC.model_class is PromptSRCCLIP


@pytest.mark.parametrize("dataset,sharp", [("dtd", True), ("eurosat", True), ("stanford_cars", True),
                                           ("caltech101", False), ("imagenet", False)])
def test_few_shot_gpa_per_dataset(dataset, sharp):
    job = layout.build_job("fewshot", "PromptSRC", dataset, 1, 4, opts=["TRAINER.PROMPTSRC.GPA_STD", "4.0"])
    gpa = ["TRAINER.PROMPTSRC.GPA_MEAN", "45.0", "TRAINER.PROMPTSRC.GPA_STD", "5.0"]
    argv = job.argv
    assert argv[-2:] == ["TRAINER.PROMPTSRC.GPA_STD", "4.0"]  # the user's options come last: they win
    assert (argv[-6:-2] == gpa) == sharp and ("GPA_MEAN" in " ".join(argv)) == sharp
    assert job.cfg == "vit_b16_c2_ep50_batch4_4+4ctx_few_shot"
    b2n = layout.build_job("base2new_train", "PromptSRC", dataset, 1)
    assert "TRAINER.PROMPTSRC.GPA_MEAN" not in b2n.argv


def test_errors_name_the_promptsrc_keys(small_clip):
    with pytest.raises(ValueError, match=r"TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT=9: expected an int in 1..3"):
        PromptSRC.build_method_model(small_clip, CLASSNAMES, node())  # the library names the full key
