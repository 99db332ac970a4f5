"""Dataset loaders, one module per dataset; importing this package registers them in DATASET_REGISTRY."""
import importlib

DATASET_MODULES = [
    # one line per dataset module, e.g. "caltech101"
]

for _name in DATASET_MODULES:
    importlib.import_module(f"{__name__}.{_name}")
