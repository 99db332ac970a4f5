"""mmpt.sentences, the one owner of the class prompt sentences: texts, placeholder counts, CoOp's class-name
positions as text passes, and the text encoder's placeholder check."""
import clip
import pytest
import torch

from dassl.utils import ConfigError
from mmpt.clip_backbone import build_random_clip
from mmpt.encoders import PromptedTextEncoder, TowerSchedule
from mmpt.sentences import (ClassNameInContext, coop_context, maple_context, placeholder_sentences, template_sentences,
                            word_count)

CLASSNAMES = ["dog", "golden_retriever", "sea lion of the north", "cat"]


@pytest.fixture(scope="module")
def tiny():
    return build_random_clip("random-tiny-ViT", seed=0)


def test_word_count_is_the_bpe_token_count():
    for text in ("a photo of a", "golden retriever", "X X X"):
        assert word_count(text) == len(clip.simple_tokenizer.SimpleTokenizer().encode(text))


def test_forms_and_their_placeholder_counts(tiny):
    sentences = placeholder_sentences(CLASSNAMES, 3)
    assert sentences.texts[1] == "X X X golden retriever." and sentences.placeholders == 3
    assert torch.equal(sentences.token_ids, clip.tokenize(sentences.texts))
    template = template_sentences("a photo of a {}, a type of pet.", CLASSNAMES)
    assert template.texts[0] == "a photo of a dog, a type of pet." and template.placeholders == 0
    with pytest.raises(ConfigError, match="TEMPLATE='a photo': expected exactly one"):
        template_sentences("a photo", CLASSNAMES, "TEMPLATE")
    # CoOp: CTX_INIT's words are the context (n = their token count); MaPLe: the first n of them are learned
    context, coop = coop_context(tiny, CLASSNAMES, 16, "a_photo of a", "N_CTX")
    assert context.shape == (4, 64) and coop.texts[0] == "a photo of a dog." and coop.placeholders == 4
    context, maple = maple_context(tiny, CLASSNAMES, 2, "a photo of a", "N_CTX")
    assert context.shape == (2, 64) and maple.texts[0] == "a photo of a dog." and maple.placeholders == 2
    context, fallback = maple_context(tiny, CLASSNAMES, 5, "a photo of a", "N_CTX")  # fewer words than n
    assert fallback.texts[0] == "X X X X X dog." and fallback.placeholders == 5
    with pytest.raises(ConfigError, match="N_CTX=0: expected an int >= 1"):
        coop_context(tiny, CLASSNAMES, 0, "", "N_CTX")


@pytest.mark.parametrize("position", ["front", "middle"])
def test_class_name_in_context_passes(tiny, position):
    n = 4
    sentences = ClassNameInContext(tiny, CLASSNAMES, n, position)
    ctx = torch.randn(len(CLASSNAMES), n, 64)  # class-specific
    passes = sentences.passes([ctx])
    assert sorted(i for p in passes for i in p.rows) == list(range(len(CLASSNAMES)))
    for text_pass in passes:
        for row, i in enumerate(text_pass.rows):
            name_ids = clip.tokenize(CLASSNAMES[i].replace("_", " "))[0]
            length = word_count(CLASSNAMES[i].replace("_", " "))
            names = tiny.token_embedding(name_ids[1:1 + length])
            parts = [names, ctx[i]] if position == "front" else [ctx[i, :n // 2], names, ctx[i, n // 2:]]
            torch.testing.assert_close(text_pass.prompts[0][row], torch.cat(parts))
            assert text_pass.placeholders == n + length
            assert torch.equal(text_pass.token_ids[row], clip.tokenize(" ".join(["X"] * (n + length)) + ".")[0])


def test_the_encoder_checks_the_placeholder_count(tiny):
    sentences = placeholder_sentences(CLASSNAMES, 3)
    encoder = PromptedTextEncoder(tiny)
    with torch.no_grad():
        assert encoder(sentences.token_ids, TowerSchedule([torch.zeros(3, 64)], placeholders=3)).shape == (4, 64)
        with pytest.raises(ValueError, match="the shallow text prompt has 2 tokens, the class sentences 3 placeholder"):
            encoder(sentences.token_ids, TowerSchedule([torch.zeros(2, 64)], placeholders=3))
        with pytest.raises(ValueError, match="has 0 tokens"):
            encoder(sentences.token_ids, TowerSchedule(None, placeholders=3))
