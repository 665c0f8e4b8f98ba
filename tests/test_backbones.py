"""Feature extractors: tiny random-weight models of every family, saved locally, loaded as a user would."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

from multilabel_imagenet.builder import backbones

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
TIMM_MODELS = [  # (timm name as in the paper's ensemble / the labeler, prefix tokens, rotary embeddings)
    ("vit_base_patch8_224.dino", 1, False),
    ("vit_large_patch14_dinov2.lvd142m", 1, False),
    ("vit_small_patch14_reg4_dinov2.lvd142m", 5, False),
    ("vit_base_patch16_dinov3.lvd1689m", 5, True),
    ("vit_base_patch16_dinov3_qkvb.lvd1689m", 5, True),  # q/k/v biases kept outside the qkv Linear
]


class SdpaSpy:
    """Records the q, k, v handed to scaled_dot_product_attention (the last call is the last block's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.calls: list[tuple[torch.Tensor, ...]] = []
        original = F.scaled_dot_product_attention

        def spy(q, k, v, *args, **kwargs):
            self.calls.append((q, k, v))
            return original(q, k, v, *args, **kwargs)

        monkeypatch.setattr(F, "scaled_dot_product_attention", spy)

    def last(self, which: str, prefix: int) -> torch.Tensor:
        t = self.calls[-1]["qkv".index(which)]  # (B, heads, N, head_dim)
        return t.transpose(1, 2).flatten(2)[:, prefix:]


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timm")
    out = {}
    for name, _, _ in TIMM_MODELS:
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=0, **TINY)
        with torch.no_grad():  # zero-initialised biases would hide a dropped bias
            for pname, param in model.named_parameters():
                if pname.endswith("bias"):
                    param.normal_()
        path = folder / f"{name}.safetensors"
        save_file(model.state_dict(), str(path))
        out[name] = (path, model.state_dict())
    return out


@pytest.mark.parametrize(("name", "prefix", "rope"), TIMM_MODELS)
@pytest.mark.parametrize("feature", ["q", "k", "v"])
def test_timm_attention_features_match_what_the_attention_uses(timm_files, monkeypatch, name, prefix, rope, feature):
    path, state = timm_files[name]
    ex = backbones.load_backbone(name, feature, weights=path, model_kwargs=TINY)
    loaded = ex.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())  # the file's weights, not a fresh init
    assert ex.model.num_prefix_tokens == prefix
    p = ex.patch_size
    images = torch.randn(2, 3, 5 * p, 7 * p)  # any multiple of the patch size, not square
    feats = ex(images)
    assert feats.shape == (2, 5, 7, 32) and feats.dtype == torch.float32
    spy = SdpaSpy(monkeypatch)
    ex.model.forward_features(images)  # the whole forward pass: its last attention call is the last block's
    if rope and feature in "qk":  # rotary embeddings are applied after the projection: compare norms only
        assert torch.isfinite(feats).all()
    else:
        expected = spy.last(feature, prefix).reshape(2, 5, 7, 32)
        torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("name", "prefix", "rope"), TIMM_MODELS)
def test_timm_patch_tokens_drop_cls_and_registers(timm_files, name, prefix, rope):
    path, _ = timm_files[name]
    ex = backbones.load_backbone(name, "patch", weights=path, model_kwargs=TINY)
    images = torch.randn(1, 3, 4 * ex.patch_size, 4 * ex.patch_size)
    tokens = ex.model.forward_features(images)
    assert tokens.shape[1] == 16 + prefix
    torch.testing.assert_close(ex(images), tokens[:, prefix:].reshape(1, 4, 4, 32))


def _hf_models():
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
        DINOv3ViTConfig,
        DINOv3ViTModel,
    )

    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    return [
        ("dinov2", Dinov2Model(Dinov2Config(patch_size=14, image_size=56, **common)), 1),
        (
            "dinov2_reg",
            Dinov2WithRegistersModel(Dinov2WithRegistersConfig(patch_size=14, image_size=56, **common)),
            1 + 4,
        ),
        ("dinov3", DINOv3ViTModel(DINOv3ViTConfig(patch_size=16, num_register_tokens=4, **common)), 1 + 4),
    ]


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    torch.manual_seed(0)
    out = {}
    for key, model, prefix in _hf_models():
        with torch.no_grad():
            for pname, param in model.named_parameters():
                if pname.endswith("bias"):
                    param.normal_()
        folder = tmp_path_factory.mktemp(key)
        model.save_pretrained(folder)  # safetensors
        assert (folder / "model.safetensors").is_file()
        out[key] = (folder, prefix)
    return out


@pytest.mark.parametrize("key", ["dinov2", "dinov2_reg", "dinov3"])
@pytest.mark.parametrize("feature", ["k", "v", "patch"])
def test_transformers_models_from_a_local_folder(hf_folders, monkeypatch, key, feature):
    folder, prefix = hf_folders[key]
    ex = backbones.load_backbone(f"hf:{folder}", feature)
    assert ex.num_prefix == prefix
    p = ex.patch_size
    images = torch.randn(2, 3, 3 * p, 4 * p)
    feats = ex(images)
    assert feats.shape == (2, 3, 4, 32)
    spy = SdpaSpy(monkeypatch)
    ex.model(pixel_values=images)  # the whole forward pass: its last attention call is the last block's
    if feature == "patch":
        expected = ex.model(pixel_values=images).last_hidden_state[:, prefix:]
        torch.testing.assert_close(feats, expected.reshape(2, 3, 4, 32))
    elif not (key == "dinov3" and feature == "k"):  # DINOv3 rotates k after the projection
        torch.testing.assert_close(feats, spy.last(feature, prefix).reshape(2, 3, 4, 32), rtol=1e-5, atol=1e-5)
    # A bare folder path (no hf: prefix) loads the same model.
    torch.testing.assert_close(backbones.load_backbone(str(folder), feature)(images), feats)


@pytest.mark.parametrize("name", ["vit_base_patch8_224.dino", "vit_base_patch16_dinov3.lvd1689m", "hf:dinov2"])
def test_attention_features_stop_the_forward_pass_at_the_last_projection(timm_files, hf_folders, monkeypatch, name):
    if name.startswith("hf:"):
        folder, _ = hf_folders[name[3:]]
        load = lambda feature: backbones.load_backbone(f"hf:{folder}", feature)  # noqa: E731
    else:
        path, _ = timm_files[name]
        load = lambda feature: backbones.load_backbone(name, feature, weights=path, model_kwargs=TINY)  # noqa: E731
    attention, patch = load("v"), load("patch")
    images = torch.randn(1, 3, 4 * patch.patch_size, 4 * patch.patch_size)
    calls, flops = {}, {}
    for key, ex in (("v", attention), ("patch", patch)):
        spy = SdpaSpy(monkeypatch)
        with FlopCounterMode(display=False) as counter:
            ex(images)
        calls[key], flops[key] = len(spy.calls), counter.get_total_flops()
    assert calls == {"v": 1, "patch": 2}  # TINY has 2 blocks: the last block's attention (and MLP) never run
    assert flops["v"] < flops["patch"]


def test_bad_inputs_raise(timm_files):
    path, _ = timm_files["vit_base_patch8_224.dino"]
    ex = backbones.load_backbone("vit_base_patch8_224.dino", "k", weights=path, model_kwargs=TINY)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        ex(torch.randn(1, 3, 20, 24))
    with pytest.raises(ValueError, match="feature must be"):
        backbones.load_backbone("vit_base_patch8_224.dino", "x", weights=path, model_kwargs=TINY)
    with pytest.raises(ValueError, match="safetensors"):
        backbones.load_backbone("vit_base_patch8_224.dino", "k", weights=path.with_suffix(".pth"), model_kwargs=TINY)
    with pytest.raises(ValueError, match="uint8"):
        backbones.preprocess([np.zeros((4, 4), np.uint8)], 16)


def test_preprocess_resizes_and_normalises():
    image = np.full((30, 50, 3), 255, np.uint8)
    x, resized = backbones.preprocess([image], 32)
    assert x.shape == (1, 3, 32, 32) and resized[0].shape == (32, 32, 3)
    expected = (1 - torch.tensor(backbones.IMAGENET_MEAN)) / torch.tensor(backbones.IMAGENET_STD)
    torch.testing.assert_close(x[0, :, 5, 5], expected)


def test_colour_texture_extractor_is_deterministic_and_separates_colours():
    ex = backbones.load_backbone("colour-texture", "patch")
    image = np.full((64, 64, 3), 128, np.uint8)
    image[16:48, 16:48] = (255, 140, 0)
    x, _ = backbones.preprocess([image], 64)
    f1, f2 = ex(x), ex(x)
    assert torch.equal(f1, f2) and f1.shape[:3] == (1, 8, 8)
    cos = F.normalize(f1[0].reshape(64, -1), dim=1) @ F.normalize(f1[0].reshape(64, -1), dim=1).T
    bg, obj = 0, 4 * 8 + 4
    assert cos[bg, 7].item() > 0.99 and cos[obj, 3 * 8 + 3].item() > 0.99 and cos[bg, obj].item() < 0.3


def test_fp32_by_default_and_bf16_on_request(timm_files):
    path, _ = timm_files["vit_base_patch8_224.dino"]
    fp32 = backbones.load_backbone("vit_base_patch8_224.dino", "k", weights=path, model_kwargs=TINY)
    bf16 = backbones.load_backbone("vit_base_patch8_224.dino", "k", weights=path, model_kwargs=TINY, precision="bf16")
    images = torch.randn(2, 3, 32, 32)
    exact, rounded = fp32(images), bf16(images)
    assert fp32.precision == "fp32" and exact.dtype == rounded.dtype == torch.float32
    assert not torch.equal(exact, rounded)  # bf16 did run
    assert F.cosine_similarity(exact.flatten(0, 2), rounded.flatten(0, 2), dim=1).min().item() > 0.98
    with pytest.raises(ValueError, match="precision must be one of"):
        backbones.load_backbone("vit_base_patch8_224.dino", "k", weights=path, model_kwargs=TINY, precision="fp16")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_cuda(timm_files):
    path, _ = timm_files["vit_base_patch8_224.dino"]
    cpu = backbones.load_backbone("vit_base_patch8_224.dino", "k", weights=path, model_kwargs=TINY)
    gpu = backbones.load_backbone(
        "vit_base_patch8_224.dino", "k", weights=path, model_kwargs=TINY, device="cuda", precision="bf16"
    )
    images = torch.randn(2, 3, 32, 32)
    fc, fg = cpu(images), gpu(images)
    assert fg.dtype == torch.float32 and fg.device.type == "cuda"
    cos = F.cosine_similarity(fc.flatten(0, 2), fg.cpu().flatten(0, 2), dim=1)
    assert cos.min().item() > 0.98  # bf16 rounding, same features
