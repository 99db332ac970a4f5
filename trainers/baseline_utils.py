"""Small helpers shared by the baseline trainers (CoOp, CoCoOp, VPT, IVLP, MaPLe): prompt sentences, the
initial text context, randomly initialised deep prompts and config checks. Not a trainer module."""
import clip

from mmpt.prompted_clip import context_prefix, init_text_context, normal_prompts


def prompt_texts(classnames, prefix):
    """"<prefix> <class name>." per class; underscores become spaces (CoOp). The prefix's first n tokens are
    the placeholders the shallow text context replaces."""
    return [f"{prefix} {name.replace('_', ' ')}.".strip() for name in classnames]


def word_token_count(text):
    """Number of BPE tokens of `text` (without SOS / EOT)."""
    return int((clip.tokenize(text)[0] != 0).sum()) - 2


def coop_context(clip_model, n_ctx, ctx_init, n_ctx_key):
    """CoOp / CoCoOp: with CTX_INIT the context IS those words (n = their token count, N_CTX is ignored);
    without it, n = N_CTX random tokens behind "X X ... X". Returns (context [n, d_t], sentence prefix)."""
    if ctx_init:
        n_init = word_token_count(ctx_init.replace("_", " "))
        return init_text_context(clip_model, n_init, ctx_init), context_prefix(n_init, ctx_init)
    check_positive(n_ctx_key, n_ctx)
    return init_text_context(clip_model, n_ctx), context_prefix(n_ctx)


def maple_context(clip_model, n_ctx, ctx_init, n_ctx_key):
    """MaPLe / IVLP (their release): with CTX_INIT of at least n tokens, the sentence starts with the CTX_INIT
    words and the first n of them become learnable (initialised from their embeddings; "a photo of a" with
    n = 2 learns "a photo", keeps "of a"); otherwise n random tokens behind "X X ... X"."""
    check_positive(n_ctx_key, n_ctx)
    if not (ctx_init and word_token_count(ctx_init.replace("_", " ")) >= n_ctx):
        ctx_init = ""
    return init_text_context(clip_model, n_ctx, ctx_init), context_prefix(n_ctx, ctx_init)


def random_prompts(count, n_tokens, width):
    """[count, n_tokens, width] deep prompts, N(0, 0.02) (a Parameter, or None when count is 0)."""
    return normal_prompts(count, n_tokens, width) if count and n_tokens else None


def check_positive(key, value):
    if not (isinstance(value, int) and value >= 1):
        raise ValueError(f"{key}={value!r}: expected an int >= 1")


def check_depth(key, depth, n_layers):
    """A prompt depth must lie in 1..number of layers of that tower."""
    if not (isinstance(depth, int) and 1 <= depth <= n_layers):
        raise ValueError(f"{key}={depth!r}: expected an int in 1..{n_layers} (the backbone's number of layers)")


def text_width(clip_model):
    return clip_model.ln_final.weight.shape[0]


def vision_width(clip_model):
    """Width of the ViT's tokens (prompts are unsupported on ResNet backbones)."""
    conv1 = getattr(clip_model.visual, "conv1", None)
    if conv1 is None or not hasattr(clip_model.visual, "class_embedding"):
        raise ValueError("MODEL.BACKBONE.NAME: visual prompts need a ViT backbone (this one is a ResNet)")
    return conv1.out_channels


def layer_counts(clip_model):
    """(text layers, vision layers)."""
    return len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks)
