"""Text-to-patch attention maps of the first video block, and their overlay on frames.

Any model whose contract declares ``has_patch_readout`` (:mod:`mof.models.contract`) can be
read. For Frozen (:class:`~mof.models.frozen.FrozenInTime`), what is shown for a caption and a
video of F frames with N = (H / patch)² patches each is

    t        = encode_text(caption)                    the projected text [CLS] embedding (D_p,)
    x_{f,p}  = output of video block 0 at patch p of frame f                        (D,)
    z_{f,p}  = vid_proj(norm(x_{f,p}))     the patch token put through the final LayerNorm and
                                           the video projection, as the CLS token is at the end
    a_{f,p}  = softmax_p( cos(t, z_{f,p}) / T )        over the N patches of frame f

with ``T`` the model's temperature (0.05). ``a_f`` sums to one over the patches of each frame:
it is the attention a text token would pay to the spatial tokens of frame f after the first
block, if it attended with the retrieval similarity. It is a read-out of the first block (where
tokens are still local), not an attention weight the network itself computes: in Frozen the
text never attends to the video. The map is ``(F, g, g)`` with ``g = H / patch``, upsampled
bilinearly to ``H x W`` and drawn with a jet colour map at 50 % opacity.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mof.models.contract import RetrievalModel

__all__ = ["ATTENTION_DEFINITION", "overlay_attention", "supports_attention",
           "text_patch_attention"]

#: One line for captions and summaries: what an attention overlay shows.
ATTENTION_DEFINITION = ("softmax over each frame's patches of cos(text [CLS] embedding, "
                        "vid_proj(norm(block-1 patch token))) / temperature")


def supports_attention(model: RetrievalModel) -> bool:
    """Whether :func:`text_patch_attention` can read ``model`` (its contract says so)."""
    return model.has_patch_readout


@torch.no_grad()
def text_patch_attention(model: RetrievalModel, video: torch.Tensor, caption: str
                         ) -> np.ndarray:
    """The first block's text-to-patch attention map of one video (see the module doc).

    Args:
        model: a model with a patch readout (:func:`supports_attention`); run in eval mode.
        video: ``(F, 3, H, W)`` normalised frames of one video.
        caption: the query whose embedding attends.

    Returns:
        float32 ``(F, g, g)``, each frame's map summing to one (``g = H / patch``).

    Raises:
        ValueError: ``model`` has no patch readout.
    """
    if not supports_attention(model):
        raise ValueError(f"{type(model).__name__} has no first-block patch tokens to read")
    was_training = model.training
    model.eval()
    try:
        text = model.tokenize([caption])
        text_emb = model.encode_text(text["input_ids"], text["attention_mask"])  # (1, D_p)
        z = model.patch_embeddings(video[None])[0]  # (F, N, D_p)
    finally:
        model.train(was_training)
    frames, n = z.shape[:2]
    attn = model.logits(text_emb, z.reshape(frames * n, -1)).reshape(frames, n).softmax(dim=-1)
    side = round(n**0.5)
    return attn.reshape(frames, side, side).float().numpy()


def _jet(values: np.ndarray) -> np.ndarray:
    """float ``(...)`` in [0, 1] → uint8 ``(..., 3)`` RGB of the jet colour map."""
    from matplotlib import colormaps

    return (colormaps["jet"](np.clip(values, 0.0, 1.0))[..., :3] * 255.0).round().astype(np.uint8)


def overlay_attention(frame: np.ndarray, attention: np.ndarray, opacity: float = 0.5
                      ) -> np.ndarray:
    """Draw one frame's attention map over it.

    Args:
        frame: uint8 ``(H, W, 3)`` RGB.
        attention: ``(g, g)`` map (any positive scale); it is min-max normalised per frame,
            upsampled bilinearly to ``H x W`` and coloured with jet.
        opacity: weight of the heat map in the blend.

    Returns:
        uint8 ``(H, W, 3)``.
    """
    h, w = frame.shape[:2]
    grid = torch.as_tensor(attention, dtype=torch.float32)[None, None]
    heat = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    span = heat.max() - heat.min()
    heat = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
    blend = (1.0 - opacity) * frame.astype(np.float32) + opacity * _jet(heat).astype(np.float32)
    return np.clip(blend.round(), 0, 255).astype(np.uint8)
