"""The two steps of one MOF phase as functions of tensors (no I/O; the trainer sequences them).

* :func:`model_level_step` — Eq. 7: an AdamW step on Θ with the contrastive loss of the batch's
  (augmented) learnable frames ε_B, or of its uniform frames for the baseline. It can keep Θ
  before the step and the pass's gradients (:class:`SharedPass`) for the forward-difference
  frame step.
* :func:`frame_level_update` — Eqs. 10-11: from the updated Θ, the meta-gradient of the
  regular-frame loss after a temporary SGD step on ε_B (:func:`mof.bilevel.meta_gradient`),
  pulled back through the augmentation, then the per-video Adam step on ε_B
  (:func:`mof.bilevel.frame_adam_step`). Θ is never modified by it.

Both steps of a phase run their passes under the same torch seed (dropout), with the same
captions and crops.

``finite-diff`` with ``fd_scheme="forward"`` reuses the model-level pass: the frame-level step
then starts from Θ *before* the model-level update (an approximation of Algorithm 1, see
``docs/bilevel.md``), and its inner gradients ∇_Θ and ∇_ε are that pass's, so the frame-level
step adds only the outer pass on R frames and one ε-gradient on U frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from mof.bilevel import Preconditioner, fd_step_cosines, frame_adam_step, meta_gradient
from mof.bilevel_passes import InnerGrad, make_loss_fn, rng_scope
from mof.frame_mix import mix_frames, mix_residual, mix_vjp
from mof.loss import contrastive_loss
from mof.models.contract import RetrievalModel
from mof.train.augment import VideoAugment, apply_augment
from mof.train.distributed import all_gather_with_grad

__all__ = [
    "FDStepCheck",
    "FrameState",
    "GlobalContrastive",
    "SharedPass",
    "check_fd_step",
    "frame_level_update",
    "model_level_step",
]


class GlobalContrastive(nn.Module):
    """The model-level loss of the local batch against the batch gathered from every rank.

    Wrapped in DistributedDataParallel, it makes one DDP forward per step. Local texts are
    scored against all videos and local videos against all texts, positives at offset
    ``rank * B`` (``mof.loss`` convention); the gathered embeddings carry gradients back to
    their ranks, so the averaged DDP gradient is that of the global batch's loss.
    """

    def __init__(self, model: RetrievalModel, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.model = model
        self.rank = rank
        self.world_size = world_size

    def forward(self, video: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> torch.Tensor:
        """``video`` ``(B, U, 3, H, W)``, text ``(B, L)`` → scalar loss."""
        text_emb = self.model.encode_text(input_ids, attention_mask)
        video_emb = self.model.encode_video(video)
        if self.world_size == 1:
            return contrastive_loss(self.model.logits(text_emb, video_emb),
                                    self.model.loss_reduction)
        all_text, all_video = all_gather_with_grad(text_emb), all_gather_with_grad(video_emb)
        return contrastive_loss(
            self.model.logits(text_emb, all_video), self.model.loss_reduction,
            logits_v2t=self.model.logits(all_text, video_emb).t(),
            offset=self.rank * text_emb.shape[0],
        )


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass
class SharedPass:
    """The model-level pass of a phase, kept for a forward-difference frame-level step.

    Attributes:
        params: Θ before the AdamW step (copies), name → tensor.
        inner: ∇_Θ and ∇_ε (ε after the crop) of the local batch loss at ``params``, from the
            pass's own backward; ``None`` when that pass cannot stand in for the local fp32
            inner pass (several processes: its Θ-gradient is the global batch's; bf16
            autocast: differences need fp32), and the frame-level step computes it itself.
    """

    params: dict[str, torch.Tensor]
    inner: InnerGrad | None


def model_level_step(
    step_module: nn.Module,
    model: RetrievalModel,
    optimizer: torch.optim.Optimizer,
    frames: torch.Tensor,
    text: dict[str, torch.Tensor],
    augment: VideoAugment | None,
    *,
    seed: int,
    amp: bool,
    keep: Literal["params", "grads"] | None = None,
) -> tuple[float, SharedPass | None]:
    """One AdamW step of Θ on the batch (Eq. 7).

    Args:
        step_module: :class:`GlobalContrastive` (possibly DDP-wrapped) around ``model``.
        model: the bare model (its logit scale is clamped after the step).
        optimizer: the model's AdamW.
        frames: ``(B, U, 3, H, W)`` ε_B (MOF) or uniform frames (baseline); not modified.
        text: ``input_ids``/``attention_mask`` ``(B, L)``.
        augment: the phase's crops.
        seed: the phase's torch seed.
        amp: bf16 autocast (CUDA only).
        keep: ``params``: also return Θ before the step; ``grads``: and the pass's gradients
            with respect to Θ and the cropped frames (for a single process in fp32 only).

    Returns:
        The loss before the step, and the :class:`SharedPass` asked for by ``keep``.
    """
    device = frames.device
    optimizer.zero_grad(set_to_none=True)
    video = apply_augment(frames.detach(), augment)
    if keep == "grads":  # the backward to the input costs little next to the weights'
        video = video.detach().requires_grad_(True)
    with rng_scope(seed, device), _autocast(device, amp):
        loss = step_module(video, text["input_ids"], text["attention_mask"])
    loss.backward()
    shared = None
    if keep is not None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        inner = None
        if keep == "grads":
            # AdamW reads .grad without writing it, and the next zero_grad drops the
            # reference, so the gradients need no copy.
            inner = InnerGrad({n: torch.zeros_like(p) if p.grad is None else p.grad.detach()
                               for n, p in named}, video.grad, loss.detach())
        shared = SharedPass({n: p.detach().clone() for n, p in named}, inner)
    optimizer.step()
    model.clamp_logit_scale()
    return float(loss.detach()), shared


@dataclass
class FrameState:
    """The learnable frames of a batch with their Adam state (one row per video).

    Attributes:
        frames: float32 ``(B, U, 3, H, W)`` ε_B in normalised model-input space (with ``mix``:
            the composed frames f = softmax(z) · a + ρ the model sees).
        exp_avg: ``(B, U, 3, H, W)`` first moment. ``exp_avg_sq``: second moment (float32).
            With ``mix``: the residual ρ's.
        step: int64 ``(B,)`` Adam steps taken per video.
        mix_logits: float32 ``(B, U, R)`` mixing logits z (``mix``), else ``None``.
        mix_exp_avg, mix_exp_avg_sq: their Adam moments ``(B, U, R)``, or ``None``.
    """

    frames: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_sq: torch.Tensor
    step: torch.Tensor
    mix_logits: torch.Tensor | None = None
    mix_exp_avg: torch.Tensor | None = None
    mix_exp_avg_sq: torch.Tensor | None = None


def _frames_adam(state: FrameState, grad: torch.Tensor, anchors: torch.Tensor | None, *,
                 lr: float, mix_lr: float, betas: tuple[float, float]) -> FrameState:
    """Adam on ε (``pixels``) or on (z, ρ) through :func:`~mof.frame_mix.mix_vjp` (``mix``).

    ``grad`` is the (scaled) gradient with respect to the frames the model sees, ``(B, U, 3,
    H, W)``; ``anchors`` ``(B, R, 3, H, W)`` the fixed frames of the mix.
    """
    if state.mix_logits is None:
        return FrameState(*frame_adam_step(state.frames.detach(), grad, state.exp_avg,
                                           state.exp_avg_sq, state.step, lr=lr, betas=betas,
                                           eps=1e-8))
    if anchors is None:
        raise ValueError("a mix frame state needs its anchor frames (B, R, 3, H, W)")
    residual = mix_residual(state.frames.detach(), state.mix_logits, anchors)
    grad_logits, grad_residual = mix_vjp(state.mix_logits, anchors, grad)
    residual, exp_avg, exp_avg_sq, step = frame_adam_step(
        residual, grad_residual, state.exp_avg, state.exp_avg_sq, state.step, lr=lr,
        betas=betas, eps=1e-8)
    # One frame step updates both parts, so they share the video's step count.
    logits, mix_avg, mix_avg_sq, _ = frame_adam_step(
        state.mix_logits, grad_logits, state.mix_exp_avg, state.mix_exp_avg_sq, state.step,
        lr=mix_lr, betas=betas, eps=1e-8)
    return FrameState(mix_frames(logits, residual, anchors), exp_avg, exp_avg_sq, step,
                      logits, mix_avg, mix_avg_sq)


def _frame_inputs(model, state, regular, text, augment, regular_augmented, use_amp):
    """The batch loss as a function of (Θ, video), ε as a leaf, and the cropped U and R frames.

    Difference estimators need fp32 passes, so ``use_amp`` is for the exact mode only.
    """
    device = state.frames.device
    base_loss = make_loss_fn(model, text["input_ids"], text["attention_mask"],
                             lambda logits: contrastive_loss(logits, model.loss_reduction))

    def loss_fn(theta: dict[str, torch.Tensor], video: torch.Tensor) -> torch.Tensor:
        with _autocast(device, use_amp):
            return base_loss(theta, video)

    eps = state.frames.detach().requires_grad_(augment is not None)
    frames_u = apply_augment(eps, augment)
    frames_r = (regular if regular_augmented else apply_augment(regular, augment)).detach()
    return loss_fn, eps, frames_u, frames_r


def frame_level_update(
    model: RetrievalModel,
    state: FrameState,
    regular: torch.Tensor,
    text: dict[str, torch.Tensor],
    augment: VideoAugment | None,
    *,
    alpha: float,
    mode: str,
    fd_step: float,
    fd_scheme: str = "central",
    shared: SharedPass | None = None,
    regular_augmented: bool = False,
    lr: float,
    betas: tuple[float, float],
    seed: int,
    amp: bool,
    grad_scale: str = "alpha",
    precond: Preconditioner | None = None,
    anchors: torch.Tensor | None = None,
    mix_lr: float = 0.0,
) -> tuple[FrameState, dict[str, float]]:
    """The frame-level step (Eqs. 10-11) from the current Θ; Θ itself is left untouched.

    Args:
        model: Θ (after the model-level step); its parameters are read, never written.
        state: ε_B and its Adam state.
        regular: ``(B, R, 3, H, W)`` regular frames V^R_B.
        text: the phase's captions, ``(B, L)``.
        augment: the phase's crops (the same on ε_B and V^R_B).
        alpha: learning rate of the temporary SGD step.
        mode: ``exact``, ``finite-diff`` or ``first-order``.
        fd_step: relative step of ``finite-diff``.
        fd_scheme: ``central`` or ``forward`` difference of ``finite-diff``.
        shared: the model-level pass (``finite-diff``, ``forward``): the step then starts from
            its Θ (before the model-level update) and reuses its gradients when it has them.
        regular_augmented: ``regular`` already carries ``augment``'s crops.
        lr, betas: the frames' Adam.
        seed: the phase's torch seed (dropout of every pass).
        amp: bf16 autocast for the ``exact`` mode on CUDA (difference estimators stay fp32).
        grad_scale: ``alpha`` divides the meta-gradient by α before the frames' Adam step, so
            the step does not depend on α's size (Adam is scale-free but for its ε = 1e-8:
            dividing the gradient by α is Adam with ε·α); ``raw`` steps on the meta-gradient
            itself, which falls below ε at small α and freezes the frames
            (``docs/bilevel.md``, "Frames that move at any α").
        precond: P of the inner step Θ'' = Θ − α P ⊙ ∇_Θ L (e.g. the model optimiser's
            :func:`~mof.bilevel.adamw_preconditioner`); ``None``: the paper's SGD step.
        anchors: ``mix`` states only: the video's R fixed anchor frames ``(B, R, 3, H, W)``,
            uncropped; the meta-gradient with respect to the frames is pulled back to the
            logits and the residual (:func:`~mof.frame_mix.mix_vjp`).
        mix_lr: ``mix``: Adam learning rate of the logits.

    Returns:
        The updated :class:`FrameState` and statistics (losses, the meta-gradient's norm).
    """
    if grad_scale not in ("alpha", "raw"):
        raise ValueError(f"grad_scale must be 'alpha' or 'raw', got {grad_scale!r}")
    if shared is not None and not (mode == "finite-diff" and fd_scheme == "forward"):
        raise ValueError("a shared model-level pass is for mode='finite-diff' with "
                         f"fd_scheme='forward', got mode={mode!r}, fd_scheme={fd_scheme!r}")
    params = (shared.params if shared is not None else
              {n: p.detach() for n, p in model.named_parameters() if p.requires_grad})
    loss_fn, eps, frames_u, frames_r = _frame_inputs(
        model, state, regular, text, augment, regular_augmented, amp and mode == "exact")
    result = meta_gradient(loss_fn, params, frames_u.detach(), frames_r, alpha, mode=mode,
                           fd_step=fd_step, fd_scheme=fd_scheme, seed=seed,
                           shared_inner_grad=None if shared is None else shared.inner,
                           precond=precond)
    grad = result.grad
    if augment is not None:  # pull the gradient back through the crop to ε itself
        (grad,) = torch.autograd.grad(frames_u, eps, grad)
    adam_grad = grad.detach().float()
    if grad_scale == "alpha" and mode != "first-order":  # the surrogate does not scale with α
        adam_grad = adam_grad / alpha
    new = _frames_adam(state, adam_grad, anchors, lr=lr, mix_lr=mix_lr, betas=betas)
    stats = {"outer_loss": float(result.outer_loss), "inner_loss": float(result.inner_loss),
             "meta_grad_norm": float(grad.norm())}
    return new, stats


#: A finite-difference step is accepted when its meta-gradient has at least this cosine with
#: the exact one.
FD_MIN_COSINE = 0.99
#: ‖ξv‖ values tried when the configured step falls short.
FD_STEP_LADDER = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


@dataclass
class FDStepCheck:
    """The outcome of :func:`check_fd_step`.

    Attributes:
        cosines: ‖ξv‖ → cosine with the exact meta-gradient.
        chosen: the step the run goes on with (the configured one when it passes).
        message: a warning to show, or ``None`` when the configured step passed.
    """

    cosines: dict[float, float]
    chosen: float
    message: str | None


def check_fd_step(
    model: RetrievalModel,
    state: FrameState,
    regular: torch.Tensor,
    text: dict[str, torch.Tensor],
    augment: VideoAugment | None,
    *,
    alpha: float,
    fd_step: float,
    fd_scheme: str,
    seed: int,
    regular_augmented: bool = False,
    precond: Preconditioner | None = None,
) -> FDStepCheck:
    """Check ``fd_step`` against the exact meta-gradient on one batch; choose another if needed.

    The model must run its math attention path (double backward). Θ is never modified.

    Args:
        model, state, regular, text, augment, regular_augmented, precond: as
            :func:`frame_level_update`.
        alpha: the inner step α.
        fd_step: the configured ‖ξv‖.
        fd_scheme: ``central`` or ``forward``.
        seed: the phase's torch seed.

    Returns:
        :class:`FDStepCheck`: if the configured step reaches :data:`FD_MIN_COSINE`, it is kept;
        otherwise the step of :data:`FD_STEP_LADDER` with the highest cosine is chosen and the
        message names the cosines.
    """
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    loss_fn, _, frames_u, frames_r = _frame_inputs(model, state, regular, text, augment,
                                                   regular_augmented, False)
    frames_u = frames_u.detach()
    cosines = fd_step_cosines(loss_fn, params, frames_u, frames_r, alpha, [fd_step],
                              fd_scheme=fd_scheme, seed=seed, precond=precond)
    if cosines[fd_step] >= FD_MIN_COSINE:
        return FDStepCheck(cosines, fd_step, None)
    others = [s for s in FD_STEP_LADDER if s != fd_step]
    cosines.update(fd_step_cosines(loss_fn, params, frames_u, frames_r, alpha, others,
                                   fd_scheme=fd_scheme, seed=seed, precond=precond))
    chosen = max(cosines, key=cosines.get)
    listed = ", ".join(f"{s:g}: {c:.4f}" for s, c in sorted(cosines.items(), reverse=True))
    message = (f"--fd-step {fd_step:g}: the finite-difference meta-gradient has cosine "
               f"{cosines[fd_step]:.4f} with the exact one on the first batch (below "
               f"{FD_MIN_COSINE}); going on with --fd-step {chosen:g} (cosine "
               f"{cosines[chosen]:.4f}). Cosine by step: {listed}.")
    return FDStepCheck(cosines, chosen, message)
