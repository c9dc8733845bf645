"""The evaluator on real synthetic shards: chance-level floor, agreement with a direct
computation, checkpoint resolution and the ``mof-cli eval`` wiring."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from click.testing import CliRunner

from cli import main
from mof.evaluate.evaluate import EvalConfig, evaluate, evaluate_model, resolve_checkpoint
from mof.frames import to_model_input
from mof.metrics import retrieval_metrics
from mof.models import create_model
from mof.models.io import save_model
from mof.models.tokenizer import WordTokenizer
from pipeline.sampling import uniform_subset
from pipeline.sharding.reader import ShardDataset

NUM_VIDEOS, CAPTIONS, STORED = 40, 2, 8


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Tiny synthetic test videos, sharded through the real ``mof-cli synth`` and ``shard``."""
    root = tmp_path_factory.mktemp("evaldata")
    runner = CliRunner()
    result = runner.invoke(main, [
        "synth", "--out", str(root / "data"), "--train", "0", "--test", str(NUM_VIDEOS),
        "--size", "32", "--fps", "8", "--duration", "2", "--captions", str(CAPTIONS),
        "--min-events", "2", "--max-events", "3", "--flash-frames", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [
        "shard", "--dataset", "synthetic", "--root", str(root / "data"), "--split", "test",
        "--out", str(root / "shards"), "--frames", str(STORED), "--size", "32",
        "--shard-size", "16", "--strict"])
    assert result.exit_code == 0, result.output
    return str(root / "shards")


def _tiny_model(shards: str, seed: int = 0):
    captions = [c for s in ShardDataset(shards, rank=0, world_size=1)
                for c in s["meta"]["captions"]]
    torch.manual_seed(seed)
    return create_model("frozen-tiny", tokenizer=WordTokenizer.build(captions))


def test_random_tiny_model_sits_at_chance(shards, tmp_path):
    """A leaking evaluation would put R@1 near 100 and MedR at 1; chance is 100/N and N/2."""
    report = evaluate(EvalConfig(shards=shards, model="frozen-tiny", out=str(tmp_path),
                                 frames=4, progress=False))
    chance = 100.0 / NUM_VIDEOS
    for direction in ("t2v", "v2t"):
        m = report["metrics"][direction]
        assert m["R@1"] <= 3 * chance, (direction, m)
        assert m["R@10"] <= 3 * 10 * chance, (direction, m)
        assert NUM_VIDEOS / 4 <= m["MedR"] <= 3 * NUM_VIDEOS / 4, (direction, m)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["counts"] == {"videos": NUM_VIDEOS, "queries": NUM_VIDEOS * CAPTIONS, "shards": 3}
    assert saved["frames"]["used"] == 4 and saved["frames"]["stored"] == STORED
    assert saved["frames"]["positions"] == uniform_subset(STORED, 4)
    assert (saved["dataset"], saved["split"]) == ("synthetic", "test")
    assert saved["model"]["source"] == "random-init" and saved["config"]["frames"] == 4
    assert all(saved["timing"][k] > 0 for k in ("encode_video_s", "encode_text_s", "rank_s"))
    assert set(saved["by_convention"]) == {"pessimistic", "average", "optimistic", "frozen",
                                           "clip4clip"}


def test_agrees_with_a_direct_computation(shards):
    """Encode videos and captions by hand; the evaluator's batching, order and query-to-video
    bookkeeping must give the same metrics."""
    model = _tiny_model(shards).eval()
    samples = list(ShardDataset(shards, rank=0, world_size=1))
    positions = uniform_subset(STORED, 3)
    with torch.no_grad():
        video = torch.stack([to_model_input(s["frames"], model.contract, positions)
                             for s in samples])
        texts = [c for s in samples for c in s["meta"]["captions"]]
        q2v = [i for i, s in enumerate(samples) for _ in s["meta"]["captions"]]
        tokens = model.tokenize(texts)
        sim = model.similarity(model.encode_text(tokens["input_ids"], tokens["attention_mask"]),
                               model.encode_video(video))
    expected = retrieval_metrics(sim, torch.tensor(q2v))
    model.train()
    result = evaluate_model(model, shards, 3, batch_size=7, progress=False)
    assert model.training  # the trainer's model comes back in the mode it was given
    for direction in ("t2v", "v2t"):
        for name, value in expected[direction].items():
            assert result.metrics[direction][name] == pytest.approx(value), (direction, name)


def test_cli_on_a_run_directory(shards, tmp_path):
    """``--checkpoint RUN`` finds checkpoints/last (no best yet) and U in config.yaml."""
    run = tmp_path / "run"
    save_model(_tiny_model(shards, seed=1), run / "checkpoints" / "last")
    (run / "config.yaml").write_text(yaml.safe_dump({"frames": "8:2", "model": "frozen-tiny"}))
    assert resolve_checkpoint(run) == (run / "checkpoints" / "last", run)

    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--shards", shards,
                                       "--batch-size", "16", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "t2v" in result.output and "test time" in result.output
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["frames"]["used"] == 2 and saved["frames"]["from"] == "run config.yaml"
    assert saved["model"]["trained_with_mof"] is True
    assert saved["model"]["source"] == str(run / "checkpoints" / "last")

    result = CliRunner().invoke(main, ["eval", "--checkpoint", str(run), "--shards", shards,
                                       "--model", "frozen", "--quiet"])
    assert result.exit_code != 0 and "holds a frozen-tiny model" in result.output


def test_config_reports_every_problem_at_once(tmp_path):
    with pytest.raises(ValueError) as err:
        EvalConfig(shards="", frames=0, batch_size=0, device="tpu", convention="best",
                   model="no-such-model")
    message = str(err.value)
    for option in ("--shards", "--frames", "--batch-size", "--device", "--convention",
                   "--model", "--out"):
        assert option in message, option
    with pytest.raises(FileNotFoundError, match="no saved model"):
        resolve_checkpoint(tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_matches_cpu(shards):
    """bf16 autocast on the GPU encodes close enough to float32 on the CPU to rank alike."""
    model = _tiny_model(shards)
    cpu = evaluate_model(model, shards, 4, progress=False)
    gpu = evaluate_model(model.cuda(), shards, 4, progress=False)
    assert gpu.autocast == "bfloat16"
    for direction in ("t2v", "v2t"):
        assert abs(gpu.metrics[direction]["MeanR"] - cpu.metrics[direction]["MeanR"]) < 2.0
