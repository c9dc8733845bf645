"""The frame-level step of MOF (Eqs. 10-11) as pure functions; the trainer only sequences them.

From the model Θ just updated by the model-level step, a temporary SGD step

    Θ''(ε) = Θ − α ∇_Θ L_c(Θ; ε)                                                  (Eq. 10)

stays differentiable in the learnable frames ε of the batch, and the loss of Θ'' on the regular
frames V^R is differentiated with respect to ε (Eq. 11). With v = ∇_Θ'' L_c(Θ''; V^R),

    ∇_ε L_c(Θ''(ε); V^R) = −α ∂/∂ε ⟨∇_Θ L_c(Θ; ε), v⟩                              (chain rule)

a mixed second derivative. :func:`meta_gradient` computes it three ways:

* ``exact``: one vector-Jacobian product through the unrolled step (double backward). The
  model must run its math attention path (``model.set_attention("math")``): fused SDPA kernels
  have no double backward.
* ``finite-diff``: the DARTS difference along v with ξ = ``fd_step`` / ‖v‖ (so ‖ξv‖ =
  ``fd_step``), no double backward, any attention kernel. ``central``:
  −α (∇_ε L(Θ+ξv; ε) − ∇_ε L(Θ−ξv; ε)) / (2ξ); ``forward``: −α (∇_ε L(Θ+ξv; ε) − ∇_ε L(Θ; ε)) / ξ,
  whose second term comes free with the inner gradient (or with a shared one).
* ``first-order``: ∇_ε L_c(Θ''; ε), a labelled ablation only: its direction is unrelated to
  the meta-gradient (cosine −0.6 to +0.1 measured).

Functions take the model as a pure function ``loss_fn(params, video) -> scalar`` of a parameter
dict (see :func:`make_loss_fn`); they never modify ``params`` or a module, so every perturbation
is undone by construction. Dropout: pass ``seed`` and every pass on the learnable frames runs
with the same random stream (``torch.random.fork_rng`` + a manual seed, see :func:`rng_scope`),
so the differences and the unrolled step see one and the same function of Θ and ε.

The single passes the estimators combine (inner gradient, outer pass, ε-gradient, the pure loss
function, the seed scope) are in :mod:`mof.bilevel_passes`; import them from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from mof.bilevel_passes import (
    InnerGrad,
    LossFn,
    frames_gradient,
    inner_gradient,
    norm_of,
    outer_pass,
    param_leaves,
    precondition,
    rng_scope,
    sgd_step,
)

__all__ = [
    "MetaGradMode",
    "MetaGradResult",
    "Preconditioner",
    "adamw_preconditioner",
    "fd_step_cosines",
    "frame_adam_step",
    "meta_gradient",
]

MetaGradMode = Literal["exact", "finite-diff", "first-order"]
FDScheme = Literal["central", "forward"]
#: P of the inner step Θ'' = Θ − α P ⊙ ∇_Θ L: name → tensor of the parameter's shape.
Preconditioner = dict[str, Tensor]


@dataclass
class MetaGradResult:
    """The meta-gradient of one batch.

    Attributes:
        grad: ∇_ε L_c(Θ''(ε); V^R) ``(B, U, 3, H, W)``, detached (``first-order``: the surrogate).
        outer_loss: L_c(Θ''; V^R), detached scalar.
        inner_loss: L_c(Θ; ε), detached scalar.
        stats: detached 0-d tensors for logging: ``v_norm`` (‖v‖), ``step_norm`` (α‖∇_Θ L‖),
            ``grad_norm`` (‖grad‖) and, for ``finite-diff``, ``xi``.
    """

    grad: Tensor
    outer_loss: Tensor
    inner_loss: Tensor
    stats: dict[str, Tensor] = field(default_factory=dict)


_DOUBLE_BACKWARD_HINT = ("\nThe exact meta-gradient needs double backward: select the math "
                         "attention path (model.set_attention('math')) or use mode='finite-diff'.")


def _inner_graph(loss_fn, params, frames_u, seed):
    """L_c(Θ; ε) and ∇_Θ of it with the graph kept (differentiable in ε)."""
    theta = param_leaves(params)
    eps = frames_u.detach().requires_grad_(True)
    with rng_scope(seed, frames_u.device):
        inner = loss_fn(theta, eps)
    try:
        g = torch.autograd.grad(inner, list(theta.values()), create_graph=True,
                                allow_unused=True)
    except RuntimeError as err:
        raise RuntimeError(f"{err}{_DOUBLE_BACKWARD_HINT}") from err
    return eps, inner.detach(), dict(zip(theta, g, strict=True))


def _exact(loss_fn, params, frames_u, frames_r, alpha, shared, seed, precond
           ) -> MetaGradResult:
    if shared is None:
        # One VJP through the unrolled step; the inner graph is held during the outer pass.
        eps, inner_loss, g = _inner_graph(loss_fn, params, frames_u, seed)
        step = {k: torch.zeros_like(p) if g[k] is None else g[k].detach()
                for k, p in params.items()}
    else:
        step = shared.params
    with torch.no_grad():
        theta2 = sgd_step({k: p.detach() for k, p in params.items()}, step, alpha, precond)
    outer_loss, v = outer_pass(loss_fn, theta2, frames_r, seed)
    # Θ'' = Θ − α P ⊙ g: the VJP of g carries P ⊙ v (P is constant in ε).
    pv = precondition(v, precond)
    if shared is not None:
        # Outer pass first, inner graph built after it: the two graphs never coexist, so the
        # peak memory stays near one double-backward pass on U frames.
        eps, inner_loss, g = _inner_graph(loss_fn, params, frames_u, seed)
    # Only gradients that still depend on ε carry the mixed derivative.
    live = [k for k in g if g[k] is not None and g[k].requires_grad]
    grad = None
    if live:
        try:
            (grad,) = torch.autograd.grad([g[k] for k in live], [eps],
                                          grad_outputs=[-alpha * pv[k] for k in live],
                                          allow_unused=True)
        except RuntimeError as err:
            raise RuntimeError(f"{err}{_DOUBLE_BACKWARD_HINT}") from err
    grad = torch.zeros_like(eps) if grad is None else grad
    stats = {"v_norm": norm_of(v.values()),
             "step_norm": norm_of(precondition(step, precond).values()) * alpha}
    return MetaGradResult(grad.detach(), outer_loss, inner_loss, stats)


def _finite_diff(loss_fn, params, frames_u, frames_r, alpha, fd_step, fd_scheme, shared, seed,
                 precond) -> MetaGradResult:
    forward = fd_scheme == "forward"
    if shared is None:
        shared = inner_gradient(loss_fn, params, frames_u, frames_grad=forward, seed=seed)
    elif forward and shared.frames is None:
        raise ValueError("fd_scheme='forward' needs shared_inner_grad.frames (∇_ε at Θ)")
    with torch.no_grad():
        theta2 = sgd_step({k: p.detach() for k, p in params.items()}, shared.params, alpha,
                          precond)
    outer_loss, v = outer_pass(loss_fn, theta2, frames_r, seed)
    stats = {"v_norm": norm_of(v.values()),
             "step_norm": norm_of(precondition(shared.params, precond).values()) * alpha}
    # The difference runs along P ⊙ v: −α ∂/∂ε ⟨g, P v⟩ is the meta-gradient of Θ − α P g.
    v = precondition(v, precond)
    v_norm = norm_of(v.values())
    if v_norm.item() == 0.0:  # Θ'' is stationary on V^R: no direction to differentiate along
        grad = torch.zeros_like(frames_u)
        stats["xi"] = torch.zeros((), dtype=torch.float64)
        return MetaGradResult(grad, outer_loss, shared.loss, stats)
    xi = fd_step / v_norm.item()
    stats["xi"] = torch.tensor(xi, dtype=torch.float64)
    with torch.no_grad():
        plus = {k: p.detach() + xi * v[k] for k, p in params.items()}
    g_plus = frames_gradient(loss_fn, plus, frames_u, seed)
    del plus
    if forward:
        grad = (g_plus - shared.frames) * (-alpha / xi)
    else:
        with torch.no_grad():
            minus = {k: p.detach() - xi * v[k] for k, p in params.items()}
        grad = (g_plus - frames_gradient(loss_fn, minus, frames_u, seed)) * (-alpha / (2 * xi))
    return MetaGradResult(grad.detach(), outer_loss, shared.loss, stats)


def _first_order(loss_fn, params, frames_u, frames_r, alpha, shared, seed, precond
                 ) -> MetaGradResult:
    if shared is None:
        shared = inner_gradient(loss_fn, params, frames_u, frames_grad=False, seed=seed)
    with torch.no_grad():
        theta2 = sgd_step({k: p.detach() for k, p in params.items()}, shared.params, alpha,
                          precond)
        with rng_scope(None if seed is None else seed + 1, frames_r.device):
            outer_loss = loss_fn(theta2, frames_r).detach()
    grad = frames_gradient(loss_fn, theta2, frames_u, seed)
    stats = {"step_norm": norm_of(precondition(shared.params, precond).values()) * alpha}
    return MetaGradResult(grad.detach(), outer_loss, shared.loss, stats)


def meta_gradient(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    frames_u: Tensor,
    frames_r: Tensor,
    alpha: float,
    mode: MetaGradMode = "exact",
    *,
    fd_step: float = 1e-3,
    fd_scheme: FDScheme = "central",
    shared_inner_grad: InnerGrad | None = None,
    seed: int | None = None,
    precond: Preconditioner | None = None,
) -> MetaGradResult:
    """∇_ε L_c(Θ''(ε); V^R) with Θ'' = Θ − α P ⊙ ∇_Θ L_c(Θ; ε) (Eqs. 10-11; P = 1: SGD).

    Args:
        loss_fn: the contrastive loss of the batch as a function of a parameter dict and a
            video ``(B, T, 3, H, W)``; the text batch is fixed inside it (see
            :func:`make_loss_fn`). It must not modify its arguments.
        params: Θ, the trainable parameters (name → tensor), e.g.
            ``{n: p for n, p in model.named_parameters() if p.requires_grad}``. Never
            modified; no ``.grad`` is written.
        frames_u: ε, the learnable frames ``(B, U, 3, H, W)``.
        frames_r: V^R, the regular frames ``(B, R, 3, H, W)``.
        alpha: the inner learning rate α of the temporary SGD step.
        mode: ``exact``, ``finite-diff`` or ``first-order`` (ablation), see the module doc.
        fd_step: ‖ξv‖, the length of the finite-difference step in parameter space
            (ξ = fd_step / ‖v‖). 1e-3 suits float32; under bf16 use ≥ 1e-2.
        fd_scheme: ``central`` (two ε-gradients) or ``forward`` (one, plus ∇_ε at Θ).
        shared_inner_grad: ∇_Θ (and, for ``forward``, ∇_ε) of L_c(Θ; ε) already computed at
            exactly these ``params`` and ``frames_u`` (and under the same ``seed``), e.g. by
            the model-level pass; saves the inner pass. ``exact`` then runs the outer pass
            first and builds the inner graph after it, which lowers its peak memory.
        seed: dropout seed; every pass on ``frames_u`` runs under ``rng_scope(seed)``, the
            pass on ``frames_r`` under ``rng_scope(seed + 1)``. ``None``: the global stream
            (fine for models without dropout or in eval mode).
        precond: P, a per-element preconditioner of the inner step (name → tensor like
            ``params``, constant in ε), e.g. :func:`adamw_preconditioner` so that Θ'' moves
            like the model's next AdamW step; ``None``: the paper's plain SGD step. Names
            missing from it step with P = 1. ``finite-diff`` then differences along P ⊙ v.

    Returns:
        :class:`MetaGradResult`; ``grad`` has the shape, dtype and device of ``frames_u``.

    Raises:
        ValueError: unknown mode or scheme, bad ``fd_step``, mismatched batch sizes.
        RuntimeError: ``exact`` through a kernel without double backward (the message says
            which attention path to select).
    """
    problems = []
    if mode not in ("exact", "finite-diff", "first-order"):
        problems.append(f"mode must be exact, finite-diff or first-order, got {mode!r}")
    if fd_scheme not in ("central", "forward"):
        problems.append(f"fd_scheme must be central or forward, got {fd_scheme!r}")
    if not (fd_step > 0 and math.isfinite(fd_step)):
        problems.append(f"fd_step must be positive, got {fd_step!r}")
    if frames_u.dim() != 5 or frames_r.dim() != 5 or frames_u.shape[0] != frames_r.shape[0]:
        problems.append(f"frames_u {tuple(frames_u.shape)} and frames_r "
                        f"{tuple(frames_r.shape)} must be (B, T, 3, H, W) with the same B")
    if problems:
        raise ValueError("meta_gradient: " + "; ".join(problems))
    if mode == "exact":
        result = _exact(loss_fn, params, frames_u, frames_r, alpha, shared_inner_grad, seed,
                        precond)
    elif mode == "finite-diff":
        result = _finite_diff(loss_fn, params, frames_u, frames_r, alpha, fd_step, fd_scheme,
                              shared_inner_grad, seed, precond)
    else:
        result = _first_order(loss_fn, params, frames_u, frames_r, alpha, shared_inner_grad,
                              seed, precond)
    result.stats["grad_norm"] = norm_of([result.grad])
    return result


def fd_step_cosines(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    frames_u: Tensor,
    frames_r: Tensor,
    alpha: float,
    steps: list[float],
    *,
    fd_scheme: FDScheme = "central",
    seed: int | None = None,
    precond: Preconditioner | None = None,
) -> dict[float, float]:
    """Cosine between the ``finite-diff`` meta-gradient at each step and the exact one.

    A difference estimator is accurate only for a step between the round-off floor of the
    precision and the curvature scale of the model: 1e-3 gives cosine 0.99999 on frozen-tiny
    in float32, but 0.3-0.5 on resnet-tiny, whose ReLU kinks need 1e-5. The trainer runs this
    once, on the first frame-level batch, to check (and if needed choose) ``fd_step``.

    Args:
        loss_fn, params, frames_u, frames_r, alpha, fd_scheme, seed, precond: as
            :func:`meta_gradient`.
        steps: the values of ‖ξv‖ to try.

    Returns:
        ``{step: cosine}``; the exact meta-gradient needs double backward (math attention).
    """
    exact = meta_gradient(loss_fn, params, frames_u, frames_r, alpha, "exact", seed=seed,
                          precond=precond).grad
    out = {}
    for step in steps:
        fd = meta_gradient(loss_fn, params, frames_u, frames_r, alpha, "finite-diff",
                           fd_step=step, fd_scheme=fd_scheme, seed=seed,
                           precond=precond).grad
        out[step] = torch.nn.functional.cosine_similarity(
            fd.flatten().double(), exact.flatten().double(), dim=0).item()
    return out


@torch.no_grad()
def adamw_preconditioner(optimizer: torch.optim.Optimizer, named_params: dict[str, Tensor],
                         ) -> Preconditioner:
    """AdamW's current per-element preconditioner 1 / (sqrt(v_hat) + eps), bias-corrected.

    With it the inner step Θ − α P ⊙ g moves Θ as the model's next AdamW step would (up to
    the momentum and the weight decay), instead of a plain SGD step whose size depends on the
    gradient's scale. Read only; the optimiser is not modified.

    Args:
        optimizer: a ``torch.optim.Adam`` or ``AdamW`` holding ``named_params``.
        named_params: the parameters, name → the optimiser's parameter tensor itself.

    Returns:
        name → P of the parameter's shape and dtype; parameters without state yet (never
        stepped) are left out, so they step with P = 1.

    Raises:
        ValueError: the optimiser's state lacks ``exp_avg_sq``/``step`` (not an Adam family).
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out: Preconditioner = {}
    for name, p in named_params.items():
        state = optimizer.state.get(p)
        if not state:
            continue
        if "exp_avg_sq" not in state or "step" not in state:
            raise ValueError(f"optimiser state of {name!r} has no exp_avg_sq/step: the AdamW "
                             f"inner step needs an Adam-family optimiser, got "
                             f"{type(optimizer).__name__}")
        group = group_of[id(p)]
        _, beta2 = group["betas"]
        count = float(state["step"])
        bias2 = 1 - beta2**count
        denom = (state["exp_avg_sq"] / bias2).sqrt_().add_(group["eps"])
        out[name] = denom.reciprocal_()
    return out


@torch.no_grad()
def frame_adam_step(
    frames: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Adam step on each video's frames, with a per-video step count.

    Every video is its own parameter: its bias corrections use its own ``step``, so videos
    seen a different number of times are updated exactly as ``torch.optim.Adam`` would update
    them one by one. Out of place; inputs are not modified.

    Args:
        frames: ε ``(B, U, 3, H, W)``.
        grad: the meta-gradient ``(B, U, 3, H, W)``.
        exp_avg: first moment ``(B, U, 3, H, W)``.
        exp_avg_sq: second moment ``(B, U, 3, H, W)``.
        step: int ``(B,)`` steps taken so far by each video.
        lr: β, the frame learning rate (the paper: 8e-4).
        betas: Adam's (β1, β2) (the authors' trainer uses (0.5, 0.999)).
        eps: added to the denominator.

    Returns:
        ``(frames, exp_avg, exp_avg_sq, step)`` after the step, same shapes.
    """
    if not (frames.shape == grad.shape == exp_avg.shape == exp_avg_sq.shape):
        raise ValueError(f"shapes differ: frames {tuple(frames.shape)}, grad {tuple(grad.shape)}"
                         f", exp_avg {tuple(exp_avg.shape)}, exp_avg_sq {tuple(exp_avg_sq.shape)}")
    if step.shape != frames.shape[:1]:
        raise ValueError(f"step must be ({frames.shape[0]},), got {tuple(step.shape)}")
    beta1, beta2 = betas
    step = step + 1
    # Five full-size allocations (the three results and two temporaries), every other
    # operation in place on them; the inputs are never written (the trainer's undo journal
    # may still be saving them).
    exp_avg = exp_avg.lerp(grad, 1 - beta1)
    exp_avg_sq = exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
    # Bias corrections in float64 per row, as torch.optim.Adam computes them in Python floats.
    count = step.to(torch.float64)
    view = (-1,) + (1,) * (frames.dim() - 1)
    step_size = (lr / (1 - beta1**count)).to(frames.dtype).view(view)
    bc2_sqrt = (1 - beta2**count).sqrt().to(frames.dtype).view(view)
    denom = exp_avg_sq.sqrt().div_(bc2_sqrt).add_(eps)
    update = exp_avg.mul(step_size).div_(denom)
    return frames - update, exp_avg, exp_avg_sq, step
