"""TCP against an independent restatement of its release (eval logits, each loss term, one step's gradients, fp32,
on clip's own modules), its template tables, config keys and errors, the parameter count at ViT-B/16, and
base-to-new end to end through train.py (the trainer's loss and Adam's epsilon)."""
import clip
import pytest
import torch
import torch.nn.functional as F

import mmpt
import trainers  # noqa: F401  (declares the methods)
from dassl.utils import ConfigError
from mmpt.clip_backbone import build_random_clip, load_clip_by_name
from tests.e2e import (assert_only_prompts_differ, config_from_file, run_train, small_clip_model,
                       train_killed_in_epoch_2, trainer_node)
from trainers import tcp

CLASSNAMES = ["banded", "golden_retriever", "sea lion of the north", "cat", "tabby cat"]
CONFIGS = "configs/trainers/TCP/"
CONFIG = CONFIGS + "vit_b16_c4_ep50_batch32.yaml"

# the release's two tables (trainers/tcp.py: CUSTOM_TEMPLATES_ori and CUSTOM_TEMPLATES), verbatim
RELEASE_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.", "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of an aircraft {}.", "DescribableTextures": "a photo of a {}, a type of texture.",
    "EuroSAT": "a centered satellite photo of {}.", "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of a {}, a type of food.", "SUN397": "a photo of a {}.", "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.", "ImageNet": "a photo of a {}.", "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.", "ImageNetA": "a photo of a {}.", "ImageNetR": "a photo of a {}.",
}
RELEASE_SENTENCES = {
    "OxfordPets": "X X X X {}, a type of pet.", "OxfordFlowers": "X X X X {}, a type of flower.",
    "FGVCAircraft": "X X X X {}, a type of aircraft.", "DescribableTextures": "X X X X {} texture.",
    "EuroSAT": "X X X X {}.", "StanfordCars": "X X X X {}, a type of car", "Food101": "X X X X {}, a type of food.",
    "SUN397": "X X X X {}.", "Caltech101": "X X X X {}.", "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.", "ImageNetSketch": "a photo of a {}.", "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.", "ImageNetR": "a photo of a {}.",
}


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model()  # 3 layers per tower, text width 64, embed dim 48


def node(**overrides):
    return trainer_node(tcp, "TCP", **overrides)


def dataset_model(clip_model, dataset, classnames=CLASSNAMES, **overrides):
    sentence, template = tcp.dataset_prompts(dataset)
    model = tcp.TCPCLIP(clip_model, classnames, node(SENTENCE=sentence, TEMPLATE=template, **overrides))
    torch.manual_seed(1)
    with torch.no_grad():  # every tensor away from its initialisation (the biases start near 0)
        for param in model.prompt_learner.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    return model


# ---------------------------------------------------------------- the restatement
def tcp_reference(clip_model, params, sentence, template, classnames, images, labels, layer, weight=8.0):
    """The release's forward pass and loss, written from its code on clip's own modules (sequence-first blocks
    with their causal mask). params: ctx [n, d], w1, b1, w2, b2 (the TKE). sentence / template: the release's
    strings (the sentence with its own first n words, replaced by ctx)."""
    ctx, w1, b1, w2, b2 = params
    n, width = ctx.shape
    names = [name.replace("_", " ") for name in classnames]
    with torch.no_grad():  # t0: the second CLIP's plain encode_text, normalised
        t0 = clip_model.encode_text(clip.tokenize([template.format(name) for name in names]))
        t0 = t0 / t0.norm(dim=-1, keepdim=True)
    hidden = F.linear(t0, w1, b1)
    hidden = hidden * torch.sigmoid(1.702 * hidden)  # QuickGELU
    class_prompt = F.linear(hidden, w2, b2).reshape(len(names), -1, width)  # [C, n, d]
    tokens = clip.tokenize([sentence.format(name) for name in names])
    with torch.no_grad():
        embedding = clip_model.token_embedding(tokens)
    x = torch.cat([embedding[:, :1], ctx.unsqueeze(0).expand(len(names), -1, -1), embedding[:, 1 + n:]], dim=1)
    x = (x + clip_model.positional_embedding).permute(1, 0, 2)  # NLD -> LND
    for index, block in enumerate(clip_model.transformer.resblocks):
        if index == layer:  # w = 1: x[1:1+n] <- 1.0 * P + 0.0 * x[1:1+n]
            x = torch.cat([x[:1], 1.0 * class_prompt.permute(1, 0, 2) + 0.0 * x[1:1 + n], x[1 + n:]], dim=0)
        x = block(x)
    x = clip_model.ln_final(x.permute(1, 0, 2))
    text = x[torch.arange(len(names)), tokens.argmax(dim=-1)] @ clip_model.text_projection
    text = text / text.norm(dim=-1, keepdim=True)
    with torch.no_grad():
        image = clip_model.encode_image(images)
        image = image / image.norm(dim=-1, keepdim=True)
    logits = clip_model.logit_scale.exp() * image @ text.t()
    # torch.nn.CosineSimilarity(dim=1, eps=1e-7), written out
    cosine = (text * t0).sum(-1) / (text.norm(dim=-1) * t0.norm(dim=-1)).clamp_min(1e-7)
    score = 1.0 - cosine.mean()
    ce = -(logits[torch.arange(len(labels)), labels] - logits.logsumexp(dim=1)).mean()
    return {"logits": logits, "loss_ce": ce, "loss_kg": score, "loss": ce + weight * score, "t0": t0}


def learner_tensors(model):
    learner = model.prompt_learner
    return [learner.ctx, learner.meta_net.linear1.weight, learner.meta_net.linear1.bias,
            learner.meta_net.linear2.weight, learner.meta_net.linear2.bias]


def model_terms(model, images, labels, weight=8.0):
    """The model's logits and loss terms, as the trainer's step composes them (CE + W * the KG term)."""
    prompts = model.compute_prompts()
    class_features = model.class_features(prompts)
    logits = model(images, prompts=prompts, class_features=class_features)
    ce = F.cross_entropy(logits, labels)
    kg = model.knowledge_guided_loss(class_features)
    return {"logits": logits, "loss_ce": ce, "loss_kg": kg, "loss": ce + weight * kg}


@pytest.mark.parametrize("dataset,layer", [("OxfordPets", 1), ("UCF101", 2), ("StanfordCars", 2),
                                           ("FGVCAircraft", 1)])
def test_logits_loss_terms_and_gradients_match_the_restatement(small_clip, dataset, layer):
    """UCF101: the release's sentence starts with "a photo of a", replaced by the context (ours: "X X X X");
    StanfordCars: no final period; FGVCAircraft: the two tables differ."""
    model = dataset_model(small_clip, dataset, INJECT_LAYER=layer)
    torch.manual_seed(2)
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 4, 2])
    params = [t.detach().clone().requires_grad_(True) for t in learner_tensors(model)]
    expected = tcp_reference(small_clip, params, RELEASE_SENTENCES[dataset], RELEASE_TEMPLATES[dataset],
                             CLASSNAMES, images, labels, layer)
    got = model_terms(model, images, labels)
    torch.testing.assert_close(model.hand_written_class_features(), expected["t0"], atol=1e-6, rtol=0)
    for name in ("logits", "loss_ce", "loss_kg", "loss"):
        torch.testing.assert_close(got[name], expected[name], atol=2e-6, rtol=1e-5, msg=name)
    assert expected["loss_kg"].item() > 1e-3 and expected["loss_ce"].item() > 1e-3  # both terms live
    # one step's gradients, every trainable tensor
    grads = torch.autograd.grad(got["loss"], learner_tensors(model))
    expected_grads = torch.autograd.grad(expected["loss"], params)
    for name, grad, expected_grad in zip(("ctx", "w1", "b1", "w2", "b2"), grads, expected_grads):
        assert expected_grad.abs().max() > 0, name
        torch.testing.assert_close(grad, expected_grad, atol=1e-6 * expected_grad.abs().max().item() + 1e-9,
                                   rtol=1e-4, msg=name)
    # eval: the same logits without labels, and only through the prompts (no image-dependent text)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected["logits"], atol=2e-6, rtol=1e-5)


def test_class_prompts_replace_the_context_at_the_injection_layer(small_clip):
    """Before the injection block the shallow context alone is seen (a model without the class prompts equals the
    restatement cut there); the class prompts change the features only through blocks >= INJECT_LAYER."""
    model = dataset_model(small_clip, "OxfordPets", INJECT_LAYER=2)
    prompts = model.compute_prompts()
    assert len(prompts.text) == 3 and prompts.text[1] is None and prompts.text[0] is model.prompt_learner.ctx
    assert prompts.text[2].shape == (len(CLASSNAMES), 4, 64) and prompts.text_remove is None  # whole region
    assert not prompts.depends_on_image and not prompts.text_is_constant
    # the class prompts do reach the features: zeroing linear2 leaves only its bias as the class prompt
    with torch.no_grad():
        before = model.class_features()
        model.prompt_learner.meta_net.linear2.weight.mul_(0)
        assert not torch.allclose(model.class_features(), before, atol=1e-4)


# ---------------------------------------------------------------- tables, keys, errors
def test_template_tables_are_the_releases():
    assert set(tcp.TCP_TEMPLATES) == set(tcp.TCP_SENTENCES) == set(RELEASE_TEMPLATES)
    assert tcp.TCP_TEMPLATES == RELEASE_TEMPLATES
    for dataset, release in RELEASE_SENTENCES.items():
        # ours is what follows the 4 context tokens: after SOS + 4, the release's sentence token for token
        ours = clip.tokenize(tcp.placeholder_words(4) + " " + tcp.TCP_SENTENCES[dataset].format("sea lion"))[0]
        theirs = clip.tokenize(release.format("sea lion"))[0]
        assert torch.equal(ours[5:], theirs[5:]) and ours.argmax() == theirs.argmax(), dataset


def tcp_cfg(dataset="OxfordPets", **node_values):
    cfg = config_from_file(CONFIG)
    cfg.MODEL.BACKBONE.NAME = "random-tiny-ViT"
    cfg.DATASET.NAME = dataset
    for key, value in node_values.items():
        cfg.TRAINER.TCP[key] = value
    return cfg


def test_model_config_fills_the_datasets_prompts(capsys):
    trainer = tcp.TCP.__new__(tcp.TCP)
    filled = trainer.model_config(tcp_cfg("FGVCAircraft"))
    assert (filled.SENTENCE, filled.TEMPLATE) == ("{}, a type of aircraft.", "a photo of an aircraft {}.")
    own = trainer.model_config(tcp_cfg("EuroSAT", TEMPLATE="itap of a {}."))
    assert (own.SENTENCE, own.TEMPLATE) == ("{}.", "itap of a {}.")
    unknown = trainer.model_config(tcp_cfg("MyOwnDataset"))
    assert (unknown.SENTENCE, unknown.TEMPLATE) == ("{}.", "a photo of a {}.")
    assert "MyOwnDataset" in capsys.readouterr().out


def test_configs_are_the_releases_settings():
    for name, epochs in (("vit_b16_c4_ep50_batch32", 50), ("vit_b16_c4_ep25_batch32", 25)):
        cfg = config_from_file(CONFIGS + name + ".yaml")
        optim = cfg.OPTIM
        assert (optim.NAME, optim.LR, optim.EPS, optim.MAX_EPOCH, optim.WEIGHT_DECAY) == ("adam", 0.002, 1e-3,
                                                                                          epochs, 5e-4)
        assert (optim.LR_SCHEDULER, optim.WARMUP_EPOCH, optim.WARMUP_TYPE, optim.WARMUP_CONS_LR) == \
            ("cosine", 1, "constant", 1e-5)
        assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.DATALOADER.TEST.BATCH_SIZE) == (32, 500)
        node = cfg.TRAINER.TCP
        assert (node.N_CTX, node.CTX_INIT, node.W, node.INJECT_LAYER, node.HIDDEN_RATIO) == (4, "", 8.0, 8, 4)
        assert dict(node) == dict(tcp.TCP.config_node())  # the defaults are the official code's
    # the release's train.py: 25 epochs for ImageNet and SUN397, whatever the protocol
    for protocol in ("b2n", "fewshot", "xd"):
        assert tcp.TCP.default_config(protocol, "imagenet", 16) == "vit_b16_c4_ep25_batch32"
        assert tcp.TCP.default_config(protocol, "sun397", 16) == "vit_b16_c4_ep25_batch32"
        assert tcp.TCP.default_config(protocol, "eurosat", 4) == "vit_b16_c4_ep50_batch32"


@pytest.mark.parametrize("key,value,message", [
    ("W", -1.0, "expected a number >= 0"), ("N_CTX", 0, "expected an int >= 1"),
    ("HIDDEN_RATIO", 0, "expected an int >= 1"), ("SENTENCE", "{} and {}", "expected a sentence with one"),
    ("TEMPLATE", "a photo", "expected a sentence with one"), ("INJECT_LAYER", 2, r"expected an int in 1\.\.1"),
    ("INJECT_LAYER", 0, r"expected an int in 1\.\.1")])
def test_bad_values_are_one_line_errors(key, value, message):
    """Checked on the 2-layer tiny backbone: INJECT_LAYER must leave a block after it."""
    cfg = tcp_cfg(**{key: value})
    trainer = tcp.TCP.__new__(tcp.TCP)
    with pytest.raises(ConfigError, match=rf"^TRAINER\.TCP\.{key}={value!r}: {message}"):
        trainer.check_cfg(cfg)
        tcp.TCP.build_method_model(load_clip_by_name("random-tiny-ViT"), CLASSNAMES, trainer.model_config(cfg))


def test_parameter_count_at_vit_b16():
    """331,904 = n d_t + (E E/4 + E/4) + (E/4 n d_t + n d_t) at n = 4, d_t = E = 512; counted without running."""
    clip_model = build_random_clip("random-ViT-B/16").requires_grad_(False)
    model = tcp.TCP.build_method_model(clip_model, CLASSNAMES, node())
    n, d_t, embed = 4, 512, 512
    formula = n * d_t + (embed * embed // 4 + embed // 4) + (embed // 4 * n * d_t + n * d_t)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == formula == 331_904 and len(trainable) == 5
    assert model.prompt_learner.parameter_breakdown() == [("context", 2_048), ("TKE", 329_856)]
    assert model.hand_written.cached_class_features is None  # t0 is computed on first use, not at construction


def test_create_model_and_hand_written_features_not_saved(small_clip):
    model = mmpt.create_model("TCP", small_clip, CLASSNAMES, INJECT_LAYER=1, PREC="fp32")
    assert model.template == "a photo of a {}." and model.sentences.texts[0] == "X X X X banded."
    with torch.autocast("cpu", dtype=torch.bfloat16):
        t0 = model.hand_written_class_features()
    assert t0.dtype == torch.float32 and not t0.requires_grad and model.hand_written_class_features() is t0
    assert set(model.prompt_learner.state_dict()) == {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias",
                                                      "meta_net.linear2.weight", "meta_net.linear2.bias"}
    assert "hand_written_features" not in model.state_dict()


# ---------------------------------------------------------------- end to end
TINY = ("TRAINER.TCP.INJECT_LAYER", "1", "TRAIN.CHECKPOINT_FREQ", "1")  # the tiny backbone has 2 text layers


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """2 epochs on the base half of OxfordPets through train.py (official config, tiny backbone)."""
    tmp_path = tmp_path_factory.mktemp("tcp")
    return (tmp_path, *run_train(tmp_path, "TCP", CONFIG, dataset="OxfordPets", subsample="base", opts=TINY,
                                 return_trainer=True))


def test_base_to_new_end_to_end(base_run):
    """Train on the base half through train.py: Adam at eps 1e-3, only the prompt learner moves, the step's loss
    equals the restatement on CLIP's own code; then the new half, whose class prompts come from the new classes'
    t0 through the trained TKE."""
    tmp_path, train_dir, log, trainer = base_run
    assert "Finish training" in log and "* accuracy:" in log and "loss_kg" in log
    assert "Trainable parameters:" in log and "of which: context" in log
    assert trainer.optim.param_groups[0]["eps"] == 1e-3 and isinstance(trainer.optim, torch.optim.Adam)
    model = trainer.model
    assert model.template == "a photo of a {}, a type of pet."
    clip_model = load_clip_by_name("random-tiny-ViT", seed=0)  # the weights the run started from
    assert_only_prompts_differ(model, clip_model)  # every CLIP tensor compared

    base_names = trainer.dm.dataset.classnames
    batch = next(iter(trainer.train_loader_x))
    captured = []
    trainer.backward_and_update = captured.append
    trainer.batch_idx, trainer.num_batches = 0, 2
    summary = trainer.forward_backward(batch)
    params = [t.detach().clone().requires_grad_(True) for t in learner_tensors(model)]
    expected = tcp_reference(clip_model, params, RELEASE_SENTENCES["OxfordPets"], RELEASE_TEMPLATES["OxfordPets"],
                             base_names, batch["img"], batch["label"], layer=1)
    (loss,) = captured
    torch.testing.assert_close(loss, expected["loss"], atol=1e-5, rtol=1e-5)
    assert summary["loss"] == pytest.approx(summary["loss_ce"] + 8.0 * summary["loss_kg"], abs=1e-5)
    grads = torch.autograd.grad(loss, learner_tensors(model))
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected["loss"], params)):
        torch.testing.assert_close(grad, expected_grad, atol=1e-4 * expected_grad.abs().max().item(), rtol=1e-4)

    _, log, evaluator = run_train(tmp_path, "TCP", CONFIG, dataset="OxfordPets", subsample="new", opts=TINY,
                                  eval_only=True, model_dir=train_dir, load_epoch=2, return_trainer=True)
    assert "model.pth.tar-2" in log and "* accuracy:" in log
    new_names = evaluator.dm.dataset.classnames
    assert set(new_names).isdisjoint(base_names)
    for ours, trained in zip(learner_tensors(evaluator.model), learner_tensors(model)):
        assert torch.equal(ours, trained)
    expected_t0 = tcp_reference(clip_model, params, RELEASE_SENTENCES["OxfordPets"], RELEASE_TEMPLATES["OxfordPets"],
                                new_names, batch["img"], batch["label"] % len(new_names), layer=1)["t0"]
    torch.testing.assert_close(evaluator.model.hand_written_class_features(), expected_t0, atol=1e-6, rtol=0)


def test_kill_and_resume_end_bit_identical(base_run):
    """Killed in epoch 2 (after epoch 1's checkpoint), restarted into the same folder: the resumed run ends with
    the uninterrupted run's context and TKE, bit for bit (Adam's state and the RNG resumed with them)."""
    tmp_path, _, _, uninterrupted = base_run
    output_dir = tmp_path / "output" / "killed"
    train_killed_in_epoch_2(tmp_path, tcp.TCP, CONFIG, output_dir, dataset="OxfordPets", subsample="base", opts=TINY)
    resumed = run_train(tmp_path, "TCP", CONFIG, dataset="OxfordPets", subsample="base", opts=TINY,
                        output_dir=output_dir, return_trainer=True)[2]
    assert resumed.start_epoch == 1
    for ours, expected in zip(learner_tensors(resumed.model), learner_tensors(uninterrupted.model)):
        assert torch.equal(ours, expected)
