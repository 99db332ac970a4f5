"""open_clip backbones through the prompted encoders (docs/ARCHITECTURE.md, "Backbones").

Small random models are built in process with open_clip's own classes (open_clip.model.CLIP with tiny
CLIPVisionCfg / CLIPTextCfg): one with layer scale, one with last-token text pooling, a Linear text projection,
mean-pooled image features and no ln_pre, one with open_clip's custom block (QK norm, head scale, inner and
attention norms, MLP norm) and final_ln_after_pool, one whose text tower has no causal mask, and open_clip's
ResNet. Without prompts the encoders equal
open_clip's encode_text / encode_image in every text path; with deep prompts they equal a reference written here
on open_clip's own block forward; every method builds, trains only its prompt learner, and its class features
from an initialised context equal encode_text of the words. The ViT-L/14 shapes are checked on the meta device.
"""
import hashlib
import http.server
import io
import json
import sys
import threading

import clip
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")
from open_clip.model import CLIP as OpenCLIP, CLIPTextCfg, CLIPVisionCfg  # noqa: E402

import mmpt  # noqa: E402
import trainers  # noqa: E402,F401  (declares the methods)
from dassl.utils import ConfigError  # noqa: E402
from mmpt.clip_backbone import (ARCHITECTURES, BackboneNotFoundError, OPEN_CLIP_TINY, check_backbone_name,  # noqa: E402
                                load_clip_by_name)
from mmpt.encoders import PromptedImageEncoder, PromptedTextEncoder, TextOptions, TowerSchedule  # noqa: E402
from tests.e2e import perturb_constant_parameters, run_train  # noqa: E402
from tests.record_logits import CLASSNAMES, all_variants  # noqa: E402

LAYERS = 3
ATOL = 2e-5
# distinct widths (text 64, vision 96, joint 48) so that no formula can mix them up; 3 layers per tower
TEXT = dict(context_length=77, vocab_size=49408, width=64, heads=2, layers=LAYERS)
VISION = dict(image_size=32, patch_size=8, width=96, layers=LAYERS, head_width=48)
BACKBONES = {
    "layer_scale": (dict(VISION, ls_init_value=0.3), dict(TEXT, ls_init_value=0.3)),
    "last_token": (dict(VISION, pool_type="avg", no_ln_pre=True), dict(TEXT, pool_type="last", proj_bias=True)),
    "custom_block": (dict(VISION, pool_type="avg", final_ln_after_pool=True, qk_norm=True, scale_heads=True,
                          scale_attn_inner=True, scale_attn=True, scale_fc=True),
                     dict(TEXT, qk_norm=True, scale_heads=True, scale_attn_inner=True, scale_attn=True, scale_fc=True)),
    "resnet": (dict(image_size=32, layers=(1, 1, 1, 1), width=8), TEXT),
    "bidirectional": (VISION, dict(TEXT, no_causal_mask=True)),  # no causal mask: every token sees all 77
}
SENTENCES = ["a photo of a cat.", "a photo of a great white shark.", "itap of a golden retriever on grass."]
TEXT_PATHS = {"plain": TextOptions(truncate=False, share_prefix=False), "truncated": TextOptions(share_prefix=False),
              "shared_prefix": TextOptions(), "chunked": TextOptions(chunk_size=2),
              "checkpointed": TextOptions(checkpoint=True)}


def build_open_clip(kind):
    vision, text = BACKBONES[kind]
    torch.manual_seed(0)
    model = OpenCLIP(48, CLIPVisionCfg(**vision), CLIPTextCfg(**text))
    perturb_constant_parameters(model)
    return model.float().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def backbones():
    return {kind: build_open_clip(kind) for kind in BACKBONES}


def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def seeded(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.mark.parametrize("kind", sorted(BACKBONES))
def test_without_prompts_the_encoders_equal_open_clips_own(backbones, kind):
    model = backbones[kind]
    ids = clip.tokenize(SENTENCES)
    with torch.no_grad():
        expected = model.encode_text(ids)
        for path, options in TEXT_PATHS.items():
            assert torch.allclose(PromptedTextEncoder(model, options)(ids), expected, atol=ATOL), path
        assert torch.allclose(PromptedImageEncoder(model)(images()), model.encode_image(images()), atol=ATOL)


# ---- a reference on open_clip's own blocks: deep prompts replace the prompt region before each layer l >= 1

def reference_text(model, ids, prompts):
    x = model.token_embedding(ids)
    n = prompts[0].shape[0]
    x = torch.cat([x[:, :1], prompts[0].expand(len(ids), -1, -1), x[:, 1 + n:]], dim=1) + model.positional_embedding
    for layer, block in enumerate(model.transformer.resblocks):
        if 1 <= layer < len(prompts):
            x = torch.cat([x[:, :1], prompts[layer].expand(len(ids), -1, -1), x[:, 1 + n:]], dim=1)
        x = block(x, attn_mask=model.attn_mask)  # open_clip's forward, batch first, its additive causal mask
    pooled = x[:, -1] if model.text_pool_type == "last" else x[torch.arange(len(ids)), ids.argmax(-1)]
    pooled = model.ln_final(pooled)
    projection = model.text_projection
    return projection(pooled) if isinstance(projection, torch.nn.Linear) else pooled @ projection


def reference_image(model, images, prompts):
    visual = model.visual
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(len(images), 1, -1), x], dim=1) + visual.positional_embedding
    n = prompts[0].shape[0]
    x = visual.ln_pre(torch.cat([x, prompts[0].expand(len(images), -1, -1)], dim=1))
    for layer, block in enumerate(visual.transformer.resblocks):
        if layer >= 1:
            x = torch.cat([x[:, :-n], prompts[layer].expand(len(images), -1, -1)], dim=1)
        x = block(x)
    pooled, _ = visual._pool(x[:, :-n])  # open_clip's own pooling, on the image's tokens
    return pooled @ visual.proj


@pytest.mark.parametrize("kind", ["layer_scale", "last_token", "custom_block", "bidirectional"])
def test_deep_prompts_run_open_clips_blocks(backbones, kind):
    model = backbones[kind]
    ids = clip.tokenize(["X X X " + s for s in SENTENCES])
    text = [seeded(3, 64, seed=layer) for layer in range(LAYERS)]
    vision = [seeded(2, 96, seed=10 + layer) for layer in range(LAYERS)]
    with torch.no_grad():
        expected = reference_text(model, ids, text)
        for path, options in TEXT_PATHS.items():
            measured = PromptedTextEncoder(model, options)(ids, TowerSchedule(text))
            assert torch.allclose(measured, expected, atol=ATOL), path
        measured = PromptedImageEncoder(model)(images(), TowerSchedule(vision))
        assert torch.allclose(measured, reference_image(model, images(), vision), atol=ATOL)


def test_per_image_prompt_sets_equal_one_pass_per_set(backbones):
    """CoCoOp's path: G prompt sets through the shared prefix equal G plain passes, on open_clip's blocks."""
    model = backbones["custom_block"]
    ids = clip.tokenize(["X X " + s for s in SENTENCES])
    per_set = seeded(4, 2, 64, seed=5)
    with torch.no_grad():
        grouped = PromptedTextEncoder(model).per_prompt_set(ids, TowerSchedule([per_set]))
        for g in range(4):
            assert torch.allclose(grouped[g], reference_text(model, ids, [per_set[g]]), atol=ATOL)


# ---- every method on open_clip backbones

def method_variants(resnet):
    return [pytest.param(v, id=v[0]) for v, on_resnet in all_variants() if on_resnet == resnet]


def train_one_step(model):
    """One SGD step: only prompt-learner tensors are trainable, get gradients and change."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} <= {id(p) for p in model.prompt_learner.parameters()}
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    logits = model(images())
    assert logits.shape == (3, len(CLASSNAMES)) and torch.isfinite(logits).all()
    if not trainable:  # zero-shot CLIP
        return
    F.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in trainable)
    torch.optim.SGD(trainable, lr=0.1).step()
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


@pytest.mark.parametrize("variant", method_variants(resnet=False))
def test_every_method_trains_only_its_prompts_on_open_clip(backbones, variant):
    name, trainer, overrides = variant
    torch.manual_seed(2)
    model = mmpt.create_model(trainer, backbones["layer_scale" if len(name) % 2 else "custom_block"], CLASSNAMES,
                              **overrides)
    train_one_step(model)


TEXT_ONLY = {"ZeroshotCLIP": {}, "CoOp": {}, "CoCoOp": {}, "KgCoOp": {}, "TCP": dict(INJECT_LAYER=1)}
TEXT_ONLY.update({f"ExtrasLinearProbe{base}": {} for base in ("CoOp", "CoCoOp", "KgCoOp")})  # DePT on them


@pytest.fixture(scope="module")
def resnets(backbones):
    return {"open_clip": backbones["resnet"], "openai": load_clip_by_name("random-tiny-RN")}


@pytest.mark.parametrize("family", ["open_clip", "openai"])
@pytest.mark.parametrize("trainer", sorted(TEXT_ONLY))
def test_text_only_methods_run_on_resnets(resnets, trainer, family):
    torch.manual_seed(2)
    train_one_step(mmpt.create_model(trainer, resnets[family], CLASSNAMES, **TEXT_ONLY[trainer]))


def test_methods_prompting_the_image_tower_refuse_a_resnet_in_one_line(resnets):
    refused = sorted(set(mmpt.declared_methods()) - set(TEXT_ONLY))
    assert {"MaPLe", "MuDPT", "MPL", "VPT", "IVLP"} <= set(refused)
    for trainer in refused:
        for model in resnets.values():
            with pytest.raises(ConfigError) as error:
                mmpt.create_model(trainer, model, CLASSNAMES)
            assert "need a ViT backbone" in str(error.value) and "\n" not in str(error.value), trainer


@pytest.mark.parametrize("kind", ["layer_scale", "last_token", "resnet"])
def test_an_initialised_context_gives_open_clips_text_features(backbones, kind):
    """Zero-shot CLIP, and CoOp / CoCoOp whose context is the embedding of "a photo of a" (CoCoOp's Meta-Net
    zeroed: its identity), equal encode_text of the written sentences."""
    model = backbones[kind]
    expected = F.normalize(model.encode_text(clip.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in
                                                            CLASSNAMES])), dim=-1)
    zero_shot = mmpt.create_model("ZeroshotCLIP", model, CLASSNAMES, TEMPLATE="a photo of a {}.")
    coop = mmpt.create_model("CoOp", model, CLASSNAMES, N_CTX=4, CTX_INIT="a photo of a")
    cocoop = mmpt.create_model("CoCoOp", model, CLASSNAMES, N_CTX=4, CTX_INIT="a photo of a")
    with torch.no_grad():
        cocoop.prompt_learner.meta_net.linear2.weight.zero_()
        cocoop.prompt_learner.meta_net.linear2.bias.zero_()
        image_features = F.normalize(model.encode_image(images()), dim=-1)
        for method in (zero_shot, coop):
            assert torch.allclose(method.class_features(), expected, atol=ATOL)
            assert torch.allclose(method(images()), model.logit_scale.exp() * image_features @ expected.t(),
                                  atol=1e-3)
        per_image = cocoop.per_image_class_features(image_features, cocoop.compute_prompts())
        assert torch.allclose(per_image, expected.expand(3, -1, -1), atol=ATOL)


# ---- ViT-L/14 shapes: coupling widths follow the backbone (meta device: no memory, no initialisation)

def shape_only(build):
    with torch.device("meta"):
        model = build()
    model.token_embedding.to_empty(device="cpu")  # the sentences embed their initial words
    torch.nn.init.normal_(model.token_embedding.weight, std=0.02)
    return model


VIT_L = {"openai": lambda: shape_only(lambda: clip.model.CLIP(*ARCHITECTURES["ViT-L/14"])),
         "open_clip": lambda: shape_only(lambda: open_clip.create_model("ViT-L-14", device="meta"))}
D_T, D_V = 768, 1024  # ViT-L/14's text and image widths


@pytest.mark.parametrize("family", sorted(VIT_L))
def test_vit_l14_couplings_follow_the_backbone(family):
    model = VIT_L[family]()
    count = lambda m: sum(p.numel() for p in m.prompt_learner.parameters())  # noqa: E731
    maple = mmpt.create_model("MaPLe", model, CLASSNAMES)  # n 2, J 9: ctx, J-1 deep text, J Linear(d_t, d_v)
    assert maple.prompt_learner.proj.weight.shape == (D_V, D_T)
    assert count(maple) == 2 * D_T + 8 * 2 * D_T + 9 * (D_T * D_V + D_V)
    mudpt = mmpt.create_model("MuDPT", model, CLASSNAMES)  # n 4, J 12, the joint block as wide as the text tower
    w = D_T
    assert mudpt.prompt_learner.injection.block.attn.num_heads == 12
    assert count(mudpt) == 12 * 4 * (D_T + D_V) + (D_T + 1) * w + (D_V + 1) * w + 12 * w * w + 13 * w \
        + (w + 1) * D_V + (w + 1) * D_T
    mpl = mmpt.create_model("MPL", model, CLASSNAMES)  # n 1, J 9, 2 add slots per deep layer
    assert mpl.prompt_learner.proj.weight.shape == (D_V, D_T)
    assert count(mpl) == D_T + (D_T + 1) * D_V + 8 * (D_T + 2 * (D_T + 1) * D_V)


# ---- names, loading, offline

def test_names_are_validated_in_one_line():
    check_backbone_name("open_clip:ViT-B-16/laion2b_s34b_b88k")
    check_backbone_name("open_clip:hf-hub:laion/CLIP-ViT-B-16-laion2B-s34B-b88K")
    check_backbone_name("random-open_clip:ViT-L-14")
    for name, listed in [("open_clip:ViT-B-99/laion2b", "ViT-B-16"), ("open_clip:ViT-B-16/laion9",
                                                                       "laion2b_s34b_b88k"),
                         ("open_clip:hf-hub:norepo", "<org>/<repo>"), ("random-open_clip:tiny-XYZ", "tiny-ViT-ls"),
                         ("ViT-B/99", "open_clip:<model>/<pretrained tag>")]:
        with pytest.raises(ConfigError) as error:
            check_backbone_name(name)
        assert listed in str(error.value) and "\n" not in str(error.value), name


def test_without_open_clip_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip now raises ImportError
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[open_clip\]"'):
        load_clip_by_name("open_clip:ViT-B-16/laion2b_s34b_b88k")


def test_a_local_checkpoint_loads_and_a_bad_one_fails_in_one_line(tmp_path):
    """MODEL.BACKBONE.PATH with open_clip:<model> (here a model config added to open_clip's registry)."""
    reference = load_clip_by_name("random-open_clip:tiny-ViT-ls")
    embed, vision, text = OPEN_CLIP_TINY["tiny-ViT-ls"]
    (tmp_path / "mmpt-test-tiny.json").write_text(json.dumps({"embed_dim": embed, "vision_cfg": vision,
                                                               "text_cfg": text}))
    open_clip.add_model_config(tmp_path / "mmpt-test-tiny.json")
    torch.save(reference.state_dict(), tmp_path / "weights.pt")
    loaded = load_clip_by_name("open_clip:mmpt-test-tiny", str(tmp_path / "weights.pt"))
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), reference.state_dict().values()))
    ids = clip.tokenize(SENTENCES)
    assert torch.allclose(PromptedTextEncoder(loaded)(ids), reference.encode_text(ids), atol=ATOL)
    with pytest.raises(BackboneNotFoundError, match="no open_clip checkpoint file"):
        load_clip_by_name("open_clip:ViT-B-16", str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="give a pretrained tag"):
        load_clip_by_name("open_clip:ViT-B-16")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(Exception) as error:
        load_clip_by_name("open_clip:mmpt-test-tiny", str(tmp_path / "garbage.pt"))
    assert "garbage.pt" in str(error.value) and "\n" not in str(error.value)


class LoopbackHub(http.server.BaseHTTPRequestHandler):
    """The Hub's download API for one repository: `/<repo>/resolve/<revision>/<file>` answers HEAD and GET with
    the headers hf_hub_download reads (X-Repo-Commit, ETag, Content-Length); 404 EntryNotFound otherwise."""

    files = None  # {file name: bytes}
    repo = None
    requests = None

    def log_message(self, *args):
        pass

    def do_HEAD(self, body=False):
        self.requests.append((self.command, self.path))
        prefix = f"/{self.repo}/resolve/"
        name = self.path.split("?")[0][len(prefix):].split("/", 1)[-1] if self.path.startswith(prefix) else None
        if name not in self.files:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.files[name]
        self.send_response(200)
        self.send_header("X-Repo-Commit", "1" * 40)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):
        self.do_HEAD(body=True)


@pytest.fixture
def loopback_hub(tmp_path, monkeypatch):
    """open_clip's Hub downloads go to a loopback server (huggingface_hub's constants hold the endpoint and the
    cache, read from HF_ENDPOINT / HF_HUB_CACHE at import: set here directly); yields (handler class, set_offline)."""
    constants = pytest.importorskip("huggingface_hub.constants")
    handler = type("Hub", (LoopbackHub,), {"files": {}, "repo": "mmpt-test/tiny-ViT-ls", "requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield handler, lambda offline: monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    server.shutdown()
    server.server_close()


def test_hub_models_download_into_the_cache_and_load_offline_from_it(loopback_hub):
    """open_clip:hf-hub:<repo>: offline with an empty cache, one line naming offline mode; online, open_clip's
    own download through the Hub API into the cache; then offline (HF_HUB_OFFLINE=1), the cache alone."""
    handler, set_offline = loopback_hub
    name = "open_clip:hf-hub:mmpt-test/tiny-ViT-ls"
    set_offline(True)
    with pytest.raises(BackboneNotFoundError) as error:
        load_clip_by_name(name)
    assert "HF_HUB_OFFLINE" in str(error.value) and "mmpt-test/tiny-ViT-ls" in str(error.value)
    assert "\n" not in str(error.value) and not handler.requests
    reference = load_clip_by_name("random-open_clip:tiny-ViT-ls")
    embed, vision, text = OPEN_CLIP_TINY["tiny-ViT-ls"]
    weights = io.BytesIO()
    torch.save(reference.state_dict(), weights)
    handler.files.update({"open_clip_config.json": json.dumps(
        {"model_cfg": {"embed_dim": embed, "vision_cfg": vision, "text_cfg": text}}).encode(),
        "open_clip_pytorch_model.bin": weights.getvalue()})
    for offline in (False, True):
        set_offline(offline)
        served = len(handler.requests)
        model = load_clip_by_name(name)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))
        assert (len(handler.requests) == served) == offline  # offline: no request at all
    assert any(path.endswith("open_clip_pytorch_model.bin") for method, path in handler.requests if method == "GET")


# ---- train.py end to end on a random open_clip backbone

@pytest.mark.parametrize("trainer, config, opts", [
    ("CoOp", "configs/trainers/CoOp/vit_b16_ep50.yaml", ()),
    ("MuDPT", "configs/trainers/MuDPT/vit_b16_c4_ep10_batch4_joint.yaml", ("TRAINER.MUDPT.PROMPT_DEPTH", "2")),
])
def test_train_and_evaluate_on_a_random_open_clip_backbone(tmp_path, trainer, config, opts):
    output_dir, log = run_train(tmp_path, trainer, config, opts=("MODEL.BACKBONE.NAME", "random-open_clip:tiny-ViT-ls",
                                                                 "OPTIM.MAX_EPOCH", "1", *opts))
    assert "random-open_clip:tiny-ViT-ls" in log and "Finish training" in log and "* accuracy:" in log
    assert (output_dir / "prompt_learner" / "model.pth.tar-1").is_file()


def test_prompts_of_one_backbone_never_load_or_skip_on_another(tmp_path):
    """Same widths (64), other backbone: --model-dir refuses the checkpoint, the run folder refuses the run."""
    from dassl.utils import RunError

    opts = ("MODEL.BACKBONE.NAME", "random-open_clip:tiny-ViT-ls", "OPTIM.MAX_EPOCH", "1")
    config = "configs/trainers/CoOp/vit_b16_ep50.yaml"
    train_dir, _ = run_train(tmp_path, "CoOp", config, opts=opts)
    _, log = run_train(tmp_path, "CoOp", config, opts=opts, eval_only=True, model_dir=train_dir, load_epoch=1)
    assert "* accuracy:" in log
    other = ("MODEL.BACKBONE.NAME", "random-open_clip:tiny-ViT", "OPTIM.MAX_EPOCH", "1")
    with pytest.raises(RunError, match="trained on the backbone 'random-open_clip:tiny-ViT-ls'"):
        run_train(tmp_path, "CoOp", config, opts=other, eval_only=True, model_dir=train_dir, load_epoch=1,
                  output_dir=tmp_path / "other_eval")
    with pytest.raises(Exception, match="MODEL.BACKBONE.NAME"):
        run_train(tmp_path, "CoOp", config, opts=other, output_dir=train_dir)


def test_a_checkpoint_names_the_weights_file_where_the_name_does_not():
    """open_clip:<model> takes its weights from MODEL.BACKBONE.PATH alone: two files are two backbones."""
    from mmpt.clip_backbone import backbone_identity

    assert backbone_identity("open_clip:ViT-B-16", "/a/tuned.pt") != backbone_identity("open_clip:ViT-B-16", "/b/x.pt")
    for name in ("ViT-B/16", "open_clip:ViT-B-16/laion2b_s34b_b88k", "open_clip:hf-hub:org/repo"):
        assert backbone_identity(name, "/models/file.pt") == name  # the name names the weights


@pytest.mark.parametrize("vision, text, named", [
    (dict(VISION, attentional_pool=True, attn_pooler_heads=2), TEXT, "attentional pooling"),
    (VISION, dict(TEXT, scaled_cosine_attn=True), "scaled cosine attention"),
    (VISION, dict(TEXT, vocab_size=1000), "CLIP's BPE tokenizer"),
])
def test_towers_the_encoders_cannot_run_exactly_are_refused_in_one_line(vision, text, named):
    from mmpt.clip_backbone import checked_open_clip

    model = OpenCLIP(48, CLIPVisionCfg(**vision), CLIPTextCfg(**text))
    with pytest.raises(ConfigError) as error:
        checked_open_clip(model, "open_clip:test")
    assert named in str(error.value) and "open_clip:test" in str(error.value) and "\n" not in str(error.value)
