"""``mof-cli check``: validate a dataset's annotations and video files before sharding it.

Each split is read on its own (a split needs only its own annotation files), so one report
lists, per split, the videos, the captions per video, the problems of its annotation files,
the duplicate entries and the video files that are missing; videos listed in two splits are
duplicates too. Nothing is decoded: with ``probe``, each present file's header is opened
(in parallel processes) to find a video stream, its codec and its size.

Example::

    report = check_dataset(CheckConfig("msvd", "/data/msvd", probe=True))
    print(report.format())
    raise SystemExit(0 if report.ok else 1)
"""

from __future__ import annotations

import statistics
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from pipeline.datasets.manifests import (
    load_splits,
    missing_files,
    parse_columns,
    read_split,
    resolve_dataset,
)
from pipeline.datasets.parsers.common import KNOWN_SPLITS, ManifestError, Problem
from pipeline.datasets.records import VideoRecord

__all__ = ["CheckConfig", "CheckReport", "SplitReport", "check_dataset", "probe_video"]


@dataclass
class CheckConfig:
    """Settings of one ``mof-cli check`` run.

    Attributes:
        dataset: a descriptor name, a descriptor ``.yaml`` or a generic annotation file.
        root: the dataset root.
        split: the one split to check; ``None`` checks every split of the dataset.
        probe: open each present video file's header (no decoding).
        workers: processes probing headers.
        columns: the columns of a generic ``.csv`` / ``.tsv`` file without a header row.
        listed: at most this many problems, missing and unreadable files printed per kind.
    """

    dataset: str
    root: str
    split: str | None = None
    probe: bool = False
    workers: int = 2
    columns: str | None = None
    listed: int = 20

    def __post_init__(self) -> None:
        problems = []
        if not self.dataset:
            problems.append("--dataset is required")
        if not self.root:
            problems.append("--root is required")
        elif not Path(self.root).is_dir():
            problems.append(f"--root {self.root!r} is not a directory")
        if self.split is not None and self.split not in KNOWN_SPLITS:
            problems.append(f"--split must be one of {', '.join(KNOWN_SPLITS)}, got {self.split!r}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        try:
            parse_columns(self.columns)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ValueError("invalid check config:\n  " + "\n  ".join(problems))


@dataclass
class SplitReport:
    """What one split holds and what is wrong with it.

    Attributes:
        split: the split's name.
        alias_of: the split whose videos this one reuses (then nothing else is filled).
        videos: videos listed.
        captions: queries per video, in record order (DiDeMo: one paragraph each).
        problems: problems of the split's annotation files, duplicates excepted.
        duplicates: videos listed twice, in two splits, or naming a file another video names.
        missing: video files (relative to the root) that are not on disk.
        unreadable: ``(path, reason)`` of present files whose header does not open as a video.
        codecs: codec name -> probed files.
    """

    split: str
    alias_of: str | None = None
    videos: int = 0
    captions: list[int] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    codecs: Counter = field(default_factory=Counter)

    @property
    def errors(self) -> int:
        """Problems, duplicates, missing and unreadable files of this split."""
        return (len(self.problems) + len(self.duplicates) + len(self.missing)
                + len(self.unreadable))


@dataclass
class CheckReport:
    """The result of :func:`check_dataset`: one :class:`SplitReport` per split checked."""

    dataset: str
    root: str
    probed: bool
    splits: list[SplitReport]
    listed: int = 20

    @property
    def ok(self) -> bool:
        """Whether no split has an error."""
        return not any(s.errors for s in self.splits)

    def format(self) -> str:
        """The report as printed by ``mof-cli check``."""
        header = (f"{'split':<6} {'videos':>7}  {'queries/video min/mean/max':<28} "
                  f"{'missing':>7} {'duplicates':>10} {'unreadable':>10} {'problems':>8}")
        lines = [f"{self.dataset} under {self.root}", header]
        for s in self.splits:
            if s.alias_of:
                lines.append(f"{s.split:<6} alias of {s.alias_of}")
                continue
            caps = (f"{min(s.captions)} / {statistics.fmean(s.captions):.1f} / {max(s.captions)}"
                    if s.captions else "-")
            unreadable = str(len(s.unreadable)) if self.probed else "-"
            lines.append(f"{s.split:<6} {s.videos:>7}  {caps:<28} {len(s.missing):>7} "
                         f"{len(s.duplicates):>10} {unreadable:>10} {len(s.problems):>8}")
        codecs = sum((s.codecs for s in self.splits), Counter())
        if codecs:
            lines.append("codecs: " + ", ".join(f"{c} {n}" for c, n in codecs.most_common()))
        for s in self.splits:
            lines += self._listing(f"{s.split}: problems", [str(p) for p in s.problems])
            lines += self._listing(f"{s.split}: duplicates", s.duplicates)
            lines += self._listing(f"{s.split}: missing video files", s.missing)
            lines += self._listing(f"{s.split}: unreadable video files",
                                   [f"{p}: {why}" for p, why in s.unreadable])
        errors = sum(s.errors for s in self.splits)
        lines.append("OK" if not errors else f"{errors} error(s)")
        return "\n".join(lines)

    def _listing(self, title: str, items: list[str]) -> list[str]:
        if not items:
            return []
        more = f" (first {self.listed} of {len(items)})" if len(items) > self.listed else ""
        return [f"{title}{more}:"] + [f"  {item}" for item in items[: self.listed]]


def probe_video(path: str) -> tuple[str | None, str | None]:
    """Open a file's header and find its video stream; nothing is decoded.

    Args:
        path: the video file.

    Returns:
        ``(codec, None)`` for a readable video, ``(None, reason)`` otherwise.
    """
    from pipeline.decode.common import DecodeError
    from pipeline.decode.pyav import open_video

    try:
        container, stream = open_video(Path(path))
    except DecodeError as exc:
        return None, exc.reason
    try:
        return stream.codec_context.name or "unknown", None
    finally:
        container.close()


def _check_split(
    desc, root: Path, split: str, alone: bool
) -> tuple[SplitReport, list[VideoRecord]]:
    """One split's report; an alias is checked through its target only when asked for alone."""
    alias = desc.splits[split].alias_of
    report = SplitReport(split, alias_of=None if alone else alias)
    if report.alias_of:
        return report, []
    try:
        records = read_split(desc, root, split)
    except ManifestError as exc:
        report.problems = [p for p in exc.problems if p.kind != "duplicate"]
        report.duplicates = [str(p) for p in exc.problems if p.kind == "duplicate"]
        return report, []
    report.videos = len(records)
    report.captions = [len(r.captions) for r in records]
    report.missing = [r.path for r in missing_files(records, root)]
    first_of: dict[str, VideoRecord] = {}
    for record in records:  # two ids resolving to one file would shard it twice
        if record.path in first_of:
            report.duplicates.append(f"{record.video_id!r} and {first_of[record.path].video_id!r}"
                                     f" are both {record.path}")
        first_of.setdefault(record.path, record)
    return report, records


def _check_generic(desc, root: Path) -> tuple[list[SplitReport], dict[str, list[VideoRecord]]]:
    """Every split of a generic file, read at once; its problems belong to no one split."""
    try:
        found = load_splits(desc.annotations["file"][0], root, desc.columns)
    except ManifestError as exc:
        return [SplitReport("all", problems=[p for p in exc.problems if p.kind != "duplicate"],
                            duplicates=[str(p) for p in exc.problems if p.kind == "duplicate"])
                ], {}
    reports = []
    for split, records in found.items():
        report = SplitReport(split, videos=len(records), captions=[len(r.captions)
                                                                   for r in records])
        report.missing = [r.path for r in missing_files(records, root)]
        reports.append(report)
    return reports, found


def _cross_split(reports: list[SplitReport], records: dict[str, list[VideoRecord]]) -> None:
    """Report videos (by id or by file) that two splits list, in the later split."""
    seen: dict[str, str] = {}
    for report in reports:
        for record in records.get(report.split, []):
            for key in dict.fromkeys((record.video_id, record.path)):
                if key in seen and seen[key] != report.split:
                    report.duplicates.append(f"{key!r} is in both {seen[key]} and "
                                             f"{report.split} ({record.extra.get('source')})")
                    break
            for key in (record.video_id, record.path):
                seen.setdefault(key, report.split)


def _probe_all(reports: list[SplitReport], records: dict[str, list[VideoRecord]], root: Path,
               workers: int) -> None:
    todo = [(s, r.path) for s in reports for r in records.get(s.split, [])
            if r.path not in set(s.missing)]
    if not todo:
        return
    paths = [str(root / path) for _, path in todo]
    # spawn: a forked FFmpeg (or a parent's threads) must not be inherited.
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)),
                             mp_context=get_context("spawn")) as pool:
        results = list(pool.map(probe_video, paths, chunksize=max(1, len(paths) // (8 * workers))))
    for (report, path), (codec, reason) in zip(todo, results, strict=True):
        if codec is None:
            report.unreadable.append((path, reason))
        else:
            report.codecs[codec] += 1


def check_dataset(config: CheckConfig) -> CheckReport:
    """Validate the annotations and video files of one split or of every split.

    Args:
        config: what to check.

    Returns:
        The report; ``report.ok`` is false when any split has an error.

    Raises:
        pipeline.datasets.parsers.common.ManifestError: the dataset itself cannot be resolved
            (unknown name, invalid descriptor, unsupported or missing generic file).
    """
    root = Path(config.root)
    desc = resolve_dataset(config.dataset, root, parse_columns(config.columns))
    names = [config.split] if config.split else list(desc.splits)
    if config.split and config.split not in desc.splits:
        raise ManifestError([Problem(str(desc.path or config.dataset), None,
                                     f"unknown split {config.split!r}; {desc.name} has "
                                     f"{', '.join(desc.splits)}")])
    reports, records = [], {}
    if desc.path is None and not config.split:
        # A generic file is one file for every split: read it once, as a whole.
        reports, records = _check_generic(desc, root)
    for split in names if not reports else ():
        report, records[split] = _check_split(desc, root, split, alone=bool(config.split))
        reports.append(report)
    _cross_split(reports, records)
    if config.probe:
        _probe_all(reports, records, root, config.workers)
    return CheckReport(desc.name, str(root), config.probe, reports, config.listed)
