"""toy-ViT (mmpt.toy_clip): the shipped file, its loading, zero-shot transfer, and the pretraining's determinism.

The full pretraining takes minutes; here a few steps on a small corpus show that it is deterministic, and the
shipped file is checked against its recorded sha256 (`python -m mmpt.toy_clip pretrain` rebuilds it).
"""
import os

import numpy as np
import torch
from clip import tokenize
from clip.model import CLIP

from mmpt import toy_clip
from mmpt.clip_backbone import load_clip_by_name
from mmpt.data import toy_world

CHANCE = 100 / 18
SHORT = dict(steps=3, batch_size=16, images_per_class={"photo": 4, "sketch": 1, "noisy": 1})


def test_shipped_file_is_the_recorded_one_and_small():
    assert os.path.isfile(toy_clip.WEIGHTS_FILE)
    assert toy_clip.sha256_of(toy_clip.WEIGHTS_FILE) == toy_clip.WEIGHTS_SHA256
    assert os.path.getsize(toy_clip.WEIGHTS_FILE) < 3e6
    assert toy_clip.main(["check"]) == 0


def test_loads_by_name_with_the_full_token_table():
    model = load_clip_by_name("toy-ViT")
    assert isinstance(model, CLIP) and not model.training
    assert model.token_embedding.weight.shape == (49408, 64) and model.context_length == 77
    data = torch.load(toy_clip.WEIGHTS_FILE, weights_only=True)
    stored = data["token_ids"]
    # every word of the world's captions and class names is a stored (trained) row ...
    values = dict(colour="red", shape="circle", pattern="dotted", size="large", background="dark", style="sketch")
    texts = [template.format(**values) for template, _ in toy_clip.CAPTIONS]
    texts += [toy_world.class_name(*c) for c in toy_world.all_classes()] + list(toy_world.PATTERNS)
    texts += ["small light"] + list(toy_clip.STYLE_WORDS.values())
    words = {int(t) for t in tokenize(texts).flatten()}
    assert words - {0} <= set(stored.tolist())
    # ... and the others are the seeded initial table
    others = torch.ones(49408, dtype=torch.bool)
    others[stored] = False
    initial = toy_clip.initial_token_table(data["token_table_seed"])
    assert torch.equal(model.token_embedding.weight[others], initial[others])
    assert len(stored) < 200


def test_zero_shot_transfers_to_new_classes():
    """The ToyWorld test images, rendered in memory, and the shipped file: measured base 56.9 %, new 63.1 % (the
    same as ZeroshotCLIP through train.py), chance 5.6 %; the new classes asserted at the issue's 60 %. The
    benchmark's per-class look costs zero-shot toy-ViT the difference to the same images photographed
    neutrally, as the pretraining corpus is: base 75.6 %, new 75.8 %."""
    model = toy_clip.load_toy_clip()
    base = toy_clip.zero_shot_accuracy(model, toy_world.base_classes())
    new = toy_clip.zero_shot_accuracy(model, toy_world.new_classes())
    assert base > 8 * CHANCE and new >= 60, (base, new)


def test_pack_unpack_round_trip(tmp_path):
    model = toy_clip.build_model(seed=3)
    with torch.no_grad():
        model.token_embedding.weight[[320, 1000]] += 1.0  # two "trained" rows
        model.visual.proj.mul_(1.5)
    path = tmp_path / "w.pt"
    path.write_bytes(toy_clip.packed_bytes(model, 3, meta={}))
    data = torch.load(path, weights_only=True)
    assert data["token_ids"].tolist() == [320, 1000]
    loaded = toy_clip.load_toy_clip(str(path))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a.half().float() if name != "token_embedding.weight" else a, b) or (
            name == "token_embedding.weight" and torch.equal(a.half().float()[[320, 1000]], b[[320, 1000]])), name


def test_prefix_text_encoding_equals_encode_text():
    model = toy_clip.build_model(seed=1).eval()
    tokens = tokenize(["a photo of a red circle.", "a large dotted blue heart on a dark background."])
    full = model.encode_text(tokens)
    toy_clip.set_text_length(model, 16)
    prefix = toy_clip.encode_text_prefix(model, tokens[:, :16])
    assert torch.allclose(full, prefix, atol=1e-6)


def test_corpus_holds_every_class_in_neutral_light():
    """CLIP's corpus holds the benchmarks' new classes too: the toy corpus shows all 36 classes, never in the
    benchmark's look (its images are the neutral renderings of their seeds)."""
    corpus = toy_clip.Corpus({"photo": 2, "sketch": 1, "noisy": 1}, seed=0)
    seen = {(a["colour"], a["shape"]) for a in corpus.attributes}
    assert seen == set(toy_world.all_classes())
    first = toy_world.all_classes()[0]
    neutral = toy_world.render(*first, [toy_clip.PRETRAIN_PURPOSE, 0, 0, 0, 0], "photo")
    pixels = (np.asarray(neutral).astype(np.float32) / 255.0 - np.array(toy_clip.PIXEL_MEAN)) / np.array(toy_clip.PIXEL_STD)
    assert np.allclose(corpus.images[0].permute(1, 2, 0).numpy(), pixels, atol=1e-5)
    # soft targets: a caption naming only a colour matches every image of that colour in the batch
    indices = list(range(len(corpus)))
    matches = corpus.matches(indices, [("colour",)] + [("colour", "shape")] * (len(indices) - 1))
    colours = [corpus.attributes[i]["colour"] for i in indices]
    assert matches[0].tolist() == [float(c == colours[0]) for c in colours]
    assert matches.diagonal().all()


def test_short_pretraining_is_deterministic():
    first, _ = toy_clip.pretrain(seed=5, echo=lambda *_: None, **SHORT)
    second, _ = toy_clip.pretrain(seed=5, echo=lambda *_: None, **SHORT)
    assert toy_clip.packed_bytes(first, 5, {}) == toy_clip.packed_bytes(second, 5, {})
    assert not torch.equal(first.visual.proj, toy_clip.build_model(5).visual.proj)  # it did train
