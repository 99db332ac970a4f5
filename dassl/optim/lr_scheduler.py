"""build_lr_scheduler(optimizer, cfg.OPTIM): single_step, multi_step, cosine, with constant / linear warmup.

Differences from upstream Dassl (which breaks on recent torch):
- no `verbose` argument is passed to torch's LRScheduler (removed in torch 2.7);
- the warmup scheduler's state_dict holds plain values plus the successor's state_dict (never the
  successor object), so checkpoints load with weights_only=True and a resumed run continues the exact
  LR trajectory (upstream unpickles a successor bound to a stale optimizer and the LR freezes);
- after warmup the LR is the successor's closed form, not a recursive update of the warmup LR.

LR of epoch e (0-based, = scheduler.last_epoch), warmup of W epochs, successor f(s) (closed form):
  e < W:  constant -> WARMUP_CONS_LR;  linear -> WARMUP_MIN_LR if e == 0 else base_lr * e / W
  e >= W: f(e - W) with WARMUP_RECOUNT (upstream's counting: base LR right after warmup), else f(e) (f(0) at e = W)
"""
import math

from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, MultiStepLR, StepLR
from dassl.utils.registry import ConfigError

AVAI_SCHEDS = ["single_step", "multi_step", "cosine"]


def _closed_form_lr(successor, step):
    """The successor's LRs at `step` (closed form; base_lrs = the optimizer's initial LRs)."""
    if isinstance(successor, CosineAnnealingLR):
        return [successor.eta_min + (base - successor.eta_min) * (1 + math.cos(math.pi * step / successor.T_max)) / 2
                for base in successor.base_lrs]
    if isinstance(successor, StepLR):
        return [base * successor.gamma ** (step // successor.step_size) for base in successor.base_lrs]
    if isinstance(successor, MultiStepLR):
        passed = sum(count for milestone, count in successor.milestones.items() if milestone <= step)
        return [base * successor.gamma ** passed for base in successor.base_lrs]
    raise TypeError(f"Warmup does not support a successor of type {type(successor).__name__}")


class _BaseWarmupScheduler(LRScheduler):
    """Warmup for `warmup_epoch` epochs, then the successor scheduler's closed-form LR."""

    def __init__(self, optimizer, successor, warmup_epoch, recount=True, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.recount = recount
        super().__init__(optimizer, last_epoch)

    def successor_step(self, epoch):
        # upstream's trajectory: the first epoch after warmup runs at the base LR (f(0)), then f(1), f(2), ...
        # (recount); without recount the successor resumes at f(e) after one epoch at the base LR
        if self.recount:
            return epoch - self.warmup_epoch
        return epoch if epoch > self.warmup_epoch else 0

    def warmup_lr(self, epoch):
        raise NotImplementedError

    def get_lr(self):
        if self.last_epoch < self.warmup_epoch:
            return self.warmup_lr(self.last_epoch)
        step = self.successor_step(self.last_epoch)
        # keep the successor's own counters consistent for code that inspects it
        self.successor.last_epoch = step
        lrs = _closed_form_lr(self.successor, step)
        self.successor._last_lr = list(lrs)
        return lrs

    def state_dict(self):
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        successor_state = state_dict.pop("successor", None)
        if successor_state is not None and isinstance(successor_state, dict):
            self.successor.load_state_dict(successor_state)
        self.__dict__.update(state_dict)


class ConstantWarmupScheduler(_BaseWarmupScheduler):
    """LR = cons_lr for the first warmup_epoch epochs."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, recount=True, last_epoch=-1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, recount, last_epoch)

    def warmup_lr(self, epoch):
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_BaseWarmupScheduler):
    """LR = min_lr at epoch 0, then base_lr * epoch / warmup_epoch until warmup ends."""

    def __init__(self, optimizer, successor, warmup_epoch, min_lr, recount=True, last_epoch=-1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, recount, last_epoch)

    def warmup_lr(self, epoch):
        if epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [base * epoch / self.warmup_epoch for base in self.base_lrs]


def build_lr_scheduler(optimizer, optim_cfg):
    """The scheduler of cfg.OPTIM (stepped once per epoch by the trainer)."""
    name = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    max_epoch = optim_cfg.MAX_EPOCH
    if name not in AVAI_SCHEDS:
        raise ConfigError(f"Unknown OPTIM.LR_SCHEDULER '{name}'; available: {AVAI_SCHEDS}")
    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError(f"OPTIM.STEPSIZE must be an int for single_step, got {stepsize!r}")
        scheduler = StepLR(optimizer, step_size=stepsize if stepsize > 0 else max_epoch, gamma=optim_cfg.GAMMA)
    elif name == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(f"OPTIM.STEPSIZE must be a list for multi_step, got {stepsize!r}")
        scheduler = MultiStepLR(optimizer, milestones=list(stepsize), gamma=optim_cfg.GAMMA)
    else:
        scheduler = CosineAnnealingLR(optimizer, T_max=float(max_epoch))

    if optim_cfg.WARMUP_EPOCH > 0:
        if optim_cfg.WARMUP_TYPE == "constant":
            return ConstantWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_CONS_LR,
                                           recount=optim_cfg.WARMUP_RECOUNT)
        if optim_cfg.WARMUP_TYPE == "linear":
            return LinearWarmupScheduler(optimizer, scheduler, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_MIN_LR,
                                         recount=optim_cfg.WARMUP_RECOUNT)
        raise ConfigError(f"Unknown OPTIM.WARMUP_TYPE '{optim_cfg.WARMUP_TYPE}'; available: constant, linear")
    return scheduler
