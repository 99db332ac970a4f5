"""build_optimizer(model, cfg.OPTIM): sgd, adam, adamw, amsgrad, rmsprop, radam (Dassl's API)."""
import warnings

import torch
import torch.nn as nn
from dassl.utils.registry import ConfigError

AVAI_OPTIMS = ["adam", "amsgrad", "sgd", "rmsprop", "radam", "adamw"]


def _staged_param_groups(model, optim_cfg):
    """Base layers at LR * BASE_LR_MULT, the children named in NEW_LAYERS at LR."""
    if not isinstance(model, nn.Module):
        raise TypeError("OPTIM.STAGED_LR needs an nn.Module to build_optimizer (got an iterable of parameters)")
    if isinstance(model, nn.DataParallel):
        model = model.module
    new_layers = optim_cfg.NEW_LAYERS
    new_layers = [new_layers] if isinstance(new_layers, str) else list(new_layers)
    if not new_layers:
        warnings.warn("OPTIM.NEW_LAYERS is empty (staged learning rate is pointless)")
    base_params, new_params = [], []
    for name, module in model.named_children():
        (new_params if name in new_layers else base_params).extend(module.parameters())
    return [{"params": base_params, "lr": optim_cfg.LR * optim_cfg.BASE_LR_MULT}, {"params": new_params}]


def build_optimizer(model, optim_cfg, param_groups=None):
    """An optimizer over `model` (nn.Module or iterable of parameters) or explicit `param_groups`."""
    name = optim_cfg.NAME
    if name not in AVAI_OPTIMS:
        raise ConfigError(f"Unknown OPTIM.NAME '{name}'; available: {AVAI_OPTIMS}")
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    if param_groups is not None and optim_cfg.STAGED_LR:
        warnings.warn("OPTIM.STAGED_LR is ignored because param_groups were given")
    if param_groups is None:
        if optim_cfg.STAGED_LR:
            param_groups = _staged_param_groups(model, optim_cfg)
        else:
            param_groups = model.parameters() if isinstance(model, nn.Module) else model
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    eps = _eps(optim_cfg)
    if name in ("adam", "amsgrad"):
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd, betas=betas, eps=eps,
                                amsgrad=name == "amsgrad")
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd, betas=betas, eps=eps)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    if name == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                                   alpha=optim_cfg.RMSPROP_ALPHA, eps=eps)
    return torch.optim.RAdam(param_groups, lr=lr, weight_decay=wd, betas=betas, eps=eps)


def _eps(optim_cfg):
    """OPTIM.EPS, checked: a number > 0."""
    eps = optim_cfg.EPS
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ConfigError(f"OPTIM.EPS={eps!r}: expected a number > 0 (the optimizer's epsilon; torch's default 1e-8)")
    return float(eps)
