"""``mof-cli``: a thin shell over the toolkit.

Each command parses its options, builds one config dataclass and calls one function. Heavy
imports happen inside the commands so that ``mof-cli --help`` answers at once. Errors become
exit statuses in one place, :func:`_reported`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

# Option decorators only (click and yaml): each command imports its work inside it.
from mof.reproduce.cli_options import config_from_options as table4_config
from mof.reproduce.cli_options import table4_options
from mof.train.cli_options import config_from_options, train_options
from pipeline.errors import MofError

#: What a user's input can cause: the toolkit's own errors, and the builtin ones the model
#: library (torch/numpy only, so without MofError) raises for bad arguments and missing files.
#: Anything else is a bug and keeps its traceback.
USER_ERRORS = (MofError, ValueError, KeyError, FileNotFoundError, FileExistsError)


@contextlib.contextmanager
def _reported(*, options: bool = False) -> Iterator[None]:
    """Turn :data:`USER_ERRORS` into a one-line message and an exit status.

    Args:
        options: the block reads the options: exit 2 with the usage line (click's convention);
            otherwise the block does the work: exit 1.
    """
    try:
        yield
    except USER_ERRORS as exc:
        # str(KeyError) quotes its message; the message itself reads better.
        message = str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        raise (click.UsageError if options else click.ClickException)(message) from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mof")
def main() -> None:
    """Meta-Optimized Frames: shard videos, train retrieval models with MOF, evaluate, export."""


# --- synth ---------------------------------------------------------------------------------


@main.command()
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Output directory (resumed if it holds a run with the same settings).")
@click.option("--seed", default=0, show_default=True, help="Random seed; same seed, same dataset.")
@click.option("--train", default=1000, show_default=True, help="Training videos.")
@click.option("--test", default=250, show_default=True, help="Test videos.")
@click.option("--workers", default=2, show_default=True, help="Processes drawing and encoding.")
@click.option("--size", default=64, show_default=True, help="Frames are SIZE x SIZE pixels (even).")
@click.option("--fps", default=12, show_default=True, help="Frames per second.")
@click.option("--duration", "duration_s", default=4.0, show_default=True,
              help="Seconds per video.")
@click.option("--captions", default=5, show_default=True, help="Captions per video.")
@click.option("--test-captions", type=int, default=None,
              help="Captions per test video [default: --captions]; the first --captions are "
                   "the same either way, so more only add queries.")
@click.option("--min-events", default=3, show_default=True, help="Fewest events per video.")
@click.option("--max-events", default=5, show_default=True, help="Most events per video.")
@click.option("--flash-frames", default=3, show_default=True, help="Frames a flash lasts.")
@click.option("--crf", default=18, show_default=True, help="x264 quality (lower: better, bigger).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(quiet: bool, **options: object) -> None:
    """Generate the embedded synthetic text-video dataset (H.264 videos + annotations.jsonl)."""
    from pipeline.synth.dataset import SynthConfig, generate_synthetic

    with _reported(options=True):
        cfg = SynthConfig(progress=not quiet, **options)
    with _reported():
        click.echo(generate_synthetic(cfg))


# --- check / shard / inspect ---------------------------------------------------------------


@main.command()
@click.option("--dataset", required=True,
              help="Manifest name (e.g. msvd), descriptor .yaml, or generic .csv/.tsv/.jsonl file.")
@click.option("--root", required=True, type=click.Path(file_okay=False), help="Dataset root.")
@click.option("--split", help="Check only this split (train, val or test) [default: every split].")
@click.option("--probe", is_flag=True, help="Also open each video file's header (no decoding).")
@click.option("--workers", default=2, show_default=True, help="Processes probing headers.")
@click.option("--columns", metavar="NAME,NAME", help="Columns of a .csv/.tsv file without a "
              "header row, e.g. caption,path (a file without a split column holds --split).")
@click.option("--listed", default=20, show_default=True, help="Items listed per kind of error.")
def check(**options: object) -> None:
    """Validate a dataset's annotations and video files; exit 1 on any error."""
    from pipeline.datasets.check import CheckConfig, check_dataset

    with _reported(options=True):
        config = CheckConfig(**options)
    with _reported():
        report = check_dataset(config)
    click.echo(report.format())
    if not report.ok:
        raise SystemExit(1)


@main.command()
@click.option("--dataset",
              help="Manifest name (e.g. synthetic, msrvtt); also the shard name prefix.")
@click.option("--root", type=click.Path(file_okay=False),
              help="Dataset root; video paths are relative to it.")
@click.option("--split", help="Split to shard: train, val or test [--videos: test].")
@click.option("--out", type=click.Path(file_okay=False),
              help="Output directory (resumed if it exists).")
@click.option("--frames", default=32, show_default=True, help="R: frames stored per video.")
@click.option("--size", default=256, show_default=True,
              help="S: frames are S x S pixels (short side, centre crop).")
@click.option("--backend", type=click.Choice(["auto", "ffmpeg", "dali"]), default="auto",
              show_default=True,
              help="Decoder: dali needs a CUDA GPU; auto picks dali when usable, else ffmpeg.")
@click.option("--workers", default=1, show_default=True,
              help="Decoding processes (each writes whole shards).")
@click.option("--shard-size", default=64, show_default=True, help="Videos per shard.")
@click.option("--strict", is_flag=True, help="Exit non-zero (after finishing) if any video failed.")
@click.option("--num-nodes", type=int,
              help="Machines splitting the plan [default: $WORLD_SIZE or 1].")
@click.option("--node-rank", type=int, help="This machine's rank [default: $RANK or 0].")
@click.option("--videos", type=click.Path(file_okay=False, exists=True), metavar="DIR",
              help="Shard every video under DIR, no annotations needed (DIR is the root; "
              "--dataset defaults to its name).")
@click.option("--merge-index", type=click.Path(file_okay=False, exists=True), metavar="OUT",
              help="Instead of sharding: join the partial indexes of a multi-node run in OUT.")
@click.option("--columns", metavar="NAME,NAME", help="Columns of a .csv/.tsv file without a "
              "header row, e.g. caption,path (a file without a split column holds --split).")
@click.option("--retry-failed", is_flag=True, help="Re-attempt the videos of OUT/errors.jsonl; "
              "those that decode now go into new shards.")
def shard(merge_index: str | None, **options: object) -> None:
    """Decode every video of a split into R frames and write WebDataset shards + index.json."""
    from pipeline.interrupt import ShardInterrupted
    from pipeline.sharding.index import merge_indexes
    from pipeline.sharding.write import ShardConfig, write_shards

    if merge_index:
        with _reported():
            totals = merge_indexes(merge_index)["totals"]
        click.echo(f"merged {merge_index}/index.json: {totals['shards']} shards, "
                   f"{totals['samples']} samples")
        return
    with _reported(options=True):
        config = ShardConfig(**options)
    try:
        with _reported():
            summary = write_shards(config)
    except ShardInterrupted as exc:  # the message says how to resume
        click.echo(str(exc), err=True)
        raise SystemExit(128 + exc.signum) from None
    click.echo(summary.format())
    if config.strict and summary.errors_total:
        raise click.ClickException(f"--strict: {summary.errors_total} videos could not be sharded")


@main.command()
@click.argument("shards", nargs=-1, required=True)
@click.option("--sheet", type=click.Path(dir_okay=False), help="Write a contact-sheet PNG here.")
@click.option("--samples", default=8, show_default=True,
              help="Rows (samples) of the contact sheet.")
@click.option("--max-frames", default=8, show_default=True,
              help="Frames per row at most (evenly spaced).")
def inspect(shards: tuple[str, ...], sheet: str | None, samples: int, max_frames: int) -> None:
    """Count what SHARDS hold (a shard directory, patterns or files) and draw a contact sheet."""
    from pipeline.sharding.contact_sheet import InspectConfig, inspect_shards

    with _reported(options=True):
        config = InspectConfig(list(shards), sheet=sheet, samples=samples, max_frames=max_frames)
    with _reported():
        report = inspect_shards(config)
    click.echo(report.format())


# --- eval ----------------------------------------------------------------------------------


@main.command("eval")
@click.option("--checkpoint", type=click.Path(exists=True),
              help="Run directory (checkpoints/best, else last), checkpoint or model directory.")
@click.option("--shards", required=True,
              help="Test shards: a shard directory, index.json, brace/glob pattern or .tar file.")
@click.option("--frames", type=int, help="U uniform frames per video [default: the run's U, "
              "else the model's max_frames].")
@click.option("--out", type=click.Path(file_okay=False),
              help="Directory for metrics.json [default: the --checkpoint directory].")
@click.option("--batch-size", default=16, show_default=True, help="Videos per encoder batch.")
@click.option("--model", help="Registered model name; without --checkpoint it is evaluated "
              "randomly initialised (the chance-level floor).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: CUDA (bf16 autocast) when available, else CPU.")
@click.option("--seed", default=0, show_default=True,
              help="Seed of the random initialisation (with --model and no --checkpoint).")
@click.option("--convention", default="pessimistic", show_default=True,
              type=click.Choice(["pessimistic", "average", "optimistic", "frozen", "clip4clip"]),
              help="Tie and median rules of the printed metrics (all go to metrics.json).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_(quiet: bool, **options: object) -> None:
    """Encode the test shards with U uniform frames, rank, print and write metrics.json."""
    from mof.evaluate.evaluate import EvalConfig, evaluate, format_report

    with _reported(options=True):
        config = EvalConfig(progress=not quiet, **options)
    with _reported():
        report = evaluate(config)
    click.echo(format_report(report))


# --- index / search / serve ------------------------------------------------------------------


@main.command("index")
@click.option("--checkpoint", type=click.Path(exists=True),
              help="Run directory, checkpoint or model directory [required for a new index].")
@click.option("--shards", required=True, multiple=True,
              help="Shards to add: a shard directory, index.json, pattern or .tar; repeatable.")
@click.option("--frames", type=int, help="U uniform frames per video [default: the run's U, "
              "else the model's max_frames; an existing index keeps its own].")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Index directory; an existing index is resumed or extended.")
@click.option("--batch-size", default=16, show_default=True, help="Videos per encoder batch.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True, help="auto: CUDA (bf16 autocast) when available, else CPU.")
@click.option("--thumb-height", default=64, show_default=True, help="Thumbnail strip height, px.")
@click.option("--ann", type=click.Choice(["none", "ivf"]),
              help="Build (ivf) or drop (none) the approximate index [default: keep].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def index_(shards: tuple[str, ...], quiet: bool, **options: object) -> None:
    """Encode every video of the shards at U uniform frames into a search index (resumable)."""
    from mof.search.build import build_index
    from mof.search.config import IndexConfig

    with _reported(options=True):
        config = IndexConfig(shards=list(shards), progress=not quiet, **options)
    with _reported():
        summary = build_index(config)
    click.echo(summary.format())


@main.command()
@click.argument("index", type=click.Path(file_okay=False, exists=True))
@click.argument("query", required=False)
@click.option("--top", default=10, show_default=True, help="Videos to list.")
@click.option("--expect", metavar="VIDEO_ID", help="Also print where this video ranks among all "
              "(without QUERY: query with its first caption).")
@click.option("--approx", "approximate", is_flag=True,
              help="Search the IVF cells (mof-cli index --ann ivf) instead of every vector.")
@click.option("--nprobe", default=16, show_default=True,
              help="IVF cells scanned per query (with --approx; more: closer to exact).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu",
              show_default=True, help="Where the query is encoded.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def search(as_json: bool, **options: object) -> None:
    """Rank the videos of INDEX for the text QUERY and print them with scores and paths."""
    from mof.search.config import SearchConfig
    from mof.search.query import format_results
    from mof.search.query import search as run_search

    with _reported(options=True):
        config = SearchConfig(**options)
    with _reported():
        answer = run_search(config)
    click.echo(format_results(answer, as_json=as_json))


@main.command()
@click.argument("index", type=click.Path(file_okay=False, exists=True))
@click.option("--root", type=click.Path(file_okay=False, exists=True),
              help="Where the source videos are now [default: the roots the index recorded].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (keep the loopback unless you mean to share it).")
@click.option("--port", default=8000, show_default=True, help="TCP port (0: any free one).")
@click.option("--top", default=12, show_default=True, help="Results per query by default.")
def serve(**options: object) -> None:
    """A local web page searching INDEX: query box, thumbnail strips, click to play."""
    from mof.search.config import ServeConfig
    from mof.search.server import serve_index

    with _reported(options=True):
        config = ServeConfig(**options)
    with _reported():
        serve_index(config, announce=click.echo)


# --- train / export-frames -----------------------------------------------------------------


@main.command()
@train_options
def train(quiet: bool, **options: object) -> None:
    """Train a retrieval model, baseline (--frames U) or MOF (--frames R:U); resumable.

    Works under `torchrun --nproc_per_node N $(which mof-cli) train ...` (NCCL on GPU, gloo on
    CPU). Writes RUN_DIR/config.yaml, metrics.csv, tb/, checkpoints/{last,best} and mof.zarr.
    """
    with _reported(options=True):
        config = config_from_options(options)
    from mof.train import train as run_training

    with _reported():
        run_training(config, progress=not quiet)


@main.command("export-frames")
@click.option("--run", required=True, type=click.Path(file_okay=False, exists=True),
              help="MOF run directory (with mof.zarr); may still be training.")
@click.option("--ids", multiple=True, metavar="ID[,ID...]",
              help="Videos to export (store ids or dataset ids); repeatable or comma-separated.")
@click.option("--num", type=int, help="Export the first N videos of the store [default: 4].")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output directory: per-video PNGs and grid, summary.json, index.html.")
@click.option("--mp4", is_flag=True, help="Also write each video's MOF frames as an MP4.")
@click.option("--attention", is_flag=True,
              help="Also draw the first block's text-to-patch attention (Frozen models).")
@click.option("--shards", multiple=True,
              help="Train shards, if they moved since training [default: those in the store].")
@click.option("--columns", default=8, show_default=True, help="Frames per grid line.")
@click.option("--fps", default=2, show_default=True, help="Frame rate of the MP4.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export_frames_(ids: tuple[str, ...], shards: tuple[str, ...], quiet: bool,
                   **options: object) -> None:
    """Write a run's learned MOF frames beside its regular and initial frames (Fig. 7 grids)."""
    from mof.export.export import ExportConfig, export_frames, format_summary

    with _reported(options=True):
        config = ExportConfig(ids=list(ids), shards=list(shards) or None, progress=not quiet,
                              **options)
    with _reported():
        summary = export_frames(config)
    click.echo(format_summary(summary))


# --- reproduce -----------------------------------------------------------------------------


@main.group()
def reproduce() -> None:
    """Reproduce the paper's experiments."""


@reproduce.command("table4")
@table4_options
def reproduce_table4(**options: object) -> None:
    """Table IV: baselines at 1/4/8/32 frames and MOF 16:1, 8:4, 16:4, 8:8, 32:8, several
    seeds each (synth → shard → train → eval per cell, reusing finished work), then
    RESULTS/table4.{md,csv,png} and curves.png."""
    with _reported(options=True):
        config = table4_config(options)
    from mof.reproduce import reproduce_table4 as run_table4

    with _reported():
        summary = run_table4(config)
    click.echo(summary.format())
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} cells failed (see error.txt in "
                                   "their directories); the others are in the results")


if __name__ == "__main__":
    main()
