"""Records one training step of every method on a small random CLIP, so that a refactoring of the training step
can be checked bit for bit.

    PYTHONPATH=$PWD python -m tests.records grads      # appends the variants missing from tests/data/method_grads.pt

Per variant of tests/record_logits.py (the ones that train): the model is built as the logits record builds it
(`mmpt.create_model`, seeded), its prompt learner is set to the record's seeded state, and one training step
runs through the trainer's own training step on a fixed batch, on one CPU thread, with the optimizer step left
out: the file holds the loss, each logged term and the gradient of every prompt_learner parameter.
tests/test_method_grads.py repeats the step with the same function and compares with torch.equal.
Recorded first from the code before the library owned the training step (commit "record: one training step's
gradients from today's code"). Rebuild it only when a change of numerics is intended (and say so in the commit).
"""
import os
import sys

import torch

from tests import record_logits as logits_record

RECORD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "method_grads.pt")
LABELS = torch.tensor([0, 3, 1])  # one label per image of record_logits.images()


def training_variants():
    """(variant, trainer, overrides, resnet) of the logits record whose method trains."""
    import mmpt

    methods = mmpt.declared_methods()
    return [(name, trainer, overrides, resnet) for (name, trainer, overrides), resnet in logits_record.all_variants()
            if methods[trainer].trains]


def bare_trainer(method, model, overrides):
    """An instance of the method's trainer holding `model` and its typed config, without data or optimizer;
    `backward_and_update` only runs backward (so the gradients stay) and keeps the loss."""
    from mmpt.precision import Precision

    trainer = method.__new__(method)
    trainer.config = method.make_config(**overrides)
    trainer.model = model
    trainer.device = torch.device("cpu")
    trainer.precision = Precision(trainer.config.PREC, trainer.device)
    trainer.scaler = trainer.precision.grad_scaler()  # disabled unless PREC is fp16: the step then checks the loss
    trainer.optim = "unused"  # the step checks that there is something to train; the step itself is replaced
    trainer.constant_class_features = None
    trainer.batch_idx, trainer.num_batches = 0, 2  # not the epoch's last batch: no LR update
    trainer.losses = []
    trainer.backward_and_update = lambda loss: (trainer.losses.append(loss.detach()), loss.backward())
    return trainer


def measure(trainer_name, overrides, resnet):
    """{"loss", "summary": {term: float}, "grads": {parameter name: gradient}} of one training step."""
    import mmpt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(2)
        model = mmpt.create_model(trainer_name, logits_record.backbone(resnet), logits_record.CLASSNAMES, **overrides)
        model.prompt_learner.load_state_dict(logits_record.seeded_state(model))
        trainer = bare_trainer(mmpt.methods.get_method(trainer_name), model, overrides)
        summary = trainer.forward_backward({"img": logits_record.images(), "label": LABELS})
        (loss,) = trainer.losses
        grads = {name: param.grad.clone() for name, param in model.prompt_learner.named_parameters()}
        return {"loss": loss, "summary": summary, "grads": grads}
    finally:
        torch.set_num_threads(threads)


variants = training_variants  # what tests/records.py appends


if __name__ == "__main__":
    from tests import records

    sys.exit(records.main(["grads", *sys.argv[1:]]))
