"""The tiny training dataset and run settings shared by the trainer, resume, DDP and export tests.

12 training and 4 test videos of 2 s, 8 stored frames of 64 px, 3 videos a shard: real
synthetic videos sharded by the real pipeline, generated once per session by the ``train_data``
fixture of ``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path

from mof.train.config import TrainConfig

STORED_FRAMES = 8
TRAIN_VIDEOS = 12


def make_train_data(base: Path) -> dict[str, str]:
    """Synthesise and shard the tiny dataset under ``base`` unless it is already there."""
    from pipeline.sharding.write import ShardConfig, write_shards
    from pipeline.synth.dataset import SynthConfig, generate_synthetic

    paths = {split: str(base / split) for split in ("train", "test")}
    if not (base / "test" / "index.json").is_file():
        generate_synthetic(SynthConfig(out=base / "raw", train=TRAIN_VIDEOS, test=4,
                                       duration_s=2.0, captions=3, progress=False))
        for split in ("train", "test"):
            write_shards(ShardConfig(dataset="synthetic", root=str(base / "raw"), split=split,
                                     out=paths[split], frames=STORED_FRAMES, size=64,
                                     backend="ffmpeg", workers=2, shard_size=3),
                         progress=False)
    return paths


def tiny_config(data: dict[str, str], out: Path, **overrides) -> TrainConfig:
    """A run of frozen-tiny that takes seconds: one epoch of 3 batches of 4 videos."""
    settings = {"model": "frozen-tiny", "train": data["train"], "test": None, "out": str(out),
                "frames": "8:2", "epochs": 1, "batch_size": 4, "lr": 1e-3, "workers": 0,
                "shuffle_buffer": 4}
    settings.update(overrides)
    return TrainConfig(**settings)
