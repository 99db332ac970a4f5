"""DePT (trainers/dept.py) on its five base methods: with the head's weight 0 each reduces to its base method bit for
bit (eval logits, the loss, the base prompts' gradients); the head, the CAT loss and the fusion against a
restatement of the specification on a small random CLIP (CoOp's prompts written out with clip's own modules;
eval logits on the trained and on other classes, each loss term, one step's gradients, fp32); the head's rows for
a class subset; base-to-new through train.py on the toy world (the LR groups, what checkpoints hold, the head
rule)."""
import clip
import pytest
import torch
import torch.nn.functional as F

import mmpt
import trainers  # noqa: F401  (declares the methods)
from dassl.utils import ConfigError, RunError
from tests.e2e import run_train, small_clip_model
from trainers import dept

CLASSNAMES = ["dog", "golden retriever", "sea lion", "cat", "tabby cat"]
NEW_CLASSNAMES = ["sunflower", "aircraft carrier", "tabby cat"]
# (DePT trainer, its base, the fields both are built with: prompt depths within the 3-layer test CLIP)
BASES = [
    ("ExtrasLinearProbeCoOp", "CoOp", dict(N_CTX=4)),
    ("ExtrasLinearProbeCoCoOp", "CoCoOp", dict(N_CTX=4, CTX_INIT="a photo of a")),
    ("ExtrasLinearProbeKgCoOp", "KgCoOp", dict(W=2.0, TEMPLATE="a photo of a {}, a type of pet.")),
    ("ExtrasLinearProbeMaPLe", "MaPLe", dict(PROMPT_DEPTH=2)),
    ("ExtrasLinearProbePromptSRC", "PromptSRC", dict(PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=2)),
]


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model()


def batch():
    generator = torch.Generator().manual_seed(2)
    return torch.randn(3, 3, 32, 32, generator=generator), torch.tensor([0, 4, 2])


def build(trainer, small_clip, classnames=CLASSNAMES, **fields):
    torch.manual_seed(1)
    return mmpt.create_model(trainer, small_clip, classnames, PREC="fp32", **fields)


def training_step(trainer, model, fields, images, labels):
    """The library's step on the trainer's declarations (loss, logged terms), backward; {name: grad}."""
    method = mmpt.methods.get_method(trainer)
    config = method.make_config(PREC="fp32", **fields)
    outputs = method.training_outputs(model, images, labels)
    loss, summary = method.training_loss(model, config, outputs)
    loss.backward()
    return loss, summary, {name: p.grad for name, p in model.prompt_learner.named_parameters()}


# ---------------------------------------------------------------- lambda 0: the base method exactly
@pytest.mark.parametrize("trainer,base,fields", BASES, ids=[b[1] for b in BASES])
def test_lambda_zero_is_the_base_method(small_clip, trainer, base, fields):
    plain, ours = build(base, small_clip, **fields), build(trainer, small_clip, LAMBDA=0.0, **fields)
    shared = dict(plain.prompt_learner.named_parameters())
    head = {n for n, _ in ours.prompt_learner.named_parameters()} - set(shared)
    assert head == {"film_lp_text.scale", "film_lp_text.bias", "film_lp_img.scale", "film_lp_img.bias",
                    "linear_probe_proj.weight", "linear_probe_proj.bias"}
    for name, param in ours.prompt_learner.named_parameters():  # the head draws after the base's prompts
        if name in shared:
            assert torch.equal(param, shared[name]), name
    images, labels = batch()
    with torch.no_grad():
        expected = plain(images)
        assert torch.equal(ours.predict(images, on_trained_classes=True), expected)
        assert torch.equal(ours.predict(images, on_trained_classes=False), expected)
        assert torch.equal(ours(images), expected)
    loss, summary, grads = training_step(base, plain, fields, images, labels)
    ours_loss, ours_summary, ours_grads = training_step(trainer, ours, {**fields, "LAMBDA": 0.0}, images, labels)
    assert torch.equal(ours_loss, loss)
    assert ours_summary.pop("loss_cat") > 0  # computed, weighted 0
    assert {k: v for k, v in ours_summary.items() if k in summary} == summary
    for name, grad in grads.items():
        assert torch.equal(ours_grads[name], grad), name
        assert grad.abs().sum() > 0, name


# ---------------------------------------------------------------- the specification, restated
def coop_raw_text_features(clip_model, ctx, classnames):
    """[C, E] CoOp's prompted text features before normalisation: "X .. X <name>." with the n placeholders'
    token embeddings replaced by ctx, through clip's own text tower (encode_text's steps)."""
    n = ctx.shape[0]
    tokens = clip.tokenize([" ".join(["X"] * n) + f" {name}." for name in classnames])
    x = clip_model.token_embedding(tokens)
    x = torch.cat([x[:, :1], ctx.expand(len(classnames), -1, -1), x[:, 1 + n:]], dim=1)
    x = x + clip_model.positional_embedding
    x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = clip_model.ln_final(x)
    return x[torch.arange(len(classnames)), tokens.argmax(dim=-1)] @ clip_model.text_projection


def itm_logits(clip_model, f, t):
    return clip_model.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).t()


def restated(clip_model, params, images, labels, classnames, lam):
    """The spec's formulas: ITM s, CAT logits of the 2B rows, the loss terms, the fused evaluation logits."""
    f = clip_model.encode_image(images)  # raw, the frozen image tower (CoOp)
    t = coop_raw_text_features(clip_model, params["ctx"], classnames)
    s = itm_logits(clip_model, f, t)
    g = lambda z: z @ params["W"].t() + params["b"]
    rows = torch.cat([g(params["gamma_t"] * t[labels] + params["beta_t"]), g(params["gamma_i"] * f + params["beta_i"])])
    ce, cat = F.cross_entropy(s, labels), F.cross_entropy(rows, torch.cat([labels, labels]))
    return {"itm": s, "fused": (1 - lam) * s + lam * g(params["gamma_i"] * f + params["beta_i"]), "ce": ce, "cat": cat,
            "loss": (1 - lam) * ce + lam * cat}


def test_head_cat_loss_and_fusion_match_the_restatement(small_clip):
    lam = 0.7
    model = build("ExtrasLinearProbeCoOp", small_clip, N_CTX=4)
    learner = model.prompt_learner
    with torch.no_grad():  # cwT away from its identity start
        for param in (*learner.film_lp_text.parameters(), *learner.film_lp_img.parameters()):
            param.add_(torch.randn_like(param) * 0.3)
    leaf = lambda t: t.detach().clone().requires_grad_(True)
    params = {"ctx": leaf(learner.ctx), "gamma_t": leaf(learner.film_lp_text.scale),
              "beta_t": leaf(learner.film_lp_text.bias), "gamma_i": leaf(learner.film_lp_img.scale),
              "beta_i": leaf(learner.film_lp_img.bias), "W": leaf(learner.linear_probe_proj.weight),
              "b": leaf(learner.linear_probe_proj.bias)}
    images, labels = batch()
    expected = restated(small_clip, params, images, labels, CLASSNAMES, lam)
    close = lambda a, b: torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        close(model.predict(images, on_trained_classes=True), expected["fused"])
        close(model.predict(images, on_trained_classes=False), expected["itm"])
    assert (expected["fused"] - expected["itm"]).abs().max() > 1e-2  # the rule is visible
    loss, summary, grads = training_step("ExtrasLinearProbeCoOp", model, dict(N_CTX=4), images, labels)
    close(loss, expected["loss"])
    assert summary["loss_ce"] == pytest.approx(expected["ce"].item(), abs=1e-5)
    assert summary["loss_cat"] == pytest.approx(expected["cat"].item(), abs=1e-5)
    expected["loss"].backward()
    names = {"ctx": "ctx", "gamma_t": "film_lp_text.scale", "beta_t": "film_lp_text.bias",
             "gamma_i": "film_lp_img.scale", "beta_i": "film_lp_img.bias", "W": "linear_probe_proj.weight",
             "b": "linear_probe_proj.bias"}
    for key, name in names.items():
        close(grads[name], params[key].grad)
        assert params[key].grad.abs().sum() > 0, key
    # another class list (base-to-new "new"): no head, the base method's logits from the trained context
    new = build("ExtrasLinearProbeCoOp", small_clip, NEW_CLASSNAMES, N_CTX=4, USE_HEAD="never")
    assert not hasattr(new.prompt_learner, "linear_probe_proj")
    with torch.no_grad():
        new.prompt_learner.ctx.copy_(learner.ctx)
        new_text = coop_raw_text_features(small_clip, learner.ctx, NEW_CLASSNAMES)
        close(new.predict(images, on_trained_classes=True), itm_logits(small_clip, small_clip.encode_image(images),
                                                                       new_text))


def test_probability_fusion_and_the_head_alone(small_clip):
    images, _ = batch()
    with torch.no_grad():
        logits = build("ExtrasLinearProbeCoOp", small_clip, N_CTX=4).outputs(images).logits
        probs = build("ExtrasLinearProbeCoOp", small_clip, N_CTX=4, FUSION="probs").predict(images, True)
        alone = build("ExtrasLinearProbeCoOp", small_clip, N_CTX=4, TEST_TIME_FUSION=False).predict(images, True)
    torch.testing.assert_close(probs, torch.log(0.3 * logits["itm"].softmax(-1) + 0.7 * logits["cat"].softmax(-1)))
    torch.testing.assert_close(alone, logits["cat"])


def test_cocoop_text_rows_are_each_images_own_class_features(small_clip):
    model = build("ExtrasLinearProbeCoCoOp", small_clip, N_CTX=4, CTX_INIT="a photo of a")
    images, labels = batch()
    method = mmpt.methods.get_method("ExtrasLinearProbeCoCoOp")
    with torch.no_grad():
        outputs = method.training_outputs(model, images, labels)
        prompts = model.compute_prompts()
        raw_image = small_clip.encode_image(images)
        per_image = model.per_image_class_features(F.normalize(raw_image, dim=-1), prompts, normalize=False)
    learner = model.prompt_learner
    head = lambda z, film: learner.linear_probe_proj(film(z))
    text_rows = head(per_image[torch.arange(3), labels], learner.film_lp_text)
    torch.testing.assert_close(outputs.extra["cat"], torch.cat([text_rows, head(raw_image, learner.film_lp_img)]))


def test_head_rows_of_a_class_subset():
    trained = ["missile", "tench", "missile", "goldfish", "shark"]
    assert dept.head_rows(trained, ["goldfish", "tench"], "ckpt").tolist() == [3, 1]
    assert dept.head_rows(trained, ["missile", "shark", "missile"], "ckpt").tolist() == [0, 4, 2]
    with pytest.raises(RunError, match="ambiguous: missile"):
        dept.head_rows(trained, ["missile", "shark"], "ckpt")
    with pytest.raises(RunError, match="missing: zebra"):
        dept.head_rows(trained, ["zebra"], "ckpt")


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^TRAINER.COOP_DEPT.LAMBDA=1.5: expected a number in \[0, 1\]"):
        mmpt.methods.get_method("ExtrasLinearProbeCoOp").make_config(LAMBDA=1.5)
    with pytest.raises(ConfigError, match=r"^TRAINER.MAPLE_DEPT.USE_HEAD='yes'"):
        mmpt.methods.get_method("ExtrasLinearProbeMaPLe").make_config(USE_HEAD="yes")
    assert mmpt.methods.get_method("ExtrasLinearProbeKgCoOp").make_config().W == 2.0  # the DePT release's W


# ---------------------------------------------------------------- through train.py
TOY_OPTS = ("MODEL.BACKBONE.NAME", "toy-ViT", "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "TRAIN.PRINT_FREQ", "20")
TOY_CONFIG = "configs/trainers/ExtrasLinearProbeCoOp/toy_demo.yaml"


@pytest.fixture(scope="module")
def base_to_new(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dept")
    model_dir, train_log, trainer = run_train(tmp, "ExtrasLinearProbeCoOp", TOY_CONFIG, dataset="ToyWorld",
                                              subsample="base", opts=TOY_OPTS, return_trainer=True)
    _, new_log, evaluator = run_train(tmp, "ExtrasLinearProbeCoOp", TOY_CONFIG, dataset="ToyWorld", subsample="new",
                                      eval_only=True, model_dir=model_dir, load_epoch=2, opts=TOY_OPTS,
                                      return_trainer=True)
    return tmp, model_dir, train_log, trainer, new_log, evaluator


def test_base_to_new_through_train_py(base_to_new):
    tmp, model_dir, train_log, trainer, new_log, evaluator = base_to_new
    assert "loss_cat" in train_log and "Finish training" in train_log and "* accuracy:" in train_log
    assert "of which: prompts 256, cwT 256, linear 1,170" in train_log  # toy-ViT: E 64, 18 base classes
    lrs = [group["initial_lr"] for group in trainer.optim.param_groups]
    assert lrs == pytest.approx([0.0035] + [0.0035 * 6.5] * 3)  # prompts; film_lp_text, film_lp_img, linear
    state = torch.load(model_dir / "prompt_learner" / "model.pth.tar-2", weights_only=False)["state_dict"]
    assert sorted(state) == ["classes_trained_on._extra_state", "ctx", "film_lp_img.bias", "film_lp_img.scale",
                             "film_lp_text.bias", "film_lp_text.scale", "linear_probe_proj.bias",
                             "linear_probe_proj.weight"]
    assert state["linear_probe_proj.weight"].shape == (18, 64)
    # the new classes: no head (the release's rule), the trained context and CoOp's logits
    assert "of which: prompts 256, cwT 256, linear 0" in new_log and "* accuracy:" in new_log
    assert not evaluator.model.has_head and not evaluator.on_trained_classes()
    assert torch.equal(evaluator.model.prompt_learner.ctx.cpu(), state["ctx"])


def test_training_without_a_head_is_one_line_error(base_to_new):
    tmp = base_to_new[0]
    with pytest.raises(ConfigError, match=r"TRAINER.COOP_DEPT.USE_HEAD='never': no head to train on "
                                          r"DATASET.SUBSAMPLE_CLASSES all of ToyWorld"):
        run_train(tmp, "ExtrasLinearProbeCoOp", TOY_CONFIG, dataset="ToyWorld", subsample="all", opts=TOY_OPTS,
                  output_dir=tmp / "all")


def bare_trainer(trainer, model, classnames):
    """The trainer's checkpoint loading on `model`, without data (the classes of the evaluated dataset given)."""
    from types import SimpleNamespace

    method = mmpt.methods.get_method(trainer)
    bare = method.__new__(method)
    bare.model, bare.dm = model, SimpleNamespace(dataset=SimpleNamespace(classnames=classnames))
    bare._models = {"prompt_learner": model.prompt_learner}
    return bare


def with_record(model, classnames):
    from mmpt.prompt_trainer import TRAINED_ON
    from mmpt.prompted_clip import ClassesTrainedOn

    model.prompt_learner.add_module(TRAINED_ON, ClassesTrainedOn("ImageNet", classnames))
    return model


def test_a_head_over_a_class_subset_loads_the_rows_of_its_classes(small_clip):
    """ImageNet-A / -R: the 1000-way head's rows of their 200 classes; the fused rule on them."""
    trained = with_record(build("ExtrasLinearProbeCoOp", small_clip, N_CTX=4), CLASSNAMES)
    subset = ["tabby cat", "dog", "sea lion"]
    evaluated = with_record(build("ExtrasLinearProbeCoOp", small_clip, subset, N_CTX=4), [])
    loader = bare_trainer("ExtrasLinearProbeCoOp", evaluated, subset)
    loader.load_state_dict_into("prompt_learner", trained.prompt_learner.state_dict(), "ckpt")
    rows = torch.tensor([4, 0, 2])
    for key in ("weight", "bias"):
        assert torch.equal(getattr(evaluated.prompt_learner.linear_probe_proj, key),
                           getattr(trained.prompt_learner.linear_probe_proj, key)[rows])
    assert loader.on_trained_classes()
    images, _ = batch()
    with torch.no_grad():
        torch.testing.assert_close(evaluated.predict(images, True), trained.predict(images, True)[:, rows])
    # no head on this run's classes (new classes): the checkpoint's Linear is left out, CoOp's logits
    no_head = with_record(build("ExtrasLinearProbeCoOp", small_clip, subset, N_CTX=4, USE_HEAD="never"), [])
    loader = bare_trainer("ExtrasLinearProbeCoOp", no_head, subset)
    loader.load_state_dict_into("prompt_learner", trained.prompt_learner.state_dict(), "ckpt")
    assert not loader.on_trained_classes() and torch.equal(no_head.prompt_learner.ctx, trained.prompt_learner.ctx)


def test_gaussian_prompt_aggregation_averages_the_head(small_clip):
    from trainers.promptsrc import GaussianPromptAggregation

    model = with_record(build("ExtrasLinearProbePromptSRC", small_clip, PROMPT_DEPTH_TEXT=2, PROMPT_DEPTH_VISION=2),
                        CLASSNAMES)
    learner = model.prompt_learner
    gpa = GaussianPromptAggregation(learner, 2, 1.0, 1.0, "TRAINER.PROMPTSRC_DEPT")
    first = learner.linear_probe_proj.weight.detach().clone()
    gpa.add_epoch(1)
    with torch.no_grad():
        learner.linear_probe_proj.weight.add_(1.0)
    gpa.add_epoch(2)
    gpa.load_into_module()
    w1, w2 = gpa.weights
    torch.testing.assert_close(learner.linear_probe_proj.weight, (w1 * first.double() + w2 * (first.double() + 1))
                               .float())
    assert learner.classes_trained_on.classnames == CLASSNAMES
