"""``mof-cli reproduce table4`` on a micro grid: real synthetic videos, shards, training runs in
spawned processes, evaluations, then the table, CSV, plots and paired comparisons built from them.

The grid is two cells (the 1-frame baseline and MOF 16 ⇒ 1, both in the paper's table) on 8
training and 4 test videos, one epoch of two steps; a second call adds a seed.
"""

from __future__ import annotations

import csv
import json
import math
import statistics

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mof.reproduce import reproduce_table4
from mof.reproduce.aggregate import compare, load_results, mean_std, summarize
from mof.reproduce.config import Table4Config
from mof.reproduce.grid import (
    DEFAULT_GRID,
    PAPER_TABLE4,
    Cell,
    equal_cost_baseline,
    parse_grid,
)
from mof.reproduce.paths import cell_dir, warm_start_dir, warm_start_path
from tests.table4_micro import micro_config

GRID = "1,16:1"


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> dict:
    """The micro grid run once with one seed (two cells in two processes), then a second
    seed (one process); the summaries and the modification times after the first call."""
    base = tmp_path_factory.mktemp("table4")
    first = reproduce_table4(micro_config(base, publish=str(base / "docs")))
    cfg = micro_config(base)
    stamps = {c.frames: (cell_dir(cfg, c, 0) / "metrics.json").stat().st_mtime_ns
              for c in cfg.cells}
    second = reproduce_table4(micro_config(base, seeds=2, jobs=1))
    return {"base": base, "first": first, "second": second, "stamps": stamps,
            "cfg": micro_config(base, seeds=2)}


def test_parse_grid_and_equal_cost_baselines():
    cells = parse_grid(DEFAULT_GRID)
    assert [c.frames for c in cells] == ["1", "4", "8", "32", "16:1", "8:4", "16:4", "8:8",
                                         "32:8"]
    assert [c.label for c in cells if c.is_mof] == ["16 ⇒ 1", "8 ⇒ 4", "16 ⇒ 4", "8 ⇒ 8",
                                                    "32 ⇒ 8"]
    baselines = {c for c in cells if not c.is_mof}
    assert all(equal_cost_baseline(c) in baselines for c in cells if c.is_mof)
    assert set(PAPER_TABLE4["msrvtt"]) == {c.frames for c in cells} - {"4"}
    with pytest.raises(ValueError) as err:
        parse_grid("8:16,x,4,4")
    assert "'8:16'" in str(err.value) and "'x'" in str(err.value) and "twice" in str(err.value)


def test_config_reports_every_problem(tmp_path):
    with pytest.raises(ValueError) as err:
        Table4Config(dataset="msrvtt", grid="4:8", seeds=0, select="median",
                     train_args={"frames": "2", "bogus": 1}, synth_test_captions=21)
    text = str(err.value)
    for fragment in ("--root is required", "R >= U", "--seeds", "--select", "bogus",
                     "frames: set by the grid", "--synth-test-captions must be at most 20"):
        assert fragment in text


@pytest.mark.slow  # runs the micro grid
def test_micro_grid_end_to_end(micro):
    base, first = micro["base"], micro["first"]
    assert first.outcomes == {"trained": 2} and not first.failed
    assert first.finished == first.expected == 2
    results = base / "results"
    with open(results / "table4.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["frames"] for r in rows] == ["1", "16:1"]
    assert [r["method"] for r in rows] == ["frozen-tiny", "frozen-tiny w/ MOF"]
    assert rows[1]["paper_R@1"] == "22.1" and rows[0]["paper_test_s"] == "11"
    md = (results / "table4.md").read_text()
    assert "| frozen-tiny | 1 |" in md and "| frozen-tiny w/ MOF | 16 ⇒ 1 |" in md
    assert "MOF 16 ⇒ 1 vs baseline 1 (equal test cost)" in md
    for name in ("table4.png", "curves.png"):
        with Image.open(results / name) as image:
            assert image.size[0] > 500 and image.size[1] > 300
    # Each cell trained its own run with the grid's frame setting and seed.
    cfg = micro["cfg"]
    for cell in cfg.cells:
        run = cell_dir(cfg, cell, 0) / "run"
        assert f"frames: '{cell.frames}'" in (run / "config.yaml").read_text()
        curve = (run / "metrics.csv").read_text().splitlines()
        assert len(curve) == 2 and "t2v/R@1" in curve[0]
    assert (cell_dir(cfg, Cell(1, 16), 0) / "run" / "mof.zarr").is_dir()


@pytest.mark.slow  # runs the micro grid
def test_cells_fine_tune_one_shared_warm_start(micro):
    cfg = micro["cfg"]
    where = warm_start_dir(cfg)
    record = json.loads((where / "warm_start.json").read_text())
    assert record["frames"] == 4 and record["epochs"] == 1 and len(record["epoch_loss"]) == 1
    assert record["train_config"]["frames"] == "4" and record["train_config"]["seed"] == 0
    assert record["metrics"]["t2v"]["count"] == 4 * 20  # its own evaluation, 4 frames
    start = str(where / "run" / "checkpoints" / "last")
    for cell in cfg.cells:
        for seed in (0, 1):
            text = (cell_dir(cfg, cell, seed) / "run" / "config.yaml").read_text()
            assert f"init_from: {start}" in text
    assert "fine-tunes one warm start (a 4-frame baseline trained 1 epoch from" in (
        micro["base"] / "results" / "table4.md").read_text()
    # Off (or a model with pre-trained weights): cells start from the model's own weights.
    assert cfg.resolved_warm_start_epochs == 1
    off = micro_config(micro["base"], warm_start_epochs=0)
    assert warm_start_path(off) is None
    assert off.train_config(off.cells[0], 0, "a", "b", "c").init_from is None


@pytest.mark.slow  # runs the micro grid
def test_rerun_skips_finished_cells_and_adds_seeds(micro):
    second, cfg = micro["second"], micro["cfg"]
    assert second.outcomes == {"skipped": 2, "trained": 2}
    for cell in cfg.cells:
        path = cell_dir(cfg, cell, 0) / "metrics.json"
        assert path.stat().st_mtime_ns == micro["stamps"][cell.frames]
    third = reproduce_table4(micro_config(micro["base"], seeds=2, jobs=1))
    assert third.outcomes == {"skipped": 4}


@pytest.mark.slow  # runs the micro grid
def test_aggregation_matches_hand_computed_values(micro):
    cfg, results_dir = micro["cfg"], micro["base"] / "results"
    with open(results_dir / "table4.csv", newline="") as fh:
        table = {r["frames"]: r for r in csv.DictReader(fh)}
    for cell in cfg.cells:
        reports = [json.loads((cell_dir(cfg, cell, s) / "metrics.json").read_text())
                   for s in (0, 1)]
        for key in ("R@1", "R@5", "R@10", "MedR", "MeanR"):
            values = [r["metrics"]["t2v"][key] for r in reports]
            row = table[cell.frames]
            assert float(row[f"{key}_mean"]) == pytest.approx(statistics.mean(values), rel=1e-5)
            assert float(row[f"{key}_std"] or 0.0) == pytest.approx(statistics.stdev(values),
                                                                    rel=1e-5, abs=1e-9)
        test_s = [r["timing"]["test_time_s"] for r in reports]
        assert float(table[cell.frames]["test_s_mean"]) == pytest.approx(np.mean(test_s),
                                                                         rel=1e-5)
        assert table[cell.frames]["seeds"] == "2"
    results = load_results(cfg)
    # Seeds are found on disk: a report asked for one seed still counts the second call's.
    assert sorted((r.cell.frames, r.seed) for r in load_results(micro_config(micro["base"]))) \
        == sorted((r.cell.frames, r.seed) for r in results)
    (comparison,) = compare(summarize(results, cfg.cells), results)
    base_r1 = [json.loads((cell_dir(cfg, Cell(1), s) / "metrics.json").read_text())
               ["metrics"]["t2v"]["R@1"] for s in (0, 1)]
    mof_r1 = [json.loads((cell_dir(cfg, Cell(1, 16), s) / "metrics.json").read_text())
              ["metrics"]["t2v"]["R@1"] for s in (0, 1)]
    assert comparison.delta == pytest.approx(statistics.mean(mof_r1) - statistics.mean(base_r1))
    diffs = [m - b for m, b in zip(mof_r1, base_r1, strict=True)]
    assert [s for s, _ in comparison.paired] == [0, 1]
    assert [d for _, d in comparison.paired] == pytest.approx(diffs)
    # Two seeds: t interval with 1 degree of freedom (t = 12.706).
    half = 12.706 * statistics.stdev(diffs) / math.sqrt(2)
    assert comparison.seeds_ci.low == pytest.approx(statistics.mean(diffs) - half)
    assert comparison.seeds_ci.high == pytest.approx(statistics.mean(diffs) + half)
    # The bootstrap's point estimate is R@1 recomputed from the saved per-query ranks.
    assert comparison.queries_ci.mean == pytest.approx(statistics.mean(diffs))
    assert comparison.queries_ci.low <= comparison.queries_ci.mean <= comparison.queries_ci.high
    assert comparison.verdict == ("no difference" if not comparison.seeds_ci.excludes_zero
                                  else "gain" if comparison.seeds_ci.low > 0 else "loss")
    assert [m.metric for m in comparison.companions] == ["MeanR", "loss"]


def test_mof_with_r_equal_u_is_compared_with_its_one_baseline_once():
    from mof.reproduce.aggregate import SeedResult

    metrics = {"R@1": 10.0, "R@5": 30.0, "R@10": 40.0, "MedR": 9.0, "MeanR": 20.0, "loss": 3.0}
    cells = [Cell(8), Cell(8, 8), Cell(4, 8), Cell(4), Cell(32)]
    results = [SeedResult(cell, seed, {**metrics, "R@1": 10.0 + seed + cell.used / 8}, 1.0, 1.0)
               for cell in cells for seed in (0, 1)]
    found = [(c.cell.frames, c.against.frames, c.kind)
             for c in compare(summarize(results, cells), results)]
    assert found == [("8:8", "8", "equal test cost"), ("8:4", "4", "equal test cost"),
                     ("8:4", "8", "all R frames")]


def test_difference_is_over_the_seeds_both_cells_have():
    from mof.reproduce.aggregate import SeedResult, compare_cells

    metrics = {"R@1": 0.0, "R@5": 30.0, "R@10": 40.0, "MedR": 9.0, "MeanR": 20.0, "loss": 3.0}
    base = [SeedResult(Cell(8), s, {**metrics, "R@1": r1}, 1.0, 1.0)
            for s, r1 in enumerate([20.0, 22.0, 24.0, 30.0, 34.0])]
    mof = [SeedResult(Cell(8, 8), s, {**metrics, "R@1": r1}, 1.0, 1.0)
           for s, r1 in enumerate([19.0, 20.0, 21.0])]
    found = compare_cells(base + mof, Cell(8, 8), Cell(8), "equal test cost", "R@1")
    assert [d for _, d in found.paired] == [-1.0, -2.0, -3.0]
    assert found.delta == pytest.approx(-2.0)  # not 20.0 - 26.0
    assert found.seeds_ci.mean == pytest.approx(found.delta)
    alone = compare_cells(base[3:] + mof, Cell(8, 8), Cell(8), "equal test cost", "R@1")
    assert alone.paired == [] and alone.delta == pytest.approx(20.0 - 32.0)


def test_mean_std_verdicts():
    stat = mean_std([10.0, 12.0, 14.0])
    assert (stat.mean, stat.std, stat.n) == (12.0, 2.0, 3)
    assert math.isnan(mean_std([3.0]).std)


@pytest.mark.slow  # runs the micro grid
def test_published_files(micro):
    published = micro["base"] / "docs"
    assert {p.name for p in published.iterdir()} >= {"table4.md", "table4.png", "curves.png",
                                                      "table4.csv"}
    text = (published / "table4.md").read_text()
    assert "16 ⇒ 1" in text and "](table4.png)" in text and "paired by seed" in text


@pytest.mark.slow  # runs the micro grid
def test_cli_report_only(micro, tmp_path):
    from cli import main

    base = micro["base"]
    args = ["reproduce", "table4", "--work", str(base / "work"), "--grid", GRID, "--seeds", "2",
            "--epochs", "1", "--batch-size", "4", "--eval-every", "1", "--synth-train", "8",
            "--warm-start-epochs", "1", "--pretrain-videos", "0", "--warm-start-frames", "4",
            "--synth-test", "4", "--train-arg", "augment=none", "--train-arg",
            "shuffle_buffer=4", "--results", str(tmp_path / "r"), "--report-only", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "4/4 finished" in result.output and (tmp_path / "r" / "table4.md").is_file()


def test_cli_usage_errors():
    from cli import main

    result = CliRunner().invoke(main, ["reproduce", "table4", "--grid", "8:16", "--seeds", "0",
                                       "--train-arg", "nokey"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    result = CliRunner().invoke(main, ["reproduce", "table4", "--grid", "8:16", "--seeds", "0"])
    assert result.exit_code == 2 and "R >= U" in result.output and "--seeds" in result.output


@pytest.mark.slow  # runs the micro grid
def test_diagnosis_measures_drift_and_meta_gradient_sign(micro):
    from mof.models.io import load_model
    from mof.reproduce.diagnose import frame_drift, meta_gradient_probe

    run = cell_dir(micro["cfg"], Cell(1, 16), 0) / "run"
    drift = frame_drift(run)
    assert drift["steps_per_video"] == 1.0  # one epoch: one frame-level Adam step per video
    assert 0 < drift["mean_abs"] <= drift["max_abs"] <= drift["bound"] * (1 + 1e-4)
    probe = meta_gradient_probe(run)
    down, up = probe["steps"][8e-4]
    assert down < 0 < up  # a small step against the meta-gradient lowers the outer loss
    assert probe["rms"] > 0 and 0 < probe["adam_step_fraction"] <= 1
    model = load_model(run / "checkpoints" / "last")
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lr = micro["cfg"].resolved_lr
    assert probe["adamw_step_norm"] == pytest.approx(lr * math.sqrt(params))
    assert probe["inner_step_norm"] > 0
    gap = probe["gain_regular"] - probe["gain_learned"]
    assert (math.isfinite(probe["gap_closed"]) if gap > 0 else probe["gap_closed"] is None)
    assert probe["beta"] == micro["cfg"].resolved_frame_lr
    assert all(-1 <= c <= 1 for c in probe["alignment"].values())
    assert probe["grad_norm_ratio"] > 0


@pytest.mark.slow  # runs the micro grid
def test_training_fit_scores_learned_frames_only_for_mof(micro):
    from mof.reproduce.diagnose import training_fit

    mof = training_fit(cell_dir(micro["cfg"], Cell(1, 16), 0) / "run", videos=6)
    base = training_fit(cell_dir(micro["cfg"], Cell(1), 0) / "run")
    assert mof["videos"] == 6 and base["videos"] == 8  # the micro grid trains on 8 videos
    assert base["learned"] is None and mof["learned"]["count"] == 6
    for metrics in (mof["uniform"], mof["learned"], base["uniform"]):
        assert 1 <= metrics["MedR"] <= metrics["count"] and 0 <= metrics["R@1"] <= 100


@pytest.mark.slow  # runs the micro grid
def test_diagnosis_report_has_every_section_and_is_published(micro, tmp_path):
    # Every cell is finished: the call only aggregates and diagnoses.
    summary = reproduce_table4(micro_config(micro["base"], seeds=2, jobs=1, diagnose=True,
                                            results=str(tmp_path / "r"),
                                            publish=str(tmp_path / "pub")))
    assert summary.outcomes.get("trained", 0) == 0
    report = (tmp_path / "r" / "table4_diagnosis.md").read_text()
    assert (tmp_path / "pub" / "table4_diagnosis.md").read_text() == report
    titles = [line for line in report.splitlines() if line.startswith("## ")]
    assert [t.split(":")[0].split(" (")[0] for t in titles] == [
        "## Runs that never left the collapsed start", "## Learned frames",
        "## Meta-gradient on the trained model", "## What one frame step buys",
        "## Training videos",
        "## Baselines trained on more frames, tested on fewer"]
    # One row per MOF cell and seed in the training-video table, with all three columns filled.
    fit_rows = [line for line in report.split("## Training videos")[1].splitlines()
                if line.startswith("| 16 ⇒ 1 |")]
    assert len(fit_rows) == 2 and all(line.count(" / ") == 6 for line in fit_rows)


@pytest.mark.slow  # runs the micro grid
def test_resume_or_restart_a_run_directory(micro, tmp_path):
    import shutil

    from mof.reproduce.runner import CellMismatch, resume_or_restart, shard_paths

    cfg = micro["cfg"]
    shards = shard_paths(cfg)
    finished = tmp_path / "finished"
    shutil.copytree(cell_dir(cfg, Cell(1), 0) / "run", finished)
    config = cfg.train_config(Cell(1), 0, shards.train, shards.test, str(finished))
    resumed, again = resume_or_restart(config, finished)
    assert again and resumed.resume == str(finished) and config.resume != str(finished)
    # Killed before its first checkpoint: the directory is cleared and training starts afresh.
    shutil.rmtree(finished / "checkpoints")
    fresh, again = resume_or_restart(config, finished)
    assert not again and fresh == config and not finished.exists()
    # Started with other settings: refused, naming the setting.
    shutil.copytree(cell_dir(cfg, Cell(1), 0) / "run", finished)
    other = cfg.train_config(Cell(1), 1, shards.train, shards.test, str(finished))
    with pytest.raises(CellMismatch, match="seed"):
        resume_or_restart(other, finished)
    assert resume_or_restart(config, tmp_path / "absent") == (config, False)
