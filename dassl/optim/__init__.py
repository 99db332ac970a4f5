from .optimizer import build_optimizer, AVAI_OPTIMS
from .lr_scheduler import build_lr_scheduler, ConstantWarmupScheduler, LinearWarmupScheduler, AVAI_SCHEDS
