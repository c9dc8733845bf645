"""Symmetric InfoNCE against a plain Python loop, the global-batch layout, and double backward."""

from __future__ import annotations

import math

import pytest
import torch

from mof.loss import ContrastiveLoss, contrastive_loss, infonce_terms


def _loop_infonce(logits: list[list[float]]) -> tuple[float, float]:
    """Eqs. 1-2 written out with math.exp over Python lists (positives on the diagonal)."""
    n = len(logits)
    t2v = v2t = 0.0
    for i in range(n):
        row = sum(math.exp(logits[i][j]) for j in range(n))
        col = sum(math.exp(logits[j][i]) for j in range(n))
        t2v -= math.log(math.exp(logits[i][i]) / row) / n
        v2t -= math.log(math.exp(logits[i][i]) / col) / n
    return t2v, v2t


@pytest.mark.parametrize("batch", [1, 2, 7])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_matches_python_loop(batch, reduction):
    gen = torch.Generator().manual_seed(batch)
    cos = torch.rand(batch, batch, generator=gen, dtype=torch.float64) * 2 - 1
    logits = cos / 0.05  # Frozen's temperature: large logits exercise the log-sum-exp
    t2v, v2t = _loop_infonce(logits.tolist())
    expected = t2v + v2t if reduction == "sum" else (t2v + v2t) / 2
    got = contrastive_loss(logits, reduction)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert ContrastiveLoss(reduction)(logits).item() == pytest.approx(got.item(), rel=1e-12)


def test_directions_are_the_two_softmax_axes():
    # An asymmetric matrix: the t2v term normalises over rows, the v2t term over columns.
    logits = torch.tensor([[3.0, 0.0], [3.0, 1.0]], dtype=torch.float64)
    t2v, v2t = infonce_terms(logits)
    loop_t2v, loop_v2t = _loop_infonce(logits.tolist())
    assert (t2v.item(), v2t.item()) == pytest.approx((loop_t2v, loop_v2t))
    assert t2v.item() != pytest.approx(v2t.item())


def test_global_batch_offsets_average_to_the_full_matrix():
    """Each rank's local loss with offset rank*B; their mean is the loss of the full matrix."""
    world, local = 3, 4
    gen = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(world * local, 8, generator=gen), dim=1)
    video = torch.nn.functional.normalize(torch.randn(world * local, 8, generator=gen), dim=1)
    full = text @ video.t() / 0.05
    per_rank = []
    for rank in range(world):
        rows = slice(rank * local, (rank + 1) * local)
        t2v = text[rows] @ video.t() / 0.05  # local texts x gathered videos
        v2t = video[rows] @ text.t() / 0.05  # local videos x gathered texts
        per_rank.append(contrastive_loss(t2v, "sum", logits_v2t=v2t, offset=rank * local))
    assert torch.stack(per_rank).mean().item() == pytest.approx(
        contrastive_loss(full, "sum").item(), rel=1e-6
    )


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="logits_v2t"):
        contrastive_loss(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="offset=3"):
        contrastive_loss(torch.zeros(2, 4), logits_v2t=torch.zeros(2, 4), offset=3)
    with pytest.raises(ValueError, match="reduction"):
        contrastive_loss(torch.zeros(2, 2), "max")
    with pytest.raises(ValueError, match="reduction"):
        ContrastiveLoss("none")


def test_half_precision_logits_reduce_in_float32():
    logits = (torch.randn(5, 5) * 10).to(torch.bfloat16)
    loss = contrastive_loss(logits)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(contrastive_loss(logits.float()).item(), rel=1e-6)


def test_double_backward():
    """Second derivatives exist and match finite differences (the meta-gradient needs them)."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    for loss in (ContrastiveLoss("sum"), ContrastiveLoss("mean")):
        assert torch.autograd.gradcheck(loss, (logits,))
        assert torch.autograd.gradgradcheck(loss, (logits,))
    t2v = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    v2t = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(
        lambda a, b: contrastive_loss(a, "mean", logits_v2t=b, offset=4), (t2v, v2t)
    )
