from dassl.utils import Registry
from dassl.utils.registry import UnknownNameError, closest_name_hint

TRAINER_REGISTRY = Registry("TRAINER")


def build_trainer(cfg):
    """Instantiate the trainer registered under cfg.TRAINER.NAME; an unknown name suggests the closest one."""
    name = cfg.TRAINER.NAME
    available = TRAINER_REGISTRY.registered_names()
    if name not in available:
        hint = closest_name_hint(name, available)
        raise UnknownNameError(f"Unknown trainer '{name}' (TRAINER.NAME / --trainer).{hint} "
                               f"Available: {sorted(available)}")
    print(f"Loading trainer: {name}")
    return TRAINER_REGISTRY.get(name)(cfg)
