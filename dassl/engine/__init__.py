from .build import TRAINER_REGISTRY, build_trainer
from .trainer import TrainerBase, SimpleTrainer, TrainerX
