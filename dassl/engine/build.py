from dassl.utils import Registry
from dassl.utils.registry import UnknownNameError, closest_name_hint

TRAINER_REGISTRY = Registry("TRAINER")


def trainer_class(name):
    """The trainer class registered under `name`; an unknown name suggests the closest one (ignoring case)."""
    available = TRAINER_REGISTRY.registered_names()
    if name not in available:
        hint = closest_name_hint(name, available)
        raise UnknownNameError(f"Unknown trainer '{name}' (TRAINER.NAME / --trainer).{hint} "
                               f"Available: {sorted(available)}")
    return TRAINER_REGISTRY.get(name)


def build_trainer(cfg):
    """Instantiate the trainer registered under cfg.TRAINER.NAME; an unknown name suggests the closest one."""
    cls = trainer_class(cfg.TRAINER.NAME)
    print(f"Loading trainer: {cfg.TRAINER.NAME}")
    return cls(cfg)
