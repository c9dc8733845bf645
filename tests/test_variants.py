"""The variants beyond the paper: the mix parametrisation, the AdamW-preconditioned inner step,
and the ``mix`` frame store (docs/variants.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr
from test_bilevel import ALPHA, _cos, _setup

from mof.bilevel import adamw_preconditioner, meta_gradient
from mof.bilevel_passes import inner_gradient, sgd_step
from mof.frame_mix import initial_mix_logits, mix_frames, mix_residual, mix_vjp
from pipeline.framestore.format import FrameRows, bytes_per_video
from pipeline.framestore.store import FrameStore


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_mix_vjp_matches_finite_differences_float64():
    gen = torch.Generator().manual_seed(0)
    b, u, r, side = 2, 3, 5, 4
    logits = torch.randn(b, u, r, generator=gen, dtype=torch.float64)
    residual = torch.randn(b, u, 3, side, side, generator=gen, dtype=torch.float64)
    anchors = torch.randn(b, r, 3, side, side, generator=gen, dtype=torch.float64)
    weight = torch.randn(b, u, 3, side, side, generator=gen, dtype=torch.float64)

    def loss(z: torch.Tensor, rho: torch.Tensor) -> torch.Tensor:
        # Non-linear in the frame, so the VJP is checked at a gradient that varies with f.
        return (weight * torch.tanh(mix_frames(z, rho, anchors))).sum()

    frames = mix_frames(logits, residual, anchors).requires_grad_(True)
    (grad_f,) = torch.autograd.grad((weight * torch.tanh(frames)).sum(), frames)
    grad_z, grad_rho = mix_vjp(logits, anchors, grad_f)
    h = 1e-6
    for index in range(logits.numel()):
        step = torch.zeros_like(logits).view(-1)
        step[index] = h
        step = step.view_as(logits)
        numeric = (loss(logits + step, residual) - loss(logits - step, residual)) / (2 * h)
        assert grad_z.view(-1)[index].item() == pytest.approx(numeric.item(), rel=1e-6,
                                                              abs=1e-8)
    for index in torch.randint(residual.numel(), (10,), generator=gen).tolist():
        step = torch.zeros_like(residual).view(-1)
        step[index] = h
        step = step.view_as(residual)
        numeric = (loss(logits, residual + step) - loss(logits, residual - step)) / (2 * h)
        assert grad_rho.view(-1)[index].item() == pytest.approx(numeric.item(), rel=1e-7)
    torch.testing.assert_close(mix_residual(frames.detach(), logits, anchors), residual)


def test_initial_logits_peak_at_the_nearest_anchor():
    logits = initial_mix_logits([1, 5, 8], [0, 3, 6, 9], peak=4.0)
    assert logits.shape == (3, 4) and logits.dtype == np.float32
    # 1 -> anchor 0; 5 -> anchor 6; 8 -> anchor 9 (ties go to the earlier anchor: none here)
    assert logits.argmax(1).tolist() == [0, 2, 3] and logits.sum() == 12.0
    assert initial_mix_logits([2], [1, 3], 1.0).tolist() == [[1.0, 0.0]]  # tie: earlier


def test_adamw_preconditioner_matches_hand_computation():
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    frozen = torch.nn.Parameter(torch.ones(2))  # never stepped: left out of P
    betas, eps, lr = (0.8, 0.95), 1e-3, 1e-2
    optimizer = torch.optim.AdamW([*layer.parameters(), frozen], lr=lr, betas=betas, eps=eps,
                                  weight_decay=0.1)
    grads = [[torch.randn(p.shape, generator=gen) for p in layer.parameters()]
             for _ in range(3)]
    for step in grads:
        for p, g in zip(layer.parameters(), step, strict=True):
            p.grad = g.clone()
        optimizer.step()
    named = {"weight": layer.weight, "bias": layer.bias, "frozen": frozen}
    precond = adamw_preconditioner(optimizer, named)
    assert sorted(precond) == ["bias", "weight"]
    for j, name in enumerate(("weight", "bias")):
        v = sum((1 - betas[1]) * betas[1] ** (2 - t) * grads[t][j] ** 2 for t in range(3))
        hand = 1 / ((v / (1 - betas[1] ** 3)).sqrt() + eps)
        torch.testing.assert_close(precond[name], hand, rtol=1e-6, atol=0)
    params = {n: p.detach() for n, p in named.items()}
    g = {n: torch.full_like(p, 2.0) for n, p in params.items()}
    stepped = sgd_step(params, g, 0.5, precond)
    torch.testing.assert_close(stepped["weight"], params["weight"] - precond["weight"])
    torch.testing.assert_close(stepped["frozen"], params["frozen"] - 1.0)  # P = 1


def _random_precond(params, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen, dtype=p.dtype) * 4 + 0.1
            for n, p in params.items()}


def test_preconditioned_exact_meta_gradient_matches_numerical_float64():
    _, loss_fn, params, frames_u, frames_r = _setup("frozen-tiny", torch.float64)
    precond = _random_precond(params)

    def outer(frames: torch.Tensor) -> float:
        inner = inner_gradient(loss_fn, params, frames, frames_grad=False)
        with torch.no_grad():
            return loss_fn(sgd_step(params, inner.params, ALPHA, precond), frames_r).item()

    exact = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact", precond=precond)
    assert exact.outer_loss.item() == pytest.approx(outer(frames_u), rel=1e-12)
    unit, h = exact.grad / exact.grad.norm(), 1e-6
    numeric = (outer(frames_u + h * unit) - outer(frames_u - h * unit)) / (2 * h)
    assert numeric == pytest.approx(exact.grad.norm().item(), rel=1e-5)
    plain = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact").grad
    assert _cos(plain, exact.grad) < 0.99  # the preconditioner changes the direction


def test_preconditioned_finite_diff_agrees_with_exact():
    _, loss_fn, params, frames_u, frames_r = _setup("frozen-tiny")
    precond = _random_precond(params)
    exact = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact",
                          precond=precond).grad
    for scheme in ("central", "forward"):
        fd = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff",
                           fd_scheme=scheme, precond=precond)
        assert _cos(fd.grad, exact) > 0.999, scheme


def _mix_store(path, n=4, u=2, r=3, side=4):
    return FrameStore.create(path, [f"v{i}" for i in range(n)], num_frames=u, frame_size=side,
                             mean=[0.5] * 3, std=[0.25] * 3, regular_frames=r, shards=[],
                             dataset="synthetic", dtype="float32", frame_param="mix")


def test_mix_store_round_trip_and_errors(tmp_path):
    store = _mix_store(tmp_path / "mix.zarr")
    assert store.frame_param == "mix" and store.fields[-3:] == (
        "mix_logits", "mix_exp_avg", "mix_exp_avg_sq")
    assert store.row_nbytes == bytes_per_video(2, 4, "float32", "float32", 3)
    assert store.row_nbytes - bytes_per_video(2, 4, "float32", "float32") == 3 * 4 * 2 * 3
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(4, 2, 3, 4, 4)).astype(np.float32)
    logits = rng.normal(size=(4, 2, 3)).astype(np.float32)
    with pytest.raises(ValueError, match="mix_logits required"):
        store.init_rows(np.arange(4), frames)
    store.init_rows(np.arange(4), frames, logits)
    back = FrameStore.open(tmp_path / "mix.zarr", expect={"frame_param": "mix"}).read([2, 0])
    np.testing.assert_array_equal(back.mix_logits, logits[[2, 0]])
    assert not back.mix_exp_avg_sq.any() and back.step.tolist() == [0, 0]
    only = store.read([1], fields=("frames", "mix_logits"))
    assert only.mix_exp_avg is None and only.exp_avg is None
    with pytest.raises(ValueError, match="needs every field"):  # a write without the mix arrays
        store.write([0], FrameRows(frames[:1], frames[:1], frames[:1], np.zeros(1, np.int64)))
    with pytest.raises(ValueError, match=r"mix arrays have shapes"):
        FrameRows(frames[:1], mix_logits=logits[:1, :1])
    pixels = FrameStore.create(tmp_path / "px.zarr", ["a"], num_frames=2, frame_size=4,
                               mean=[0.5] * 3, std=[0.25] * 3, regular_frames=3, shards=[],
                               dataset="synthetic")
    with pytest.raises(ValueError, match="not accepted"):
        pixels.init_rows([0], frames[:1], logits[:1])
    with pytest.raises(ValueError, match="subset of"):
        pixels.read([0], fields=("frames", "mix_logits"))


def test_version_1_store_opens_as_a_pixels_store(tmp_path):
    path = tmp_path / "old.zarr"
    FrameStore.create(path, ["a"], num_frames=1, frame_size=4, mean=[0.5] * 3, std=[0.25] * 3,
                      regular_frames=2, shards=[], dataset="synthetic")
    group = zarr.open_group(path, mode="r+")
    group.attrs["format_version"] = 1
    del group.attrs["frame_param"]
    store = FrameStore.open(path, expect={"frame_param": "pixels"})
    assert store.frame_param == "pixels" and "mix_logits" not in store.fields
    group.attrs["format_version"] = 3
    with pytest.raises(ValueError, match="format_version 3"):
        FrameStore.open(path)


def test_config_checks_the_variant_settings():
    from mof.train.config import ConfigError, TrainConfig

    base = {"model": "frozen-tiny", "train": "x", "out": "y", "frames": "8:4"}
    with pytest.raises(ConfigError) as err:
        TrainConfig(**base, frame_steps=0, inner_step="adam", frame_param="logits", mix_lr=0,
                    mix_init_logit=-1)
    for option in ("--frame-steps", "--inner-step", "--frame-param", "--mix-lr",
                   "--mix-init-logit"):
        assert option in str(err.value)
    # The epoch schedule's alpha = 1 belongs to its SGD step; the AdamW step takes --lr.
    assert TrainConfig(**base, frame_schedule="epoch").alpha == 1.0
    assert TrainConfig(**base, frame_schedule="epoch", inner_step="adamw", lr=3e-4).alpha == 3e-4
