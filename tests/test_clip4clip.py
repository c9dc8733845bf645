"""CLIP4Clip-meanP: meanP arithmetic, the text read-out, and loading the real weight formats.

The checkpoint tests build a random full-size OpenAI-style CLIP (the module tree CLIP4Clip's
``clip.*`` keys come from, written here from its description), save it the way CLIP4Clip does
(fp16 conv/linear/attention weights and projections, fp32 elsewhere) and check our
transformers-based model computes the same embeddings after loading. Forward passes stay at
batch 1, 1-2 frames.
"""

from __future__ import annotations

import math
import pickle
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mof.models import create_model
from mof.models.clip4clip import Clip4ClipConfig, load_clip4clip_checkpoint
from mof.models.clip_convert import hf_to_openai
from mof.models.io import load_model, save_model
from mof.models.tokenizer import WordTokenizer
from tests.tokenizer_dirs import clip_tokenizer

CAPTIONS = ["a man is cooking pasta in a kitchen", "a dog runs across the park",
            "two people are dancing on a stage"]


# ------------------------------------------------------------- OpenAI CLIP, the reference tree
class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    """Pre-LN residual block of OpenAI CLIP; sequences are (L, N, D) as there."""

    def __init__(self, width: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, width // 64)
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=_QuickGELU(),
                                             c_proj=nn.Linear(4 * width, width)))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int):
        super().__init__()
        self.resblocks = nn.ModuleList(_Block(width) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class _Visual(nn.Module):
    def __init__(self, size: int, patch: int, width: int, layers: int, out: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(width) * width ** -0.5)
        self.positional_embedding = nn.Parameter(
            torch.randn((size // patch) ** 2 + 1, width) * width ** -0.5)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = _Transformer(width, layers)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.randn(width, out) * width ** -0.5)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image).flatten(2).transpose(1, 2)  # (N, grid², D)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], 1) + self.positional_embedding)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)
        return self.ln_post(x[:, 0]) @ self.proj


class _OpenAIClip(nn.Module):
    def __init__(self, size=224, patch=32, vision_width=768, vision_layers=12, embed=512,
                 text_width=512, text_layers=12, context=77, vocab=49408):
        super().__init__()
        self.visual = _Visual(size, patch, vision_width, vision_layers, embed)
        self.transformer = _Transformer(text_width, text_layers)
        self.token_embedding = nn.Embedding(vocab, text_width)
        self.positional_embedding = nn.Parameter(torch.randn(context, text_width) * 0.01)
        self.ln_final = nn.LayerNorm(text_width)
        self.text_projection = nn.Parameter(torch.randn(text_width, embed) * text_width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        for p in self.parameters():  # LayerNorms too: a wrong ln mapping must show
            if p.dim() == 1:
                p.data.add_(0.1 * torch.randn_like(p))

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        x = self.token_embedding(ids) + self.positional_embedding[:length]
        causal = torch.full((length, length), float("-inf")).triu(1)
        x = self.ln_final(self.transformer(x.transpose(0, 1), causal).transpose(0, 1))
        return x[torch.arange(ids.shape[0]), ids.argmax(-1)] @ self.text_projection


_HALF = ("attn.in_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj", "visual.conv1",
         "text_projection", "visual.proj")


def _to_clip4clip_file(ref: _OpenAIClip) -> dict[str, torch.Tensor]:
    """``clip.``-prefixed state_dict with CLIP's fp16 conversion (as CLIP4Clip saves it).

    ``ref`` keeps the fp16-rounded values in fp32, so it computes what the file holds.
    """
    state = {}
    with torch.no_grad():
        for key, value in ref.state_dict().items():
            if any(h in key for h in _HALF):
                state["clip." + key] = value.half()
                value.copy_(state["clip." + key])
            else:
                state["clip." + key] = value
    return state


def _ref_video(ref: _OpenAIClip, video: torch.Tensor) -> torch.Tensor:
    frames = F.normalize(ref.visual(video[0]), dim=-1)
    return F.normalize(frames.mean(0, keepdim=True), dim=-1)


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """A random full-size OpenAI CLIP, its CLIP4Clip file, and our model loaded from it."""
    torch.manual_seed(0)
    ref = _OpenAIClip().eval()
    state = _to_clip4clip_file(ref)
    path = tmp_path_factory.mktemp("c4c") / "pytorch_model.bin.4"
    torch.save(state, path)
    model = create_model("clip4clip", checkpoint=str(path)).eval()
    return ref, state, path, model


def _text_ids(length: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    # CLIP4Clip's layout: start 49406, words, end 49407 (the largest id), zero padding.
    ids = torch.zeros(1, length, dtype=torch.long)
    ids[0, :5] = torch.tensor([49406, 320, 1929, 2605, 49407])
    return ids, (ids > 0).long()


@pytest.mark.slow  # full-size weights
def test_clip4clip_checkpoint_full_size(full):
    ref, state, path, model = full
    assert len(state) == 302 and all(k.startswith("clip.") for k in state)
    assert {v.dtype for v in state.values()} == {torch.float16, torch.float32}
    assert model.spec["frame_size"] == 224 and model.spec["vision"]["patch_size"] == 32
    assert model.contract.max_frames == 12 and model.contract.max_words == 32
    assert model.sources["checkpoint"] == str(path)
    torch.manual_seed(1)
    video = torch.randn(1, 1, 3, 224, 224)  # pooling over frames: see the tiny tests
    ids, mask = _text_ids()
    with torch.no_grad():
        ours_v, ours_t = model.encode_video(video), model.encode_text(ids, mask)
        torch.testing.assert_close(ours_v, _ref_video(ref, video), atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(ours_t, ref.encode_text(ids), atol=1e-4, rtol=1e-4)
        expected = 100.0 * F.cosine_similarity(ours_t, ours_v)  # the file's scale: ln 100
        torch.testing.assert_close(model.logits(ours_t, ours_v)[0], expected)


@pytest.mark.slow  # full-size weights
def test_inverse_map_gives_clip4clip_keys(full):
    _, state, _, model = full
    exported = hf_to_openai(model.clip.state_dict())
    assert exported.keys() == state.keys()  # the names of OpenAI's module tree, all 302
    for key, value in exported.items():
        assert value.shape == state[key].shape, key
        torch.testing.assert_close(value, state[key].float(), atol=0, rtol=0)


def test_file_written_by_the_inverse_map_loads(tmp_path):
    torch.manual_seed(0)
    source = create_model("clip4clip-tiny").eval()
    # fp16 tensors mixed in, as CLIP4Clip writes them.
    state = {k: v.half() if k.endswith(("in_proj_weight", "visual.proj", "text_projection"))
             else v for k, v in hf_to_openai(source.clip.state_dict()).items()}
    assert {v.dtype for v in state.values()} == {torch.float16, torch.float32}
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = create_model("clip4clip-tiny")
    load_clip4clip_checkpoint(loaded, tmp_path / "pytorch_model.bin")
    reloaded = loaded.clip.state_dict()
    for key, value in source.clip.state_dict().items():
        assert reloaded[key].dtype == torch.float32
        torch.testing.assert_close(reloaded[key], value, atol=1e-3, rtol=1e-3)  # fp16 rounding
    video = torch.randn(2, 3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().encode_video(video), source.encode_video(video),
                                   atol=2e-3, rtol=2e-3)


def test_float32_checkpoint_loads_saves_and_reloads(tmp_path):
    # A fp32 file: q/k/v are chunked out of one in_proj tensor and adopted without a cast.
    torch.manual_seed(0)
    source = create_model("clip4clip-tiny").eval()
    state = hf_to_openai(source.clip.state_dict())
    assert {v.dtype for v in state.values()} == {torch.float32}
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = create_model("clip4clip-tiny")
    load_clip4clip_checkpoint(loaded, tmp_path / "pytorch_model.bin")
    storages = [p.untyped_storage().data_ptr() for p in loaded.parameters()]
    assert len(set(storages)) == len(storages)  # no two parameters share memory
    save_model(loaded, tmp_path / "saved")
    reloaded = load_model(tmp_path / "saved").state_dict()
    expected = source.state_dict()
    assert reloaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(reloaded[key], value, atol=0, rtol=0, msg=key)


@pytest.mark.slow  # full-size weights
def test_transformers_clip_directory_full_size(full, tmp_path):
    _, _, _, model = full
    model.clip.save_pretrained(tmp_path / "clip")
    clip_tokenizer().save_pretrained(tmp_path / "clip")
    loaded = create_model("clip4clip", clip_dir=str(tmp_path / "clip")).eval()
    assert loaded.contract.tokenizer == "clip" and loaded.attention == "math"
    assert model.spec["vision"].items() <= loaded.spec["vision"].items()
    ids = loaded.tokenize(["a dog", "a cat " * 40])["input_ids"]
    assert ids.shape == (2, 32) and ids[1, -1] == ids.max() and ids[0, 0] == ids.max() - 1
    video = torch.randn(1, 1, 3, 224, 224)
    with torch.no_grad():
        # transformers' own read-outs (its text pooler finds eos_token_id 49407).
        clip_ids, clip_mask = _text_ids(12)
        torch.testing.assert_close(loaded.encode_text(clip_ids, clip_mask),
                                   model.clip.get_text_features(
                                       input_ids=clip_ids, attention_mask=clip_mask).pooler_output)
        image = model.clip.get_image_features(pixel_values=video[0]).pooler_output
        torch.testing.assert_close(loaded.encode_video(video), F.normalize(image, dim=-1),
                                   atol=1e-5, rtol=1e-5)


def test_spec_from_clip_directory_round_trips(tmp_path):
    small = {"frame_size": 32, "projection_dim": 16, "max_words": 16,
             "text": {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
                      "num_attention_heads": 2, "vocab_size": 60, "max_position_embeddings": 16,
                      "eos_token_id": 59, "bos_token_id": 58},
             "vision": {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1,
                        "num_attention_heads": 2, "patch_size": 16}}
    torch.manual_seed(0)
    source = create_model("clip4clip", **small)
    source.clip.save_pretrained(tmp_path / "clip")
    clip_tokenizer().save_pretrained(tmp_path / "tok")
    model = create_model("clip4clip", clip_dir=str(tmp_path / "clip"),
                         tokenizer_dir=str(tmp_path / "tok"), max_frames=4, max_words=16).eval()
    assert model.spec["text"]["hidden_size"] == 64 and "clip_dir" not in model.spec
    with pytest.raises(ValueError, match="change the architecture"):
        create_model("clip4clip", clip_dir=str(tmp_path / "clip"), frame_size=64, max_words=16)
    text = model.tokenize(["a dog", "a cat"])
    video = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        expected = model(video, text["input_ids"], text["attention_mask"])
        torch.testing.assert_close(expected, source.eval()(video, text["input_ids"],
                                                           text["attention_mask"]))
    save_model(model, tmp_path / "saved")
    loaded = load_model(tmp_path / "saved")
    assert loaded.contract == model.contract
    assert loaded.tokenize(["a dog"])["input_ids"].tolist() == \
        model.tokenize(["a dog"])["input_ids"].tolist()
    with torch.no_grad():
        torch.testing.assert_close(loaded(video, text["input_ids"], text["attention_mask"]),
                                   expected, atol=0, rtol=0)


# ------------------------------------------------------------------------- meanP semantics
@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return create_model("clip4clip-tiny", tokenizer=WordTokenizer.build(CAPTIONS)).eval()


def test_mean_pooling_of_normalised_frames(tiny):
    torch.manual_seed(1)
    video = torch.randn(3, 4, 3, 64, 64)
    mask = torch.tensor([[True, False, True, False], [True] * 4, [False] * 4])
    with torch.no_grad():
        emb = tiny.encode_video(video, mask)
        for b in range(2):
            frames = tiny.clip.get_image_features(pixel_values=video[b][mask[b]]).pooler_output
            pooled = F.normalize(frames, dim=-1).mean(0)
            torch.testing.assert_close(emb[b], F.normalize(pooled, dim=0), atol=1e-6, rtol=1e-5)
    assert emb[2].abs().sum() == 0  # no valid frame: zero, not NaN


def test_video_without_valid_frame_keeps_gradients_finite(tiny):
    video = torch.randn(2, 3, 3, 64, 64, requires_grad=True)
    mask = torch.tensor([[True, True, False], [False] * 3])
    text = tiny.tokenize(CAPTIONS[:2])
    logits = tiny(video, text["input_ids"], text["attention_mask"], mask)
    target = torch.arange(2)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    params = list(tiny.parameters())
    grads = torch.autograd.grad(loss, params, create_graph=True)
    assert all(torch.isfinite(g).all() for g in grads)
    (meta,) = torch.autograd.grad(sum((g * g).sum() for g in grads), video)
    assert torch.isfinite(meta).all() and meta[0, :2].abs().sum() > 0
    assert meta[0, 2].abs().sum() == 0 and meta[1].abs().sum() == 0


def test_text_is_read_at_the_end_token(tiny):
    text = tiny.tokenize(["a dog runs across the park", "a man"])
    ids, mask = text["input_ids"], text["attention_mask"]
    eot = tiny.tokenizer.eot_id
    assert (ids.argmax(-1) == (ids == eot).int().argmax(-1)).all()
    with torch.no_grad():
        hidden = tiny.clip.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        ends = mask.sum(1) - 1
        expected = tiny.clip.text_projection(hidden[torch.arange(2), ends])
        torch.testing.assert_close(tiny.encode_text(ids, mask), expected)
        # Whatever follows the end token cannot change the query (causal attention).
        garbage = ids.clone()
        garbage[1, ends[1] + 1:] = 5
        attended = torch.ones_like(mask)  # even when the mask lets them in
        torch.testing.assert_close(tiny.encode_text(garbage, attended)[1], expected[1])


def test_logit_scale_is_learnt_and_clamped(tiny):
    assert tiny.loss_reduction == "mean"
    t, v = torch.randn(3, 64), torch.randn(4, 64)
    cos = F.normalize(t, dim=1) @ F.normalize(v, dim=1).t()
    torch.testing.assert_close(tiny.logits(t, v), tiny.clip.logit_scale.exp() * cos)
    assert tiny.clip.logit_scale.requires_grad
    with torch.no_grad():
        tiny.clip.logit_scale.fill_(5.0)
    tiny.clamp_logit_scale()
    assert tiny.clip.logit_scale.item() == pytest.approx(math.log(100))
    with torch.no_grad():
        tiny.clip.logit_scale.fill_(1.0)
    tiny.clamp_logit_scale()
    assert tiny.clip.logit_scale.item() == 1.0


def test_attention_modes_select_transformers_implementations(tiny):
    for mode, impl in (("math", "eager"), ("fused", "sdpa"), ("math", "eager")):
        tiny.set_attention(mode)
        assert tiny.clip.text_model.config._attn_implementation == impl
        assert tiny.clip.vision_model.config._attn_implementation == impl


def test_grad_checkpointing_keeps_gradients(tiny):
    video = torch.randn(2, 2, 3, 64, 64)
    text = tiny.tokenize(CAPTIONS[:2])

    def grads():
        loss = tiny(video, text["input_ids"], text["attention_mask"]).logsumexp(1).sum()
        return torch.autograd.grad(loss, list(tiny.parameters()))

    tiny.train()
    plain = grads()
    tiny.set_grad_checkpointing(True)
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


@pytest.mark.slow  # full-size weights
def test_full_size_defaults_and_tokenizer_error(full):
    model = full[3]
    contract = model.contract
    assert (contract.frame_size, contract.max_frames, contract.max_words) == (224, 12, 32)
    assert contract.mean == (0.48145466, 0.4578275, 0.40821073) and contract.tokenizer == "clip"
    with pytest.raises(RuntimeError, match="tokenizer"):
        model.tokenize(["a dog"])
    with pytest.raises(ValueError, match="13 frames"):
        model.encode_video(torch.zeros(1, 13, 3, 224, 224))


def test_config_reports_all_problems():
    with pytest.raises(ValueError) as err:
        Clip4ClipConfig(frame_size=100, max_words=80, vision={"patch_size": 32},
                        logit_scale_init=5.0)
    for text in ("frame_size 100", "max_words 80", "logit_scale_init"):
        assert text in str(err.value)
    with pytest.raises(ValueError, match="unknown field"):
        Clip4ClipConfig(vision={"patch": 16})
    with pytest.raises(TypeError, match="max_frame"):
        create_model("clip4clip-tiny", max_frame=4)


# ---------------------------------------------------------------------- malformed checkpoints
def test_checkpoint_errors_name_the_problem(tiny, tmp_path):
    state = hf_to_openai(tiny.clip.state_dict())
    seq = {**state, "frame_position_embeddings.weight": torch.zeros(12, 64)}
    torch.save(seq, tmp_path / "seq.bin")
    with pytest.raises(ValueError, match=r"seq\.bin.*frame_position_embeddings.*meanP"):
        create_model("clip4clip", checkpoint=str(tmp_path / "seq.bin"))
    torch.save({k: v for k, v in state.items() if "ln_final" not in k}, tmp_path / "cut.bin")
    with pytest.raises(ValueError, match=r"cut\.bin.*ln_final"):
        create_model("clip4clip", checkpoint=str(tmp_path / "cut.bin"))
    other = create_model("clip4clip-tiny", vision={"num_hidden_layers": 1})
    torch.save(state, tmp_path / "deeper.bin")
    with pytest.raises(ValueError, match=r"deeper\.bin.*unexpected.*layers\.1"):
        load_clip4clip_checkpoint(other, tmp_path / "deeper.bin")


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_checkpoint_that_runs_code_is_refused(tmp_path, capsys):
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"clip.logit_scale": _Payload()}, f)
    with pytest.raises(ValueError, match=r"evil\.bin.*weights_only"):
        create_model("clip4clip", checkpoint=str(tmp_path / "evil.bin"))
    assert "pickled code ran" not in capsys.readouterr().out
