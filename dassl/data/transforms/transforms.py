"""Image transforms built from cfg.INPUT (Dassl's build_transform, the subset CoOp-style configs use)."""
from torchvision.transforms import (
    CenterCrop, ColorJitter, Compose, Normalize, RandomGrayscale, RandomHorizontalFlip, RandomResizedCrop,
    Resize, ToTensor, InterpolationMode,
)

from dassl.utils.registry import ConfigError

INTERPOLATION_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}

AVAI_CHOICES = ["random_flip", "random_resized_crop", "normalize", "center_crop", "colorjitter",
                "randomgrayscale", "random_crop"]


def _check_choices(choices):
    for choice in choices:
        if choice not in AVAI_CHOICES:
            raise ConfigError(f"Unknown transform '{choice}' in INPUT.TRANSFORMS; available: {AVAI_CHOICES}")


def build_transform(cfg, is_train=True, choices=None):
    """Train: RandomResizedCrop -> flip -> tensor -> normalize; test: resize -> center crop -> tensor -> normalize.

    `choices` defaults to cfg.INPUT.TRANSFORMS; with INPUT.NO_TRANSFORM only ToTensor (+ normalize) is applied.
    """
    choices = list(cfg.INPUT.TRANSFORMS if choices is None else choices)
    _check_choices(choices)
    if cfg.INPUT.INTERPOLATION not in INTERPOLATION_MODES:
        raise ConfigError(f"Unknown INPUT.INTERPOLATION '{cfg.INPUT.INTERPOLATION}'; "
                         f"available: {list(INTERPOLATION_MODES)}")
    normalize = Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    if cfg.INPUT.NO_TRANSFORM:
        print("Note: no transform is applied!")
        return Compose([ToTensor()] + ([normalize] if "normalize" in choices else []))
    if is_train:
        return _build_transform_train(cfg, choices, normalize)
    return _build_transform_test(cfg, choices, normalize)


def _build_transform_train(cfg, choices, normalize):
    interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    input_size = tuple(cfg.INPUT.SIZE)
    print("Building transform_train")
    tfm = []
    if "random_crop" in choices:
        from torchvision.transforms import RandomCrop

        print(f"+ resize to {input_size} and random crop (padding={cfg.INPUT.CROP_PADDING})")
        tfm += [Resize(input_size, interpolation=interp_mode), RandomCrop(input_size, padding=cfg.INPUT.CROP_PADDING)]
    elif "random_resized_crop" in choices:
        print(f"+ random resized crop (size={input_size}, scale={tuple(cfg.INPUT.RRCROP_SCALE)})")
        tfm.append(RandomResizedCrop(input_size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp_mode))
    else:
        print(f"+ resize to {input_size}")
        tfm.append(Resize(input_size, interpolation=interp_mode))
    if "random_flip" in choices:
        print("+ random flip")
        tfm.append(RandomHorizontalFlip())
    if "colorjitter" in choices:
        print("+ color jitter")
        tfm.append(ColorJitter(brightness=cfg.INPUT.COLORJITTER_B, contrast=cfg.INPUT.COLORJITTER_C,
                               saturation=cfg.INPUT.COLORJITTER_S, hue=cfg.INPUT.COLORJITTER_H))
    if "randomgrayscale" in choices:
        print("+ random gray scale")
        tfm.append(RandomGrayscale(p=cfg.INPUT.RGS_P))
    print("+ to torch tensor of range [0, 1]")
    tfm.append(ToTensor())
    if "normalize" in choices:
        print(f"+ normalization (mean={list(cfg.INPUT.PIXEL_MEAN)}, std={list(cfg.INPUT.PIXEL_STD)})")
        tfm.append(normalize)
    return Compose(tfm)


def _build_transform_test(cfg, choices, normalize):
    interp_mode = INTERPOLATION_MODES[cfg.INPUT.INTERPOLATION]
    input_size = tuple(cfg.INPUT.SIZE)
    print("Building transform_test")
    print(f"+ resize the smaller edge to {max(input_size)}")
    print(f"+ {input_size} center crop")
    print("+ to torch tensor of range [0, 1]")
    tfm = [Resize(max(input_size), interpolation=interp_mode), CenterCrop(input_size), ToTensor()]
    if "normalize" in choices:
        print(f"+ normalization (mean={list(cfg.INPUT.PIXEL_MEAN)}, std={list(cfg.INPUT.PIXEL_STD)})")
        tfm.append(normalize)
    return Compose(tfm)
