"""Writers of annotation sets in the official formats, small or full-size, for the tests.

Each writer produces the files exactly as the datasets ship them (JSON layouts, CSV headers,
pickled token lists, one-id-per-line lists) and can add the quirks found in the wild: CRLF
line endings, a UTF-8 byte-order mark, blank trailing lines.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "didemo_full",
    "msrvtt_full",
    "msvd_full",
    "touch",
    "write_csv",
    "write_didemo",
    "write_jsonl",
    "write_lines",
    "write_msrvtt",
    "write_msvd",
]


def _write(path: Path, text: str, crlf: bool, bom: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if crlf:
        text = text.replace("\r\n", "\n").replace("\n", "\r\n")
    path.write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    return path


def write_lines(path: Path, lines: Iterable[str], *, crlf: bool = False, bom: bool = False,
                trailing_blank: int = 0) -> Path:
    """One item per line, optionally CRLF, with a BOM and blank lines at the end."""
    return _write(path, "".join(f"{x}\n" for x in lines) + "\n" * trailing_blank, crlf, bom)


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]], *,
              crlf: bool = False, bom: bool = False, trailing_blank: int = 0) -> Path:
    """A CSV with minimal quoting, as pandas writes it (fields with , or " get quoted)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n" if crlf else "\n")
    writer.writerow(header)
    writer.writerows(rows)
    return _write(path, out.getvalue() + "\n" * trailing_blank, False, bom)


def write_jsonl(path: Path, objects: Iterable[object], **quirks) -> Path:
    """One JSON document per line."""
    return write_lines(path, (json.dumps(o) for o in objects), **quirks)


def touch(root: Path, relative: str) -> Path:
    """An empty file standing for a video (the parsers only check that it exists)."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_msrvtt(root: Path, captions: Mapping[str, Sequence[str]], train: Sequence[str],
                 test: Sequence[tuple[str, str]], *, original: bool = False, indent: int | None = 1,
                 crlf: bool = False, bom: bool = False) -> None:
    """MSR-VTT 1k-A files.

    Args:
        root: the dataset root.
        captions: video id -> its sentences (the caption JSON).
        train: ids of ``MSRVTT_train.9k.csv``.
        test: ``(video_id, sentence)`` rows of ``MSRVTT_JSFUSION_test.csv``.
        original: write ``train_val_videodatainfo.json`` + ``test_videodatainfo.json`` (test
            ids' sentences in the second) instead of ``MSRVTT_data.json``.
        indent: JSON indentation (``None``: one line).
        crlf, bom: quirks of the two CSVs.
    """
    test_ids = {v for v, _ in test}

    def document(ids: Iterable[str]) -> str:
        ids = list(ids)
        videos = [{"category": 0, "url": f"https://www.youtube.com/watch?v={v}", "video_id": v,
                   "start time": 0.0, "end time": 10.0, "split": "train", "id": i}
                  for i, v in enumerate(ids)]
        sentences = [{"caption": c, "video_id": v, "sen_id": 0} for v in ids for c in captions[v]]
        for n, s in enumerate(sentences):
            s["sen_id"] = n
        return json.dumps({"info": {"year": 2016}, "videos": videos, "sentences": sentences},
                          indent=indent)

    if original:
        _write(root / "train_val_videodatainfo.json",
               document(v for v in captions if v not in test_ids), False, False)
        _write(root / "test_videodatainfo.json",
               document(v for v in captions if v in test_ids), False, False)
    else:
        _write(root / "MSRVTT_data.json", document(captions), False, False)
    write_csv(root / "MSRVTT_train.9k.csv", ["video_id"], [[v] for v in train], crlf=crlf,
              bom=bom)
    rows = [[f"ret{i}", f"msr{v.removeprefix('video')}", v, s] for i, (v, s) in enumerate(test)]
    write_csv(root / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], rows,
              crlf=crlf, bom=bom)


def write_msvd(root: Path, captions: Mapping[str, Sequence[Sequence[str]]],
               lists: Mapping[str, Sequence[str]], **quirks) -> None:
    """``raw-captions.pkl`` (id -> list of token lists) and ``<split>_list.txt`` files."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "raw-captions.pkl", "wb") as handle:
        pickle.dump({v: [list(t) for t in caps] for v, caps in captions.items()}, handle)
    for split, ids in lists.items():
        write_lines(root / f"{split}_list.txt", ids, **quirks)


def write_didemo(root: Path, moments: Mapping[str, Sequence[tuple[str, str]]],
                 lists: Mapping[str, Sequence[str]] | None = None, *, indent: int | None = 1,
                 **quirks) -> None:
    """``<split>_data.json`` (a list of moments) and, if given, ``<split>_list.txt`` files."""
    for split, items in moments.items():
        data = [{"annotation_id": i, "description": d, "video": v, "times": [[0, 0], [1, 1]],
                 "download_link": f"https://example.org/{v}", "num_segments": 6}
                for i, (v, d) in enumerate(items)]
        _write(root / f"{split}_data.json", json.dumps(data, indent=indent), False, False)
    for split, ids in (lists or {}).items():
        write_lines(root / f"{split}_list.txt", ids, **quirks)


# The full-size writers return what the peers' rules make of the files they wrote:
# split -> video id -> queries, for the tests to compare with the parsers' records.
Expected = dict[str, dict[str, tuple[str, ...]]]


def msrvtt_full(root: Path, seed: int = 0) -> Expected:
    """A full-size MSR-VTT 1k-A set: 10000 videos x 20 sentences, 9000 train, 1000 JSFusion."""
    rng = random.Random(seed)
    ids = [f"video{i}" for i in range(10000)]
    test = sorted(rng.sample(ids, 1000), key=lambda v: int(v[5:]))
    test_set = set(test)
    captions = {v: [f"clip {v} shows scene {k}" for k in range(20)] for v in ids}
    for v in rng.sample(ids, 500):  # MSR-VTT has repeated sentences within a video
        captions[v][19] = captions[v][3]
    train = [v for v in ids if v not in test_set]
    jsfusion = [(v, captions[v][rng.randrange(20)]) for v in test]
    write_msrvtt(root, captions, train, jsfusion, indent=None)
    return {"train": {v: tuple(captions[v]) for v in train},
            "test": {v: (s,) for v, s in jsfusion}}


def msvd_full(root: Path, seed: int = 0) -> Expected:
    """A full-size MSVD set: 1970 ids split 1200/100/670 with 20-60 captions each."""
    rng = random.Random(seed)
    ids = [f"{rng.getrandbits(40):010x}_{i}_{i + 7}" for i in range(1970)]
    captions = {v: [["a", "person", "does", f"thing{k % 25}"] for k in range(rng.randint(20, 60))]
                for v in ids}
    lists = {"train": ids[:1200], "val": ids[1200:1300], "test": ids[1300:]}
    write_msvd(root, captions, lists)
    return {split: {v: tuple(" ".join(t) for t in captions[v]) for v in members}
            for split, members in lists.items()}


def didemo_full(root: Path, seed: int = 0) -> Expected:
    """A full-size DiDeMo set: lists of 8392/1065/1004; the train JSON has 3 unlisted videos."""
    rng = random.Random(seed)
    exts = [".mp4", ".mov", ".m4v", ".3gp", ".avi", ".", ".MOV"]
    sizes = {"train": 8395, "val": 1065, "test": 1004}
    moments, lists, expected = {}, {}, {}
    for split, size in sizes.items():
        names = [f"{rng.getrandbits(30)}@N0{i % 9}_{i}_{split}{rng.choice(exts)}"
                 for i in range(size)]
        items = [(v, f"moment {k} of {v}") for v in names for k in range(rng.randint(1, 6))]
        rng.shuffle(items)
        moments[split] = items
        lists[split] = names[:8392] if split == "train" else names
        paragraphs: dict[str, list[str]] = {v: [] for v in lists[split]}
        for video, text in items:
            if video in paragraphs:
                paragraphs[video].append(text)
        expected[split] = {v: (" ".join(texts),) for v, texts in paragraphs.items()}
    write_didemo(root, moments, lists, indent=None)
    return expected
