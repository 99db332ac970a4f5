"""Class prompt sentences: the one place they are written, tokenised and counted.

A method's text tower reads one sentence per class. Its learned shallow text prompt replaces the first
`placeholders` word tokens after SOS; the sentence owner says how many there are, and the text encoder checks
that the shallow prompt has exactly that many tokens. Forms:

- `prefix_sentences(classnames, prefix, placeholders)`: "<prefix> <class name>." -- the prefix is
  "X X .. X" (`placeholder_words(n)`) or CTX_INIT words whose first n tokens are learned (MaPLe's rule);
- `template_sentences(template, classnames)`: a hand-written template, no placeholders (zero-shot CLIP, VPT);
- `ClassNameInContext(...)`: CoOp's class name in the middle of / in front of the learned context. The whole
  span [context + name] is the per-class shallow prompt of a sentence "X .. X." as long as the span; classes
  are grouped by the length of their name, one text pass per group.

`ClassSentences.passes(text_prompts)` turns a model's per-layer text prompts into the text tower passes that
give the class features (one pass for the plain forms).
"""
from dataclasses import dataclass
from typing import List, Optional

import clip
import torch
from torch import nn

from dassl.utils import ConfigError

PLACEHOLDER = "X"


def word_count(text):
    """Number of BPE tokens of `text` without SOS / EOT."""
    return int((clip.tokenize(text)[0] != 0).sum()) - 2


def readable(name):
    """Class names and CTX_INIT use "_" for spaces (CoOp)."""
    return name.replace("_", " ")


def placeholder_words(n):
    """"X X .. X": n placeholder words, one BPE token each."""
    return " ".join([PLACEHOLDER] * n)


@dataclass
class TextPass:
    """One run of the text tower: classes `rows` (None = all, in order), their token ids and prompts.
    `shared_prompt_tokens`: the first j tokens of a per-class shallow prompt [C_g, n, d] are one tensor shared
    by every class of the pass (the text encoder may then run them once, in the shared prefix)."""

    rows: Optional[List[int]]
    token_ids: torch.Tensor
    prompts: Optional[list]
    placeholders: int
    shared_prompt_tokens: int = 0


def refuse_truncation_collisions(texts, token_ids):
    """Two different class sentences that CLIP reads as the same tokens (cut at 77 tokens, or differing only
    in case / spacing) would be two classes with one text feature: refuse them in one line (ConfigError).
    Identical sentences are a duplicate class name, which the dataset checks (DatasetBase)."""
    first = {}
    for index, (text, row) in enumerate(zip(texts, token_ids.tolist())):
        other = first.setdefault(tuple(row), index)
        if other != index and texts[other] != text:
            raise ConfigError(f"classes {other} and {index} have the same prompt after CLIP's 77-token truncation "
                              f"(or case folding): {texts[other][:60]!r}... and {text[:60]!r}...; shorten or rename "
                              "them so that they differ within the first 77 tokens")


class ClassSentences(nn.Module):
    """One sentence per class, tokenised ([C, 77] non-persistent buffer `token_ids`, so a checkpoint trained on
    one class set loads for another), and the number of placeholder tokens after SOS."""

    def __init__(self, texts, placeholders):
        super().__init__()
        self.texts = list(texts)
        self.placeholders = placeholders
        self.register_buffer("token_ids", clip.tokenize(self.texts, truncate=True), persistent=False)
        refuse_truncation_collisions(self.texts, self.token_ids)

    def passes(self, text_prompts):
        return [TextPass(None, self.token_ids, text_prompts, self.placeholders)]


def prefix_sentences(classnames, prefix, placeholders):
    """"<prefix> <class name>." per class; the first `placeholders` tokens of the prefix are replaced."""
    return ClassSentences([f"{prefix} {readable(name)}.".strip() for name in classnames], placeholders)


def placeholder_sentences(classnames, n):
    """"X X .. X <class name>." with n placeholders."""
    return prefix_sentences(classnames, placeholder_words(n), n)


def template_sentences(template, classnames, key="template"):
    """A template with one "{}" per class name (e.g. "a photo of a {}."); nothing is replaced."""
    if template.count("{}") != 1:
        raise ConfigError(f"{key}={template!r}: expected exactly one '{{}}' for the class name")
    return ClassSentences([template.format(readable(name)) for name in classnames], 0)


CLASS_POSITIONS = ("end", "middle", "front")


class ClassNameInContext(ClassSentences):
    """CoOp's "middle" / "front" class token position (see the module docstring). `texts` / `token_ids` are
    the "end" sentences (for display); the passes use the per-group span sentences."""

    def __init__(self, clip_model, classnames, n_ctx, position):
        super().__init__([f"{placeholder_words(n_ctx)} {readable(name)}." for name in classnames], n_ctx)
        if position not in ("middle", "front"):
            raise ConfigError(f"class position {position!r}: expected 'middle' or 'front'")
        self.n_ctx, self.position = n_ctx, position
        name_ids = [clip.tokenize(readable(name))[0] for name in classnames]
        name_lengths = [word_count(readable(name)) for name in classnames]
        # (class indices, name length L); buffers names_L [C_g, L, d_t] (the names' frozen word embeddings) and
        # ids_L (the sentence "X .. X." with n + L placeholders)
        self.groups = []
        for length in sorted(set(name_lengths)):
            indices = [i for i, n in enumerate(name_lengths) if n == length]
            with torch.no_grad():
                embeddings = clip_model.token_embedding(torch.stack([name_ids[i][1:1 + length] for i in indices]))
            self.register_buffer(f"names_{length}", embeddings.float(), persistent=False)
            self.register_buffer(f"ids_{length}", clip.tokenize(placeholder_words(n_ctx + length) + ".")[0],
                                 persistent=False)
            self.groups.append((indices, length))

    def passes(self, text_prompts):
        ctx, deeper = text_prompts[0], text_prompts[1:]
        passes = []
        for indices, length in self.groups:
            names = getattr(self, f"names_{length}")
            group_ctx = ctx[indices] if ctx.dim() == 3 else ctx.expand(len(indices), -1, -1)
            if self.position == "front":
                span = torch.cat([names, group_ctx], 1)
            else:  # middle: first half of the context, the name, second half
                half = self.n_ctx // 2
                span = torch.cat([group_ctx[:, :half], names, group_ctx[:, half:]], 1)
            # a unified context's first half precedes every name in the middle: one tensor for all classes
            shared = self.n_ctx // 2 if self.position == "middle" and ctx.dim() == 2 else 0
            rows = [p[indices] if p is not None and p.dim() == 3 else p for p in deeper]
            ids = getattr(self, f"ids_{length}").expand(len(indices), -1)
            passes.append(TextPass(indices, ids, [span, *rows], self.n_ctx + length, shared))
        return passes


# ------------------------------------------------------------------------------------------------------------
# learned text context and its sentences

def init_text_context(clip_model, n_ctx, ctx_init=""):
    """[n_ctx, d_t] fp32 initial shallow text context: the token embeddings of the first n_ctx tokens of
    `ctx_init` (e.g. "a photo of a"), or N(0, 0.02) when `ctx_init` is empty."""
    width = clip_model.token_embedding.weight.shape[1]
    if not ctx_init:
        return nn.init.normal_(torch.empty(n_ctx, width), std=0.02)
    ctx_init = readable(ctx_init)
    n_words = word_count(ctx_init)
    if n_words < n_ctx:
        raise ConfigError(f"CTX_INIT={ctx_init!r} has {n_words} tokens; {n_ctx} context tokens need at least that many")
    ids = clip.tokenize(ctx_init)[0]
    with torch.no_grad():
        embedding = clip_model.token_embedding(ids[1: 1 + n_ctx].to(clip_model.token_embedding.weight.device))
    return embedding.detach().float().cpu().clone()


def check_positive(key, value):
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ConfigError(f"{key}={value!r}: expected an int >= 1")


def coop_context(clip_model, classnames, n_ctx, ctx_init, n_ctx_key):
    """CoOp / CoCoOp: with CTX_INIT the context IS those words (n = their token count, N_CTX is ignored);
    without it, n = N_CTX random tokens behind "X X .. X". Returns (context [n, d_t], sentences)."""
    if ctx_init:
        n_init = word_count(readable(ctx_init))
        return (init_text_context(clip_model, n_init, ctx_init),
                prefix_sentences(classnames, readable(ctx_init), n_init))
    check_positive(n_ctx_key, n_ctx)
    return init_text_context(clip_model, n_ctx), placeholder_sentences(classnames, n_ctx)


def maple_context(clip_model, classnames, n_ctx, ctx_init, n_ctx_key):
    """MaPLe / IVLP / MuDPT (MaPLe's release): with CTX_INIT of at least n tokens, the sentence starts with the
    CTX_INIT words and the first n of them become learnable (initialised from their embeddings; "a photo of a"
    with n = 2 learns "a photo", keeps "of a"); otherwise n random tokens behind "X X .. X".
    Returns (context [n, d_t], sentences)."""
    check_positive(n_ctx_key, n_ctx)
    if ctx_init and word_count(readable(ctx_init)) >= n_ctx:
        return init_text_context(clip_model, n_ctx, ctx_init), prefix_sentences(classnames, readable(ctx_init), n_ctx)
    return init_text_context(clip_model, n_ctx), placeholder_sentences(classnames, n_ctx)
