"""When the frame-level step runs, and at which learning rate, under the two schedules.

``phase`` (Algorithm 1): after the model-level step of every ``frame_step_every``-th batch,
one frame-level step on that batch with inner α = ``inner_lr`` (default ``lr``), Adam on ε with
β = ``frame_lr`` and betas (0.9, 0.999); the learning rate is constant.

``epoch`` (the authors' published trainer): after each epoch of model-level steps, a second
pass over the data with Θ fixed and the model in eval mode; every video gets the meta-gradient
with inner α = 1 and one Adam step with betas (0.5, 0.999) at β·γ^⌊e/step⌋ after e completed
frame passes (StepLR, step 30, γ = 0.5). The authors sum the frame gradients over the pass and
step once at its end; a video's gradient depends only on Θ (fixed) and the videos of its own
batch, and every video is in one batch per pass, so stepping each batch's rows as soon as their
gradient is known gives the same frames without a gradient-accumulator array.
"""

from __future__ import annotations

from mof.train.config import TrainConfig

__all__ = ["frame_lr_at", "runs_frame_step"]


def frame_lr_at(config: TrainConfig, frame_epochs_done: int) -> float:
    """β of the frames' Adam for the next frame-level step.

    Args:
        config: the run's settings.
        frame_epochs_done: frame passes completed so far (``epoch`` schedule only).
    """
    if config.frame_schedule == "phase":
        return config.frame_lr
    return config.frame_lr * config.frame_lr_gamma ** (frame_epochs_done // config.frame_lr_step)


def runs_frame_step(config: TrainConfig, step: int) -> bool:
    """Whether the phase of model-level step ``step`` (0-based, global) has a frame-level step."""
    return (config.mof and config.frame_schedule == "phase"
            and step % config.frame_step_every == 0)
