from dassl.utils import Registry
from dassl.utils.registry import UnknownNameError, closest_name_hint

DATASET_REGISTRY = Registry("DATASET")


def build_dataset(cfg):
    """Instantiate the dataset class registered under cfg.DATASET.NAME with cfg."""
    available = DATASET_REGISTRY.registered_names()
    if cfg.DATASET.NAME not in available:
        raise UnknownNameError(f"Unknown dataset '{cfg.DATASET.NAME}' (DATASET.NAME).{closest_name_hint(cfg.DATASET.NAME, available)} "
                               f"Available: {sorted(available)}")
    if cfg.VERBOSE:
        print(f"Loading dataset: {cfg.DATASET.NAME}")
    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)
