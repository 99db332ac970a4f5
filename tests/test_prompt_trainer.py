"""PromptTrainer with a tiny test-local method (a shallow text context + one deep visual prompt) on a tiny
generated image folder: only the prompts learn, cached evaluation equals per-batch evaluation, checkpoints load
across class sets."""
import os
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY, DatasetBase, Datum
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, normal_prompts
from mmpt.sentences import init_text_context, placeholder_sentences
from dassl.utils import ConfigError

N_CTX, WIDTH = 2, 64  # random-tiny-ViT: text and vision width 64


def write_images(root, classes, per_class=4, size=32):
    rng = np.random.default_rng(len(classes))
    for label, name in enumerate(classes):
        os.makedirs(osp.join(root, name), exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 200, size=(size, size, 3))
            pixels[..., label % 3] += 50
            Image.fromarray(pixels.astype(np.uint8)).save(osp.join(root, name, f"{i}.png"))
    return root


@DATASET_REGISTRY.register()
class PromptTrainerToyFolder(DatasetBase):
    """DATASET.ROOT/<class>/*.png; the same images serve as train, val and test."""

    def __init__(self, cfg):
        root = cfg.DATASET.ROOT
        items = [Datum(impath=osp.join(root, name, f), label=label, classname=name)
                 for label, name in enumerate(sorted(os.listdir(root)))
                 for f in sorted(os.listdir(osp.join(root, name)))]
        super().__init__(train_x=items, val=items, test=items)


class ToyPromptCLIP(PromptedCLIP):
    def __init__(self, clip_model, classnames, node=None):
        super().__init__(clip_model, placeholder_sentences(classnames, N_CTX))
        self.prompt_learner = nn.Module()
        self.prompt_learner.ctx = nn.Parameter(init_text_context(clip_model, N_CTX))
        self.prompt_learner.visual_ctx = normal_prompts(1, WIDTH)  # before vision block 1

    def compute_prompts(self):
        return Prompts(text=[self.prompt_learner.ctx], vision=[None, self.prompt_learner.visual_ctx])


class ToyPromptTrainer(PromptTrainer):  # not registered: built directly
    cfg_node = "TOYPROMPT"
    model_class = ToyPromptCLIP


def make_cfg(root, output_dir, **trainer_options):
    cfg = get_cfg_default()
    cfg.TRAINER.TOYPROMPT = ToyPromptTrainer.config_node(**trainer_options)
    cfg.merge_from_list([
        "DATASET.NAME", "PromptTrainerToyFolder", "DATASET.ROOT", root, "OUTPUT_DIR", str(output_dir),
        "MODEL.BACKBONE.NAME", "random-tiny-ViT", "USE_CUDA", "False", "SEED", "0",
        "INPUT.SIZE", "(32, 32)", "INPUT.TRANSFORMS", "['random_flip', 'normalize']",
        "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "4",
        "OPTIM.NAME", "sgd", "OPTIM.LR", "0.5", "OPTIM.MAX_EPOCH", "1", "TRAIN.PRINT_FREQ", "1",
    ])
    return cfg


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    return write_images(str(tmp_path_factory.mktemp("three")), ["cat", "dog", "fire_truck"])


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory):
    return write_images(str(tmp_path_factory.mktemp("two")), ["red wine", "tabby cat"], per_class=2)


def frozen_state(trainer):
    return {name: value.clone() for name, value in trainer.model.state_dict().items()
            if not name.startswith("prompt_learner.")}


def test_build_freezes_clip_and_counts_trainable_parameters(three_classes, tmp_path, capsys):
    trainer = ToyPromptTrainer(make_cfg(three_classes, tmp_path))
    assert f"Trainable parameters: {N_CTX * WIDTH + WIDTH}" in capsys.readouterr().out
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable == ["prompt_learner.ctx", "prompt_learner.visual_ctx"]
    assert trainer.get_model_names() == ["prompt_learner"]


def test_one_step_changes_only_the_prompts(three_classes, tmp_path):
    trainer = ToyPromptTrainer(make_cfg(three_classes, tmp_path))
    before_clip = frozen_state(trainer)
    before_prompts = {n: p.detach().clone() for n, p in trainer.model.prompt_learner.named_parameters()}
    trainer.set_model_mode("train")
    trainer.batch_idx, trainer.num_batches = 0, 3
    summary = trainer.forward_backward(next(iter(trainer.train_loader_x)))
    assert set(summary) == {"loss", "acc"} and np.isfinite(summary["loss"])
    for name, value in frozen_state(trainer).items():
        assert torch.equal(value, before_clip[name]), name
    for name, param in trainer.model.prompt_learner.named_parameters():
        assert not torch.equal(param, before_prompts[name]), name  # both towers' prompts receive gradients


def test_cached_evaluation_equals_per_batch(three_classes, tmp_path, monkeypatch):
    trainer = ToyPromptTrainer(make_cfg(three_classes, tmp_path))
    with torch.no_grad():  # move the prompts away from their initialisation
        for param in trainer.model.prompt_learner.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    logits, calls, prompt_calls = [], [], []
    original_process, original_features = trainer.evaluator.process, trainer.model.class_features
    original_prompts = trainer.model.compute_prompts
    monkeypatch.setattr(trainer.evaluator, "process", lambda out, gt: (logits.append(out), original_process(out, gt)))
    monkeypatch.setattr(trainer.model, "class_features",
                        lambda *args, **kwargs: (calls.append(1), original_features(*args, **kwargs))[1])
    monkeypatch.setattr(trainer.model, "compute_prompts", lambda: (prompt_calls.append(1), original_prompts())[1])
    results = {}
    for cache in (True, False):
        trainer.config.CACHE_TEXT_FEATURES = cache  # the typed config the trainer was built from
        logits.clear(), calls.clear(), prompt_calls.clear()
        accuracy = trainer.test()
        results[cache] = (accuracy, torch.cat(logits), len(calls), len(prompt_calls))
    n_batches = len(trainer.test_loader)
    assert n_batches == 3 and results[True][2] == 1 and results[False][2] == n_batches
    assert results[True][3] == 1 and results[False][3] == n_batches  # the prompts too: once per evaluation
    assert results[True][0] == results[False][0]
    assert torch.allclose(results[True][1], results[False][1], atol=1e-5)


def test_train_save_and_load_on_another_class_set(three_classes, two_classes, tmp_path, capsys):
    trainer = ToyPromptTrainer(make_cfg(three_classes, tmp_path / "run"))
    trainer.train()
    out = capsys.readouterr().out
    assert "epoch [1/1] batch [3/3]" in out and "* accuracy:" in out and "Finish training" in out
    other = ToyPromptTrainer(make_cfg(two_classes, tmp_path / "other"))
    other.load_model(str(tmp_path / "run"), epoch=1)
    for (name, got), (_, expected) in zip(other.model.prompt_learner.named_parameters(),
                                          trainer.model.prompt_learner.named_parameters()):
        assert torch.equal(got, expected), name
    with torch.no_grad():
        assert other.model.class_features().shape == (2, 64)


def test_bad_precision_is_a_one_line_error(three_classes, tmp_path):
    with pytest.raises(ConfigError, match=r"^TRAINER.TOYPROMPT.PREC='fp8' is not a precision; valid values"):
        ToyPromptTrainer(make_cfg(three_classes, tmp_path, PREC="fp8"))


def test_a_prompt_learner_sharing_a_clip_tensor_is_refused():
    from mmpt.clip_backbone import build_random_clip
    from mmpt.prompt_trainer import freeze_all_but_prompt_learner

    model = ToyPromptCLIP(build_random_clip("random-tiny-ViT"), ["cat", "dog"])
    assert freeze_all_but_prompt_learner(model) == N_CTX * WIDTH + WIDTH
    model.prompt_learner.final_norm = model.text_encoder.ln_final  # a CLIP module inside the prompt learner
    with pytest.raises(RuntimeError, match="prompt_learner shares tensors with the frozen model"):
        freeze_all_but_prompt_learner(model)
