"""ResNet frame encoders: mean pooling, frozen BatchNorm, and loading timm weight files.

Full-size tests build random timm ResNet-50/152 (with their classifier, as released files have
it), save them as timm and torchvision do, load them into our model and compare with timm's
own pooled features; forward passes stay at one 224 px frame.
"""

from __future__ import annotations

import copy

import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from torch.func import functional_call
from transformers import DistilBertConfig, DistilBertModel, DistilBertTokenizer

from mof.models import create_model
from mof.models.io import load_model, save_model
from mof.models.resnet import ResNetConfig, load_timm_resnet
from mof.models.tokenizer import WordTokenizer

CAPTIONS = ["a man is cooking pasta in a kitchen", "a dog runs across the park",
            "two people are dancing on a stage"]
SMALL_TEXT = {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}


def _timm_features(net: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    return net.forward_head(net.forward_features(frames), pre_logits=True)


# ResNet-152 and the other file layouts run on 64 px frames: the weights are full size, the
# forward pass (size-agnostic in a ResNet) 12 times cheaper on CPU.
@pytest.mark.slow  # full-size weights
@pytest.mark.parametrize(("backbone", "layout", "size"), [
    ("resnet50", "safetensors", 224), ("resnet50", "pth", 64), ("resnet50", "hf_dir", 64),
    ("resnet152", "safetensors", 64)])
def test_timm_weights_full_size(tmp_path, backbone, layout, size):
    torch.manual_seed(0)
    net = timm.create_model(backbone, pretrained=False).eval()  # 1000-class head included
    with torch.no_grad():  # non-trivial statistics, so frozen BatchNorm must load them
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1, 0.1)
    state = net.state_dict()
    if layout == "pth":  # torchvision and older timm releases
        path = tmp_path / f"{backbone}.pth"
        torch.save(state, path)
    else:
        folder = tmp_path / "hub" if layout == "hf_dir" else tmp_path
        folder.mkdir(exist_ok=True)
        path = folder / "model.safetensors"
        safetensors.torch.save_file(state, str(path))
        path = folder if layout == "hf_dir" else path
    model = create_model(backbone, backbone_weights=str(path), text=SMALL_TEXT,
                         frame_size=size).eval()
    assert model.sources["backbone_weights"] == str(path) and "backbone_weights" not in model.spec
    frame = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = _timm_features(net, frame)
        assert expected.shape == (1, 2048)
        # One frame: the video embedding is the projection of exactly timm's features.
        torch.testing.assert_close(model.encode_video(frame[:, None]), model.vid_proj(expected),
                                   atol=1e-5, rtol=1e-5)


def test_wrong_weights_name_file_and_keys(tmp_path):
    net = timm.create_model("resnet18", pretrained=False)
    safetensors.torch.save_file(net.state_dict(), str(tmp_path / "r18.safetensors"))
    model = create_model("resnet50", text=SMALL_TEXT)
    with pytest.raises(ValueError, match=r"r18\.safetensors.*(missing|unexpected|shape)"):
        load_timm_resnet(model.video_model, tmp_path / "r18.safetensors")
    with pytest.raises(FileNotFoundError, match="none of"):
        load_timm_resnet(model.video_model, tmp_path)
    with pytest.raises(FileNotFoundError):
        load_timm_resnet(model.video_model, tmp_path / "absent.pth")


# ------------------------------------------------------------------------------ semantics
@pytest.fixture
def tiny():
    torch.manual_seed(0)
    model = create_model("resnet-tiny", tokenizer=WordTokenizer.build(CAPTIONS))
    with torch.no_grad():  # leave the init: identity-like residuals would hide mistakes
        for p in model.video_model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_mean_over_valid_frames(tiny):
    torch.manual_seed(1)
    video = torch.randn(3, 4, 3, 64, 64)
    mask = torch.tensor([[True, False, True, False], [True] * 4, [False] * 4])
    with torch.no_grad():
        emb = tiny.encode_video(video, mask)
        for b in range(2):
            feats = tiny.video_model(video[b][mask[b]])
            torch.testing.assert_close(emb[b], tiny.vid_proj(feats.mean(0)),
                                       atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(emb[2], tiny.vid_proj.bias)  # nothing to average
    assert tiny.contract.max_frames == 32 and tiny.contract.frame_size == 64
    assert tiny.video_model.num_features == 64


def test_logits_and_loss_reduction(tiny):
    t, v = torch.randn(3, 64), torch.randn(4, 64)
    cos = F.normalize(t, dim=1) @ F.normalize(v, dim=1).t()
    torch.testing.assert_close(tiny.logits(t, v), cos / 0.05)
    assert tiny.loss_reduction == "sum" and tiny.temperature == 0.05


def _bn_layers(model):
    return [m for m in model.video_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_frozen_batchnorm_in_training(tiny):
    video = torch.randn(2, 3, 3, 64, 64) * 3 + 1  # far from the running statistics
    text = tiny.tokenize(CAPTIONS[:2])
    with torch.no_grad():
        eval_out = tiny(video, text["input_ids"], text["attention_mask"])
    stats = [bn.running_mean.clone() for bn in _bn_layers(tiny)]
    tiny.train()
    assert tiny.training and not any(bn.training for bn in _bn_layers(tiny))
    assert tiny.text_model.training
    with torch.no_grad():
        train_out = tiny(video, text["input_ids"], text["attention_mask"])
    torch.testing.assert_close(train_out, eval_out)
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(stats, _bn_layers(tiny)))
    # A video's embedding does not depend on the other videos of the batch.
    torch.testing.assert_close(tiny.encode_video(video[:1]), tiny.encode_video(video)[:1],
                               atol=1e-5, rtol=1e-5)


def test_batch_statistics_mode():
    model = create_model("resnet-tiny", bn_mode="batch").train()
    assert all(bn.training for bn in _bn_layers(model))
    before = _bn_layers(model)[0].running_mean.clone()
    model.encode_video(torch.randn(2, 2, 3, 64, 64) + 1)
    assert not torch.equal(before, _bn_layers(model)[0].running_mean)
    assert not any(bn.training for bn in _bn_layers(model.eval()))


def test_bilevel_step_in_training_mode(tiny):
    # The trainer runs the bilevel step with model.train(): functional_call and double
    # backward must see a pure function there (frozen BatchNorm), in math attention.
    tiny.train()
    tiny.set_attention("math")
    video = torch.randn(2, 2, 3, 64, 64, requires_grad=True)
    text = tiny.tokenize(CAPTIONS[:2])
    params = dict(tiny.named_parameters())
    buffers = {k: v.clone() for k, v in tiny.named_buffers()}

    def loss(p):
        logits = functional_call(tiny, p, (video, text["input_ids"], text["attention_mask"]))
        target = torch.arange(2)
        return F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)

    grads = torch.autograd.grad(loss(params), list(params.values()), create_graph=True)
    inner = {k: p - 0.1 * g for (k, p), g in zip(params.items(), grads)}
    (meta,) = torch.autograd.grad(loss(inner), video)
    assert torch.isfinite(meta).all() and meta.abs().sum() > 0
    assert all(torch.equal(v, tiny.get_buffer(k)) for k, v in buffers.items())


def test_grad_checkpointing_keeps_gradients(tiny):
    video = torch.randn(2, 2, 3, 64, 64)
    text = tiny.tokenize(CAPTIONS[:2])
    tiny.train()

    def grads():
        loss = tiny(video, text["input_ids"], text["attention_mask"]).logsumexp(1).sum()
        return torch.autograd.grad(loss, list(tiny.parameters()))

    plain = grads()
    tiny.set_grad_checkpointing(True)
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


def test_config_reports_all_problems():
    with pytest.raises(ValueError) as err:
        ResNetConfig(backbone="vit_base_patch16_224", temperature=0, bn_mode="sync",
                     max_frames=0)
    for text in ("not a timm ResNet", "temperature", "bn_mode", "max_frames"):
        assert text in str(err.value)
    with pytest.raises(TypeError, match="max_frame"):
        create_model("resnet-tiny", max_frame=4)


# --------------------------------------------------------------- DistilBERT from a directory
def test_text_directory_spec_round_trip(tmp_path):
    torch.manual_seed(0)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "runs", "cat"]
    text_dir = tmp_path / "distilbert"
    DistilBertModel(DistilBertConfig(vocab_size=len(words), **SMALL_TEXT)).save_pretrained(text_dir)
    vocab = {w: i for i, w in enumerate(words)}
    DistilBertTokenizer(vocab=vocab).save_pretrained(text_dir)
    model = create_model("resnet50", text_dir=str(text_dir), max_frames=2, frame_size=64,
                         backbone_args={"channels": [8, 16, 32, 64]}).eval()
    assert model.spec["text"]["dim"] == 32 and model.spec["text"]["vocab_size"] == len(words)
    text = model.tokenize(["a dog runs", "a cat"])
    assert text["input_ids"][0].tolist() == [2, 5, 6, 7, 3]
    video = torch.randn(2, 2, 3, 64, 64)
    with torch.no_grad():
        expected = model(video, text["input_ids"], text["attention_mask"])
    save_model(model, tmp_path / "saved")
    loaded = load_model(tmp_path / "saved")
    assert type(loaded) is type(model) and loaded.contract == model.contract
    with torch.no_grad():
        torch.testing.assert_close(loaded(video, text["input_ids"], text["attention_mask"]),
                                   expected, atol=0, rtol=0)
    assert copy.deepcopy(loaded.spec) == model.spec
