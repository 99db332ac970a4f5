"""One training step of every method (loss, logged terms, the gradient of every prompt parameter) equals, bit for
bit, the one recorded from the code before the library owned the training step (tests/record_grads.py)."""
import pytest
import torch

import trainers  # noqa: F401  (declares the methods)
from tests import record_grads as record


@pytest.fixture(scope="module")
def recorded():
    return torch.load(record.RECORD_PATH)


@pytest.mark.parametrize("variant", record.training_variants(), ids=lambda v: v[0])
def test_training_step_equals_the_record(recorded, variant):
    name, trainer, overrides, resnet = variant
    measured = record.measure(trainer, overrides, resnet)
    expected = recorded[name]
    assert torch.equal(measured["loss"], expected["loss"]), (measured["loss"] - expected["loss"]).abs()
    assert measured["summary"] == expected["summary"]  # every logged term, to the last bit
    assert set(measured["grads"]) == set(expected["grads"])
    for key, grad in expected["grads"].items():
        assert torch.equal(measured["grads"][key], grad), (key, (measured["grads"][key] - grad).abs().max())
        assert grad.abs().sum() > 0, key  # every prompt tensor takes part in the step


def test_record_covers_every_training_method(recorded):
    import mmpt

    assert {trainer for _, trainer, _, _ in record.training_variants()} == \
        {name for name, cls in mmpt.declared_methods().items() if cls.trains}
    assert set(recorded) == {name for name, _, _, _ in record.training_variants()}
