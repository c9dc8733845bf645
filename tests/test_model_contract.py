"""The contract every registered model keeps (timm-style registry-wide tests).

These tests are the "Adding a backbone" checklist of docs/models.md. ``*-tiny`` models run by
default; the full-size ones (random init, a toy tokenizer directory, small inputs) are marked
``slow``.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mof.models import create_model, list_models
from mof.models.contract import RetrievalModel
from mof.models.io import load_model, save_model
from mof.models.registry import model_family
from mof.models.tokenizer import WordTokenizer
from tests.tokenizer_dirs import clip_tokenizer, distilbert_tokenizer

TINY = list_models("*-tiny")
FULL = sorted(set(list_models()) - set(TINY))
CAPTIONS = ["a man is cooking pasta in a kitchen", "a dog runs across the park",
            "two people are dancing on a stage", "a car drives along a wet road"]


def _loss(model, logits: torch.Tensor) -> torch.Tensor:
    target = torch.arange(logits.shape[0])
    pair = F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)
    return pair if model.loss_reduction == "sum" else pair / 2



@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory) -> dict[str, str]:
    """Toy tokenizer directories of the full-size models, by contract tokenizer kind."""
    root = tmp_path_factory.mktemp("tokenizers")
    words = sorted({w for caption in CAPTIONS for w in caption.split()})
    distilbert_tokenizer(root / "vocab.txt", words).save_pretrained(root / "distilbert")
    clip_tokenizer().save_pretrained(root / "clip")
    return {"distilbert": str(root / "distilbert"), "clip": str(root / "clip")}


def _is_tiny(model) -> bool:
    return model.spec["name"].endswith("-tiny")


def _tokenizer_args(model) -> dict:
    if _is_tiny(model):
        return {"tokenizer": model.tokenizer}
    return {"tokenizer_dir": model.sources["tokenizer_dir"]}


@pytest.fixture(params=TINY + [pytest.param(name, marks=pytest.mark.slow) for name in FULL])
def model(request):
    torch.manual_seed(0)
    if request.param in TINY:
        tok = WordTokenizer.build(CAPTIONS, max_words=12)
        return create_model(request.param, tokenizer=tok).eval()
    kind = "clip" if request.param.startswith("clip4clip") else "distilbert"
    tok_dir = request.getfixturevalue("tokenizer_dirs")[kind]
    return create_model(request.param, tokenizer_dir=tok_dir).eval()


def _batch(model, batch: int | None = None, frames: int | None = None, seed: int = 1):
    """Random frames and tokenized captions; full-size models get 2 videos of 2 frames."""
    tiny = _is_tiny(model)
    batch = batch if batch is not None else (3 if tiny else 2)
    frames = frames if frames is not None else (4 if tiny else 2)
    gen = torch.Generator().manual_seed(seed)
    size = model.contract.frame_size
    video = torch.randn(batch, frames, 3, size, size, generator=gen)
    text = model.tokenize(CAPTIONS[:batch])
    return video, text["input_ids"], text["attention_mask"]


def test_registry_has_tiny_models():
    assert "frozen-tiny" in TINY


def test_every_family_registers_a_tiny_variant():
    families = {model_family(name) for name in list_models()}
    assert {model_family(name) for name in TINY} == families
    assert families >= {"mof.models.frozen", "mof.models.clip4clip", "mof.models.resnet"}


def test_a_family_that_fails_to_import_fails_the_registry():
    # A family module that cannot be imported (here: made unimportable) must not vanish
    # from the registry silently.
    code = "import sys; sys.modules['mof.models.resnet'] = None; import mof.models"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert result.returncode != 0 and "mof.models.resnet" in result.stderr


def test_a_model_missing_a_contract_method_cannot_be_built():
    class NoCheckpointing(RetrievalModel):
        def tokenize(self, texts): ...
        def encode_video(self, video, video_mask=None): ...
        def encode_text(self, input_ids, attention_mask): ...
        def logits(self, text_emb, video_emb): ...
        def similarity(self, text_emb, video_emb): ...
        def set_attention(self, mode): ...

    with pytest.raises(TypeError, match="set_grad_checkpointing"):
        NoCheckpointing()


def test_declared_state(model):
    assert isinstance(model, RetrievalModel)
    assert model.spec["name"] in list_models()
    assert model_family(model.spec["name"]) == type(model).__module__
    assert isinstance(model.sources, dict) and model.attention in ("math", "fused")
    assert model.tokenizer is not None


def test_shapes_and_finite(model):
    video, ids, mask = _batch(model)
    n = video.shape[0]
    assert ids.dtype == torch.long and ids.shape == mask.shape and ids.shape[0] == n
    assert ids.shape[1] <= model.contract.max_words
    v, t = model.encode_video(video), model.encode_text(ids, mask)
    assert v.shape[0] == n and t.shape[0] == n and v.shape[1] == t.shape[1]
    logits = model(video, ids, mask)
    assert logits.shape == (n, n)
    assert torch.isfinite(logits).all()
    sim = model.similarity(t, v)
    assert sim.shape == (n, n) and sim.abs().max() <= 1 + 1e-5
    assert model.loss_reduction in ("sum", "mean")


def test_spec_rebuilds_same_architecture(model):
    spec = json.loads(json.dumps(model.spec))
    rebuilt = create_model(**spec, **_tokenizer_args(model))
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert rebuilt.contract == model.contract


def test_every_parameter_gets_a_gradient(model):
    # Perturb first: zero-initialised parts (Frozen's time attention) have exactly zero
    # gradients at init by design, and a disconnected parameter must still show up.
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    video, ids, mask = _batch(model)
    _loss(model, model(video, ids, mask)).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_double_backward_in_math_mode(model):
    model.set_attention("math")
    video, ids, mask = _batch(model)
    video.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(_loss(model, model(video, ids, mask)), params, create_graph=True)
    penalty = sum((g * g).sum() for g in grads)
    (meta,) = torch.autograd.grad(penalty, video)
    assert meta.shape == video.shape and torch.isfinite(meta).all() and meta.abs().sum() > 0


def test_functional_call_matches_loaded_parameters(model):
    video, ids, mask = _batch(model)
    torch.manual_seed(3)
    params = {k: v.detach() + 0.01 * torch.randn_like(v) for k, v in model.named_parameters()}
    out = functional_call(model, params, (video, ids, mask))
    other = copy.deepcopy(model)
    other.load_state_dict(params, strict=False)
    torch.testing.assert_close(out, other(video, ids, mask))
    assert not torch.allclose(out, model(video, ids, mask))


def test_math_and_fused_agree(model):
    video, ids, mask = _batch(model)
    model.set_attention("math")
    math_out = model(video, ids, mask)
    model.set_attention("fused")
    torch.testing.assert_close(model(video, ids, mask), math_out, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError):
        model.set_attention("flash")


def test_save_load_round_trip(model, tmp_path):
    video, ids, mask = _batch(model)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        # Not the init values, so the load must really copy; random signs keep a 150-layer
        # ResNet finite where a constant shift of every weight overflows it.
        for p in model.parameters():
            p.mul_(1 + 0.01 * torch.randn(p.shape, generator=gen))
            p.add_(1e-3 * torch.randn(p.shape, generator=gen))
    expected = model(video, ids, mask)
    assert torch.isfinite(expected).all()
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.contract == model.contract
    torch.testing.assert_close(loaded(video, ids, mask), expected, rtol=0, atol=0)
    assert loaded.tokenize(["a dog"])["input_ids"].tolist() == \
        model.tokenize(["a dog"])["input_ids"].tolist()


def test_any_frame_count_up_to_max(model):
    max_frames = model.contract.max_frames
    for frames in (1, max_frames):
        video, ids, mask = _batch(model, batch=2, frames=frames)
        assert torch.isfinite(model(video, ids, mask)).all()
    video, _, _ = _batch(model, batch=1, frames=max_frames + 1)
    with pytest.raises(ValueError, match="frames"):
        model.encode_video(video)


def test_masked_frames(model):
    video, _, _ = _batch(model, batch=3, frames=4)
    valid = torch.tensor([[True, True, False, False], [True] * 4, [False] * 4])
    video[~valid] = 1e3  # padded frames hold garbage: the mask must keep it out
    emb = model.encode_video(video, valid)
    assert torch.isfinite(emb).all()
    torch.testing.assert_close(emb[1], model.encode_video(video[1:2])[0], atol=1e-5, rtol=1e-5)


def test_grad_checkpointing_changes_neither_outputs_nor_gradients(model):
    video, ids, mask = _batch(model)

    def loss_and_grads():
        # The same dropout masks in both passes (checkpointing replays the RNG on recompute).
        torch.manual_seed(7)
        model.zero_grad()
        loss = _loss(model, model(video, ids, mask))
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                               if p.grad is not None}

    model.train()
    reference = loss_and_grads()
    model.set_grad_checkpointing(True)
    try:
        checkpointed = loss_and_grads()
    finally:
        model.set_grad_checkpointing(False)
    torch.testing.assert_close(checkpointed[0], reference[0])
    assert checkpointed[1].keys() == reference[1].keys()
    for name, grad in reference[1].items():
        torch.testing.assert_close(checkpointed[1][name], grad, atol=1e-6, rtol=1e-5,
                                   msg=name)


def test_patch_readout_scores_each_patch_or_is_declared_absent(model):
    video, ids, mask = _batch(model, batch=2, frames=3)
    if not model.has_patch_readout:
        with pytest.raises(NotImplementedError):
            model.patch_embeddings(video)
        return
    tokens = model.patch_embeddings(video)
    text = model.encode_text(ids, mask)
    assert tokens.shape[:2] == (2, 3) and tokens.shape[-1] == text.shape[-1]
    side = round(tokens.shape[2] ** 0.5)
    assert side * side == tokens.shape[2]
    scores = model.logits(text, tokens.reshape(-1, tokens.shape[-1]))
    assert scores.shape == (2, 2 * 3 * side * side) and torch.isfinite(scores).all()


def test_clamp_logit_scale_keeps_the_logits_bounded(model):
    video, ids, mask = _batch(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "logit_scale" in name:
                p.fill_(10.0)  # e^10 far above any cap
    model.clamp_logit_scale()
    # Cosine similarities lie in [-1, 1]: the logits stay within the scale (or 1 / temperature).
    logits = model(video, ids, mask)
    sim = model.similarity(model.encode_text(ids, mask), model.encode_video(video))
    scale = (logits / sim).abs().max()
    assert torch.isfinite(scale) and scale <= 100 * (1 + 1e-4)
