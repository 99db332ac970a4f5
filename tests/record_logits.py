"""Records every method's logits on a small random CLIP, so that a refactoring can be checked bit for bit.

    PYTHONPATH=$PWD python -m tests.records      # appends the variants missing from the records (this one included)

The file holds, per variant (a trainer name plus config overrides), the logits of a fixed batch of images
twice: "init" right after a seeded build (the initialisation, its order of random draws included), and
"set" after every entry of the prompt learner's state dict has been overwritten with seeded values in key
order (the forward pass and the checkpoint keys and shapes, which are recorded too).
tests/test_method_logits.py rebuilds each variant through `measure` (the same function, hence the same settings:
one thread, the 3-layer backbone, COMMON_OVERRIDES) and compares with torch.equal.

The variants: VARIANTS / RESNET_VARIANTS below (the methods recorded before methods declared their own), then the
`record_variants = {name: overrides}` of every declared method (a new method declares its variants in its module
and runs the command; nothing here changes). `python -m tests.records` only appends: entries already in the file
stay as they are. Rebuild the file (`--rewrite`) only when a change of numerics is intended (and say so in the
commit).

Bits are only reproducible on the kind of processor that recorded them: MKL and ATen pick their kernels by the
CPU's instruction sets, and another choice moves the last bits (about 2e-6 between two of our machines). A record
therefore names the machine each entry was made on (tests/records.py `machine()`); on another machine the test
compares within float tolerance and says so.
"""
import os
import sys

import torch
from clip.model import CLIP

RECORD_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "method_logits.pt")

# Shared options that every variant is built with. A lever that changes numerics within float tolerance (not
# bit for bit; the shared text prefix) is switched off here, so the comparison keeps testing the prompt mechanics.
COMMON_OVERRIDES = {"TEXT_SHARED_PREFIX": False}

# class names of different BPE lengths (CoOp's middle / front groups classes by name length)
CLASSNAMES = ["cat", "golden_retriever", "sunflower", "aircraft carrier ship", "tabby cat"]

# (variant, trainer name, config overrides); depths fit the 3-layer test backbone
VARIANTS = [
    ("ZeroshotCLIP", "ZeroshotCLIP", dict(TEMPLATE="a photo of a {}.")),
    ("ZeroshotCLIP_pets", "ZeroshotCLIP", dict(TEMPLATE="a photo of a {}, a type of pet.")),
    ("CoOp", "CoOp", dict()),
    ("CoOp_ctxv1", "CoOp", dict(N_CTX=4, CTX_INIT="a photo of a")),
    ("CoOp_csc", "CoOp", dict(N_CTX=4, CSC=True)),
    ("CoOp_middle", "CoOp", dict(N_CTX=4, CLASS_TOKEN_POSITION="middle")),
    ("CoOp_front", "CoOp", dict(N_CTX=4, CLASS_TOKEN_POSITION="front")),
    ("CoOp_csc_middle", "CoOp", dict(N_CTX=5, CSC=True, CLASS_TOKEN_POSITION="middle")),
    ("CoOp_ctxv1_front", "CoOp", dict(CTX_INIT="a photo of a", CLASS_TOKEN_POSITION="front")),
    ("CoCoOp", "CoCoOp", dict(N_CTX=4)),
    ("CoCoOp_ctxv1", "CoCoOp", dict(N_CTX=4, CTX_INIT="a photo of a")),
    ("VPT", "VPT", dict(N_CTX_VISION=4, PROMPT_DEPTH_VISION=3)),
    ("VPT_shallow", "VPT", dict(N_CTX_VISION=2, PROMPT_DEPTH_VISION=1)),
    ("IVLP", "IVLP", dict(PROMPT_DEPTH_TEXT=3, PROMPT_DEPTH_VISION=2)),
    ("IVLP_random", "IVLP", dict(CTX_INIT="", N_CTX_TEXT=3, PROMPT_DEPTH_TEXT=1, PROMPT_DEPTH_VISION=3)),
    ("MaPLe", "MaPLe", dict(PROMPT_DEPTH=3)),
    ("MaPLe_random", "MaPLe", dict(CTX_INIT="", N_CTX=3, PROMPT_DEPTH=2)),
    ("MuDPT_joint", "MuDPT", dict(N_CTX_TEXT=4, N_CTX_VISION=4, PROMPT_DEPTH=3, INJECTION="joint",
                                  INJECTION_WIDTH=32, INJECTION_HEADS=2)),
    ("MuDPT_joint_both", "MuDPT", dict(N_CTX_TEXT=2, N_CTX_VISION=2, PROMPT_DEPTH=3, INJECTION="joint",
                                       FUSE_SHALLOW="both", INJECTION_WIDTH=32, INJECTION_HEADS=2)),
    ("MuDPT_separate", "MuDPT", dict(N_CTX_TEXT=2, N_CTX_VISION=2, PROMPT_DEPTH=3, INJECTION="separate",
                                     FUSE_SHALLOW="t2v")),
    ("MuDPT_linear", "MuDPT", dict(N_CTX_TEXT=2, N_CTX_VISION=2, PROMPT_DEPTH=3, INJECTION="linear",
                                   FUSE_SHALLOW="t2v")),
    ("MuDPT_linear_none", "MuDPT", dict(N_CTX_TEXT=2, N_CTX_VISION=2, PROMPT_DEPTH=2, INJECTION="linear")),
    ("MuDPT_none", "MuDPT", dict(N_CTX_TEXT=3, N_CTX_VISION=2, PROMPT_DEPTH=3, INJECTION="none", CTX_INIT="")),
    ("MPL", "MPL", dict(PROMPT_DEPTH=3)),
    ("MPL_lists", "MPL", dict(N_CTX=2, PROMPT_DEPTH=3, N_ADD_OP=[1, 2], N_RM_OP=[2, 1])),
    ("MPL_text_schedule", "MPL", dict(N_CTX=2, PROMPT_DEPTH=3, TEXT_N_ADD_OP=2, TEXT_N_RM_OP=[1, 2])),
    ("MPL_random", "MPL", dict(CTX_INIT="", N_CTX=2, PROMPT_DEPTH=2)),
    ("KgCoOp", "KgCoOp", dict(TEMPLATE="a photo of a {}, a type of pet.")),  # CoOp_ctxv1's prompt: same logits
    ("PromptSRC", "PromptSRC", dict(PROMPT_DEPTH_TEXT=3, PROMPT_DEPTH_VISION=2)),  # added after issue 11
]
# variants also run on the ResNet backbone (no visual prompts)
RESNET_VARIANTS = [("CoOp_rn", "CoOp", dict(N_CTX=4)), ("ZeroshotCLIP_rn", "ZeroshotCLIP", dict(TEMPLATE="{} texture."))]


_BACKBONES = {}  # resnet -> (model, RNG state right after building it)


def backbone(resnet=False):
    """A random 3-layer CLIP with distinct widths (text 64, vision 96, joint 48), seeded; built here so that
    the record does not depend on a test helper. Built once per process (models share its frozen weights);
    the global RNG is left as a fresh build leaves it, so the methods' initialisation draws the same numbers."""
    if resnet not in _BACKBONES:
        torch.manual_seed(0)
        vision = dict(vision_layers=(1, 1, 1, 1), vision_width=8) if resnet else dict(vision_layers=3, vision_width=96)
        model = CLIP(embed_dim=48, image_resolution=32, vision_patch_size=8, context_length=77, vocab_size=49408,
                     transformer_width=64, transformer_heads=2, transformer_layers=3, **vision)
        with torch.no_grad():  # no LayerNorm weight at 1 or bias at 0: no term may vanish by chance
            for param in model.parameters():
                if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
                    param.add_(torch.randn_like(param) * 0.02)
        _BACKBONES[resnet] = (model.float().eval().requires_grad_(False), torch.get_rng_state())
    model, rng_state = _BACKBONES[resnet]
    torch.set_rng_state(rng_state)
    return model


def images():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=generator)


def build(trainer, clip_model, overrides):
    import mmpt
    return mmpt.create_model(trainer, clip_model, CLASSNAMES, **overrides)


def declared_variants():
    """[(variant, trainer, overrides)] of the declared methods' `record_variants` (ViT backbone)."""
    import mmpt

    return [(variant, trainer, dict(overrides)) for trainer, method in mmpt.declared_methods().items()
            for variant, overrides in method.record_variants.items()]


def all_variants():
    """[((variant, trainer, overrides), resnet)]: the listed variants, then the declared ones (names unique)."""
    listed = [(v, False) for v in VARIANTS] + [(v, True) for v in RESNET_VARIANTS]
    names = [v[0] for v, _ in listed]
    declared = [(v, False) for v in declared_variants()]
    clashes = sorted({v[0] for v, _ in declared} & set(names))
    if clashes:
        raise ValueError(f"record_variants {clashes} clash with tests/record_logits.py's VARIANTS: rename them")
    return listed + declared


def variants():
    """[(variant, trainer, overrides, resnet)]: what tests/records.py appends (every record module's shape)."""
    return [(name, trainer, overrides, resnet) for (name, trainer, overrides), resnet in all_variants()]


@torch.no_grad()
def logits_of(model):
    return model(images())


def seeded_state(model):
    """The prompt learner's state dict with every entry replaced by N(0, 0.1) values drawn in key order."""
    generator = torch.Generator().manual_seed(3)
    return {key: torch.randn(value.shape, generator=generator) * 0.1
            for key, value in sorted(model.prompt_learner.state_dict().items())}


def measure(trainer, overrides, resnet):
    """{"init": logits after a seeded build, "set": logits with the seeded state, "shapes": {key: shape}}.
    Computed on one CPU thread: kernels split their reductions by thread count, so only a fixed count gives the
    same bits on every machine and under every OMP_NUM_THREADS."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(2)
        model = build(trainer, backbone(resnet), {**overrides, **COMMON_OVERRIDES})
        init = logits_of(model)
        state = seeded_state(model)
        model.prompt_learner.load_state_dict(state)
        return {"init": init, "set": logits_of(model), "shapes": {k: tuple(v.shape) for k, v in state.items()}}
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    from tests import records

    sys.exit(records.main(["logits", *sys.argv[1:]]))
