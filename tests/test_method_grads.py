"""One training step of every method (loss, logged terms, the gradient of every prompt parameter) equals, bit for
bit, the one recorded from the code before the library owned the training step (tests/record_grads.py)."""
import pytest
import torch

import mmpt
import trainers  # noqa: F401  (declares the methods)
from tests import record_grads as record
from tests import records

# The code before the library owned the step logged PromptSRC's L1 terms times their weights; the library logs
# every term unweighted (loss = CE + sum of weight x term). The record keeps what that code logged.
LOGGED_WEIGHTED = {"PromptSRC": ("loss_text", "loss_image")}


def as_recorded(trainer, overrides, summary):
    """The summary as the code of the record logged it (a weighted term: weight x term, in float32)."""
    method = mmpt.methods.get_method(trainer)
    config = method.make_config(**overrides)
    summary = dict(summary)
    for name in LOGGED_WEIGHTED.get(trainer, ()):
        weight = method.loss_weight(config, method.loss_weights[name], name)
        summary[name] = (weight * torch.tensor(summary[name], dtype=torch.float32)).item()
    return summary


@pytest.fixture(scope="module")
def recorded():
    return torch.load(record.RECORD_PATH)


@pytest.mark.parametrize("variant", record.training_variants(), ids=lambda v: v[0])
def test_training_step_equals_the_record(recorded, variant):
    name, trainer, overrides, resnet = variant
    measured = record.measure(trainer, overrides, resnet)
    expected = recorded[name]
    same = lambda a, b: records.equal_as_recorded(recorded, name, a, b)
    assert same(measured["loss"], expected["loss"]), (measured["loss"] - expected["loss"]).abs()
    summary = as_recorded(trainer, overrides, measured["summary"])  # every term, every bit (on the recording machine)
    assert summary.keys() == expected["summary"].keys()
    for term, value in expected["summary"].items():
        assert same(torch.tensor(summary[term]), torch.tensor(value)), (term, summary[term], value)
    assert set(measured["grads"]) == set(expected["grads"])
    for key, grad in expected["grads"].items():
        assert same(measured["grads"][key], grad), (key, (measured["grads"][key] - grad).abs().max())
        assert grad.abs().sum() > 0, key  # every prompt tensor takes part in the step


def test_record_covers_every_training_method(recorded):
    assert {trainer for _, trainer, _, _ in record.training_variants()} == \
        {name for name, cls in mmpt.declared_methods().items() if cls.trains}
    assert {k for k in recorded if not k.startswith("__")} == {name for name, _, _, _ in record.training_variants()}


@pytest.mark.parametrize("variant", record.logits_record.all_variants(), ids=lambda v: v[0][0])
def test_declared_text_constancy_matches_the_prompts(variant):
    """`text_is_constant` is declared (the trainer never runs the model to learn it): the declaration agrees with
    what the model's prompts hold, for every variant."""
    (_, trainer, overrides), resnet = variant
    model = mmpt.create_model(trainer, record.logits_record.backbone(resnet), record.logits_record.CLASSNAMES,
                              **overrides)
    with torch.no_grad():
        assert mmpt.methods.get_method(trainer).text_is_constant == model.compute_prompts().text_is_constant
