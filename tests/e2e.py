"""Shared test helpers: `trainer_node` and `small_clip_model` (model-level tests), and `run_train` (train /
evaluate a trainer in-process on a generated dataset).

    from tests.e2e import run_train
    output_dir, log = run_train(tmp_path, "CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml")
    assert "* accuracy:" in log

`run_train(tmp_path, trainer, config_file, dataset="Caltech101", opts=(), eval_only=False, model_dir=None,
subsample="all", output_dir=None, dataset_kwargs=None, load_epoch=None, return_trainer=False)
-> (output_dir, log_text)`, or (output_dir, log_text, trainer) with `return_trainer=True`

- Makes a small fake dataset of registry name `dataset` with `mmpt.data.fixtures.make_dataset(dataset, root,
  **dataset_kwargs)` under `tmp_path/data` (once per tmp_path and dataset; later calls reuse it).
- Runs `train.main(train.get_parser().parse_args([...]))` in this process with the real config file, then
  FAST_OPTS (the tiny random backbone, 32 px input, NUM_WORKERS 0, batch 4, 2 epochs, print every batch,
  VERBOSE False), DATASET.NAME / SUBSAMPLE_CLASSES, then `opts` (a flat KEY VALUE sequence as on train.py's
  command line; later keys win). Seed 1. PREC is not forced (the trainer's default; on CPU "amp" = fp32).
- `eval_only=True` adds --eval-only; `model_dir` / `load_epoch` add --model-dir / --load-epoch (evaluate a
  trained model); `subsample` sets DATASET.SUBSAMPLE_CLASSES ("all" | "base" | "new").
- Returns the output directory (a `pathlib.Path`, default `tmp_path/output/<trainer>[_eval]`) and the text of
  its `log.txt` (the engine's stdout tee).
"""
import os
from pathlib import Path

import torch

import mmpt  # noqa: F401  (first: it silences clip's pkg_resources warning, raised by clip's first import)
from clip.model import CLIP



def device_under_test():
    """The device named by MMPT_TEST_DEVICE ("cuda", "cuda:1", "cpu"), or None when unset. Tests of the GPU paths
    (AMP autocast, SDPA kernels, GradScaler; tests/test_device.py) run on it; benchmarks/cuda_check.sh sets it."""
    name = os.environ.get("MMPT_TEST_DEVICE", "")
    if not name:
        return None
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"MMPT_TEST_DEVICE={name!r}, but torch {torch.__version__} sees no CUDA device")
    return device


def trainer_node(module, name, **overrides):
    """The typed config of the method declared in `module` whose cfg_node is `name`, with `overrides` set
    (what the method's model is built from)."""
    from mmpt.prompt_trainer import PromptTrainer

    methods = [cls for cls in vars(module).values()
               if isinstance(cls, type) and issubclass(cls, PromptTrainer) and cls.cfg_node == name]
    assert len(methods) == 1, f"{module.__name__} declares no method with cfg_node {name!r}"
    return methods[0].make_config(**overrides)


@torch.no_grad()
def perturb_constant_parameters(model, std=0.02):
    """Noise on every constant tensor (CLIP's LayerNorm weights at 1, biases at 0): a comparison between two
    computations cannot pass because a term vanished."""
    for param in model.parameters():
        if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
            param.add_(torch.randn_like(param) * std)


def config_from_file(config_file):
    """dassl's defaults + every declared method's node + `config_file` (what train.py reads before its opts)."""
    import trainers
    from dassl.config import get_cfg_default

    cfg = get_cfg_default()
    trainers.extend_cfg(cfg)
    cfg.merge_from_file(config_file)
    return cfg


def small_clip_model(perturb=True, layers=3, **shape):
    """A random CLIP with distinct widths (text 64, vision 96, joint 48) so that formulas can't mix them up, and
    `layers` layers per tower. perturb: LayerNorm weights / biases away from 1 / 0 (no term vanishes by chance)."""
    torch.manual_seed(0)
    args = dict(embed_dim=48, image_resolution=32, vision_layers=layers, vision_width=96, vision_patch_size=8,
                context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=2,
                transformer_layers=layers)
    args.update(shape)
    model = CLIP(**args)
    if perturb:
        perturb_constant_parameters(model)
    return model.float().eval().requires_grad_(False)

FAST_OPTS = (
    "MODEL.BACKBONE.NAME", "random-tiny-ViT",
    "INPUT.SIZE", "(32, 32)",
    "DATALOADER.NUM_WORKERS", "0",
    "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
    "DATALOADER.TEST.BATCH_SIZE", "16",
    "OPTIM.MAX_EPOCH", "2",
    "TRAIN.PRINT_FREQ", "1",
    "VERBOSE", "False",  # skips collect_env_info (slow)
)


def make_fixture_dataset(root, dataset, **dataset_kwargs):
    """Generate the fake dataset once per root (a marker file records it); returns root."""
    from mmpt.data.fixtures import make_dataset

    root = Path(root)
    marker = root / f".made-{dataset}"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        make_dataset(dataset, str(root), **dataset_kwargs)
        marker.touch()
    return root


def run_train(tmp_path, trainer, config_file, dataset="Caltech101", opts=(), eval_only=False, model_dir=None,
              subsample="all", output_dir=None, dataset_kwargs=None, load_epoch=None, return_trainer=False):
    import train  # the repository's train.py (tests run from the repo root)

    tmp_path = Path(tmp_path)
    root = make_fixture_dataset(tmp_path / "data", dataset, **(dataset_kwargs or {}))
    if output_dir is None:
        output_dir = tmp_path / "output" / (trainer + ("_eval" if eval_only else ""))
    output_dir = Path(output_dir)
    args = ["--root", str(root), "--seed", "1", "--trainer", trainer, "--config-file", str(config_file),
            "--output-dir", str(output_dir)]
    if eval_only:
        args.append("--eval-only")
    if model_dir is not None:
        args += ["--model-dir", str(model_dir)]
    if load_epoch is not None:
        args += ["--load-epoch", str(load_epoch)]
    args += list(FAST_OPTS) + ["DATASET.NAME", dataset, "DATASET.SUBSAMPLE_CLASSES", subsample]
    args += [str(item) for item in opts]
    trainer = train.main(train.get_parser().parse_args(args))
    log_text = (output_dir / "log.txt").read_text()
    return (output_dir, log_text, trainer) if return_trainer else (output_dir, log_text)


def assert_only_prompts_differ(model, clip_model):
    """Every tensor of `model` outside prompt_learner equals its counterpart in `clip_model` (the frozen CLIP the
    run started from), and every CLIP tensor is compared."""
    frozen = dict(clip_model.named_parameters())
    clip_name = {"text_encoder.": "", "image_encoder.visual.": "visual.", "logit_scale": "logit_scale"}
    checked = 0
    for name, tensor in model.state_dict().items():
        if name.startswith("prompt_learner."):
            continue
        ours = next(prefix for prefix in clip_name if name.startswith(prefix))
        assert torch.equal(tensor, frozen[clip_name[ours] + name[len(ours):]]), name
        checked += 1
    assert checked == len(frozen)


def train_killed_in_epoch_2(tmp_path, trainer_class, config, output_dir, **run_kwargs):
    """Train `trainer_class` through run_train into `output_dir`, stopped by an exception at the second batch of
    epoch 2 (after epoch 1's checkpoint): a run a later run_train into the same folder resumes."""
    import pytest

    original = trainer_class.forward_backward

    def killed_in_epoch_2(self, batch):
        if (self.epoch, self.batch_idx) == (1, 1):
            raise RuntimeError("simulated kill")
        return original(self, batch)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(RuntimeError, match="simulated kill"):
        patch.setattr(trainer_class, "forward_backward", killed_in_epoch_2)
        run_train(tmp_path, trainer_class.__name__, config, output_dir=output_dir, **run_kwargs)
