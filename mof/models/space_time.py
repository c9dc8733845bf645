"""Frozen in Time's SpaceTimeTransformer: a ViT with divided space-time attention.

Module and parameter names follow Frozen's ``video_model.*`` state_dict keys exactly
(``cls_token``, ``pos_embed``, ``temporal_embed``, ``patch_embed.proj``,
``blocks.N.{norm1,attn,timeattn,norm2,mlp,norm3}``, ``norm``), so a Frozen checkpoint or a timm
ViT loads key for key.

Token layout of a video ``(B, F, 3, H, W)`` with ``N`` patches per frame: index 0 is the CLS
token, then the patches frame-major (token ``1 + f·N + p``). Every block runs

    t = timeattn(norm3(x))          # each patch over the same location in all frames
    s = attn(norm1(x + t))          # each patch over the patches of its own frame
    x = x + s                       # the residual is taken from x, not from x + t
    x = x + mlp(norm2(x))

and in both attentions the CLS query attends to every token while each patch also attends to
CLS. With ``time_init='zeros'`` the time attention outputs exactly zero, so the freshly built
network is the image ViT it was initialised from.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "DividedAttention",
    "PatchConv2d",
    "SpaceTimeBlock",
    "SpaceTimeTransformer",
    "attend",
    "patchify_linear",
]

Axis = Literal["space", "time"]


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, fused: bool
) -> torch.Tensor:
    """Softmax attention ``softmax(q kᵀ / √d) v``.

    Args:
        q: ``(G, H, Lq, d)`` queries.
        k: ``(G, H, Lk, d)`` keys.
        v: ``(G, H, Lk, d)`` values.
        mask: ``(G, 1, 1, Lk)`` bool, True where a key may be attended to, or None. Every row
            must keep at least one key (callers always keep CLS).
        fused: use ``F.scaled_dot_product_attention``; otherwise the explicit math, which
            supports double backward and ``torch.func``.

    Returns:
        ``(G, H, Lq, d)``.
    """
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # Frozen scales q before the product; same result, kept for numerical parity.
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


class DividedAttention(nn.Module):
    """Frozen's ``VarAttention``: CLS attends to all tokens, patches to CLS + their group.

    Args:
        dim: token width.
        num_heads: attention heads (``dim`` must divide evenly).
        qkv_bias: bias on the fused qkv projection.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        #: set by ``set_attention``: SDPA kernels (True) or the explicit math path (False).
        self.fused = False

    def forward(
        self, x: torch.Tensor, frames: int, axis: Axis, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attend over ``axis``.

        Args:
            x: ``(B, 1 + F·N, D)`` tokens, CLS first, patches frame-major.
            frames: F, the number of frames in ``x``.
            axis: ``space`` (a patch attends within its frame) or ``time`` (a patch attends
                to the same location in every frame).
            frame_mask: ``(B, F)`` bool, True for valid frames, or None for all valid.
                Tokens of invalid frames are never attended to by CLS or across time.

        Returns:
            ``(B, 1 + F·N, D)``.
        """
        b, length, dim = x.shape
        h, n = self.num_heads, (length - 1) // frames
        d = dim // h
        qkv = self.qkv(x).reshape(b, length, 3, h, d)
        q_all, k_all, v_all = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, L, d)

        cls_mask = None
        if frame_mask is not None:
            patch_mask = frame_mask.repeat_interleave(n, dim=1)
            cls_mask = torch.cat([frame_mask.new_ones(b, 1), patch_mask], dim=1)[:, None, None]
        cls_out = attend(q_all[:, :, :1], k_all, v_all, cls_mask, self.fused)  # (B, H, 1, d)

        patches = qkv[:, 1:].reshape(b, frames, n, 3, h, d)
        cls_kv = qkv[:, 0, 1:].permute(1, 0, 2, 3)[:, :, None, :, None]  # (2, B, 1, H, 1, d)
        if axis == "space":
            groups, size = frames, n
            grouped = patches.permute(3, 0, 1, 4, 2, 5)  # (3, B, F, H, N, d)
            mask = None  # a valid frame's patches only see their own frame
        else:
            groups, size = n, frames
            grouped = patches.permute(3, 0, 2, 4, 1, 5)  # (3, B, N, H, F, d)
            mask = None
            if frame_mask is not None:
                mask = torch.cat([frame_mask.new_ones(b, 1), frame_mask], dim=1)
                mask = mask[:, None, :].expand(b, n, frames + 1).reshape(b * n, 1, 1, frames + 1)
        grouped = grouped.reshape(3, b * groups, h, size, d)
        cls_kv = cls_kv.expand(2, b, groups, h, 1, d).reshape(2, b * groups, h, 1, d)
        k = torch.cat([cls_kv[0], grouped[1]], dim=2)
        v = torch.cat([cls_kv[1], grouped[2]], dim=2)
        out = attend(grouped[0], k, v, mask, self.fused).reshape(b, groups, h, size, d)
        if axis == "space":
            out = out.permute(0, 1, 3, 2, 4)  # (B, F, N, H, d)
        else:
            out = out.permute(0, 3, 1, 2, 4)  # (B, N, H, F, d) -> (B, F, N, H, d)
        out = torch.cat([cls_out.permute(0, 2, 1, 3).reshape(b, 1, dim),
                         out.reshape(b, frames * n, dim)], dim=1)
        return self.proj(out)


class Mlp(nn.Module):
    """``fc1 → GELU → fc2`` (timm's ViT MLP, exact GELU)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SpaceTimeBlock(nn.Module):
    """One divided space-time block; parameter registration order follows Frozen's keys."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = DividedAttention(dim, num_heads)
        self.timeattn = DividedAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm3 = nn.LayerNorm(dim, eps=eps)

    def forward(
        self, x: torch.Tensor, frames: int, frame_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, 1 + F·N, D)`` → same shape; see the module doc for the wiring."""
        t = self.timeattn(self.norm3(x), frames, "time", frame_mask)
        x = x + self.attn(self.norm1(x + t), frames, "space", frame_mask)
        return x + self.mlp(self.norm2(x))


def patchify_linear(images: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """``Conv2d(kernel = stride = p)`` as a reshape and one matrix product.

    Equal to ``F.conv2d(images, weight, bias, stride=p)`` with the output flattened
    row-major, to float rounding; on CPU its gradient with respect to the input (every
    ε-gradient of MOF pays it) is several times faster than the convolution's.

    Args:
        images: ``(N, C, H, W)``, H and W multiples of p (views of other tensors are fine).
        weight: ``(D, C, p, p)`` convolution weight.
        bias: ``(D,)`` or None.

    Returns:
        ``(N, (H/p)·(W/p), D)`` patch embeddings, patches row-major.
    """
    n, c, h, w = images.shape
    p = weight.shape[-1]
    x = images.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
    return F.linear(x.reshape(n, (h // p) * (w // p), c * p * p), weight.reshape(len(weight), -1),
                    bias)


class PatchConv2d(nn.Conv2d):
    """A patchifying ``Conv2d`` (kernel = stride, no padding) computed by :func:`patchify_linear`.

    Same parameters, names and output ``(N, D, H/p, W/p)`` as the ``nn.Conv2d`` it stands for,
    so checkpoints load unchanged; other geometries fall back to the convolution.
    """

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size[0]
        h, w = images.shape[-2:]
        if (self.kernel_size != (p, p) or self.stride != (p, p) or self.padding != (0, 0)
                or self.dilation != (1, 1) or self.groups != 1 or h % p or w % p
                or images.dim() != 4):
            return super().forward(images)
        out = patchify_linear(images, self.weight, self.bias)  # (N, L, D)
        return out.transpose(1, 2).unflatten(2, (h // p, w // p))  # a view, no copy


class PatchEmbed(nn.Module):
    """Per-frame patchify: ``Conv2d(3, D, patch, stride=patch)`` (as :class:`PatchConv2d`)."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = PatchConv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, F, 3, H, W)`` → ``(B, F·N, D)`` patch tokens, frame-major."""
        b = video.shape[0]
        x = patchify_linear(video.reshape(-1, *video.shape[2:]), self.proj.weight,
                            self.proj.bias)
        return x.reshape(b, -1, x.shape[-1])


class SpaceTimeTransformer(nn.Module):
    """The video encoder of Frozen in Time; returns the final-normed CLS token.

    Args:
        frame_size: H = W of the input frames in pixels.
        patch_size: patch side in pixels.
        dim: token width (768 for ViT-B).
        depth: number of blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        max_frames: rows of ``temporal_embed``, the most frames a video may have.
        time_init: ``zeros`` (time attention starts as the identity, Frozen's setting) or
            ``rand`` (ordinary initialisation).
    """

    def __init__(
        self, frame_size: int = 224, patch_size: int = 16, dim: int = 768, depth: int = 12,
        num_heads: int = 12, mlp_ratio: float = 4.0, max_frames: int = 8,
        time_init: Literal["zeros", "rand"] = "zeros",
    ):
        super().__init__()
        if frame_size % patch_size:
            raise ValueError(f"frame_size {frame_size} is not a multiple of patch_size "
                             f"{patch_size}")
        self.frame_size, self.max_frames = frame_size, max_frames
        self.patches_per_frame = (frame_size // patch_size) ** 2
        device = torch.get_default_device()
        # Built on the meta device and initialised once below: the layers' own default init
        # would double the construction time of a ViT-B (seconds on a CPU).
        with torch.device("meta"):
            self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patches_per_frame + 1, dim))
            self.temporal_embed = nn.Parameter(torch.zeros(1, max_frames, dim))
            self.patch_embed = PatchEmbed(patch_size, dim)
            self.blocks = nn.ModuleList(
                SpaceTimeBlock(dim, num_heads, mlp_ratio) for _ in range(depth)
            )
            self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.to_empty(device=device)
        self.reset_parameters(time_init)
        #: recompute each block in backward (non-reentrant, so double backward still works)
        self.grad_checkpointing = False

    def reset_parameters(self, time_init: Literal["zeros", "rand"] = "zeros") -> None:
        """timm's ViT initialisation, then the time attention per ``time_init``.

        ``temporal_embed`` starts at zero as in Frozen, so a 1-frame video is encoded exactly
        as the image ViT would encode the frame.
        """
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.zeros_(self.temporal_embed)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # timm's ViT keeps PyTorch's default here
                module.reset_parameters()
            elif isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if time_init == "zeros":
            for block in self.blocks:
                init_time_attention_zeros(block.timeattn)
        elif time_init != "rand":
            raise ValueError(f"time_init must be 'zeros' or 'rand', got {time_init!r}")

    def forward(self, video: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode videos.

        Args:
            video: ``(B, F, 3, H, W)`` normalised frames, ``F ≤ max_frames``.
            frame_mask: ``(B, F)`` bool, True for valid frames; None means all valid. A video
                with no valid frame is encoded from its CLS token alone (finite output).

        Returns:
            ``(B, D)`` CLS features after the final LayerNorm.

        Raises:
            ValueError: wrong rank, channel count, frame size, or too many frames.
        """
        self._check(video, frame_mask)
        frames, n = video.shape[1], self.patches_per_frame
        x = self.patch_embed(video)
        patch_pos = self.pos_embed[:, 1:].repeat(1, frames, 1)  # [1,2,3] -> [1,2,3,1,2,3]
        time_pos = self.temporal_embed[:, :frames].repeat_interleave(n, dim=1)  # [a,b] -> [a..,b..]
        cls = self.cls_token + self.pos_embed[:, :1]  # CLS gets no temporal term
        x = torch.cat([cls.expand(x.shape[0], -1, -1), x + patch_pos + time_pos], dim=1)
        if frame_mask is not None and bool(frame_mask.all()):
            frame_mask = None  # all valid: skip the masking work
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, frames, frame_mask, use_reentrant=False)
            else:
                x = block(x, frames, frame_mask)
        return self.norm(x[:, 0])  # LayerNorm is per token: norm(x)[:, 0] == norm(x[:, 0])

    def _check(self, video: torch.Tensor, frame_mask: torch.Tensor | None) -> None:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"video must be (B, T, 3, H, W), got {tuple(video.shape)}")
        size = (self.frame_size, self.frame_size)
        if tuple(video.shape[-2:]) != size:
            raise ValueError(f"frames must be {size}, got {tuple(video.shape[-2:])}")
        if not 1 <= video.shape[1] <= self.max_frames:
            raise ValueError(f"video has {video.shape[1]} frames; this model takes 1 to "
                             f"{self.max_frames}")
        if frame_mask is not None and tuple(frame_mask.shape) != tuple(video.shape[:2]):
            raise ValueError(f"video_mask must be {tuple(video.shape[:2])}, "
                             f"got {tuple(frame_mask.shape)}")


@torch.no_grad()
def init_time_attention_zeros(attn: DividedAttention) -> None:
    """Frozen's ``time_init='zeros'``: qkv = 0 so the output is 0; proj weight = 1.

    The all-ones projection keeps gradients from being stuck at 0·0 (Frozen's own reasoning).
    """
    attn.qkv.weight.zero_()
    attn.qkv.bias.zero_()
    attn.proj.weight.fill_(1.0)
    attn.proj.bias.zero_()
