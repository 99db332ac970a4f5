"""TCP: Textual-based Class-aware Prompt tuning (Yao, Zhang, Xu; CVPR 2024).

KgCoOp with one more text prompt, made per class. Each class's frozen CLIP feature t0_c of a hand-written
prompt ("a photo of a {}, a type of pet.") goes through a small trainable MLP, the Textual Knowledge Embedding
(TKE: Linear E -> E/4, QuickGELU, Linear E/4 -> n * d_t). Its output, reshaped to n tokens, replaces the n
context positions of that class's sentence before one middle text block (block 8 of 12):

    text[0] = ctx [n, d_t] (shared, shallow)       text[INJECT_LAYER] = TKE(t0) [C, n, d_t] (deep replacement)
    L = CE(logits, y) + W * (1 - mean_c cos(t_c, t0_c)),   W = 8 (KgCoOp's term, with the same t0)

No vision prompts. For new classes the class prompts come from the new classes' t0 through the trained TKE.
t0 comes from the frozen CLIP the model holds, in fp32, once per class set, not saved (KgCoOp's reference).
The release hard-codes n = 4, the injection block 8, the hidden size E / 4 and W = 8: each is a key here with
that default. Its two template tables are TCP's own (they differ from CoOp's and KgCoOp's). docs/TCP.md.
"""
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass

from clip.model import QuickGELU
from torch import nn

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError
from mmpt.config import PromptOptions
from mmpt.frozen_clip import FrozenCLIP
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, embed_dim, text_layer_count
from mmpt.sentences import ClassSentences, check_positive, init_text_context, placeholder_words, readable, word_count
from mmpt.templates import CUSTOM_TEMPLATES, DEFAULT_TEMPLATE

from trainers.kgcoop import KgCoOp, KgCoOpCLIP

# the frozen hand-written prompt per dataset: the TKE's input and the knowledge-guided target (the release's
# CUSTOM_TEMPLATES_ori; FGVCAircraft, Food101 and DTD differ from CoOp's table)
TCP_TEMPLATES = {**CUSTOM_TEMPLATES,
                 "FGVCAircraft": "a photo of an aircraft {}.",
                 "Food101": "a photo of a {}, a type of food.",
                 "DescribableTextures": "a photo of a {}, a type of texture."}
# the prompted sentence per dataset: what follows the n learned context tokens (the release's CUSTOM_TEMPLATES
# with their "X X X X" left out). Its UCF101 / ImageNet sentences start with "a photo of a", which the context
# replaces: token for token they are "X X X X person doing {}." and "X X X X {}.". StanfordCars has no period.
TCP_SENTENCES = {
    "OxfordPets": "{}, a type of pet.",
    "OxfordFlowers": "{}, a type of flower.",
    "FGVCAircraft": "{}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "{}.",
    "StanfordCars": "{}, a type of car",
    "Food101": "{}, a type of food.",
    "SUN397": "{}.",
    "Caltech101": "{}.",
    "UCF101": "person doing {}.",
    "ImageNet": "{}.",
    "ImageNetSketch": "{}.",
    "ImageNetV2": "{}.",
    "ImageNetA": "{}.",
    "ImageNetR": "{}.",
}
DEFAULT_SENTENCE = "{}."


def dataset_prompts(dataset_name):
    """(sentence after the context, hand-written template) of a dataset; the generic pair, with a printed note,
    for a dataset outside TCP's tables (the release raises KeyError)."""
    if dataset_name in TCP_SENTENCES:
        return TCP_SENTENCES[dataset_name], TCP_TEMPLATES[dataset_name]
    print(f"TCP: no prompts for dataset {dataset_name!r}: using the sentence {DEFAULT_SENTENCE!r} after the "
          f"context and the template {DEFAULT_TEMPLATE!r} (set TRAINER.TCP.SENTENCE / TEMPLATE to choose)")
    return DEFAULT_SENTENCE, DEFAULT_TEMPLATE


@dataclass
class TCPConfig(PromptOptions):
    N_CTX: int = 4  # context tokens = class-prompt tokens (the release hard-codes 4)
    CTX_INIT: str = ""  # "" = N(0, 0.02) (the release's runs); words: their embeddings, n = their token count
    W: float = 8.0  # weight of the knowledge-guided term (hard-coded 8.0 in the release)
    INJECT_LAYER: int = 8  # the class prompts replace the context before this text block (0-based; release: 8)
    HIDDEN_RATIO: int = 4  # TKE hidden size = embed dim / HIDDEN_RATIO (release: E / 4)
    SENTENCE: str = ""  # what follows the context, with one "{}"; "" = the dataset's (TCP_SENTENCES)
    TEMPLATE: str = ""  # hand-written prompt with one "{}"; "" = the dataset's (TCP_TEMPLATES)

    def validate(self):
        super().validate()
        if not self.CTX_INIT:
            check_positive("N_CTX", self.N_CTX)
        check_positive("HIDDEN_RATIO", self.HIDDEN_RATIO)
        if self.W < 0:
            raise ConfigError(f"W={self.W!r}: expected a number >= 0")
        for key in ("SENTENCE", "TEMPLATE"):
            value = getattr(self, key)
            if value and value.count("{}") != 1:
                raise ConfigError(f"{key}={value!r}: expected a sentence with one '{{}}' for the class name")


class TCPPromptLearner(nn.Module):
    """ctx [n, d_t] (the shared shallow context) and meta_net, the TKE: E -> E / HIDDEN_RATIO -> n * d_t.
    The release's names, so its checkpoints load (without their class buffers)."""

    def __init__(self, context, embed_dim, hidden_ratio):
        super().__init__()
        self.ctx = nn.Parameter(context)
        n_tokens, width = context.shape
        hidden = embed_dim // hidden_ratio
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(embed_dim, hidden)),
            ("relu", QuickGELU()),  # the release's name for it; x * sigmoid(1.702 x), not a ReLU
            ("linear2", nn.Linear(hidden, n_tokens * width)),
        ]))

    def class_prompts(self, hand_written_features):
        """[C, E] frozen class features -> [C, n, d_t] class-aware text prompts."""
        return self.meta_net(hand_written_features).reshape(hand_written_features.shape[0], *self.ctx.shape)

    def parameter_breakdown(self):
        return [("context", self.ctx.numel()), ("TKE", sum(p.numel() for p in self.meta_net.parameters()))]


class TCPCLIP(PromptedCLIP):
    """The shallow context in "[SOS] ctx <sentence>", the class prompts TKE(t0) replacing it before block
    INJECT_LAYER; plain CLIP image tower. t0 (and the knowledge-guided term on it) are KgCoOp's."""

    def __init__(self, clip_model, classnames, config):
        n_ctx = word_count(readable(config.CTX_INIT)) if config.CTX_INIT else config.N_CTX  # CoOp's CTX_INIT rule
        context = init_text_context(clip_model, n_ctx, config.CTX_INIT)
        # the trainer fills SENTENCE / TEMPLATE in from the dataset
        self.sentence = config.SENTENCE or DEFAULT_SENTENCE
        self.template = config.TEMPLATE or DEFAULT_TEMPLATE
        sentences = ClassSentences([f"{placeholder_words(n_ctx)} {self.sentence.format(readable(name))}"
                                    for name in classnames], n_ctx)
        super().__init__(clip_model, sentences)
        self.inject_layer = config.INJECT_LAYER
        check_inject_layer(config.INJECT_LAYER, text_layer_count(clip_model))
        self.hand_written = FrozenCLIP([self.template], classnames, "TEMPLATE")  # t0 [C, E], on first use
        self.prompt_learner = TCPPromptLearner(context, embed_dim(clip_model), config.HIDDEN_RATIO)

    # t0 and the knowledge-guided term: KgCoOp's, on this model's hand-written sentences
    hand_written_class_features = KgCoOpCLIP.hand_written_class_features
    knowledge_guided_loss = KgCoOpCLIP.knowledge_guided_loss

    def describe(self):
        return f"TCP sentence: {self.sentences.texts[0]!r}; hand-written template: {self.template!r}; class " \
               f"prompts before text block {self.inject_layer}"

    def compute_prompts(self):
        text = [None] * (self.inject_layer + 1)
        text[0] = self.prompt_learner.ctx
        text[self.inject_layer] = self.prompt_learner.class_prompts(self.hand_written_class_features())
        return Prompts(text=text)


def check_inject_layer(layer, n_layers):
    if not (isinstance(layer, int) and not isinstance(layer, bool) and 1 <= layer < n_layers):
        raise ConfigError(f"INJECT_LAYER={layer!r}: expected an int in 1..{n_layers - 1} (the text "
                          f"block the class prompts enter before; the backbone has {n_layers})")


def tcp_config(dataset, shots):
    """The release's train.py forces 25 epochs on ImageNet and SUN397 (50 elsewhere)."""
    return "vit_b16_c4_ep25_batch32" if dataset in ("imagenet", "sun397") else "vit_b16_c4_ep50_batch32"


@TRAINER_REGISTRY.register()
class TCP(PromptTrainer):
    cfg_node = "TCP"
    scripts_folder = "tcp"
    # the release ships base-to-new only; few-shot and cross-dataset use the same configs (a choice of ours)
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), tcp_config)
    config_class = TCPConfig
    model_class = TCPCLIP
    summary = "a shared text context plus class-aware prompts, made by an MLP from frozen hand-written class " \
              "features, at one middle text block; KgCoOp's loss"
    parameter_counts = {"vit_b16_c4_ep50_batch32": 331_904, "vit_b16_c4_ep25_batch32": 331_904}
    record_variants = {"TCP": dict(INJECT_LAYER=2, SENTENCE="{}, a type of pet.",
                                   TEMPLATE="a photo of a {}, a type of pet.")}
    # the training loss is KgCoOp's: CE + W * (1 - mean_c cos(t_c, t0_c)) on the step's class features
    loss_weights = KgCoOp.loss_weights
    loss_terms = KgCoOp.__dict__["loss_terms"]

    @classmethod
    def parameter_breakdown(cls, model):
        return model.prompt_learner.parameter_breakdown()

    def model_config(self, cfg):
        """TRAINER.TCP with SENTENCE / TEMPLATE filled in from DATASET.NAME where the config leaves them empty."""
        config = super().model_config(cfg)
        if config.SENTENCE and config.TEMPLATE:
            return config
        sentence, template = dataset_prompts(cfg.DATASET.NAME)
        return dataclasses.replace(config, SENTENCE=config.SENTENCE or sentence, TEMPLATE=config.TEMPLATE or template)
