"""The on-disk search index: a model, and per shard a chunk of embeddings, video rows, thumbnails.

Layout (``INDEX_FORMAT_VERSION``; every file a standard format)::

    INDEX/index.json               what the index holds (below); rewritten last, atomically
    INDEX/model/                   the model that encoded the videos (``mof.models.io`` format)
    INDEX/chunks/<c>.npy           float32 (n, D) L2-normalised video embeddings of chunk c
    INDEX/chunks/<c>.jsonl         one JSON object per row of <c>.npy: the video (below)
    INDEX/thumbs/<c>/<j>.jpg       the j-th video's thumbnail strip: the U indexed frames side by
                                   side (8 at most), THUMB px high
    INDEX/ann/ivf.faiss            optional approximate index over every row (``mof.search.ann``)

A chunk is one shard. ``index.json`` lists the committed chunks in row order: the global row of
a video is the number of rows of the chunks before its own plus its row in the chunk. A chunk's
files are written before ``index.json`` names it, so an interrupted run leaves at most files of
a chunk that no index names, and the next run writes them again.

``index.json``: ``format_version``; ``model`` (``name``, ``sha256`` of its weights, ``source``
and ``run_dir`` it was copied from); ``frames`` (U) and ``dim`` (D); ``thumb_height`` (px);
``roots`` (dataset roots, absolute: a video's file is ``roots[root] / source``); ``chunks``
(``name``, ``shard`` (absolute path), ``shard_bytes``, ``videos``);
``totals`` (``videos``, ``chunks``); ``ann`` (``null`` or its settings).

A video row: ``video_id``, ``key`` (the shard key), ``dataset``, ``split``, ``source`` (path
under its root), ``root`` (index into ``roots``, ``null`` when the shards do not say),
``captions`` (possibly empty), ``duration_s``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "INDEX_FORMAT_VERSION",
    "IndexData",
    "SearchIndexError",
    "chunk_paths",
    "file_sha256",
    "load_index",
    "read_manifest",
]

INDEX_FORMAT_VERSION = 1
MANIFEST_NAME = "index.json"
MODEL_DIR = "model"


class SearchIndexError(ValueError):
    """A search index that cannot be read or extended, naming the file and the reason."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def chunk_paths(index_dir: Path, name: str) -> dict[str, Path]:
    """The files of chunk ``name``: ``embeddings``, ``videos`` and the ``thumbs`` folder."""
    return {"embeddings": index_dir / "chunks" / f"{name}.npy",
            "videos": index_dir / "chunks" / f"{name}.jsonl",
            "thumbs": index_dir / "thumbs" / name}


def read_manifest(index_dir: str | Path) -> dict[str, Any]:
    """``INDEX/index.json``, checked for its version.

    Raises:
        FileNotFoundError: no ``index.json`` (not an index, or one never finished).
        SearchIndexError: unreadable JSON or another format version.
    """
    path = Path(index_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a search index (mof-cli index --out)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SearchIndexError(f"{path}: not valid JSON ({err})") from err
    if manifest.get("format_version") != INDEX_FORMAT_VERSION:
        raise SearchIndexError(f"{path}: format_version {manifest.get('format_version')!r} is not "
                          f"{INDEX_FORMAT_VERSION}")
    return manifest


@dataclass
class IndexData:
    """An index in memory: its manifest, every embedding and every video row.

    Attributes:
        path: the index directory.
        manifest: ``index.json``.
        embeddings: float32 ``(N, D)``, L2-normalised, rows in index order.
        videos: ``N`` video rows, each with ``row`` (global) and ``thumb`` (path under ``path``)
            added.
    """

    path: Path
    manifest: dict[str, Any]
    embeddings: np.ndarray
    videos: list[dict[str, Any]]

    def video_file(self, row: int, root: Path | None = None) -> Path | None:
        """Absolute path of a row's source video, under ``root`` if given, else its own root.

        ``None`` when the index does not know the root. The caller checks containment.
        """
        video = self.videos[row]
        if root is None:
            if video.get("root") is None:
                return None
            root = Path(self.manifest["roots"][video["root"]])
        return Path(root) / video["source"]


def load_index(index_dir: str | Path) -> IndexData:
    """Read a whole index (embeddings are concatenated in RAM: 4 D bytes per video).

    Raises:
        FileNotFoundError: no index, or a chunk file that ``index.json`` names is missing.
        SearchIndexError: a chunk whose files disagree with ``index.json`` or with each other.
    """
    index_dir = Path(index_dir)
    manifest = read_manifest(index_dir)
    arrays, videos = [], []
    for chunk in manifest["chunks"]:
        paths = chunk_paths(index_dir, chunk["name"])
        emb = np.load(paths["embeddings"], mmap_mode="r")
        rows = [json.loads(line) for line in paths["videos"].read_text().splitlines() if line]
        if emb.shape != (chunk["videos"], manifest["dim"]) or len(rows) != chunk["videos"]:
            raise SearchIndexError(
                f"{index_dir / MANIFEST_NAME}: chunk {chunk['name']} should hold "
                f"{chunk['videos']} videos of width {manifest['dim']}, its files hold "
                f"{emb.shape} embeddings and {len(rows)} rows")
        for j, row in enumerate(rows):
            row["row"] = len(videos)
            row["thumb"] = f"thumbs/{chunk['name']}/{j}.jpg"
            videos.append(row)
        arrays.append(np.asarray(emb, dtype=np.float32))
    embeddings = (np.concatenate(arrays) if arrays
                  else np.zeros((0, manifest["dim"] or 0), np.float32))
    return IndexData(index_dir, manifest, embeddings, videos)
