"""Settings of ``mof-cli index``, ``search`` and ``serve``, each validated before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mof.evaluate.split_encoding import device_problem

__all__ = ["ANN_KINDS", "IndexConfig", "SearchConfig", "ServeConfig"]

#: Approximate index kinds: ``none`` (exact search only) and FAISS's inverted file.
ANN_KINDS = ("none", "ivf")


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise ValueError(f"invalid {what} config:\n  " + "\n  ".join(problems))


@dataclass
class IndexConfig:
    """Settings of ``mof-cli index``.

    Attributes:
        shards: shards to add: a shard directory, ``index.json``, pattern, ``.tar`` or a list.
        out: the index directory; an existing index is resumed or extended.
        checkpoint: run directory, checkpoint or model directory; required for a new index,
            checked against the index's model when extending one.
        frames: U, uniform frames per video; ``None``: the run's U, else the model's
            ``max_frames``; when extending, the index's U.
        batch_size: videos per encoder call.
        device: ``auto`` (CUDA with bf16 autocast when available), ``cpu`` or ``cuda``.
        thumb_height: pixels; thumbnails are strips of square frames this high.
        ann: ``ivf`` to build (and keep up to date) an approximate index, ``none`` to drop it;
            ``None`` keeps the index's setting.
        progress: progress bar.
    """

    shards: str | list[str]
    out: str
    checkpoint: str | None = None
    frames: int | None = None
    batch_size: int = 16
    device: str = "auto"
    thumb_height: int = 64
    ann: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not self.shards:
            problems.append("--shards is required")
        if not self.out:
            problems.append("--out is required")
        if self.checkpoint is not None and not Path(self.checkpoint).exists():
            problems.append(f"--checkpoint {self.checkpoint!r} does not exist")
        if self.frames is not None and self.frames < 1:
            problems.append(f"--frames must be >= 1, got {self.frames}")
        if self.batch_size < 1:
            problems.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if not 8 <= self.thumb_height <= 512:
            problems.append(f"--thumb-height must be in 8..512 pixels, got {self.thumb_height}")
        if self.ann is not None and self.ann not in ANN_KINDS:
            problems.append(f"--ann must be one of {', '.join(ANN_KINDS)}, got {self.ann!r}")
        if device_problem(self.device):
            problems.append(device_problem(self.device))
        _raise_if(problems, "index")


@dataclass
class SearchConfig:
    """Settings of ``mof-cli search``.

    Attributes:
        index: the index directory.
        query: the text to search for; ``None`` with ``expect``: that video's first caption.
        top: how many videos to return.
        expect: a video id whose rank among all videos is reported (exact search).
        approximate: search the index's IVF cells instead of every vector.
        nprobe: IVF cells scanned per query (more: better recall, slower).
        device: where the query is encoded.
    """

    index: str
    query: str | None = None
    top: int = 10
    expect: str | None = None
    approximate: bool = False
    nprobe: int = 16
    device: str = "cpu"

    def __post_init__(self) -> None:
        problems = []
        if not Path(self.index).is_dir():
            problems.append(f"INDEX {self.index!r} is not a directory")
        if self.query is not None and not self.query.strip():
            problems.append("the query is empty")
        if self.query is None and self.expect is None:
            problems.append("give a QUERY, or --expect ID to query with that video's caption")
        if self.top < 1:
            problems.append(f"--top must be >= 1, got {self.top}")
        if self.nprobe < 1:
            problems.append(f"--nprobe must be >= 1, got {self.nprobe}")
        if self.expect is not None and self.approximate:
            problems.append("--expect ranks the video among all of them: use exact search")
        if device_problem(self.device):
            problems.append(device_problem(self.device))
        _raise_if(problems, "search")


@dataclass
class ServeConfig:
    """Settings of ``mof-cli serve``.

    Attributes:
        index: the index directory.
        root: where the source videos are now, if not at the roots the index recorded.
        host: address to listen on; loopback unless asked otherwise.
        port: TCP port; 0 picks a free one.
        top: results per query by default (a request may ask for up to ``max_top``).
        max_top: the most results one request may ask for.
    """

    index: str
    root: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    top: int = 12
    max_top: int = 100

    def __post_init__(self) -> None:
        problems = []
        if not Path(self.index).is_dir():
            problems.append(f"INDEX {self.index!r} is not a directory")
        if self.root is not None and not Path(self.root).is_dir():
            problems.append(f"--root {self.root!r} is not a directory")
        if not 0 <= self.port <= 65535:
            problems.append(f"--port must be in 0..65535, got {self.port}")
        if not 1 <= self.top <= self.max_top:
            problems.append(f"--top must be in 1..{self.max_top}, got {self.top}")
        _raise_if(problems, "serve")
