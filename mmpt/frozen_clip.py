"""Frozen-CLIP references: what a method's extra loss terms compare the prompted model with.

`FrozenCLIP(templates, classnames)` is held by a method model (a plain attribute: never in a state dict or a
checkpoint) and reads the model's own frozen towers, with no prompts:

- `class_features(model)` [C, E]: every template filled with every class name, the prompt-free text tower on
  each sentence, averaged per class over the templates unnormalised, then L2-normalised (KgCoOp's one template
  and PromptSRC's ensemble are both this rule). fp32 whatever the precision policy, no graph; computed on first
  use (a training step; an evaluation never needs it) and kept, once per class list and backbone (one model).
- `image_features(model, images)` [B, E]: the prompt-free image tower, L2-normalised, fp32, no graph.
"""
import clip
import torch
import torch.nn.functional as F

from dassl.utils import ConfigError
from mmpt.sentences import readable

# several templates run in one text-tower pass, up to this many sentences (memory bound)
SEQUENCES_PER_PASS = 2048


class FrozenCLIP:
    def __init__(self, templates, classnames, key="templates"):
        """`templates`: sentences with one "{}" for the class name; `key` names them in a ConfigError (a field
        name, e.g. "TEMPLATE": the library adds the config path)."""
        self.templates = [templates] if isinstance(templates, str) else list(templates)
        for template in self.templates:
            if not (isinstance(template, str) and template.count("{}") == 1):
                raise ConfigError(f"{key}={template!r}: expected a sentence with one '{{}}' for the class name")
        self.classnames = [readable(name) for name in classnames]
        self.cached_class_features = None  # [C, E] once computed (on the device it was computed on)

    @torch.no_grad()
    def class_features(self, model):
        device = model.token_ids.device
        if self.cached_class_features is None or self.cached_class_features.device != device:
            n_classes = len(self.classnames)
            per_pass = max(1, SEQUENCES_PER_PASS // n_classes)  # templates per text-tower pass
            features = []
            with torch.autocast(device.type, enabled=False):  # fp32 whatever PREC is
                for begin in range(0, len(self.templates), per_pass):
                    sentences = [t.replace("{}", c) for t in self.templates[begin:begin + per_pass]
                                 for c in self.classnames]
                    ids = clip.tokenize(sentences, truncate=True).to(device)
                    features.append(model.text_encoder(ids).float().unflatten(0, (-1, n_classes)))  # [T, C, E]
            self.cached_class_features = F.normalize(torch.cat(features).mean(0), dim=-1)
        return self.cached_class_features

    @torch.no_grad()
    def image_features(self, model, images):
        """Under the caller's autocast (the training step's forward pass), returned in fp32."""
        return F.normalize(model.image_encoder(images).float(), dim=-1)
