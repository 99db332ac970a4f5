"""The contract's extensions (docs/ARCHITECTURE.md, "Extensions"): residual adapters, the vision read-out, the
image head, class features from outside, named logit sets and the rule that picks them. Each equals an
independent computation on CLIP's own blocks, in every encoder path (plain, shared prefix, chunked,
checkpointed, per prompt set), features and gradients; each left at its default changes nothing."""
from types import SimpleNamespace

import clip
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmpt.encoders import PromptedImageEncoder, PromptedTextEncoder, TowerSchedule
from mmpt.prompt_trainer import PromptTrainer, TRAINED_ON
from mmpt.prompted_clip import ClassesTrainedOn, LogitRule, PromptedCLIP, Prompts, normal_prompts
from mmpt.sentences import placeholder_sentences
from tests.e2e import small_clip_model

CLASSNAMES = ["dog", "great white shark", "great grey owl", "cat"]
LAYERS = 3
ATOL = 1e-5


@pytest.fixture(scope="module")
def small_clip():
    return small_clip_model(layers=LAYERS)


def seeded(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


class Adapter(nn.Module):
    """MMA's bottleneck branch, s * up(relu(down(h))), as a test would write it."""

    def __init__(self, width, seed, hidden=8, scale=0.5):
        super().__init__()
        self.down, self.up, self.scale = nn.Linear(width, hidden), nn.Linear(hidden, width), scale
        with torch.no_grad():
            for i, p in enumerate(self.parameters()):
                p.copy_(seeded(*p.shape, seed=seed * 10 + i) * 5)

    def forward(self, h):
        return self.scale * self.up(F.relu(self.down(h)))


def adapters(width, seed, layers=(1, 2)):
    return [Adapter(width, seed + layer) if layer in layers else None for layer in range(LAYERS)]


def callables(modules):
    return [None if m is None else m.forward for m in modules]


def adapter_hooks(blocks, modules):
    """Forward hooks on CLIP's own blocks adding adapter(ln_1(block input)) to their outputs."""
    return [block.register_forward_hook(lambda block, args, out, a=a: out + a(block.ln_1(args[0])))
            for block, a in zip(blocks, modules) if a is not None]


def remove_all(handles):
    for handle in handles:
        handle.remove()


def test_adapters_equal_hooked_clip_in_both_towers(small_clip):
    """No prompts: our towers with adapters == clip's own encode_text / encode_image with hooked blocks."""
    ids = clip.tokenize([f"a photo of a {name}." for name in CLASSNAMES])
    images = seeded(2, 3, 32, 32, seed=1)
    text_adapters, vision_adapters = adapters(64, 1), adapters(96, 2)
    handles = adapter_hooks(small_clip.transformer.resblocks, text_adapters)
    handles += adapter_hooks(small_clip.visual.transformer.resblocks, vision_adapters)
    try:
        with torch.no_grad():
            expected_text, expected_image = small_clip.encode_text(ids), small_clip.encode_image(images)
    finally:
        remove_all(handles)
    with torch.no_grad():
        for share_prefix in (True, False):
            got = PromptedTextEncoder(small_clip).with_options(share_prefix=share_prefix)(
                ids, TowerSchedule(adapters=callables(text_adapters)))
            torch.testing.assert_close(got, expected_text, rtol=ATOL, atol=ATOL)
        got = PromptedImageEncoder(small_clip)(images, TowerSchedule(adapters=callables(vision_adapters)))
        torch.testing.assert_close(got, expected_image, rtol=ATOL, atol=ATOL)
        assert not torch.allclose(expected_image, small_clip.encode_image(images), atol=1e-3)  # the adapters matter


def test_zero_adapters_are_the_identity(small_clip):
    ids = clip.tokenize([f"X X a photo of a {name}." for name in CLASSNAMES])
    images = seeded(2, 3, 32, 32, seed=1)
    zero = [lambda h: torch.zeros_like(h)] * LAYERS
    text, vision = [seeded(2, 64, seed=3), seeded(2, 64, seed=4)], [seeded(2, 96, seed=5)]
    encoder, image_encoder = PromptedTextEncoder(small_clip), PromptedImageEncoder(small_clip)
    with torch.no_grad():
        for options in ({}, {"share_prefix": False}, {"chunk_size": 2}):
            plain = encoder.with_options(**options)(ids, TowerSchedule(text))
            assert torch.equal(encoder.with_options(**options)(ids, TowerSchedule(text, adapters=zero)), plain)
        assert torch.equal(image_encoder(images, TowerSchedule(vision, adapters=zero)),
                           image_encoder(images, TowerSchedule(vision)))


def text_case(small_clip, **options):
    """Features and gradients (prompts and adapter weights) of one text pass with deep prompts + adapters."""
    ids = clip.tokenize([f"X X a photo of a {name}." for name in CLASSNAMES])
    prompts = [seeded(2, 64, seed=6).requires_grad_(), None, seeded(2, 64, seed=7).requires_grad_()]
    modules = adapters(64, 3, layers=(0, 1, 2))
    features = PromptedTextEncoder(small_clip).with_options(**options)(
        ids, TowerSchedule(prompts, adapters=callables(modules)))
    (features * torch.linspace(-1, 1, features.numel()).reshape(features.shape)).sum().backward()
    grads = [prompts[0].grad, prompts[2].grad] + [p.grad for m in modules for p in m.parameters()]
    return features.detach(), grads


@pytest.mark.parametrize("options", [{"share_prefix": True}, {"chunk_size": 3}, {"checkpoint": True},
                                     {"share_prefix": True, "chunk_size": 1, "checkpoint": True},
                                     {"truncate": False, "share_prefix": False}])
def test_text_adapters_in_every_path_equal_the_plain_pass(small_clip, options):
    plain, plain_grads = text_case(small_clip, share_prefix=False)
    got, got_grads = text_case(small_clip, **options)
    torch.testing.assert_close(got, plain, rtol=ATOL, atol=ATOL)
    for grad, expected in zip(got_grads, plain_grads):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=ATOL)


def test_text_adapters_per_prompt_set_equal_one_pass_per_set(small_clip):
    ids = clip.tokenize([f"X X a photo of a {name}." for name in CLASSNAMES])
    sets = seeded(3, 2, 64, seed=8)
    modules = adapters(64, 4)
    encoder = PromptedTextEncoder(small_clip)
    with torch.no_grad():
        grouped = encoder.per_prompt_set(ids, TowerSchedule([sets], adapters=callables(modules)))
        loop = torch.stack([encoder.with_options(share_prefix=False)(ids, TowerSchedule([sets[g]],
                                                                                        adapters=callables(modules)))
                            for g in range(3)])
    torch.testing.assert_close(grouped, loop, rtol=ATOL, atol=ATOL)


def test_vision_adapters_checkpointed_equal_plain_with_gradients(small_clip):
    images = seeded(2, 3, 32, 32, seed=1)

    def run(checkpoint):
        prompts = [seeded(2, 96, seed=9).requires_grad_(), seeded(2, 96, seed=10).requires_grad_()]
        modules = adapters(96, 5, layers=(0, 2))
        features = PromptedImageEncoder(small_clip, checkpoint=checkpoint)(
            images, TowerSchedule(prompts, adapters=callables(modules)))
        features.square().sum().backward()
        return features.detach(), [p.grad for p in prompts] + [p.grad for m in modules if m for p in m.parameters()]

    (plain, plain_grads), (got, got_grads) = run(False), run(True)
    torch.testing.assert_close(got, plain, rtol=ATOL, atol=ATOL)
    for grad, expected in zip(got_grads, plain_grads):
        assert expected.abs().sum() > 0
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=ATOL)


def independent_vision_region(clip_model, images, prompts):
    """CLIP's own blocks (sequence-first, clip/model.py's forward), deep replacement of the last k tokens;
    returns (ln_post(CLS) @ proj, the last k tokens after the last block)."""
    visual = clip_model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], 1) + visual.positional_embedding
    x = visual.ln_pre(torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], 1)).permute(1, 0, 2)
    k = prompts[0].shape[0]
    for layer, block in enumerate(visual.transformer.resblocks):
        if layer and layer < len(prompts) and prompts[layer] is not None:
            x = torch.cat([x[:-k], prompts[layer].unsqueeze(1).expand(-1, x.shape[1], -1)])
            k = prompts[layer].shape[0]
        x = block(x)
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0]) @ visual.proj, x[:, -k:]


def test_vision_region_read_out_equals_clip_blocks(small_clip):
    images = seeded(2, 3, 32, 32, seed=1)
    prompts = [seeded(2, 96, seed=11), seeded(3, 96, seed=12)]  # the region grows to 3 at layer 1
    with torch.no_grad():
        features, region = PromptedImageEncoder(small_clip).with_region(images, TowerSchedule(prompts))
        expected_features, expected_region = independent_vision_region(small_clip, images, prompts)
    assert region.shape == (2, 3, 96)
    torch.testing.assert_close(region, expected_region, rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(features, expected_features, rtol=ATOL, atol=ATOL)


class ExtendedCLIP(PromptedCLIP):
    """A model using every extension: representation tokens read out into a head (MMRL), an image projector
    (PromptKD), outside class features, a linear head on raw image features (DePT)."""

    def __init__(self, clip_model, classnames, teacher_features=None, rule=None):
        super().__init__(clip_model, placeholder_sentences(classnames, 2))
        self.prompt_learner = nn.Module()
        self.prompt_learner.ctx = normal_prompts(2, 64)
        self.prompt_learner.rep = normal_prompts(2, 96)
        self.prompt_learner.proj_rep = nn.Linear(96, 48, bias=False)
        self.prompt_learner.projector = nn.Linear(48, 32)
        self.prompt_learner.head = nn.Linear(48, len(classnames))
        self.teacher_features = teacher_features
        self.logit_rule = rule

    def compute_prompts(self):
        learner = self.prompt_learner
        visual = self.image_encoder.visual
        if self.teacher_features is not None:  # PromptKD: the projector meets the teacher's class features
            return Prompts(vision=[learner.rep], image_head=learner.projector, class_features=self.teacher_features)
        return Prompts(text=[learner.ctx], vision=[learner.rep],
                       vision_readout=lambda region: learner.proj_rep(visual.ln_post(region)).mean(1),
                       logit_heads={"head": learner.head})


def test_named_logit_sets_equal_independent_formulas(small_clip):
    torch.manual_seed(0)
    model = ExtendedCLIP(small_clip, CLASSNAMES)
    images = seeded(2, 3, 32, 32, seed=1)
    learner = model.prompt_learner
    with torch.no_grad():
        out = model.outputs(images)
        raw, region = independent_vision_region(small_clip, images, [learner.rep])
        ids = model.sentences.token_ids
        text = F.normalize(PromptedTextEncoder(small_clip)(ids, TowerSchedule([learner.ctx])), dim=-1)
        scale = small_clip.logit_scale.exp()
        readout = F.normalize(learner.proj_rep(small_clip.visual.ln_post(region)).mean(1), dim=-1)
    assert sorted(out.logits) == ["head", "itm", "readout"]
    torch.testing.assert_close(out.logits["itm"], scale * F.normalize(raw, dim=-1) @ text.t(), rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(out.logits["readout"], scale * readout @ text.t(), rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(out.logits["head"], learner.head(raw), rtol=ATOL, atol=ATOL)
    torch.testing.assert_close(out.raw_image_features, raw, rtol=ATOL, atol=ATOL)
    assert torch.equal(model(images), model.outputs(images).logits["itm"])  # forward = the "itm" set


def test_outside_class_features_and_image_head(small_clip, monkeypatch):
    torch.manual_seed(0)
    teacher = F.normalize(seeded(len(CLASSNAMES), 32, seed=13), dim=-1)
    model = ExtendedCLIP(small_clip, CLASSNAMES, teacher_features=teacher)
    assert model.compute_prompts().text_is_constant  # the trainer may compute them once
    monkeypatch.setattr(model.text_encoder, "forward", lambda *a: pytest.fail("the text tower ran"))
    images = seeded(2, 3, 32, 32, seed=1)
    logits = model(images)
    with torch.no_grad():
        raw, _ = independent_vision_region(small_clip, images, [model.prompt_learner.rep])
        expected = small_clip.logit_scale.exp() * F.normalize(model.prompt_learner.projector(raw), dim=-1) @ teacher.t()
    torch.testing.assert_close(logits.detach(), expected, rtol=ATOL, atol=ATOL)
    logits.sum().backward()
    assert model.prompt_learner.projector.weight.grad.abs().sum() > 0  # the head trains


def test_text_adapters_make_the_text_learnable():
    assert Prompts().text_is_constant
    assert not Prompts(text_adapters=[None, lambda h: h]).text_is_constant
    assert Prompts(vision_adapters=[lambda h: h]).text_is_constant


def test_logit_rule_picks_by_trained_classes():
    logits = {"itm": torch.tensor([[1.0, 2.0]]), "readout": torch.tensor([[3.0, 5.0]])}
    rule = LogitRule(trained={"itm": 0.7, "readout": 0.3})
    torch.testing.assert_close(rule.pick(logits, True), 0.7 * logits["itm"] + 0.3 * logits["readout"])
    assert rule.pick(logits, False) is logits["itm"]
    assert LogitRule().pick(logits, True) is logits["itm"]
    with pytest.raises(ValueError, match=r"logit rule names \['cat'\]"):
        LogitRule(unseen={"cat": 1.0}).pick(logits, False)


def test_trainer_tells_trained_classes_from_the_saved_record(small_clip):
    """The classes trained on travel in the prompt learner's state (no tensor); an evaluation compares them with
    its own classes (and the dataset, where the rule says so); a record-less checkpoint falls back to
    SUBSAMPLE_CLASSES."""
    model = ExtendedCLIP(small_clip, CLASSNAMES, rule=LogitRule(trained={"itm": 0.5, "head": 0.5}, same_dataset=True))
    model.prompt_learner.add_module(TRAINED_ON, ClassesTrainedOn("ImageNet", CLASSNAMES))
    state = model.prompt_learner.state_dict()
    assert state[f"{TRAINED_ON}._extra_state"] == {"dataset": "ImageNet", "classnames": CLASSNAMES}
    evaluated = ExtendedCLIP(small_clip, CLASSNAMES[:2], rule=model.logit_rule)
    evaluated.prompt_learner.add_module(TRAINED_ON, ClassesTrainedOn("Caltech101", CLASSNAMES[:2]))
    evaluated.prompt_learner.head = nn.Linear(48, 4)  # as trained
    evaluated.prompt_learner.load_state_dict(state)

    def trained(model, dataset, classnames, subsample="all"):
        trainer = SimpleNamespace(model=model, dm=SimpleNamespace(dataset=SimpleNamespace(classnames=classnames)),
                                  cfg=SimpleNamespace(DATASET=SimpleNamespace(NAME=dataset, SUBSAMPLE_CLASSES=subsample)))
        return PromptTrainer.on_trained_classes(trainer)

    assert trained(evaluated, "ImageNet", CLASSNAMES)
    assert not trained(evaluated, "ImageNet", CLASSNAMES[:2])  # new classes
    assert not trained(evaluated, "ImageNetV2", CLASSNAMES)  # same classes, another dataset (same_dataset)
    getattr(evaluated.prompt_learner, TRAINED_ON).set_extra_state({"dataset": None, "classnames": None})
    assert trained(evaluated, "ImageNet", CLASSNAMES[:2], "base") and not trained(evaluated, "x", [], "new")


def test_eval_only_on_new_classes_uses_the_unseen_rule(tmp_path, monkeypatch):
    """Through train.py: a model with a logit rule trains on the base classes (its checkpoint then holds them),
    its final test is on the trained classes, an --eval-only run on the new classes is not; the predictions are
    the rule's (here the "itm" set doubled on the trained classes, plain on unseen ones)."""
    from tests.e2e import run_train
    from trainers import coop

    monkeypatch.setattr(coop.CoOpCLIP, "logit_rule", LogitRule(trained={"itm": 2.0}), raising=False)
    seen = []
    original_predict = PromptedCLIP.predict

    def predict(self, images, on_trained_classes, **cached):
        logits = original_predict(self, images, on_trained_classes, **cached)
        seen.append((on_trained_classes, torch.allclose(logits, (2.0 if on_trained_classes else 1.0) * self(images))))
        return logits

    monkeypatch.setattr(PromptedCLIP, "predict", predict)
    config = "configs/trainers/CoOp/vit_b16_ep50.yaml"
    train_dir, _ = run_train(tmp_path, "CoOp", config, subsample="base", opts=("OPTIM.MAX_EPOCH", "1"))
    assert seen and all(trained and right for trained, right in seen)
    seen.clear()
    run_train(tmp_path, "CoOp", config, subsample="new", eval_only=True, model_dir=train_dir, load_epoch=1)
    assert seen and all(not trained and right for trained, right in seen)
    checkpoint = torch.load(train_dir / "prompt_learner" / "model.pth.tar-1", weights_only=False)
    assert len(checkpoint["state_dict"][f"{TRAINED_ON}._extra_state"]["classnames"]) > 0
