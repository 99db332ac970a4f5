"""MuDPT: Multi-modal Deep-symphysis Prompt Tuning (Miao et al., ICME 2023).

Both towers own learnable prompts for the first J layers: text T_l [n, d_t] and visual V_l [n, d_v],
l = 0..J-1 (l = 0: shallow prompts; T_0 replaces the n placeholder words after SOS, V_0 is appended after the
patch tokens; deeper levels replace the prompt tokens before block l). An Injection Model shared by all depths
(trainers/mudpt_injection.py) maps the prompts to cross-modal prompts T'_l = F_tv(.) [n, d_v] and
V'_l = F_vt(.) [n, d_t], fused by element-wise addition:
    text layer l receives T_l + V'_l,   vision layer l receives V_l + T'_l       (for every fused depth l).
Deep levels l >= 1 are fused in both directions; the shallow level follows TRAINER.MUDPT.FUSE_SHALLOW
("none": paper's figure; "t2v": official code, V_0 + T'_0 with text T_0 alone; "both").
INJECTION "none" switches the coupling off (independent multi-modal prompts; an ablation).
The CLIP backbone is frozen; only `prompt_learner` (prompts + injection model) learns.
"""
from dataclasses import dataclass

from torch import nn

from dassl.engine import TRAINER_REGISTRY
from dassl.utils import ConfigError
from mmpt.config import PromptOptions
from mmpt.prompt_trainer import PromptTrainer
from mmpt.prompted_clip import PromptedCLIP, Prompts, check_depth, layer_counts, text_heads, text_width, vision_width
from mmpt.sentences import check_positive, init_text_context, placeholder_words, prefix_sentences, readable, word_count

from trainers.mudpt_injection import INJECTION_FORMS, InjectionModel

FUSE_SHALLOW_CHOICES = ("none", "t2v", "both")
SENTENCE_RULES = ("maple", "official")


def sentence_prefix(n_ctx, ctx_init, rule):
    """(prefix, init words) of the class sentence "<prefix> <class>."; T_0 replaces the prefix's first n_ctx
    tokens and starts from the embeddings of the first n_ctx tokens of `init words` ("": N(0, 0.02)).

    "maple": the whole CTX_INIT is the prefix ("a photo of a dog." at n = 2: "a photo" learnable, "of a" kept);
    "official": the official MuDPT / UUMuDPT trainers keep only the first n_ctx words ("a photo dog.").
    A CTX_INIT with fewer than n_ctx tokens (or words) gives "X ... X <class>." with a random T_0.
    """
    check_positive("N_CTX_TEXT", n_ctx)
    if rule not in SENTENCE_RULES:
        raise ConfigError(f"SENTENCE={rule!r}: expected one of {SENTENCE_RULES}")
    words = readable(ctx_init)
    if rule == "official":
        words = " ".join(words.split()[:n_ctx])
    if words.strip() and word_count(words) >= n_ctx:
        return words, words
    return placeholder_words(n_ctx), ""


class FusionPlan:
    """Which depths are fused in which direction, from cfg.TRAINER.MUDPT; validated with one-line errors."""

    def __init__(self, depth, injection, fuse_shallow, n_text, n_vision):
        check_positive("PROMPT_DEPTH", depth)
        check_positive("N_CTX_TEXT", n_text)
        if not (isinstance(n_vision, int) and n_vision >= 0):
            raise ConfigError(f"N_CTX_VISION={n_vision!r}: expected an int >= 0 (0 = no visual prompts)")
        if injection not in INJECTION_FORMS + ("none",):
            raise ConfigError(f"INJECTION={injection!r}: expected one of {INJECTION_FORMS + ('none',)}")
        if fuse_shallow not in FUSE_SHALLOW_CHOICES:
            raise ConfigError(f"FUSE_SHALLOW={fuse_shallow!r}: expected one of {FUSE_SHALLOW_CHOICES}")
        if injection == "none" and fuse_shallow != "none":
            raise ConfigError(f"FUSE_SHALLOW={fuse_shallow!r} needs an injection model, "
                             f"but INJECTION='none'")
        deep = injection != "none"
        # text_fused[l] / vision_fused[l]: layer l of that tower receives the cross-modal prompt of depth l
        self.text_fused = [fuse_shallow == "both"] + [deep] * (depth - 1)
        self.vision_fused = [fuse_shallow in ("t2v", "both")] + [deep] * (depth - 1)
        self.active = any(self.text_fused) or any(self.vision_fused)
        if self.active and n_text != n_vision:
            raise ConfigError(f"N_CTX_TEXT={n_text} != N_CTX_VISION={n_vision}: fusion by element-wise "
                             f"addition needs equal prompt lengths (or INJECTION 'none' / no fused level)")
        self.depth, self.injection = depth, injection
        # the linear form gives the shallow t->v its own Linear (official code); other forms share their module
        self.own_shallow_t2v = injection == "linear" and self.vision_fused[0]

    @classmethod
    def from_cfg(cls, config):
        return cls(config.PROMPT_DEPTH, config.INJECTION, config.FUSE_SHALLOW, config.N_CTX_TEXT, config.N_CTX_VISION)

    def describe(self):
        def depths(flags):
            return ",".join(str(l) for l, on in enumerate(flags) if on) or "none"
        return (f"injection {self.injection}; text layers fused: {depths(self.text_fused)}; "
                f"vision layers fused: {depths(self.vision_fused)}")


@dataclass
class MuDPTConfig(PromptOptions):
    """Defaults = the paper's settings (configs/trainers/MuDPT/*_joint.yaml)."""

    N_CTX_TEXT: int = 4  # n text prompt tokens per layer
    N_CTX_VISION: int = 4  # n visual prompt tokens per layer (must equal N_CTX_TEXT when any level is fused)
    PROMPT_DEPTH: int = 12  # J: layers 0..J-1 receive prompts in both towers
    CTX_INIT: str = "a photo of a"  # T_0 starts from the embeddings of its first n tokens
    SENTENCE: str = "maple"  # "maple" | "official": how the class sentence uses CTX_INIT (see sentence_prefix)
    INJECTION: str = "joint"  # "joint" | "separate" | "linear" | "none" (no coupling)
    FUSE_SHALLOW: str = "none"  # "none" | "t2v" | "both": fusion at the shallow level l = 0
    INJECTION_WIDTH: int = 0  # width of the joint block; 0 = the backbone's text width (512 at ViT-B/16)
    INJECTION_HEADS: int = 0  # heads of the joint block; 0 = the backbone's text heads (8 at ViT-B/16)

    def validate(self):
        super().validate()
        FusionPlan.from_cfg(self)


class MuDPTPromptLearner(nn.Module):
    """Every trainable tensor of MuDPT.

    text_ctx [J, n, d_t]: T_0..T_{J-1} (T_0 from CTX_INIT when given); visual_ctx [J, n_v, d_v]: V_0..V_{J-1}
    (None when n_v = 0); injection: the InjectionModel (None when no level is fused).
    """

    def __init__(self, shallow_text_ctx, plan, n_vision, d_text, d_vision, injection_width, injection_heads):
        super().__init__()
        n_text = shallow_text_ctx.shape[0]
        text_ctx = nn.init.normal_(shallow_text_ctx.new_empty(plan.depth, n_text, d_text), std=0.02)
        text_ctx[0] = shallow_text_ctx
        self.text_ctx = nn.Parameter(text_ctx)
        self.visual_ctx = (nn.Parameter(nn.init.normal_(shallow_text_ctx.new_empty(plan.depth, n_vision, d_vision),
                                                        std=0.02)) if n_vision else None)
        self.injection = (InjectionModel(plan.injection, d_text, d_vision, injection_width, injection_heads,
                                         own_shallow_t2v=plan.own_shallow_t2v) if plan.active else None)
        self.plan = plan

    def fused_prompts(self):
        """(text prompts per layer, visual prompts per layer) after the injection and element-wise fusion."""
        text = list(self.text_ctx.unbind(0))
        if self.visual_ctx is None:
            return text, []
        vision = list(self.visual_ctx.unbind(0))
        if self.injection is None:
            return text, vision
        text_to_vision, vision_to_text = self.injection(self.text_ctx, self.visual_ctx)
        text = [t + v2t if on else t for t, v2t, on in zip(text, vision_to_text, self.plan.text_fused)]
        vision = [v + t2v if on else v for v, t2v, on in zip(vision, text_to_vision, self.plan.vision_fused)]
        return text, vision

    def parameter_breakdown(self):
        """(name, count) per group of trainable tensors."""
        def count(module_or_param):
            if module_or_param is None:
                return 0
            if isinstance(module_or_param, nn.Parameter):
                return module_or_param.numel()
            return sum(p.numel() for p in module_or_param.parameters())
        return [("text prompts", count(self.text_ctx)), ("visual prompts", count(self.visual_ctx)),
                (f"injection ({self.plan.injection})", count(self.injection))]


class MuDPTCLIP(PromptedCLIP):
    """CLIP with MuDPT's prompts in both towers, coupled by the injection model."""

    def __init__(self, clip_model, classnames, config):
        plan = FusionPlan.from_cfg(config)
        d_text, d_vision = text_width(clip_model), vision_width(clip_model)  # vision_width: ViT only
        check_depth("PROMPT_DEPTH", plan.depth, min(layer_counts(clip_model)))
        prefix, init_words = sentence_prefix(config.N_CTX_TEXT, config.CTX_INIT, config.SENTENCE)
        shallow = init_text_context(clip_model, config.N_CTX_TEXT, init_words)
        super().__init__(clip_model, prefix_sentences(classnames, prefix, config.N_CTX_TEXT))
        self.prompt_learner = MuDPTPromptLearner(shallow, plan, config.N_CTX_VISION, d_text, d_vision,
                                                 config.INJECTION_WIDTH or d_text,
                                                 config.INJECTION_HEADS or text_heads(clip_model))

    def compute_prompts(self):  # one injection pass gives both towers' prompts
        text, vision = self.prompt_learner.fused_prompts()
        return Prompts(text=text, vision=vision)

    def describe(self):
        plan = self.prompt_learner.plan
        return f"MuDPT: depth {plan.depth}, {plan.describe()}"


@TRAINER_REGISTRY.register()
class MuDPT(PromptTrainer):
    cfg_node = "MUDPT"
    scripts_folder = "mudpt"
    # the paper trains every protocol with its one setting
    default_configs = dict.fromkeys(("b2n", "fewshot", "xd"), "vit_b16_c4_ep10_batch4_joint")
    config_class = MuDPTConfig
    summary = "deep text + visual prompts, fused by a shared Injection Model"
    parameter_counts = {
        "vit_b16_c4_ep10_batch4_joint": 4_526_848,
        "vit_b16_c2_ep5_batch4_linear": 1_204_736,
        "vit_b16_c2_ep5_batch4_separate": 11_056_128,
    }
    model_class = MuDPTCLIP

    @classmethod
    def parameter_breakdown(cls, model):
        return model.prompt_learner.parameter_breakdown()
