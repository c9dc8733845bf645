"""The forward difference that shares the model-level pass (``--fd-scheme forward``).

It evaluates the frame-level step at Θ before the phase's AdamW step, with that pass's own
gradients, instead of at the updated Θ (Algorithm 1). These tests check that the pass's
gradients are those of the frame-level loss, and measure how far the approximation moves
the meta-gradient on a tiny model of every family (``pytest -s`` prints the cosines).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mof.bilevel import meta_gradient
from mof.bilevel_passes import inner_gradient, make_loss_fn
from mof.loss import contrastive_loss
from mof.models import create_model, list_models
from mof.models.tokenizer import WordTokenizer
from mof.train.augment import apply_augment, draw_augment
from mof.train.phases import GlobalContrastive, model_level_step

TINY = list_models("*-tiny")
CAPTIONS = ["a man is cooking pasta in a kitchen", "a dog runs across the park",
            "two people are dancing on a stage", "a car drives along a wet road"]
B, U, R = 4, 2, 4
#: ‖ξv‖ per model (resnet-tiny: ReLU kinks need a short step, see test_bilevel.FD_STEP).
FD_STEP = {"resnet-tiny": 1e-5}


pytestmark = pytest.mark.usefixtures("one_thread")


def _phase_inputs(name: str, seed: int):
    torch.manual_seed(seed)
    model = create_model(name, tokenizer=WordTokenizer.build(CAPTIONS, max_words=12))
    with torch.no_grad():  # zero-initialised parts would make second derivatives vanish
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.train().set_attention("math")
    size = model.contract.frame_size
    gen = torch.Generator().manual_seed(seed + 1)
    frames_u = torch.randn(B, U, 3, size, size, generator=gen)
    frames_r = torch.randn(B, R, 3, size, size, generator=gen)
    text = model.tokenize(CAPTIONS[:B])
    augment = draw_augment(np.random.default_rng(seed), B, "crop", 0.5)
    loss_fn = make_loss_fn(model, text["input_ids"], text["attention_mask"],
                           lambda logits: contrastive_loss(logits, model.loss_reduction))
    return model, text, augment, loss_fn, frames_u, frames_r


@pytest.mark.parametrize("name", TINY)
def test_the_model_pass_yields_the_inner_gradients(name):
    model, text, augment, loss_fn, frames_u, _ = _phase_inputs(name, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss, shared = model_level_step(GlobalContrastive(model), model, optimizer, frames_u, text,
                                    augment, seed=3, amp=False, keep="grads")
    for n, p in shared.params.items():
        assert torch.equal(p, before[n]) and not torch.equal(p, model.get_parameter(n)), n
    expected = inner_gradient(loss_fn, before, apply_augment(frames_u, augment), seed=3)
    assert loss == pytest.approx(expected.loss.item(), rel=1e-6)
    torch.testing.assert_close(shared.inner.frames, expected.frames, rtol=1e-4, atol=1e-7)
    for n, g in expected.params.items():
        torch.testing.assert_close(shared.inner.params[n], g, rtol=1e-4, atol=1e-7, msg=n)
    _, params_only = model_level_step(GlobalContrastive(model), model, optimizer, frames_u,
                                      text, augment, seed=3, amp=False, keep="params")
    assert params_only.inner is None and set(params_only.params) == set(before)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


@pytest.mark.parametrize("name", TINY)
def test_shared_forward_difference_against_algorithm_1(name):
    """Cosine of the shared-pass forward difference (Θ before the AdamW step) with the exact
    meta-gradient at the updated Θ, at the tiny models' lr 1e-3 and the paper's 1e-5."""
    fd_step, lines, worst = FD_STEP.get(name, 1e-3), [], {}
    for lr in (1e-3, 1e-5):
        for seed in range(3):
            model, text, augment, loss_fn, frames_u, frames_r = _phase_inputs(name, seed)
            optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
            _, shared = model_level_step(GlobalContrastive(model), model, optimizer, frames_u,
                                         text, augment, seed=None, amp=False, keep="grads")
            cropped_u, cropped_r = apply_augment(frames_u, augment), apply_augment(frames_r,
                                                                                  augment)
            after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
            exact = meta_gradient(loss_fn, after, cropped_u, cropped_r, lr, "exact").grad
            before = meta_gradient(loss_fn, shared.params, cropped_u, cropped_r, lr,
                                   "exact").grad
            forward = meta_gradient(loss_fn, shared.params, cropped_u, cropped_r, lr,
                                    "finite-diff", fd_step=fd_step, fd_scheme="forward",
                                    shared_inner_grad=shared.inner).grad
            cos = {"shared forward": _cos(forward, exact),
                   "exact at Θ before": _cos(before, exact),
                   "shared forward vs exact at Θ before": _cos(forward, before)}
            lines.append(f"  lr {lr:g} seed {seed}: " + ", ".join(f"{k} {v:.5f}"
                                                                  for k, v in cos.items()))
            worst[lr] = min(worst.get(lr, 1.0), cos["shared forward"])
            worst["difference"] = min(worst.get("difference", 1.0),
                                      cos["shared forward vs exact at Θ before"])
    print(f"\n{name}: cosine with exact at the updated Θ (‖ξv‖ = {fd_step:g})\n"
          + "\n".join(lines))
    # Measured (3 seeds, docs/bilevel.md): 0.97-0.9999 at lr 1e-5; at 1e-3 one AdamW step
    # moves the meta-gradient to an unrelated direction (cosine -0.6 to +0.4), for the
    # exact meta-gradient at the old Θ as much as for the shared difference.
    assert worst[1e-5] > 0.95
    # The difference itself is accurate (a forward difference, error O(ξ)): what moves the
    # estimate away from Algorithm 1 is the Θ it is taken at.
    assert worst["difference"] > 0.98
