"""Frozen in Time: wiring against a brute-force reference, and loading real weight formats.

Full-size tests build random-initialised real architectures (ViT-B/16, DistilBERT-base), write
them in the real file formats and load them back; forward passes stay at batch 1, 1-2 frames.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from mof.models import create_model
from mof.models.convert import (
    load_frozen_checkpoint,
    load_timm_vit,
    read_timm_vit,
    resize_temporal_embed,
)
from mof.models.frozen import FrozenConfig
from mof.models.io import FrozenConfigParser
from mof.models.space_time import SpaceTimeTransformer
from tests.tokenizer_dirs import distilbert_tokenizer


# --------------------------------------------------------------------------- reference forward
def _ref_attention(attn, x, frames, n, axis):
    """One divided attention, query by query, from the description of Frozen's VarAttention."""
    length, dim = x.shape
    h = attn.num_heads
    d = dim // h
    q, k, v = (attn.qkv(x).reshape(length, 3, h, d)[:, i] for i in range(3))
    out = torch.empty(length, h, d)
    for i in range(length):
        if i == 0:
            keys = list(range(length))  # CLS attends to every token
        else:
            f, p = divmod(i - 1, n)
            group = ([1 + f * n + j for j in range(n)] if axis == "space"
                     else [1 + g * n + p for g in range(frames)])
            keys = [0, *group]  # each patch also attends to CLS
        for head in range(h):
            w = torch.softmax(torch.stack([q[i, head] @ k[j, head] for j in keys]) / d ** 0.5, 0)
            out[i, head] = sum(wj * v[j, head] for wj, j in zip(w, keys))
    return attn.proj(out.reshape(length, dim))


def _ref_video(model: SpaceTimeTransformer, video: torch.Tensor) -> torch.Tensor:
    frames, n = video.shape[0], model.patches_per_frame
    tokens = [model.cls_token[0, 0] + model.pos_embed[0, 0]]
    for f in range(frames):
        patches = model.patch_embed.proj(video[f:f + 1])[0].flatten(1).t()  # (N, D)
        for p in range(n):
            tokens.append(patches[p] + model.pos_embed[0, 1 + p] + model.temporal_embed[0, f])
    x = torch.stack(tokens)
    for blk in model.blocks:
        t = _ref_attention(blk.timeattn, blk.norm3(x), frames, n, "time")
        s = _ref_attention(blk.attn, blk.norm1(x + t), frames, n, "space")
        x = x + s  # residual from x, not from x + t
        x = x + blk.mlp(blk.norm2(x))
    return model.norm(x)[0]


@pytest.mark.parametrize("mode", ["math", "fused"])
def test_video_encoder_matches_reference(mode):
    torch.manual_seed(0)
    model = SpaceTimeTransformer(frame_size=32, patch_size=16, dim=16, depth=2, num_heads=2,
                                 max_frames=4, time_init="rand")
    with torch.no_grad():
        model.temporal_embed.normal_(0, 0.5)  # make frame order matter
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = mode == "fused"
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        ours = model(video)
        ref = torch.stack([_ref_video(model, v) for v in video])
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_time_init_zeros_makes_time_attention_vanish():
    torch.manual_seed(0)
    model = SpaceTimeTransformer(frame_size=32, dim=16, depth=1, num_heads=2, max_frames=4)
    blk = model.blocks[0]
    assert blk.timeattn.proj.weight.eq(1).all() and blk.timeattn.qkv.weight.eq(0).all()
    x = torch.randn(2, 1 + 3 * 4, 16)
    assert blk.timeattn(blk.norm3(x), 3, "time").abs().max() == 0


def test_masked_frames_equal_truncated_video():
    torch.manual_seed(0)
    model = create_model("frozen-tiny", time_init="rand").eval()
    video = torch.randn(2, 6, 3, 64, 64)
    mask = torch.tensor([[True] * 3 + [False] * 3, [True] * 6])
    padded = video.clone()
    padded[0, 3:] = 50.0
    for mode in ("math", "fused"):
        model.set_attention(mode)
        emb = model.encode_video(padded, mask)
        torch.testing.assert_close(emb[0], model.encode_video(video[:1, :3])[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(emb[1], model.encode_video(video[1:])[0], atol=1e-5, rtol=0)


def test_grad_checkpointing_keeps_gradients_and_double_backward():
    torch.manual_seed(0)
    model = create_model("frozen-tiny", time_init="rand").train()
    video = torch.randn(2, 3, 3, 64, 64, requires_grad=True)
    ids, mask = torch.tensor([[2, 1, 3], [2, 3, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    params = list(model.parameters())

    def meta_gradient():
        grads = torch.autograd.grad(model(video, ids, mask).logsumexp(1).sum(), params,
                                    create_graph=True)
        return grads, torch.autograd.grad(sum((g * g).sum() for g in grads), video)[0]

    calls, block = [], model.video_model.blocks[0]
    block.forward = lambda *args, _forward=block.forward: calls.append(1) or _forward(*args)
    grads, meta = meta_gradient()
    assert len(calls) == 1
    model.set_grad_checkpointing(True)
    grads_ckpt, meta_ckpt = meta_gradient()
    assert len(calls) >= 3  # the block ran again in backward: its activations were not kept
    for g, h in zip(grads, grads_ckpt):
        torch.testing.assert_close(h, g, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(meta_ckpt, meta, atol=1e-6, rtol=1e-5)


def test_logits_are_cosine_over_temperature():
    model = create_model("frozen-tiny")
    t, v = torch.randn(3, 64), torch.randn(5, 64)
    cos = F.normalize(t, dim=1) @ F.normalize(v, dim=1).t()
    torch.testing.assert_close(model.logits(t, v), cos / 0.05)
    assert model.temperature == 0.05 and model.loss_reduction == "sum"


def test_config_reports_all_problems():
    with pytest.raises(ValueError) as err:
        FrozenConfig(frame_size=100, patch_size=16, time_init="ones", temperature=0)
    for name in ("frame_size 100", "time_init", "temperature"):
        assert name in str(err.value)
    with pytest.raises(TypeError, match="max_frame"):
        create_model("frozen-tiny", max_frame=4)


def test_state_dict_keys_are_frozens():
    # Frozen's released 4-frame model: 327 keys (text 100, video 223, projections 4) in
    # registration order, 180.9M parameters. Built on the meta device: no memory, no init.
    with torch.device("meta"):
        model = create_model("frozen", max_frames=4)
    state = model.state_dict()
    keys = list(state)
    assert len(keys) == 327 and keys[0] == "text_model.embeddings.word_embeddings.weight"
    assert sum(k.startswith("text_model.") for k in keys) == 100
    assert keys[100:104] == ["video_model.cls_token", "video_model.pos_embed",
                             "video_model.temporal_embed", "video_model.patch_embed.proj.weight"]
    prefix = "video_model.blocks.0."
    block = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    assert [k.rsplit(".", 1)[0] for k in block[::2]] == [
        "norm1", "attn.qkv", "attn.proj", "timeattn.qkv", "timeattn.proj", "norm2", "mlp.fc1",
        "mlp.fc2", "norm3"]
    assert keys[-4:] == ["txt_proj.1.weight", "txt_proj.1.bias", "vid_proj.0.weight",
                         "vid_proj.0.bias"]
    assert state["video_model.pos_embed"].shape == (1, 197, 768)
    assert state["video_model.temporal_embed"].shape == (1, 4, 768)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 180.9


@pytest.mark.gpu
def test_tiny_on_gpu_math_fused_and_double_backward():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = create_model("frozen-tiny").cuda().eval()
    video = torch.randn(2, 4, 3, 64, 64, device="cuda", requires_grad=True)
    ids = torch.tensor([[2, 1, 3], [2, 1, 3]], device="cuda")
    mask = torch.ones_like(ids)
    model.set_attention("fused")
    fused = model(video, ids, mask)
    model.set_attention("math")
    math_out = model(video, ids, mask)
    torch.testing.assert_close(fused, math_out, atol=1e-3, rtol=1e-3)
    grads = torch.autograd.grad(math_out.logsumexp(1).sum(), list(model.parameters()),
                                create_graph=True)
    (meta,) = torch.autograd.grad(sum((g * g).sum() for g in grads), video)
    assert torch.isfinite(meta).all() and meta.abs().sum() > 0


# ------------------------------------------------------------------- temporal-embedding resize
def test_resize_temporal_embed_modes():
    embed = torch.arange(3 * 2, dtype=torch.float32).reshape(1, 3, 2)
    torch.testing.assert_close(resize_temporal_embed(embed, 2), embed[:, :2])
    padded = resize_temporal_embed(embed, 5, "zeros")
    torch.testing.assert_close(padded[:, :3], embed)
    assert padded[:, 3:].abs().sum() == 0
    nearest = resize_temporal_embed(embed, 6, "nearest")
    torch.testing.assert_close(nearest[0], embed[0, [0, 0, 1, 1, 2, 2]])
    lin = resize_temporal_embed(embed, 6, "bilinear")
    # align_corners=False: output row i samples source position (i + 0.5)·3/6 − 0.5, clamped.
    for i in range(6):
        s = min(max((i + 0.5) * 3 / 6 - 0.5, 0.0), 2.0)
        lo, frac = int(s), s - int(s)
        hi = min(lo + 1, 2)
        torch.testing.assert_close(lin[0, i], (1 - frac) * embed[0, lo] + frac * embed[0, hi])
    with pytest.raises(ValueError, match="temporal_fix"):
        resize_temporal_embed(embed, 6, "cubic")


# --------------------------------------------------------------------- Frozen's checkpoint file
PARSE_CONFIG = '''
class ConfigParser:
    """Stand-in for pytorch-template's parse_config.ConfigParser (what Frozen pickles)."""

    def __init__(self, config, save_dir):
        self._config = config
        self.resume = None
        self.cfg_fname = save_dir / "config.json"
        self._save_dir = save_dir / "models"
        self._log_dir = save_dir / "log"
        self.log_levels = {0: 30, 1: 20, 2: 10}
'''


def _write_frozen_checkpoint(model, path: Path, tmp_path: Path) -> None:
    """Write ``model`` as Frozen's trainer does under DataParallel, then hide parse_config."""
    (tmp_path / "parse_config.py").write_text(PARSE_CONFIG)
    sys.path.insert(0, str(tmp_path))
    try:
        import parse_config

        config = parse_config.ConfigParser(
            OrderedDict(name="MSRVTTjsfusion_4f", arch={"type": "FrozenInTime"}), tmp_path)
        optim = torch.optim.AdamW(model.vid_proj.parameters(), lr=3e-5)
        model.vid_proj(torch.randn(2, model.vid_proj[0].in_features)).sum().backward()
        optim.step()
        state = OrderedDict(("module." + k, v) for k, v in model.state_dict().items())
        state["module.text_model.embeddings.position_ids"] = torch.arange(512)[None]
        torch.save({"arch": "DataParallel", "epoch": 3, "state_dict": state,
                    "optimizer": optim.state_dict(), "monitor_best": np.float64(0.25),
                    "config": config}, path)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("parse_config", None)
    assert importlib.util.find_spec("parse_config") is None


def _inputs(size: int, frames: int = 2):
    torch.manual_seed(5)
    ids = torch.tensor([[101, 2023, 2003, 1037, 3899, 102]])
    return torch.randn(1, frames, 3, size, size), ids, torch.ones_like(ids)


@pytest.mark.slow  # full-size weights
def test_frozen_checkpoint_full_size(tmp_path):
    torch.manual_seed(0)
    model = create_model("frozen", max_frames=4).eval()
    with torch.no_grad():
        model.video_model.temporal_embed.normal_(0, 0.02)
    path = tmp_path / "cc-webvid2m-4f_stformer_b_16_224.pth.tar"
    _write_frozen_checkpoint(model, path, tmp_path)
    video, ids, mask = _inputs(224, frames=1)
    with torch.no_grad():
        expected = model(video, ids, mask)
        for p in model.parameters():  # the load must restore every weight
            p.zero_()
    info = load_frozen_checkpoint(model, path)
    with torch.no_grad():
        torch.testing.assert_close(model(video, ids, mask), expected, atol=0, rtol=0)
    assert info["arch"] == "DataParallel" and info["epoch"] == 3 and "optimizer" not in info
    assert float(info["monitor_best"]) == 0.25
    config = info["config"]  # the pickled parse_config.ConfigParser, as an inert record
    assert isinstance(config, FrozenConfigParser) and config.args == ()
    assert config.state["_config"]["name"] == "MSRVTTjsfusion_4f"
    assert config.state["cfg_fname"].name == "config.json"


SMALL = {"frame_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2,
         "text": {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}}


def test_create_model_from_frozen_checkpoint_with_more_frames(tmp_path):
    torch.manual_seed(0)
    source = create_model("frozen", max_frames=4, **SMALL).eval()
    with torch.no_grad():
        source.video_model.temporal_embed.normal_(0, 0.5)
    path = tmp_path / "small.pth.tar"
    _write_frozen_checkpoint(source, path, tmp_path)
    video, ids, mask = _inputs(32)
    # 8 frames from a 4-frame checkpoint: zero-padded, so a 2-frame video encodes the same.
    loaded = create_model("frozen", max_frames=8, checkpoint=str(path), **SMALL).eval()
    temporal = loaded.video_model.temporal_embed
    assert temporal.shape == (1, 8, 32) and temporal[:, 4:].abs().sum() == 0
    with torch.no_grad():
        torch.testing.assert_close(loaded(video, ids, mask), source(video, ids, mask))
    assert loaded.sources["checkpoint"] == str(path) and "checkpoint" not in loaded.spec


def test_frozen_checkpoint_with_wrong_architecture_names_keys(tmp_path):
    small = create_model("frozen-tiny", max_frames=4)
    path = tmp_path / "tiny.pth.tar"
    torch.save({"state_dict": {"module." + k: v for k, v in small.state_dict().items()}}, path)
    other = create_model("frozen-tiny", max_frames=4, depth=1)
    with pytest.raises(ValueError, match=r"tiny\.pth\.tar.*unexpected .*blocks\.1"):
        load_frozen_checkpoint(other, path)
    for fix in ("nearest", "bilinear"):
        target = create_model("frozen-tiny", max_frames=8)
        load_frozen_checkpoint(target, path, temporal_fix=fix)
        torch.testing.assert_close(target.video_model.temporal_embed, resize_temporal_embed(
            small.video_model.temporal_embed.detach(), 8, fix))


# ----------------------------------------------------------------------------- timm ViT
def _compare_with_timm(vit, video_model):
    frame = torch.randn(1, 3, video_model.frame_size, video_model.frame_size)
    with torch.no_grad():
        expected = vit.forward_features(frame)[:, 0]
        for fused in (False, True):
            for module in video_model.modules():
                if hasattr(module, "fused"):
                    module.fused = fused
            ours = video_model(frame[:, None])  # one frame: the time attention is identity
            torch.testing.assert_close(ours, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # full-size weights
def test_timm_vit_b16_full_size(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    safetensors.torch.save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    video_model = SpaceTimeTransformer(max_frames=2).eval()
    load_timm_vit(video_model, tmp_path / "vit.safetensors")
    _compare_with_timm(vit, video_model)
    blk = video_model.blocks[0]
    assert blk.timeattn.qkv.weight.abs().sum() == 0 and blk.timeattn.proj.weight.eq(1).all()
    torch.testing.assert_close(blk.attn.qkv.weight, vit.blocks[0].attn.qkv.weight)


def test_timm_vit_file_formats(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64).eval()
    state = vit.state_dict()
    torch.save(state, tmp_path / "vit.pth")
    np.savez(tmp_path / "vit.npz", **{k: v.numpy() for k, v in state.items()})
    safetensors.torch.save_file(state, str(tmp_path / "vit.safetensors"))
    for name in ("vit.pth", "vit.npz", "vit.safetensors"):
        read = read_timm_vit(tmp_path / name)
        assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    path = str(tmp_path / "vit.pth")
    model = create_model("frozen", vit_weights=path, frame_size=64, embed_dim=192,
                         num_heads=3, max_frames=2, text=SMALL["text"]).eval()
    _compare_with_timm(vit, model.video_model)
    assert model.sources["vit_weights"] == path


def _to_jax_npz(vit, path: Path) -> None:
    """Write a timm ViT as Google's original JAX ``.npz`` (the inverse of timm's reader)."""
    sd = {k: v.detach() for k, v in vit.state_dict().items()}
    heads, dim = vit.blocks[0].attn.num_heads, vit.embed_dim
    out = {"embedding/kernel": sd["patch_embed.proj.weight"].permute(2, 3, 1, 0),
           "embedding/bias": sd["patch_embed.proj.bias"], "cls": sd["cls_token"],
           "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
           "Transformer/encoder_norm/scale": sd["norm.weight"],
           "Transformer/encoder_norm/bias": sd["norm.bias"]}
    for i in range(len(vit.blocks)):
        b, jb = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = jb + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            w = sd[b + "attn.qkv.weight"][j * dim:(j + 1) * dim]
            out[f"{mha}{name}/kernel"] = w.t().reshape(dim, heads, -1)
            bias = sd[b + "attn.qkv.bias"][j * dim:(j + 1) * dim]
            out[f"{mha}{name}/bias"] = bias.reshape(heads, -1)
        proj = sd[b + "attn.proj.weight"]
        out[mha + "out/kernel"] = proj.reshape(dim, heads, -1).permute(1, 2, 0)
        out[mha + "out/bias"] = sd[b + "attn.proj.bias"]
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[f"{jb}{ln}/scale"] = sd[b + norm + ".weight"]
            out[f"{jb}{ln}/bias"] = sd[b + norm + ".bias"]
        for r in range(2):
            out[f"{jb}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{b}mlp.fc{r + 1}.weight"].t()
            out[f"{jb}MlpBlock_3/Dense_{r}/bias"] = sd[f"{b}mlp.fc{r + 1}.bias"]
    np.savez(path, **{k: v.contiguous().numpy() for k, v in out.items()})


def test_timm_vit_from_original_jax_npz(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0).eval()
    _to_jax_npz(vit, tmp_path / "ViT-B_16.npz")
    video_model = SpaceTimeTransformer(frame_size=32, dim=32, depth=2, num_heads=2, max_frames=2)
    load_timm_vit(video_model.eval(), tmp_path / "ViT-B_16.npz")
    _compare_with_timm(vit, video_model)


# ------------------------------------------------------------------------------ DistilBERT
WORDS = ["a", "man", "is", "cooking", "dog", "runs", "the", "park", "##s", "in"]


def test_distilbert_from_local_directory(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    tokenizer = distilbert_tokenizer(tmp_path / "vocab.txt", WORDS)
    torch.manual_seed(0)
    bert = DistilBertModel(DistilBertConfig()).eval()
    text_dir = tmp_path / "distilbert"
    bert.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)

    # A small video side keeps the test quick; the text side is DistilBERT-base.
    model = create_model("frozen", text_dir=str(text_dir), frame_size=32, embed_dim=32,
                         depth=1, num_heads=2).eval()
    texts = ["a man is cooking", "the dogs runs in the park"]
    batch = model.tokenize(texts)
    ref = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == ref["input_ids"].tolist()
    assert batch["input_ids"][0].tolist() == [2, 5, 6, 7, 8, 3, 0, 0, 0]  # [CLS] a man is cooking
    assert batch["input_ids"][1].tolist() == [2, 11, 9, 13, 10, 14, 11, 12, 3]  # dog ##s
    with torch.no_grad():
        cls = bert(**ref).last_hidden_state[:, 0]
        torch.testing.assert_close(model.encode_text(**batch), model.txt_proj(cls))
        model.set_attention("fused")
        torch.testing.assert_close(model.encode_text(**batch), model.txt_proj(cls),
                                   atol=1e-5, rtol=1e-5)
    assert model.spec["text"]["dim"] == 768 and "text_dir" not in model.spec
    assert model.sources["text_dir"] == str(text_dir)


def test_full_model_without_tokenizer_says_so():
    model = create_model("frozen", **SMALL)
    assert model.contract.tokenizer == "distilbert" and model.contract.frame_size == 32
    with pytest.raises(RuntimeError, match="tokenizer_dir"):
        model.tokenize(["a dog"])
