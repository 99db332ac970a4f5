"""Installs the `dassl` engine and the `mmpt` library with their dependencies.

`trainers/` and `datasets/` are deliberately not installed: a top-level `datasets` package would shadow
Hugging Face's, and CoOp-style code runs train.py, scripts and tests from the repository root.
"""
from setuptools import find_packages, setup

setup(
    name="mmpt",
    version="0.1.0",
    description="Multi-modal prompt tuning of CLIP (MuDPT, MPL and baselines) on a Dassl-compatible engine",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["dassl", "dassl.*", "mmpt", "mmpt.*"]),
    # the toy world's pretrained tiny CLIP (mmpt.toy_clip, MODEL.BACKBONE.NAME toy-ViT)
    package_data={"mmpt": ["weights/*.pt"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "clip-anytorch>=2.6.0",
        # clip-anytorch imports pkg_resources, which setuptools >= 81 no longer ships
        "setuptools<81",
        "yacs",
        "gdown",
        "ftfy",
        "regex",
        "tqdm",
        "scipy",
        "Pillow",
        "numpy",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "submitit", "huggingface_hub>=0.23", "open_clip_torch>=3.0"],
        "slurm": ["submitit"],
        "tensorboard": ["tensorboard"],
        # the Hub mirror of python -m mmpt.data_prep (--source hub)
        "hub": ["huggingface_hub>=0.23"],
        # open_clip backbones (MODEL.BACKBONE.NAME open_clip:...; docs/ARCHITECTURE.md, "Backbones")
        "open_clip": ["open_clip_torch>=3.0", "huggingface_hub>=0.23"],
    },
)
