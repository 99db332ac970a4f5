"""Backbone loading: random backbones (deterministic, real CLIP class, requested architecture), real weights from
a path / clip's cache, and one-line errors for wrong names, missing files and offline machines."""
import urllib.error

import clip
import pytest
import torch
from clip.model import CLIP

import clip.clip as openai_clip
from dassl.config import get_cfg_default
from mmpt import clip_backbone
from dassl.utils import ConfigError
from mmpt.clip_backbone import (BackboneNotFoundError, build_random_clip, clip_file_name, load_clip,
                                load_clip_by_name)

VIT_B16_URL = openai_clip._MODELS["ViT-B/16"]


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_random_tiny_vit_architecture_and_notice(capsys):
    model = build_random_clip("random-tiny-ViT", seed=0)
    assert "RANDOM weights" in capsys.readouterr().out
    assert isinstance(model, CLIP) and not model.training
    visual = model.visual
    assert (visual.input_resolution, visual.conv1.kernel_size, visual.conv1.out_channels) == (32, (8, 8), 64)
    assert len(visual.transformer.resblocks) == 2 and len(model.transformer.resblocks) == 2
    assert {b.attn.num_heads for b in [*visual.transformer.resblocks, *model.transformer.resblocks]} == {2}
    assert model.text_projection.shape == (64, 64) and visual.proj.shape == (64, 64)
    assert model.positional_embedding.shape == (77, 64) and model.token_embedding.num_embeddings == 49408
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # no constant tensors left (LayerNorm weights / biases are perturbed): comparisons cannot pass by a vanishing term
    assert not torch.equal(visual.ln_pre.weight, torch.ones(64))
    assert model.transformer.resblocks[0].attn.in_proj_bias.abs().sum() > 0


def test_random_backbones_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_random_clip("random-tiny-ViT", seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    assert same_weights(a, build_random_clip("random-tiny-ViT", seed=0))
    assert not same_weights(a, build_random_clip("random-tiny-ViT", seed=1))
    assert same_weights(a, load_clip_by_name("random-tiny-ViT"))


# parameter counts of OpenAI's released models (CLIP's "Interacting with CLIP" notebook prints them)
PUBLISHED_PARAMETERS = {"RN50": 102_007_137, "RN101": 119_688_033, "ViT-B/32": 151_277_313,
                        "ViT-B/16": 149_620_737, "ViT-L/14": 427_616_513}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_random_real_architectures_have_the_published_sizes(name):
    """random-<name> builds exactly the released architecture (checked on the meta device: no memory, no time)."""
    with torch.device("meta"):
        model = CLIP(*clip_backbone.ARCHITECTURES[name])
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]
    if name.startswith("ViT"):
        patch = int(name.split("/")[1])
        assert model.visual.conv1.kernel_size == (patch, patch)
        assert model.visual.positional_embedding.shape[0] == (224 // patch) ** 2 + 1


def test_load_clip_from_cfg_and_random_resnet():
    cfg = get_cfg_default()
    cfg.MODEL.BACKBONE.NAME = "random-tiny-RN"
    model = load_clip(cfg)
    assert same_weights(model, build_random_clip("random-tiny-RN", seed=0))
    assert model.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 64)


@pytest.mark.parametrize("wrapped", [False, True])
def test_real_name_loads_a_state_dict_file_or_folder(tmp_path, wrapped):
    source = build_random_clip("random-tiny-RN", seed=0)
    state = source.half().state_dict()  # clip's checkpoints are fp16: the loader returns fp32
    path = tmp_path / clip_file_name("RN50")
    torch.save({"state_dict": state} if wrapped else state, path)
    for location in (str(path), str(tmp_path)):
        model = load_clip_by_name("RN50", path=location)
        assert all(p.dtype == torch.float32 for p in model.parameters()) and not model.training
        assert all(torch.equal(model.state_dict()[k].half(), v) for k, v in state.items())


def test_real_name_falls_back_to_clips_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".cache" / "clip").mkdir(parents=True)
    torch.save(build_random_clip("random-tiny-RN", seed=2).state_dict(), tmp_path / ".cache" / "clip" / "ViT-B-16.pt")
    monkeypatch.setattr(openai_clip, "_download", lambda *a: pytest.fail("must not download when cached"))
    assert same_weights(load_clip_by_name("ViT-B/16"), build_random_clip("random-tiny-RN", seed=2))


def test_missing_path_is_one_line_naming_path_and_url(tmp_path):
    missing = tmp_path / "nowhere.pt"
    with pytest.raises(BackboneNotFoundError) as err:
        load_clip_by_name("ViT-B/16", path=str(missing))
    message = str(err.value)
    assert "\n" not in message and str(missing) in message and VIT_B16_URL in message


def test_offline_without_cache_is_one_line_naming_path_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))

    def offline(url, root):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(openai_clip, "_download", offline)
    with pytest.raises(BackboneNotFoundError) as err:
        load_clip_by_name("ViT-B/16")
    message = str(err.value)
    assert "\n" not in message and VIT_B16_URL in message
    assert str(tmp_path / ".cache" / "clip" / "ViT-B-16.pt") in message


def test_wrong_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        load_clip_by_name("ViT-B16")
    message = str(err.value)
    assert "\n" not in message and "'ViT-B16'" in message
    assert all(name in message for name in ["RN50", "ViT-B/16", "ViT-L/14", "random-tiny-ViT", "random-ViT-B/16"])


@pytest.mark.filterwarnings("ignore")  # torch.jit deprecation / tracer notices
def test_real_name_loads_a_jit_archive(tmp_path):
    """clip releases JIT archives: their state dict is read and rebuilt with clip's build_model."""
    source = build_random_clip("random-tiny-RN", seed=3)
    traced = torch.jit.trace(source, (torch.randn(1, 3, 32, 32), clip.tokenize(["a"])), check_trace=False)
    traced.save(str(tmp_path / "RN50.pt"))
    assert same_weights(load_clip_by_name("RN50", path=str(tmp_path)), source)
