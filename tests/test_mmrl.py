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
from tests.e2e import config_from_file, small_clip_model
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
