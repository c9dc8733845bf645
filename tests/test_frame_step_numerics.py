"""The frame-level step stays numerically alive: at any α, in a float16 store, with a difference
estimator whose step does not suit the model.

A fitted model has small gradients, and the meta-gradient is proportional to the inner step α
(one SGD step); at the paper's α = 1e-5 it falls below Adam's ε = 1e-8, and a literal Adam step
leaves the frames where they were. These tests fit each tiny model to one batch first, so the
gradients are as small as after training.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mof.models import create_model, list_models
from mof.models.tokenizer import WordTokenizer
from mof.train.phases import (
    FrameState,
    GlobalContrastive,
    check_fd_step,
    frame_level_update,
    model_level_step,
)
from mof.train.store_setup import check_store_resolution, frozen_fraction
from mof.train.trainer import Trainer
from pipeline.framestore.store import FrameStore
from tests.train_data import tiny_config

TINY = list_models("*-tiny")
CAPTIONS = ["a man is cooking pasta in a kitchen", "a dog runs across the park",
            "two people are dancing on a stage", "a car drives along a wet road",
            "a red circle moves left", "a blue square grows", "a green cross flashes",
            "a cat sleeps on a sofa"]
B, U, R = 8, 2, 4
ALPHA, BETA = 1e-5, 8e-4  # the paper's MSR-VTT recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _fitted(name: str, steps: int = 40):
    """A tiny model after ``steps`` AdamW steps on one batch, and that batch."""
    torch.manual_seed(0)
    model = create_model(name, tokenizer=WordTokenizer.build(CAPTIONS, max_words=12))
    size = model.contract.frame_size
    gen = torch.Generator().manual_seed(1)
    frames_u = torch.randn(B, U, 3, size, size, generator=gen)
    frames_r = torch.randn(B, R, 3, size, size, generator=gen)
    text = model.tokenize(CAPTIONS[:B])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(steps):
        loss, _ = model_level_step(GlobalContrastive(model), model, optimizer, frames_u, text,
                                   None, seed=step, amp=False)
    assert loss < 0.1, f"{name} did not fit the batch (loss {loss:.3f})"
    model.set_attention("math")
    state = FrameState(frames_u, torch.zeros_like(frames_u), torch.zeros_like(frames_u),
                       torch.zeros(B, dtype=torch.long))
    return model, state, frames_r, text


def _moved(model, state, frames_r, text, grad_scale: str) -> float:
    """Share of frame elements the first Adam step moves by at least 0.5 β."""
    new, _ = frame_level_update(model, state, frames_r, text, None, alpha=ALPHA, mode="exact",
                                fd_step=1e-3, lr=BETA, betas=(0.9, 0.999), seed=1, amp=False,
                                grad_scale=grad_scale)
    return ((new.frames - state.frames).abs() >= 0.5 * BETA).float().mean().item()


@pytest.fixture(scope="module")
def fitted():
    torch.set_num_threads(1)
    return {name: _fitted(name) for name in TINY}


@pytest.mark.parametrize("name", TINY)
def test_first_frame_step_moves_the_frames_at_the_papers_alpha(fitted, name):
    assert _moved(*fitted[name], "alpha") >= 0.9


def test_the_literal_step_freezes_a_fitted_model(fitted):
    # What the default prevents: CLIP4Clip's meta-gradient at α = 1e-5 is ~1e-9 per element.
    assert _moved(*fitted["clip4clip-tiny"], "raw") < 0.1


def test_finite_diff_step_is_checked_and_replaced_where_it_fails(fitted):
    kwargs = {"alpha": 1e-3, "fd_scheme": "central", "seed": 1}
    ok = check_fd_step(*fitted["frozen-tiny"][:2], fitted["frozen-tiny"][2],
                       fitted["frozen-tiny"][3], None, fd_step=1e-3, **kwargs)
    assert ok.message is None and ok.chosen == 1e-3 and ok.cosines[1e-3] >= 0.99
    model, state, frames_r, text = fitted["resnet-tiny"]
    bad = check_fd_step(model, state, frames_r, text, None, fd_step=1e-1, **kwargs)
    assert bad.cosines[1e-1] < 0.99 and bad.chosen != 1e-1
    assert bad.cosines[bad.chosen] >= 0.99 and "--fd-step 0.1" in bad.message


def test_float16_frozen_fraction_follows_the_spacing():
    x = np.array([0.3, 1.5, 2.5, -3.0, 0.01], dtype=np.float32)
    # float16 spacing is 2**-9 on [2, 4): half of it (9.8e-4) exceeds β = 8e-4 there only.
    assert frozen_fraction(x, 8e-4, "float16") == pytest.approx(2 / 5)
    assert frozen_fraction(x, 1e-5, "float16") == pytest.approx(4 / 5)
    assert frozen_fraction(x, 1e-5, "float32") == 0.0


def test_a_float16_store_is_refused_where_steps_round_away(tmp_path):
    rng = np.random.default_rng(0)
    store = FrameStore.create(tmp_path / "s.zarr", ["a", "b"], num_frames=1, frame_size=4,
                              mean=(0.5,) * 3, std=(0.25,) * 3, regular_frames=2, shards=[],
                              dataset="x", dtype="float16")
    store.init_rows(np.arange(2), rng.uniform(-3, 3, (2, 1, 3, 4, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="--store-dtype float32"):
        check_store_resolution(store, 1e-5, "float16")
    with pytest.warns(RuntimeWarning, match="never move"):
        share = check_store_resolution(store, 8e-4, "float16")
    assert 0.2 < share < 0.45  # about a third: the elements with |x| >= 2


def test_trainer_refuses_a_float16_store_at_a_tiny_frame_lr(train_data, tmp_path):
    trainer = Trainer(tiny_config(train_data, tmp_path / "run", store_dtype="float16",
                                  frame_lr=1e-5), progress_bar=False)
    try:
        with pytest.raises(ValueError, match="never move"):
            trainer.setup()
    finally:
        trainer.cleanup()


def test_trainer_records_the_checked_fd_step(train_data, tmp_path):
    trainer = Trainer(tiny_config(train_data, tmp_path / "run", meta_grad="finite-diff",
                                  fd_step=1.0, max_steps=1), progress_bar=False)
    try:
        trainer.setup()
        with pytest.warns(RuntimeWarning, match="--fd-step 1: the finite-difference"):
            trainer.train()
        assert trainer.progress.fd_step is not None and trainer.progress.fd_step < 1.0
    finally:
        trainer.cleanup()
