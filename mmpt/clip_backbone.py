"""CLIP backbones: real weights from a local file (or clip's cache / download), or random ones for tests.

`load_clip(cfg)` reads `cfg.MODEL.BACKBONE.NAME` / `cfg.MODEL.BACKBONE.PATH`; `load_clip_by_name(name, path, seed)`
does the same without a config. Every model comes back as a `clip.model.CLIP` in fp32, eval mode, on the CPU.

Real names (clip's own list, e.g. RN50, RN101, ViT-B/32, ViT-B/16, ViT-L/14) load, in this order, from
  1. `path` (a checkpoint file, or a folder holding clip's file name such as ViT-B-16.pt),
  2. clip's cache `~/.cache/clip/<file>`,
  3. clip's own download (needs the internet).
`toy-ViT` is the tiny CLIP pretrained on the toy world and shipped with the package (mmpt.toy_clip); `path`, when
given, is another file of that format.
Random names (`random-tiny-ViT`, `random-tiny-RN`, `random-<real name>`) build the real `clip.model.CLIP` class
with seeded random weights: their numbers test the pipeline, never accuracy.

open_clip models (the optional extra: `pip install -e ".[open_clip]"`) come back as open_clip's own `CLIP` /
`CustomTextCLIP`, in fp32, eval mode, on the CPU (mmpt.towers reads either family):
  `open_clip:<model>/<pretrained tag>`, e.g. open_clip:ViT-B-16/laion2b_s34b_b88k (open_clip.list_pretrained()):
      downloaded by open_clip into the Hugging Face Hub cache (HF_HOME / HF_HUB_CACHE; HF_HUB_OFFLINE=1 reads
      the cache only) or, for the few tags hosted elsewhere, into ~/.cache/clip;
  `open_clip:<model>` with MODEL.BACKBONE.PATH a local checkpoint file of that architecture;
  `open_clip:hf-hub:<org>/<repo>`: the config and weights of a Hub repository (same cache and offline rules);
  `random-open_clip:<arch>`: open_clip's classes with seeded random weights, <arch> one of OPEN_CLIP_TINY
      (test models) or any open_clip model config (open_clip.list_models(), e.g. ViT-L-14).
The prompted encoders need CLIP's BPE tokenizer and its 77-token context (clip.tokenize tokenises every
sentence): an open_clip model with another tokenizer or context is refused in one line.
"""
import os.path as osp
import socket
import urllib.error
import warnings

import clip.clip as openai_clip  # the module holding _MODELS and _download
import torch
from clip.model import CLIP, build_model

from dassl.utils import ConfigError, MissingFileError
from dassl.utils.torchtools import unreadable_file_error

RANDOM_PREFIX = "random-"
TOY_NAME = "toy-ViT"  # mmpt.toy_clip.NAME (not imported here: the toy model loads only when asked for)
OPEN_CLIP_PREFIX = "open_clip:"
RANDOM_OPEN_CLIP_PREFIX = RANDOM_PREFIX + OPEN_CLIP_PREFIX
HF_HUB_PREFIX = "hf-hub:"
OPEN_CLIP_INSTALL = 'pip install -e ".[open_clip]"'
CLIP_VOCAB_SIZE, CLIP_CONTEXT_LENGTH = 49408, 77  # what clip.tokenize produces
DOWNLOAD_TIMEOUT_S = 30

# clip.model.CLIP's constructor arguments for the architectures the random backbones reproduce
# (embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size, context_length, vocab_size,
#  transformer_width, transformer_heads, transformer_layers)
ARCHITECTURES = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 77, 49408, 512, 8, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 77, 49408, 512, 8, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 77, 49408, 512, 8, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 77, 49408, 768, 12, 12),
    # tiny: widths 64, 2 layers per tower, 2 heads in both towers, 32 px images of 4 x 4 patches of 8 px
    "tiny-ViT": (64, 32, 2, 64, 8, 77, 49408, 64, 2, 2),
    # tiny ResNet: one bottleneck per stage, stem width 8 (attention pool width 256, 4 heads), 32 px images
    "tiny-RN": (64, 32, (1, 1, 1, 1), 8, None, 77, 49408, 64, 2, 2),
}
TINY_VIT_VISION_HEADS = 2  # clip.model.CLIP derives width // 64 = 1 head; the tiny model asks for 2


class BackboneNotFoundError(MissingFileError):
    """Real CLIP weights are neither at the given path nor in clip's cache, and could not be downloaded."""


def real_backbone_names():
    return list(openai_clip._MODELS)


def random_backbone_names():
    return [RANDOM_PREFIX + name for name in ARCHITECTURES]


def valid_backbone_names():
    """The OpenAI-family names; open_clip names have their own forms (see the module docstring)."""
    return real_backbone_names() + [TOY_NAME] + random_backbone_names()


def check_backbone_name(name, key="MODEL.BACKBONE.NAME"):
    """Raise a one-line ConfigError listing the valid names when `name` is none of them."""
    if name.startswith(RANDOM_OPEN_CLIP_PREFIX):
        check_random_open_clip_arch(name[len(RANDOM_OPEN_CLIP_PREFIX):], key)
    elif name.startswith(OPEN_CLIP_PREFIX):
        parse_open_clip_name(name, key)
    elif name not in valid_backbone_names():
        raise ConfigError(f"{key}={name!r} is not a CLIP backbone; valid names: {', '.join(valid_backbone_names())}, "
                          f"{OPEN_CLIP_PREFIX}<model>/<pretrained tag>, {OPEN_CLIP_PREFIX}{HF_HUB_PREFIX}<org>/<repo>, "
                          f"{RANDOM_OPEN_CLIP_PREFIX}<arch>")


def backbone_identity(name, path=""):
    """What names the weights of a backbone: its name, and for `open_clip:<model>` (whose weights come from the
    file MODEL.BACKBONE.PATH alone) also the file's name -- checkpoints record it (one checkpoint never loads onto
    other weights)."""
    spec = name[len(OPEN_CLIP_PREFIX):] if name.startswith(OPEN_CLIP_PREFIX) else None
    if spec is not None and path and "/" not in spec:
        return f"{name}@{osp.basename(path)}"
    return name


def load_clip(cfg):
    """The CLIP model named by cfg.MODEL.BACKBONE.NAME (real weights from cfg.MODEL.BACKBONE.PATH / clip's cache /
    download, or a random backbone with seed 0: the backbone plays the part of fixed pretrained weights, so it
    does not change with cfg.SEED)."""
    return load_clip_by_name(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.PATH, seed=0)


def load_clip_by_name(name, path="", seed=0):
    """`clip.model.CLIP` in fp32, eval mode, on the CPU. `seed` only matters for random backbones."""
    check_backbone_name(name)
    if name.startswith(RANDOM_OPEN_CLIP_PREFIX):
        return build_random_open_clip(name[len(RANDOM_OPEN_CLIP_PREFIX):], seed)
    if name.startswith(OPEN_CLIP_PREFIX):
        return load_open_clip(name, path)
    if name.startswith(RANDOM_PREFIX):
        return build_random_clip(name, seed)
    if name == TOY_NAME:
        from mmpt.toy_clip import load_toy_clip

        return load_toy_clip(path)
    return load_clip_file(find_clip_file(name, path),
                          hint=f"delete it and fetch {openai_clip._MODELS[name]} again (an interrupted download?)")


def clip_file_name(name):
    """clip's file name for a real backbone, e.g. "ViT-B-16.pt"."""
    return osp.basename(openai_clip._MODELS[name])


def clip_cache_dir():
    return osp.expanduser("~/.cache/clip")


def find_clip_file(name, path=""):
    """Path of the checkpoint file of the real backbone `name` (see the module docstring for the order)."""
    url = openai_clip._MODELS[name]
    if path:
        candidate = osp.join(path, clip_file_name(name)) if osp.isdir(path) else path
        if not osp.isfile(candidate):
            raise BackboneNotFoundError(f"MODEL.BACKBONE.PATH: no CLIP checkpoint for {name} at {candidate}; "
                                        f"download it from {url}")
        return candidate
    cached = osp.join(clip_cache_dir(), clip_file_name(name))
    if osp.isfile(cached):
        return cached
    return download_clip_file(name, cached)


def download_clip_file(name, target):
    """clip's download into clip's cache folder; any network failure becomes one BackboneNotFoundError line."""
    url = openai_clip._MODELS[name]
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an offline machine must fail, not hang
    try:
        print(f"Downloading CLIP {name} from {url} to {osp.dirname(target)}")
        return openai_clip._download(url, osp.dirname(target))
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise BackboneNotFoundError(
            f"CLIP {name} weights not found at {target} and the download failed ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); fetch {url} and put it there, or set "
            f"MODEL.BACKBONE.PATH") from None
    finally:
        socket.setdefaulttimeout(previous_timeout)


def load_clip_file(path, hint="delete it and download it again"):
    """A CLIP checkpoint (clip's JIT archive or a plain state dict) -> fp32 CLIP, eval mode, CPU. A file that is
    neither (truncated, garbage) raises one RunError line naming it; `hint` says what to do."""
    try:
        with warnings.catch_warnings():  # torch's deprecation notice of torch.jit.load: clip ships JIT archives
            warnings.simplefilter("ignore", FutureWarning)
            state_dict = torch.jit.load(path, map_location="cpu").state_dict()
    except Exception:  # not a JIT archive: a plain state dict (possibly wrapped as {"state_dict": ...})
        try:
            state_dict = torch.load(path, map_location="cpu")
        except Exception as error:  # noqa: BLE001  truncated zip, empty file, garbage: each raises its own type
            raise unreadable_file_error(path, error, "CLIP checkpoint", hint) from None
        if isinstance(state_dict, dict) and "state_dict" in state_dict:
            state_dict = state_dict["state_dict"]
    state_dict = dict(state_dict)
    try:
        model = build_model(state_dict)  # drops the non-weight keys from state_dict
        # build_model loads into fp16 weights; reload in fp32 so that fp32 checkpoints are not rounded
        model.float().load_state_dict({key: value.float() if value.is_floating_point() else value
                                       for key, value in state_dict.items()})
    except (KeyError, RuntimeError, AttributeError, TypeError) as error:
        message = " ".join(str(error).split())
        raise ConfigError(f"{path} does not hold a CLIP state dict ({type(error).__name__}: {message})") from None
    return model.eval()


def build_random_clip(name, seed=0):
    """A randomly initialised `clip.model.CLIP` with the architecture `name` ("random-tiny-ViT", "random-ViT-B/16"
    or just "ViT-B/16"), fp32, eval mode, CPU. Deterministic in `seed`; the global RNG state is left untouched."""
    arch = name[len(RANDOM_PREFIX):] if name.startswith(RANDOM_PREFIX) else name
    if arch not in ARCHITECTURES:
        raise ConfigError(f"no random CLIP architecture {name!r}; valid names: {', '.join(random_backbone_names())}")
    print(f"Backbone {RANDOM_PREFIX + arch}: RANDOM weights (seed {seed}); results test the pipeline, not accuracy")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(*ARCHITECTURES[arch])
        if arch == "tiny-ViT":
            set_vision_heads(model, TINY_VIT_VISION_HEADS)
        _perturb_constant_tensors(model)
    return model.float().eval()


def set_vision_heads(model, heads):
    for block in model.visual.transformer.resblocks:
        block.attn.num_heads = heads
        block.attn.head_dim = block.attn.embed_dim // heads


@torch.no_grad()
def _perturb_constant_tensors(model, std=0.02):
    """CLIP's initialisation leaves LayerNorm weights at 1 and most biases at 0: a random backbone gets small
    noise on every such constant tensor, so that no computation on it can look right because a term vanished."""
    for param in model.parameters():
        if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
            param.add_(torch.randn_like(param) * std)


# ------------------------------------------------------------------------------------------------------------
# open_clip

# random test models built with open_clip's own classes: (embed_dim, vision_cfg, text_cfg) keyword arguments.
# Each exercises what the OpenAI family lacks: layer scale, last-token text pooling, a Linear text projection,
# mean-pooled image features, no ln_pre, open_clip's custom block (QK norm, head scale, inner / attention norms).
_TINY_VISION = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32)
_TINY_TEXT = dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=2)
OPEN_CLIP_TINY = {
    "tiny-ViT": (64, _TINY_VISION, _TINY_TEXT),
    "tiny-ViT-ls": (64, dict(_TINY_VISION, ls_init_value=0.5), dict(_TINY_TEXT, ls_init_value=0.5)),
    "tiny-ViT-last": (64, dict(_TINY_VISION, pool_type="avg", no_ln_pre=True),
                      dict(_TINY_TEXT, pool_type="last", proj_bias=True)),
    "tiny-ViT-custom": (64, dict(_TINY_VISION, pool_type="avg", final_ln_after_pool=True, qk_norm=True,
                                 scale_heads=True, scale_attn_inner=True, scale_attn=True, scale_fc=True),
                        dict(_TINY_TEXT, qk_norm=True, scale_heads=True, scale_attn_inner=True, scale_attn=True,
                             scale_fc=True)),
    "tiny-RN": (64, dict(image_size=32, layers=(1, 1, 1, 1), width=8), _TINY_TEXT),
}


def import_open_clip(key="MODEL.BACKBONE.NAME"):
    try:
        import open_clip
    except ImportError:
        raise ConfigError(f"{key}: open_clip backbones need the open_clip extra; run {OPEN_CLIP_INSTALL}") from None
    return open_clip


def parse_open_clip_name(name, key="MODEL.BACKBONE.NAME"):
    """"open_clip:<model>[/<tag>]" -> (model, tag or ""); "open_clip:hf-hub:<org>/<repo>" -> ("hf-hub:...", "").
    Validated against open_clip's lists, each error one line listing what exists."""
    open_clip = import_open_clip(key)
    spec = name[len(OPEN_CLIP_PREFIX):]
    if spec.startswith(HF_HUB_PREFIX):
        repo = spec[len(HF_HUB_PREFIX):]
        if repo.count("/") != 1 or not all(repo.split("/")):
            raise ConfigError(f"{key}={name!r}: expected {OPEN_CLIP_PREFIX}{HF_HUB_PREFIX}<org>/<repo>")
        return spec, ""
    model, _, tag = spec.partition("/")
    if model not in open_clip.list_models():
        raise ConfigError(f"{key}={name!r}: {model!r} is not an open_clip model; models: "
                          f"{', '.join(open_clip.list_models())}")
    tags = open_clip.list_pretrained_tags_by_model(model)
    if tag and tag not in tags:
        raise ConfigError(f"{key}={name!r}: {tag!r} is not a pretrained tag of {model}; tags: "
                          f"{', '.join(tags) or 'none (give MODEL.BACKBONE.PATH)'}")
    return model, tag


def load_open_clip(name, path=""):
    """An open_clip model named `name` (see the module docstring); `path` a local checkpoint file."""
    open_clip = import_open_clip()
    model_name, tag = parse_open_clip_name(name)
    if model_name.startswith(HF_HUB_PREFIX):
        if path:
            raise ConfigError(f"MODEL.BACKBONE.PATH={path!r}: a {HF_HUB_PREFIX} backbone reads its weights from the "
                              f"Hub cache; name the architecture instead ({OPEN_CLIP_PREFIX}<model>) to load a file")
        source = f"the Hugging Face Hub repository {model_name[len(HF_HUB_PREFIX):]}"
    elif path:
        if not osp.isfile(path):
            raise BackboneNotFoundError(f"MODEL.BACKBONE.PATH: no open_clip checkpoint file at {path}")
        source = path
    elif tag:
        source = f"open_clip's pretrained {model_name}/{tag}"
    else:
        raise ConfigError(f"MODEL.BACKBONE.NAME={name!r}: give a pretrained tag ({OPEN_CLIP_PREFIX}{model_name}/<tag>; "
                          f"tags: {', '.join(open_clip.list_pretrained_tags_by_model(model_name)) or 'none'}) "
                          "or MODEL.BACKBONE.PATH")
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # an offline machine must fail, not hang
    try:
        print(f"Loading open_clip {name} from {source}")
        model = open_clip.create_model(model_name, pretrained=path or tag or None, precision="fp32", device="cpu",
                                       require_pretrained=True)
    except Exception as error:  # noqa: BLE001  open_clip and the Hub raise many types; each becomes one line
        if path:  # a file open_clip could not read as a state dict of this architecture
            raise unreadable_file_error(path, error, f"open_clip {model_name} checkpoint",
                                        "check that it is a checkpoint of this architecture") from None
        raise BackboneNotFoundError(_failed_fetch(name, source, error)) from None  # network, offline, no cache
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return checked_open_clip(model, name)


def _failed_fetch(name, source, error):
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return (f"MODEL.BACKBONE.NAME={name!r}: could not load {source} ({type(error).__name__}: {first_line}); "
            "with HF_HUB_OFFLINE=1 the weights must already be in the Hub cache (HF_HOME / HF_HUB_CACHE), "
            "or set MODEL.BACKBONE.PATH to a local checkpoint")


def checked_open_clip(model, name):
    """The model in fp32, eval mode, once its towers and tokenizer are known to fit the prompted encoders."""
    from mmpt.towers import UnsupportedBackbone, backbone_of

    try:
        backbone = backbone_of(model)
    except UnsupportedBackbone as error:
        raise ConfigError(f"MODEL.BACKBONE.NAME={name!r}: {error}") from None
    text = backbone.text
    if text.token_embedding.num_embeddings != CLIP_VOCAB_SIZE or text.context_length != CLIP_CONTEXT_LENGTH:
        raise ConfigError(f"MODEL.BACKBONE.NAME={name!r}: a text tower of {text.token_embedding.num_embeddings} "
                          f"tokens and a {text.context_length}-token context; the prompted encoders need CLIP's BPE "
                          f"tokenizer ({CLIP_VOCAB_SIZE} tokens, {CLIP_CONTEXT_LENGTH}-token context)")
    return model.float().eval()


def check_random_open_clip_arch(arch, key="MODEL.BACKBONE.NAME"):
    if arch in OPEN_CLIP_TINY:
        return
    open_clip = import_open_clip(key)
    if arch not in open_clip.list_models():
        raise ConfigError(f"{key}={RANDOM_OPEN_CLIP_PREFIX + arch!r}: no such architecture; valid: "
                          f"{', '.join(list(OPEN_CLIP_TINY) + open_clip.list_models())}")


def build_random_open_clip(arch, seed=0):
    """open_clip's own model of architecture `arch` (OPEN_CLIP_TINY or an open_clip config name) with seeded
    random weights, small noise on its constant tensors; fp32, eval mode, CPU; the global RNG is left untouched."""
    open_clip = import_open_clip()
    check_random_open_clip_arch(arch)
    print(f"Backbone {RANDOM_OPEN_CLIP_PREFIX + arch}: RANDOM weights (seed {seed}); results test the pipeline, "
          "not accuracy")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if arch in OPEN_CLIP_TINY:
            from open_clip.model import CLIP as OpenCLIP, CLIPTextCfg, CLIPVisionCfg

            embed, vision, text = OPEN_CLIP_TINY[arch]
            model = OpenCLIP(embed, CLIPVisionCfg(**vision), CLIPTextCfg(**text))
        else:
            model = open_clip.create_model(arch, pretrained=None, precision="fp32", device="cpu")
        _perturb_constant_tensors(model)
    return checked_open_clip(model, RANDOM_OPEN_CLIP_PREFIX + arch)
