"""toy-ViT: a tiny CLIP pretrained on the toy world (mmpt.data.toy_world), shipped with the package.

The model is the real `clip.model.CLIP` (4 layers of width 64 in each tower, 32 px images of 4 x 4 patches,
CLIP's tokenizer and 77-token context), trained contrastively on captioned images of all 36 colour-shape
classes, in three styles: as CLIP's web corpus holds the benchmarks' classes, base and new alike, which are new
only to prompt tuning. The corpus never shows the benchmark's per-class look (mmpt.data.toy_world.LOOK): that
is what prompt tuning on the base classes adapts to.

    python -m mmpt.toy_clip pretrain [--steps N] [--output FILE]   # rebuild the shipped weights (minutes, CPU)
    python -m mmpt.toy_clip check                                  # sha256 of the shipped file vs the recorded one

The file stores the weights in fp16 and, of the 49408 x 64 token table, only the rows that training changed:
the others are the table's seeded initial values (`initial_token_table`), rebuilt at load. Load it with
`load_toy_clip()` or `MODEL.BACKBONE.NAME toy-ViT`.
"""
import argparse
import hashlib
import io
import math
import os
import os.path as osp
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from clip.model import CLIP

from mmpt.data import toy_world

NAME = "toy-ViT"
WEIGHTS_FILE = osp.join(osp.dirname(osp.abspath(__file__)), "weights", "toy_vit.pt")
# the shipped file, as written by `python -m mmpt.toy_clip pretrain` with the defaults below
WEIGHTS_SHA256 = "cc861d66f7d9b38da66df743d2d534c51f4cda47e9aeb27de18a0e2f958a3912"

ARCHITECTURE = dict(embed_dim=64, image_resolution=toy_world.IMAGE_SIZE, vision_layers=4, vision_width=64,
                    vision_patch_size=8, context_length=77, vocab_size=49408, transformer_width=64,
                    transformer_heads=2, transformer_layers=4)
# CLIP's input normalisation (the configs' INPUT.PIXEL_MEAN / PIXEL_STD): pretraining sees what the engine feeds
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)

PRETRAIN_PURPOSE = 1  # toy_world.image_seed namespace of the corpus (the benchmark uses toy_world.DATASET_PURPOSE)
DEFAULTS = dict(seed=0, steps=1200, batch_size=128, lr=1e-3, weight_decay=0.05, warmup=50, text_length=16,
                images_per_class={"photo": 200, "sketch": 40, "noisy": 40}, classes="all", threads=1)

# caption templates: (template, attributes it names). The class-level ones dominate; partial ones teach the
# words one at a time, nuisance ones teach the words the captions of a real corpus would carry.
CAPTIONS = [
    ("a photo of a {colour} {shape}.", ("colour", "shape")),
    ("a {colour} {shape}.", ("colour", "shape")),
    ("a picture of a {colour} {shape}.", ("colour", "shape")),
    ("an image of a {colour} {shape}.", ("colour", "shape")),
    ("the {colour} {shape}.", ("colour", "shape")),
    ("a {shape} that is {colour}.", ("colour", "shape")),
    ("a {colour} coloured {shape}.", ("colour", "shape")),
    ("there is a {colour} {shape} in the picture.", ("colour", "shape")),
    ("a photo of a {size} {colour} {shape}.", ("size", "colour", "shape")),
    ("a {pattern} {colour} {shape}.", ("pattern", "colour", "shape")),
    ("a photo of a {pattern} {colour} {shape}.", ("pattern", "colour", "shape")),
    ("a {size} {pattern} {colour} {shape}.", ("size", "pattern", "colour", "shape")),
    ("a {colour} {shape} on a {background} background.", ("colour", "shape", "background")),
    ("a {size} {colour} {shape} on a {background} background.", ("size", "colour", "shape", "background")),
    ("a photo of a {shape}.", ("shape",)),
    ("a {shape}.", ("shape",)),
    ("a {pattern} {shape}.", ("pattern", "shape")),
    ("a photo of something {colour}.", ("colour",)),
    ("a {colour} object.", ("colour",)),
    ("a {colour} {shape} drawn as a {style}.", ("colour", "shape", "style")),
    ("a {style} of a {colour} {shape}.", ("style", "colour", "shape")),
    ("a {style} of a {shape}.", ("style", "shape")),
]
CORPUS_CLASSES = {"all": toy_world.all_classes, "base": toy_world.base_classes}
ATTRIBUTE_KEYS = ("colour", "shape", "pattern", "size", "background", "style")
STYLE_WORDS = {"photo": "photo", "sketch": "sketch", "noisy": "noisy photo"}


def caption_words(attributes):
    words = dict(attributes)
    words["style"] = STYLE_WORDS[attributes["style"]]
    return words


# ----------------------------------------------------------------------------------------------- the file
def initial_token_table(seed):
    """The token table's initial values (CLIP's init: N(0, 0.02)) from a generator of its own."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(ARCHITECTURE["vocab_size"], ARCHITECTURE["transformer_width"], generator=generator) * 0.02


def build_model(seed):
    """A fresh toy CLIP: CLIP's own initialisation under `seed`, the token table from `initial_token_table`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(**ARCHITECTURE)
    with torch.no_grad():
        model.token_embedding.weight.copy_(initial_token_table(seed))
    return model.float()


def pack(model, seed, meta):
    """The file's contents: fp16 weights without the token table, plus the changed table rows and their ids."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    table = state.pop("token_embedding.weight")
    changed = torch.nonzero((table != initial_token_table(seed)).any(dim=1)).flatten()
    return {"format": "mmpt-toy-clip-1", "architecture": dict(ARCHITECTURE), "token_table_seed": seed,
            "token_ids": changed, "token_rows": table[changed].half(),
            "state_dict": {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, "meta": meta}


def packed_bytes(model, seed, meta):
    buffer = io.BytesIO()
    torch.save(pack(model, seed, meta), buffer)
    return buffer.getvalue()


def unpack(data, source):
    if not isinstance(data, dict) or data.get("format") != "mmpt-toy-clip-1":
        raise ValueError(f"{source} is not a toy CLIP file (no 'format': 'mmpt-toy-clip-1'); rebuild it with "
                         "`python -m mmpt.toy_clip pretrain`")
    model = CLIP(**data["architecture"]).float()
    table = initial_token_table(data["token_table_seed"])
    table[data["token_ids"]] = data["token_rows"].float()
    state = {k: v.float() if v.is_floating_point() else v for k, v in data["state_dict"].items()}
    state["token_embedding.weight"] = table
    model.load_state_dict(state)
    return model.eval()


def load_toy_clip(path=""):
    """The pretrained toy CLIP (fp32, eval mode, CPU) from `path` or the shipped file."""
    path = path or WEIGHTS_FILE
    if not osp.isfile(path):
        raise FileNotFoundError(f"toy CLIP weights not found: {path}; rebuild them with "
                                f"`python -m mmpt.toy_clip pretrain --output {path}`")
    print(f"Backbone {NAME}: the tiny CLIP pretrained on the toy world ({path})")
    return unpack(torch.load(path, map_location="cpu", weights_only=True), path)


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------------------------- corpus
class Corpus:
    """Images of the `classes` ("all": base and new; "base": the base combinations only) in neutral light, with
    their attributes; captions drawn per step."""

    def __init__(self, images_per_class, seed, classes="all"):
        from clip import tokenize

        self.tokenize = tokenize
        self.token_cache = {}
        pixels, self.attributes = [], []
        for colour, shape in CORPUS_CLASSES[classes]():
            for style, count in images_per_class.items():
                for index in range(count):
                    image_seed = [PRETRAIN_PURPOSE, seed] + toy_world.image_seed(0, style, colour, shape, index)[1:]
                    image, attrs = toy_world.render(colour, shape, image_seed, style, return_attributes=True)
                    pixels.append(np.asarray(image))
                    self.attributes.append(caption_words(attrs))
        values = sorted({a[key] for a in self.attributes for key in ATTRIBUTE_KEYS})  # attribute words -> ints
        self.codes = np.array([[values.index(a[key]) for key in ATTRIBUTE_KEYS] for a in self.attributes])
        images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0
        mean, std = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
        self.images = (images - mean) / std

    def __len__(self):
        return len(self.attributes)

    def caption(self, index, rng):
        template, named = CAPTIONS[rng.integers(len(CAPTIONS))]
        return template.format(**self.attributes[index]), named

    def tokens(self, captions, length):
        missing = [c for c in captions if c not in self.token_cache]
        if missing:
            for caption, row in zip(missing, self.tokenize(missing)):
                self.token_cache[caption] = row
        tokens = torch.stack([self.token_cache[c] for c in captions])
        if (tokens[:, length:] != 0).any():
            raise ValueError(f"a caption is longer than text_length={length} tokens")
        return tokens[:, :length]

    def matches(self, indices, named):
        """[caption i, image j] = image j has every attribute caption i names (caption i may describe image j)."""
        codes = self.codes[indices]  # [image, attribute]
        names = np.array([[key in n for key in ATTRIBUTE_KEYS] for n in named])  # [caption, attribute]
        agree = codes[:, None, :] == codes[None, :, :]  # [caption's image, image, attribute]
        return torch.from_numpy((agree | ~names[:, None, :]).all(axis=2).astype(np.float32))


def encode_text_prefix(model, tokens):
    """model.encode_text on the first L tokens only: CLIP's causal mask makes the end-of-text feature independent
    of the padding after it, so this is encode_text on the full 77 tokens at a fraction of the cost."""
    length = tokens.shape[1]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def set_text_length(model, length):
    mask = model.build_attention_mask()[:length, :length]
    for block in model.transformer.resblocks:
        block.attn_mask = mask


def contrastive_loss(image_features, text_features, logit_scale, matches):
    """CLIP's symmetric cross-entropy with soft targets: a caption's probability mass is spread over every
    image of the batch it describes (a batch holds many "red circle"s), and vice versa."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * text_features @ image_features.t()  # [caption, image]
    text_targets = matches / matches.sum(dim=1, keepdim=True)
    image_targets = matches.t() / matches.t().sum(dim=1, keepdim=True)
    loss_text = -(text_targets * logits.log_softmax(dim=1)).sum(dim=1).mean()
    loss_image = -(image_targets * logits.t().log_softmax(dim=1)).sum(dim=1).mean()
    return (loss_text + loss_image) / 2


def parameter_groups(model, weight_decay):
    """Weight decay on matrices only; never on the token table, whose unused rows must stay at their initial
    values (the file stores only the rows training changed)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (decay if param.ndim >= 2 and "embedding" not in name else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pretrain(steps=None, seed=None, echo=print, eval_every=0, **overrides):
    """Train a toy CLIP from scratch; returns (model, meta). Deterministic: a fixed thread count, seeded RNGs,
    no data-loader workers. `eval_every` > 0 prints zero-shot base / new accuracy every that many steps (it
    renders test images in memory and draws from no training RNG, so the weights do not change with it)."""
    settings = dict(DEFAULTS, **overrides)
    settings["steps"] = DEFAULTS["steps"] if steps is None else steps
    settings["seed"] = DEFAULTS["seed"] if seed is None else seed
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings["threads"])
    start = time.time()
    try:
        corpus = Corpus(settings["images_per_class"], settings["seed"], settings["classes"])
        echo(f"toy CLIP pretraining: {len(corpus)} images of {len(CORPUS_CLASSES[settings['classes']]())} classes "
             f"(rendered in {time.time() - start:.0f} s), {settings['steps']} steps of {settings['batch_size']}")
        model = build_model(settings["seed"])
        model.train()
        set_text_length(model, settings["text_length"])
        optimizer = torch.optim.AdamW(parameter_groups(model, settings["weight_decay"]), lr=settings["lr"])
        rng = np.random.default_rng([PRETRAIN_PURPOSE, settings["seed"]])
        generator = torch.Generator().manual_seed(settings["seed"])
        for step in range(settings["steps"]):
            lr = settings["lr"] * min(1.0, (step + 1) / settings["warmup"]) * 0.5 * (
                1 + math.cos(math.pi * step / settings["steps"]))
            for group in optimizer.param_groups:
                group["lr"] = lr
            indices = rng.choice(len(corpus), size=settings["batch_size"], replace=False)
            drawn = [corpus.caption(i, rng) for i in indices]
            captions, named = [c for c, _ in drawn], [n for _, n in drawn]
            images = corpus.images[torch.from_numpy(indices)]
            flip = torch.rand(len(indices), generator=generator) < 0.5
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            loss = contrastive_loss(model.encode_image(images),
                                    encode_text_prefix(model, corpus.tokens(captions, settings["text_length"])),
                                    model.logit_scale, corpus.matches(indices, named))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if step % 100 == 0 or step == settings["steps"] - 1:
                echo(f"step {step + 1}/{settings['steps']} loss {loss.item():.4f} lr {lr:.2e} "
                     f"scale {model.logit_scale.exp().item():.1f} ({time.time() - start:.0f} s)")
            if eval_every and (step + 1) % eval_every == 0:
                set_text_length(model, ARCHITECTURE["context_length"])
                model.eval()
                echo(f"step {step + 1}: zero-shot base {zero_shot_accuracy(model, toy_world.base_classes()):.1f}% "
                     f"new {zero_shot_accuracy(model, toy_world.new_classes()):.1f}%")
                model.train()
                set_text_length(model, settings["text_length"])
    finally:
        torch.set_num_threads(previous_threads)
    set_text_length(model, ARCHITECTURE["context_length"])
    model.eval()
    meta = {"settings": {k: v for k, v in settings.items()}, "torch": torch.__version__,
            "seconds": round(time.time() - start, 1)}
    return model, meta


@torch.no_grad()
def zero_shot_accuracy(model, classes, dataset="ToyWorld", per_class=20, template="a photo of a {}."):
    """Top-1 accuracy (%) of zero-shot `model` on the test images of `classes` of a toy dataset (rendered in
    memory: the same pictures as the dataset's files)."""
    _, style, look, sizes = toy_world.DATASETS[dataset]
    from clip import tokenize

    names = [toy_world.class_name(*c) for c in classes]
    text = F.normalize(model.encode_text(tokenize([template.format(n) for n in names])), dim=-1)
    mean, std = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    correct = total = 0
    test_start = sizes["train"] + sizes["val"]  # write_world numbers a class's images train, val, test
    for label, (colour, shape) in enumerate(classes):
        pixels = [np.asarray(toy_world.render(colour, shape, toy_world.image_seed(
            toy_world.DATASET_PURPOSE, style, colour, shape, test_start + i), style, look=look))
            for i in range(per_class)]
        images = (torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        predictions = (F.normalize(model.encode_image(images), dim=-1) @ text.t()).argmax(dim=1)
        correct += int((predictions == label).sum())
        total += per_class
    return 100.0 * correct / total


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mmpt.toy_clip", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("pretrain", help="train the toy CLIP from scratch and write its file")
    p.add_argument("--output", default=WEIGHTS_FILE, help=f"the weight file (default: the shipped {WEIGHTS_FILE})")
    p.add_argument("--steps", type=int, default=DEFAULTS["steps"])
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--eval-every", type=int, default=0, help="print zero-shot accuracies every N steps")
    sub.add_parser("check", help="compare the shipped file's sha256 with the recorded one")
    args = parser.parse_args(argv)
    if args.action == "check":
        digest = sha256_of(WEIGHTS_FILE)
        print(f"{WEIGHTS_FILE}: sha256 {digest} ({'matches' if digest == WEIGHTS_SHA256 else 'DIFFERS FROM'} "
              f"the recorded {WEIGHTS_SHA256})")
        return 0 if digest == WEIGHTS_SHA256 else 1
    model, meta = pretrain(steps=args.steps, seed=args.seed, eval_every=args.eval_every)
    data = packed_bytes(model, args.seed, meta={"settings": meta["settings"]})
    os.makedirs(osp.dirname(osp.abspath(args.output)), exist_ok=True)
    with open(args.output, "wb") as f:
        f.write(data)
    loaded = unpack(torch.load(args.output, map_location="cpu", weights_only=True), args.output)
    print(f"zero-shot on the benchmark's test images: base {zero_shot_accuracy(loaded, toy_world.base_classes()):.1f}%"
          f", new {zero_shot_accuracy(loaded, toy_world.new_classes()):.1f}%")
    print(f"wrote {args.output}: {len(data) / 1e6:.2f} MB, sha256 {hashlib.sha256(data).hexdigest()}, "
          f"pretraining {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
