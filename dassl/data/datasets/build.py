from dassl.utils import Registry
from dassl.utils.registry import UnknownNameError, closest_name_hint

DATASET_REGISTRY = Registry("DATASET")


def dataset_class(name):
    """The dataset class registered under `name`; an unknown name suggests the closest one (ignoring case)."""
    available = DATASET_REGISTRY.registered_names()
    if name not in available:
        raise UnknownNameError(f"Unknown dataset '{name}' (DATASET.NAME).{closest_name_hint(name, available)} "
                               f"Available: {sorted(available)}")
    return DATASET_REGISTRY.get(name)


def build_dataset(cfg):
    """Instantiate the dataset class registered under cfg.DATASET.NAME with cfg."""
    cls = dataset_class(cfg.DATASET.NAME)
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return cls(cfg)
