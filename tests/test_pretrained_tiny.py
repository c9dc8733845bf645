"""The frozen-tiny weights shipped for ``make demo`` (``mof/models/pretrained/``): they load
through the model contract, their tokenizer knows every word the synthetic generator writes, and
they retrieve synthetic videos they never saw far above chance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mof.evaluate.evaluate import EvalConfig, evaluate
from mof.models.io import load_model
from pipeline.sharding.write import ShardConfig, write_shards
from pipeline.synth.dataset import SynthConfig, generate_synthetic

PRETRAINED = Path(__file__).resolve().parents[1] / "mof/models/pretrained/frozen-tiny-synthetic"
VIDEOS = 32  # seed 0, the dataset's seed: none of them is in the corpus (seed 1)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("unseen")
    generate_synthetic(SynthConfig(out=base / "raw", train=0, test=VIDEOS, progress=False))
    write_shards(ShardConfig(dataset="synthetic", root=str(base / "raw"), split="test",
                             out=str(base / "test"), frames=8, size=64, backend="ffmpeg",
                             workers=1, shard_size=16), progress=False)
    return {"raw": base / "raw", "shards": base / "test", "out": base / "eval"}


def test_loads_as_frozen_tiny_with_its_record():
    model = load_model(PRETRAINED)
    assert model.spec == {"name": "frozen-tiny", "temperature": 0.1}
    assert sum(p.numel() for p in model.parameters()) == 301_760
    record = json.loads((PRETRAINED / "warm_start.json").read_text())
    assert record["frames"] == 8 and record["train_config"]["lr"] == 1e-3
    assert record["metrics"]["t2v"]["R@1"] > 10 * 0.4  # on the 250 test videos, chance 0.4


def test_tokenizer_knows_every_word_of_the_generator(unseen):
    model = load_model(PRETRAINED)
    lines = (unseen["raw"] / "annotations.jsonl").read_text().splitlines()
    captions = [c for line in lines for c in json.loads(line)["captions"]]
    assert len(captions) == 5 * VIDEOS
    ids = model.tokenizer(captions)["input_ids"]
    assert not (ids == 1).any()  # [UNK]


def test_retrieves_unseen_videos_far_above_chance(unseen):
    report = evaluate(EvalConfig(shards=str(unseen["shards"]), checkpoint=str(PRETRAINED),
                                 frames=8, out=str(unseen["out"]), device="cpu", progress=False))
    t2v = report["metrics"]["t2v"]
    assert t2v["count"] == 5 * VIDEOS
    # Chance: R@1 1/32 = 3.1 %, mean rank 16.5.
    assert t2v["R@1"] >= 4 * 100 / VIDEOS and t2v["MeanR"] <= 8
