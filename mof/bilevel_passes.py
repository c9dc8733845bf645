"""The passes the meta-gradient estimators of :mod:`mof.bilevel` are built from.

Each is one forward (and backward) of the model as a pure function ``loss_fn(params, video)``
(:func:`make_loss_fn`) under a dropout seed (:func:`rng_scope`); none modifies ``params`` or a
module. The estimators and the frames' Adam step are in :mod:`mof.bilevel`; callers import
these passes from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "InnerGrad",
    "LossFn",
    "frames_gradient",
    "grads_or_zeros",
    "inner_gradient",
    "make_loss_fn",
    "norm_of",
    "outer_pass",
    "param_leaves",
    "precondition",
    "rng_scope",
    "sgd_step",
]

#: ``loss_fn(params, video)``: params a dict name → tensor, video ``(B, T, 3, H, W)``; a scalar.
LossFn = Callable[[dict[str, Tensor], Tensor], Tensor]


@dataclass
class InnerGrad:
    """Gradients of the inner loss L_c(Θ; ε) at one Θ and ε, from one forward-backward.

    Attributes:
        params: ∇_Θ L_c(Θ; ε), a dict like ``params`` (zeros for unused parameters).
        frames: ∇_ε L_c(Θ; ε) ``(B, U, 3, H, W)``, or ``None`` when not asked for.
        loss: L_c(Θ; ε), detached scalar.
    """

    params: dict[str, Tensor]
    frames: Tensor | None
    loss: Tensor


@contextlib.contextmanager
def rng_scope(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run a block with the global RNG of ``device`` (and the CPU) seeded, then restore it.

    ``None`` does nothing. Passes run in ``rng_scope(s)`` with the same ``s`` draw the same
    dropout masks wherever the shapes agree, and the caller's random stream is left untouched.
    """
    if seed is None:
        yield
        return
    device = torch.device(device)
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda, device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def norm_of(tensors) -> Tensor:
    """The L2 norm of a list of tensors taken as one vector (0-d; float32 for half inputs)."""
    # Accumulate half-precision tensors in float32 without materialising a float32 copy.
    norms = [torch.linalg.vector_norm(
        t.detach(), dtype=torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else None)
        for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


def param_leaves(params: dict[str, Tensor]) -> dict[str, Tensor]:
    """``params`` as fresh autograd leaves (no copy), to differentiate a pass with respect to."""
    # detach() shares storage without copying; the caller's tensors are never written to.
    return {name: p.detach().requires_grad_(True) for name, p in params.items()}


def grads_or_zeros(loss: Tensor, inputs: list[Tensor], **kw) -> list[Tensor]:
    """``autograd.grad`` with zeros (not ``None``) for inputs the loss does not use."""
    out = torch.autograd.grad(loss, inputs, allow_unused=True, **kw)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, out, strict=True)]


def sgd_step(params: dict[str, Tensor], grads: dict[str, Tensor], alpha: float,
             precond: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Θ − α P ⊙ g, out of place (differentiable when the gradients are).

    Args:
        params: Θ, name → tensor.
        grads: g, a dict like ``params``.
        alpha: the step size α.
        precond: P, a per-element preconditioner like ``params`` (e.g. AdamW's
            1 / (sqrt(v_hat) + eps), :func:`adamw_preconditioner`); ``None``: plain SGD (P = 1).
            Names missing from it step with P = 1.
    """
    if precond is None:
        return {name: p - alpha * grads[name] for name, p in params.items()}
    return {name: p - alpha * (grads[name] * precond[name] if name in precond else grads[name])
            for name, p in params.items()}


def precondition(vectors: dict[str, Tensor], precond: dict[str, Tensor] | None
                 ) -> dict[str, Tensor]:
    """P ⊙ v for each name of ``vectors`` (unchanged where ``precond`` is ``None`` or lacks it)."""
    if precond is None:
        return vectors
    return {name: v * precond[name] if name in precond else v for name, v in vectors.items()}


def inner_gradient(
    loss_fn: LossFn,
    params: dict[str, Tensor],
    frames: Tensor,
    *,
    frames_grad: bool = True,
    seed: int | None = None,
) -> InnerGrad:
    """∇_Θ and ∇_ε of L_c(Θ; ε) from one forward-backward (no graph kept).

    The model-level step computes exactly this pass; a trainer that evaluates it at the Θ the
    frame-level step starts from can hand it to :func:`mof.bilevel.meta_gradient` as
    ``shared_inner_grad``.

    Args:
        loss_fn: the loss as a function of a parameter dict and a video batch.
        params: Θ, name → tensor.
        frames: ε ``(B, U, 3, H, W)``.
        frames_grad: also return ∇_ε (a backward to the input costs little more).
        seed: dropout seed (see :func:`rng_scope`).
    """
    theta = param_leaves(params)
    eps = frames.detach().requires_grad_(frames_grad)
    with rng_scope(seed, frames.device):
        loss = loss_fn(theta, eps)
    inputs = list(theta.values()) + ([eps] if frames_grad else [])
    grads = grads_or_zeros(loss, inputs)
    names = list(theta)
    return InnerGrad(dict(zip(names, grads[: len(names)], strict=True)),
                     grads[-1] if frames_grad else None, loss.detach())


def frames_gradient(loss_fn: LossFn, params: dict[str, Tensor], frames: Tensor,
                    seed: int | None) -> Tensor:
    """∇_ε L_c(params; ε) with the parameters held constant."""
    eps = frames.detach().requires_grad_(True)
    with rng_scope(seed, frames.device):
        loss = loss_fn({k: p.detach() for k, p in params.items()}, eps)
    return grads_or_zeros(loss, [eps])[0]


def outer_pass(loss_fn: LossFn, params: dict[str, Tensor], frames_r: Tensor, seed: int | None
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """L_c(Θ''; V^R) and v = ∇_Θ'' of it, Θ'' taken as constant leaves."""
    theta2 = param_leaves(params)
    with rng_scope(None if seed is None else seed + 1, frames_r.device):
        loss = loss_fn(theta2, frames_r)
    grads = grads_or_zeros(loss, list(theta2.values()))
    return loss.detach(), dict(zip(theta2, grads, strict=True))


def make_loss_fn(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    criterion: Callable[[Tensor], Tensor],
    video_mask: Tensor | None = None,
) -> LossFn:
    """The batch loss as a pure function of (params, video), for :func:`mof.bilevel.meta_gradient`.

    ``criterion`` maps the model's ``(B, B)`` logits to the scalar loss (e.g.
    ``lambda logits: contrastive_loss(logits, model.loss_reduction)``). Buffers are copied on
    every call so that batch-norm running statistics of the module are not updated by the
    extra passes of the frame-level step.
    """

    def loss_fn(params: dict[str, Tensor], video: Tensor) -> Tensor:
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        logits = torch.func.functional_call(
            model, {**buffers, **params}, (video, input_ids, attention_mask, video_mask)
        )
        return criterion(logits)

    return loss_fn
