"""Multi-modal prompt tuning of CLIP: the library (backbones, prompted encoders, sentences, the trainer base and
method declarations).

Tooling lives in sub-packages: `mmpt.data` (dataset preparation, generated datasets) and `mmpt.experiments`
(output layout, sweep runner, results, demo). `python -m mmpt.sweep | results | demo | data_prep` are kept as
the stable commands.

`mmpt.create_model(name, clip_model, classnames, **fields)` builds any declared method's model (see
mmpt.methods); it is imported on first use, so that `import mmpt` stays light for the command-line tools.
"""
import warnings

# clip-anytorch's clip/clip.py imports pkg_resources, which setuptools >= 80 marks deprecated: every run, script
# and DataLoader worker would print that warning. Only that one warning, raised from clip's own import, is
# silenced (every module of the repository that imports clip imports mmpt first)
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning, module=r"clip\.clip")


def __getattr__(name):
    if name in ("create_model", "declared_methods"):
        from mmpt import methods

        return getattr(methods, name)
    raise AttributeError(f"module 'mmpt' has no attribute {name!r}")
