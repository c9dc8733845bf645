"""MSR-VTT: caption JSON plus the 1k-A (JSFusion) split CSVs, as CLIP4Clip distributes them.

Captions come from ``MSRVTT_data.json`` (top-level ``sentences: [{video_id, caption}, ...]``)
or, when that file is absent, from the original ``train_val_videodatainfo.json`` and
``test_videodatainfo.json`` (same ``sentences`` layout, read together). Each split lists its
videos in a CSV with a ``video_id`` column: ``MSRVTT_train.9k.csv`` (9000 ids) and
``MSRVTT_JSFUSION_test.csv`` (``key,vid_key,video_id,sentence``, 1000 rows). A split's
``captions`` option says where its captions come from: ``annotations`` (every sentence of the
caption JSON, about 20 per video) or ``list`` (the CSV's own ``sentence`` column: the one
JSFusion sentence per test video, which is the 1k-A protocol of both peers).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pipeline.datasets.parsers.common import (
    Descriptor,
    Entry,
    Format,
    FormatSchema,
    ProblemLog,
    assign_splits,
    check_video_id,
)
from pipeline.datasets.parsers.readers import read_csv, read_json

__all__ = ["MSRVTT", "SCHEMA", "parse"]

SCHEMA = FormatSchema(
    annotations={"captions": False, "captions_original": False},
    split_files={"list": True},
    split_options={"captions": ("annotations", "list")},
)


def _read_sentences(file: Path, log: ProblemLog, into: dict[str, list[str]]) -> None:
    """Append the captions of ``file``'s ``sentences`` to ``into[video_id]`` in file order."""
    loaded = read_json(file, log)
    if loaded is None:
        return
    data, locate = loaded
    if not isinstance(data, dict) or not isinstance(data.get("sentences"), list):
        log.add(file, 1, "expected a JSON object with a 'sentences' list")
        return
    for i, item in enumerate(data["sentences"]):
        # The official file has 200k sentences: try first, diagnose only what fails. Ids are
        # checked where the split lists name them.
        try:
            video_id, caption = item["video_id"], item["caption"].strip()
            usable = bool(caption) and isinstance(video_id, str)
        except (TypeError, KeyError, AttributeError):
            usable = False
        if usable:
            into[video_id].append(caption)
        else:
            log.add(file, locate.line("sentences", i), f"sentences[{i}]: needs a 'video_id' "
                    f"and a non-empty 'caption', got {item!r}")


def _read_captions(desc: Descriptor, root: Path, log: ProblemLog) -> dict[str, list[str]]:
    """video id -> captions, from the combined JSON or, failing that, the original pair."""
    captions: dict[str, list[str]] = defaultdict(list)
    combined = [desc.find(root, n) for n in desc.annotations.get("captions", ())]
    original = [desc.find(root, n) for n in desc.annotations.get("captions_original", ())]
    if combined and all(combined):
        files = combined
    elif original and all(original):
        files = original
    else:
        wanted = [" + ".join(desc.annotations[r]) for r in ("captions", "captions_original")
                  if r in desc.annotations]
        log.add(root / wanted[0].split(" + ")[0] if wanted else root, None,
                f"no caption file: expected {' or '.join(wanted) or 'a captions role'} "
                f"(looked in {', '.join(f'{d}/' for d in desc.annotation_dirs)})")
        files = []
    for file in files:
        _read_sentences(file, log, captions)
    return captions


def _read_list(
    desc: Descriptor, root: Path, split: str, log: ProblemLog
) -> list[tuple[str, str, str | None]]:
    """``(video_id, "file:line", sentence)`` rows of a split's CSV."""
    spec = desc.splits[split]
    file = desc.expect(root, spec.files["list"], log)
    own_sentence = spec.options["captions"] == "list"
    needed = ("video_id", "sentence") if own_sentence else ("video_id",)
    rows = read_csv(file, log, required=needed) if file else None
    out = []
    shown = log.show(file) if file else ""
    for line, row in rows or []:
        video_id = row["video_id"].strip()
        problem = check_video_id(video_id)
        if problem is None and own_sentence and not row["sentence"].strip():
            problem = f"{video_id!r} has an empty sentence"
        if problem:
            log.add(file, line, problem)
            continue
        sentence = row["sentence"].strip() if own_sentence else None
        out.append((video_id, f"{shown}:{line}", sentence))
    return out


def parse(
    desc: Descriptor, root: Path, log: ProblemLog, splits: tuple[str, ...]
) -> list[Entry]:
    """Entries of ``splits``; ids without captions or in two splits are problems."""
    lists = {split: _read_list(desc, root, split, log) for split in splits}
    owner = assign_splits({s: [(v, w) for v, w, _ in rows] for s, rows in lists.items()}, log)
    needs_json = any(desc.splits[s].options["captions"] == "annotations" for s in lists)
    captions = _read_captions(desc, root, log) if needs_json else {}
    entries = []
    for split, rows in lists.items():
        for video_id, where, sentence in rows:
            if owner[video_id] != (split, where):
                continue  # a duplicate, already reported
            found = [sentence] if sentence is not None else captions.get(video_id, [])
            if not found and not captions:
                continue  # no usable caption file: reported once, not once per video
            if not found:
                file, _, line = where.rpartition(":")
                log.add(file, int(line), f"{video_id!r} is listed in {split} but has no "
                                         "captions in the caption file")
                continue
            entries.append(Entry(video_id, split, list(found), where))
    return entries


MSRVTT = Format(SCHEMA, parse)
