"""Dataset loaders, one module per dataset; importing this package registers them in DATASET_REGISTRY."""
import importlib

DATASET_MODULES = [
    # one line per dataset module, e.g. "caltech101"
    "caltech101",
    "imagenet",
    "imagenet_variants",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
    "toy_world",
    "own",
]

for _name in DATASET_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
