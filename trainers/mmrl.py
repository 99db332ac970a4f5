"""MMRL: Multi-Modal Representation Learning (Guo, Gu; CVPR 2025), as its official code computes it.

No text context: the class sentence is the dataset's hand-written template. One shared representation space R
[K, d_r] is mapped by one Linear per representation layer and tower ("aligners") into K tokens of the image and of
the text tower, inserted before block REP_LAYERS[0] and replacing the previous ones before each later block of
REP_LAYERS (none before). The image tower's K tokens after the last block are read out into a second image
feature: mean_k ln_post(token_k) @ proj_rep. Two logit sets share the text features, "itm" (class token) and
"readout" (representation tokens), both at the fixed scale 100:

    loss = ALPHA CE(itm) + (1 - ALPHA) CE(readout) + REG_WEIGHT (1 - cos(f_c, z_i)) + REG_WEIGHT (1 - cos(t, z_t))

with the frozen CLIP image features z_i of the batch and text features z_t of the template sentences. An
evaluation on the trained classes predicts with ALPHA itm + (1 - ALPHA) readout, on unseen classes / datasets
with itm only (docs/MMRL.md). Trainable at ViT-B/16, shipped config: 4,992,256.
"""
import copy

import torch
from torch import nn

from mmpt.prompted_clip import normal_prompts, text_width, vision_width

FUSIONS = ("logits", "probs")
EVAL_LOGITS = ("auto", "fusion", "class", "rep")
PROJ_REP_INITS = ("random", "clip")
ALIGNER_INITS = ("shared", "independent")


def aligners(d_in, d_out, count, init):
    """`count` Linear(d_in, d_out). "shared": one drawn and deep-copied (the official code: all start identical)."""
    if init == "shared":
        first = nn.Linear(d_in, d_out)
        return nn.ModuleList(copy.deepcopy(first) for _ in range(count))
    return nn.ModuleList(nn.Linear(d_in, d_out) for _ in range(count))


class MMRLRepresentationLearner(nn.Module):
    """Every trainable tensor of MMRL, under the official names (its `representation_learner.*` and
    `image_encoder.proj_rep`): R, the aligners of both towers, and the read-out projection."""

    def __init__(self, n_tokens, rep_dim, n_layers, d_text, d_vision, embed_dim, aligner_init="shared",
                 proj_rep_init="random", clip_proj=None):
        super().__init__()
        self.compound_rep_tokens = normal_prompts(n_tokens, rep_dim)
        self.compound_rep_tokens_r2vproj = aligners(rep_dim, d_vision, n_layers, aligner_init)
        self.compound_rep_tokens_r2tproj = aligners(rep_dim, d_text, n_layers, aligner_init)
        if proj_rep_init == "random":  # the official VisionTransformer's draw: width ** -0.5 * randn
            self.proj_rep = nn.Parameter(d_vision ** -0.5 * torch.randn(d_vision, embed_dim))
        else:  # its own copy of CLIP's `proj` (a prompt learner never shares a tensor with CLIP)
            self.proj_rep = nn.Parameter(clip_proj.detach().clone().float())

    def rep_tokens(self):
        """(text tokens, vision tokens): one [K, d] per representation layer."""
        R = self.compound_rep_tokens
        return ([align(R) for align in self.compound_rep_tokens_r2tproj],
                [align(R) for align in self.compound_rep_tokens_r2vproj])

    def parameter_breakdown(self):
        count = lambda module: sum(p.numel() for p in module.parameters())
        return [("R", self.compound_rep_tokens.numel()), ("vision aligners", count(self.compound_rep_tokens_r2vproj)),
                ("text aligners", count(self.compound_rep_tokens_r2tproj)), ("proj_rep", self.proj_rep.numel())]


def per_layer(tokens, layers, n_layers):
    """[None] * n_layers with tokens[k] at library layer layers[k] (= official 1-based block - 1)."""
    schedule = [None] * n_layers
    for layer, value in zip(layers, tokens):
        schedule[layer] = value
    return schedule


def official_state_dict(state_dict):
    """An official MMRL checkpoint's state dict (the whole CustomCLIP) -> our representation learner's keys."""
    ours = {}
    for key, value in state_dict.items():
        if key.startswith("representation_learner.") and not key.endswith("prompt_embeddings"):
            ours[key[len("representation_learner."):]] = value
        elif key == "image_encoder.proj_rep":
            ours["proj_rep"] = value
    return ours


# the official trainers/config.py table (its MMRL branch, applied whatever the task), by our dataset config names;
# it overrides the config file's REG_WEIGHT in base-to-new and few-shot alike
REG_WEIGHT_PER_DATASET = {"stanford_cars": 7.0, "fgvc_aircraft": 6.0, "sun397": 6.0, "dtd": 6.0, "food101": 5.0,
                          "oxford_flowers": 4.0, "ucf101": 3.0, "imagenet": 0.5, "caltech101": 0.5,
                          "oxford_pets": 0.2, "eurosat": 0.01}
REP_DIM_PER_DATASET = {"eurosat": 2048}


def per_dataset_opts():
    """{dataset: KEY VALUE options} of the official table (the experiment layout adds them ahead of the user's)."""
    opts = {}
    for dataset, weight in REG_WEIGHT_PER_DATASET.items():
        opts[dataset] = ("TRAINER.MMRL.REG_WEIGHT", str(weight))
        if dataset in REP_DIM_PER_DATASET:
            opts[dataset] += ("TRAINER.MMRL.REP_DIM", str(REP_DIM_PER_DATASET[dataset]))
    return opts


def b2n_or_fewshot_config(name):
    """ImageNet trains with its own config in base-to-new and few-shot alike (the official scripts)."""
    return lambda dataset, shots: "vit_b16_imagenet" if dataset == "imagenet" else name
