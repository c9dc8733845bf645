"""The MOF meta-gradient on the registered tiny models, checked against numerical derivatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mof.bilevel import frame_adam_step, meta_gradient
from mof.bilevel_passes import inner_gradient, make_loss_fn, sgd_step
from mof.loss import contrastive_loss
from mof.models import create_model, list_models
from mof.models.tokenizer import WordTokenizer
from pipeline.framestore.format import FrameRows
from pipeline.framestore.store import FrameStore

TINY = list_models("*-tiny")
CAPTIONS = ["a man is cooking pasta in a kitchen", "a dog runs across the park",
            "two people are dancing on a stage", "a car drives along a wet road"]
B, U, R, ALPHA = 3, 2, 4, 0.1


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine two
    # threads per op run up to 20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _setup(name: str, dtype=torch.float32, train: bool = False, seed: int = 0, **overrides):
    """A tiny model with perturbed weights, its batch loss, its params and a batch of frames."""
    torch.manual_seed(seed)
    model = create_model(name, tokenizer=WordTokenizer.build(CAPTIONS, max_words=12),
                         **overrides)
    # Zero-initialised parts (Frozen's time attention) would make second derivatives vanish.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = model.to(dtype).train(train)
    model.set_attention("math")
    text = model.tokenize(CAPTIONS[:B])
    loss_fn = make_loss_fn(model, text["input_ids"], text["attention_mask"],
                           lambda logits: contrastive_loss(logits, model.loss_reduction))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    size = model.contract.frame_size
    gen = torch.Generator().manual_seed(seed + 1)
    frames_u = torch.randn(B, U, 3, size, size, generator=gen).to(dtype)
    frames_r = torch.randn(B, R, 3, size, size, generator=gen).to(dtype)
    return model, loss_fn, params, frames_u, frames_r


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def _outer_loss(loss_fn, params, frames_u, frames_r) -> float:
    """L_c(Θ − α ∇_Θ L_c(Θ; ε); V^R) evaluated plainly, the function the meta-gradient is of."""
    inner = inner_gradient(loss_fn, params, frames_u, frames_grad=False)
    with torch.no_grad():
        return loss_fn(sgd_step(params, inner.params, ALPHA), frames_r).item()


@pytest.mark.parametrize("name", TINY)
def test_exact_matches_numerical_derivative_float64(name):
    model, loss_fn, params, frames_u, frames_r = _setup(name, torch.float64)
    exact = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact")
    assert exact.grad.shape == frames_u.shape and exact.grad.dtype == torch.float64
    assert exact.outer_loss.item() == pytest.approx(
        _outer_loss(loss_fn, params, frames_u, frames_r), rel=1e-12)

    # transformers' CLIP attention takes its softmax in float32 even in a float64 model, which
    # bounds how well a difference quotient can resolve a single pixel's derivative: it needs
    # a wide step. Elsewhere a narrow step keeps clear of ReLU kinks (ResNet), across which the
    # inner gradient, and so the outer loss, jumps.
    float32_softmax = any(type(m).__module__.startswith("transformers.models.clip")
                          for m in model.modules())
    h, rel = (1e-2, 1e-2) if float32_softmax else (1e-6, 1e-5)

    def numeric(direction: torch.Tensor) -> float:
        """Central difference of the outer loss along ``direction``."""
        return (_outer_loss(loss_fn, params, frames_u + h * direction, frames_r)
                - _outer_loss(loss_fn, params, frames_u - h * direction, frames_r)) / (2 * h)
    # The largest entries and one random entry, one pixel at a time.
    flat = exact.grad.flatten()
    picks = [*flat.abs().topk(3).indices.tolist(),
             int(torch.randint(flat.numel(), (1,), generator=torch.Generator().manual_seed(5)))]
    for index in picks:
        pixel = torch.zeros_like(frames_u)
        pixel.view(-1)[index] = 1.0
        assert flat[index].item() == pytest.approx(numeric(pixel), rel=rel), index
    # The whole gradient at once: the derivative along its own direction is its norm.
    unit = exact.grad / exact.grad.norm()
    assert numeric(unit) == pytest.approx(exact.grad.norm().item(), rel=1e-4)


#: ‖ξv‖ per model where 1e-3 does not fit: a ReLU network's gradient jumps wherever a unit's
#: input crosses zero, and a step of 1e-3 crosses many (resnet-tiny: cosine 0.47-0.51 at 1e-3,
#: 0.93-0.997 at 1e-4, 1.0000 at 1e-5, in float32 and float64 alike).
FD_STEP = {"resnet-tiny": 1e-5}


@pytest.mark.parametrize("name", TINY)
def test_finite_diff_agrees_with_exact_float32(name):
    _, loss_fn, params, frames_u, frames_r = _setup(name)
    exact = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact").grad
    cosines, fd_step = {}, FD_STEP.get(name, 1e-3)
    for scheme in ("central", "forward"):
        approx = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff",
                               fd_step=fd_step, fd_scheme=scheme)
        cosines[scheme] = _cos(approx.grad, exact)
        assert approx.stats["xi"].item() * approx.stats["v_norm"].item() == pytest.approx(fd_step)
    first_order = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "first-order").grad
    cosines["first-order"] = _cos(first_order, exact)
    print(f"{name}: cosine with exact at fd_step={fd_step:g}: {cosines}")
    assert cosines["central"] > 0.999 and cosines["forward"] > 0.999


def test_shared_inner_grad_gives_the_same_result():
    _, loss_fn, params, frames_u, frames_r = _setup(TINY[0], torch.float64)
    shared = inner_gradient(loss_fn, params, frames_u)
    for scheme in ("forward", "central"):
        own = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff",
                            fd_scheme=scheme)
        reused = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff",
                               fd_scheme=scheme, shared_inner_grad=shared)
        torch.testing.assert_close(reused.grad, own.grad, rtol=1e-10, atol=0)
    exact = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact")
    reordered = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact",
                              shared_inner_grad=shared)
    torch.testing.assert_close(reordered.grad, exact.grad, rtol=1e-10, atol=0)
    assert reordered.outer_loss.item() == pytest.approx(exact.outer_loss.item(), rel=1e-12)
    shared.frames = None
    with pytest.raises(ValueError, match="forward"):
        meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff",
                      fd_scheme="forward", shared_inner_grad=shared)


def test_parameters_bit_identical_and_no_grads_left():
    model, loss_fn, params, frames_u, frames_r = _setup(TINY[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode, scheme in (("finite-diff", "central"), ("finite-diff", "forward"), ("exact", "")):
        meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, mode,
                      fd_scheme=scheme or "central")
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_dropout_seed_keeps_the_passes_consistent():
    model, loss_fn, params, frames_u, frames_r = _setup(
        "frozen-tiny", train=True, text={"dropout": 0.2, "attention_dropout": 0.2})
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules())
    state = torch.random.get_rng_state()
    exact = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact", seed=7).grad
    fd = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff", seed=7).grad
    again = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff", seed=7).grad
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    assert torch.equal(fd, again)
    assert _cos(fd, exact) > 0.999
    # Without a seed every pass draws its own masks and the difference is noise.
    unseeded = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff").grad
    assert _cos(unseeded, exact) < 0.9


def test_exact_mode_names_the_attention_fix():
    model, loss_fn, params, frames_u, frames_r = _setup("frozen-tiny")
    model.set_attention("fused")
    with pytest.raises(RuntimeError, match=r"set_attention\('math'\)"):
        meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact")
    fused = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "finite-diff").grad
    model.set_attention("math")
    exact = meta_gradient(loss_fn, params, frames_u, frames_r, ALPHA, "exact").grad
    assert _cos(fused, exact) > 0.999


def test_frame_adam_matches_torch_adam_per_row():
    """Rows updated at different phases keep their own step count and bias corrections."""
    gen = torch.Generator().manual_seed(0)
    n, shape = 4, (U, 3, 5, 5)
    reference = [torch.nn.Parameter(torch.randn(1, *shape, generator=gen)) for _ in range(n)]
    optims = [torch.optim.Adam([p], lr=8e-4, betas=(0.5, 0.999), foreach=False)
              for p in reference]
    frames = torch.cat([p.detach().clone() for p in reference])
    exp_avg, exp_avg_sq = torch.zeros_like(frames), torch.zeros_like(frames)
    step = torch.zeros(n, dtype=torch.int64)
    for batch in ([0, 1], [1, 2, 3], [3, 1], [0, 2, 1]):
        grad = torch.randn(len(batch), *shape, generator=gen) * 1e-4
        rows = torch.tensor(batch)
        inputs = (frames[rows], grad, exp_avg[rows], exp_avg_sq[rows], step[rows])
        kept = [x.clone() for x in inputs]
        out = frame_adam_step(*inputs, lr=8e-4, betas=(0.5, 0.999))
        assert all(torch.equal(x, k) for x, k in zip(inputs, kept, strict=True))  # out of place
        frames[rows], exp_avg[rows], exp_avg_sq[rows], step[rows] = out
        for j, row in enumerate(batch):
            reference[row].grad = grad[j : j + 1].clone()
            optims[row].step()
    assert step.tolist() == [2, 4, 2, 2]
    for row in range(n):
        torch.testing.assert_close(frames[row : row + 1], reference[row].detach(),
                                   rtol=1e-6, atol=1e-9)
        state = optims[row].state[reference[row]]
        torch.testing.assert_close(exp_avg_sq[row : row + 1], state["exp_avg_sq"])


def test_a_phase_changes_only_the_batch_rows(tmp_path):
    """Read the batch rows from a real store, step them with the meta-gradient, write back."""
    model, loss_fn, params, _, frames_r = _setup("frozen-tiny")
    size, n = model.contract.frame_size, 6
    store = FrameStore.create(tmp_path / "mof.zarr", [f"v{i}" for i in range(n)], num_frames=U,
                              frame_size=size, mean=model.contract.mean, std=model.contract.std,
                              regular_frames=R, shards=[], dataset="synthetic")
    store.init_rows(np.arange(n), np.random.default_rng(0).normal(size=(n, U, 3, size, size)))
    before = store.read(np.arange(n))
    rows = np.array([4, 1, 2])
    state = store.read(rows)
    frames = torch.from_numpy(state.frames)
    result = meta_gradient(loss_fn, params, frames, frames_r, ALPHA, "finite-diff")
    assert result.grad.shape == (len(rows), U, 3, size, size)
    new = frame_adam_step(frames, result.grad, torch.from_numpy(state.exp_avg),
                          torch.from_numpy(state.exp_avg_sq), torch.from_numpy(state.step),
                          lr=8e-4)
    store.write(rows, FrameRows(*(t.numpy() for t in new)))
    after = FrameStore.open(tmp_path / "mof.zarr").read(np.arange(n))
    others = [0, 3, 5]
    for name in ("frames", "exp_avg", "exp_avg_sq", "step"):
        np.testing.assert_array_equal(getattr(after, name)[others],
                                      getattr(before, name)[others])
    assert after.step.tolist() == [0, 1, 1, 0, 1, 0]
    assert (np.abs(after.frames[rows] - before.frames[rows]).reshape(3, -1).max(1) > 0).all()
    assert (after.exp_avg_sq[rows] > 0).mean() > 0.9


def test_invalid_arguments_are_listed():
    _, loss_fn, params, frames_u, frames_r = _setup(TINY[0])
    with pytest.raises(ValueError) as err:
        meta_gradient(loss_fn, params, frames_u, frames_r[:2], ALPHA, "second-order",
                      fd_step=0.0, fd_scheme="backward")
    for fragment in ("mode", "fd_scheme", "fd_step", "same B"):
        assert fragment in str(err.value)
