"""``mof-cli search``: encode a text query with the index's model and rank the indexed videos.

The score is the cosine similarity every model of the toolkit ranks with at evaluation
(``RetrievalModel.similarity``): embeddings are L2-normalised, so it is an inner product.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mof.search.config import SearchConfig
from mof.search.store import MODEL_DIR, IndexData, SearchIndexError, load_index
from mof.search.topk import exact_top_k, rank_of

__all__ = ["Searcher", "format_results", "search"]


class Searcher:
    """An index in memory with its model, answering text queries.

    Args:
        index_dir: the index directory.
        device: where queries are encoded.
        approximate: also load the IVF index (``mof-cli index --ann ivf``).
    """

    def __init__(self, index_dir: str | Path, device: str = "cpu", approximate: bool = False):
        from mof.evaluate.split_encoding import resolve_device
        from mof.models.io import load_model

        self.data: IndexData = load_index(index_dir)
        if not self.data.videos:
            raise SearchIndexError(f"{index_dir}: the index holds no video yet")
        self.device = resolve_device(device)
        self.model = load_model(Path(index_dir) / MODEL_DIR).to(self.device).eval()
        self.ann = None
        if approximate:
            from mof.search.ann import ANN_FILE, load_ivf

            self.ann = load_ivf(Path(index_dir) / ANN_FILE, len(self.data.videos))

    def encode(self, text: str) -> np.ndarray:
        """The query's L2-normalised embedding, float32 ``(D,)``."""
        from mof.evaluate.split_encoding import autocast_for

        with torch.inference_mode(), autocast_for(self.device):
            tokens = {k: v.to(self.device) for k, v in self.model.tokenize([text]).items()}
            emb = self.model.encode_text(**tokens).float()
        return torch.nn.functional.normalize(emb, dim=1)[0].cpu().numpy()

    def find(self, video_id: str) -> int:
        """The row of ``video_id``.

        Raises:
            KeyError: no such video in the index.
        """
        for video in self.data.videos:
            if video["video_id"] == video_id:
                return video["row"]
        some = ", ".join(v["video_id"] for v in self.data.videos[:3])
        raise KeyError(f"video {video_id!r} is not in the index {self.data.path} (it holds "
                       f"{len(self.data.videos)} videos, e.g. {some})")

    def query(self, text: str, top: int, nprobe: int = 16) -> dict[str, Any]:
        """Rank the videos for ``text``.

        Returns:
            ``query``, ``search`` (``exact`` or ``ivf``), ``videos`` (the index's count),
            ``timing`` (``encode_ms``, ``search_ms``) and ``results``: up to ``top`` video rows,
            best first, each with ``rank`` and ``score``.
        """
        start = time.perf_counter()
        emb = self.encode(text)
        encoded = time.perf_counter()
        if self.ann is not None:
            from mof.search.ann import search_ivf

            scores, rows = search_ivf(self.ann, emb[None], top, nprobe)
        else:
            scores, rows = exact_top_k(self.data.embeddings, emb[None], top)
        done = time.perf_counter()
        results = [{**self.data.videos[int(r)], "rank": i + 1, "score": float(s)}
                   for i, (s, r) in enumerate(zip(scores[0], rows[0])) if r >= 0]
        return {"query": text, "search": "ivf" if self.ann is not None else "exact",
                "videos": len(self.data.videos), "model": self.data.manifest["model"]["name"],
                "frames": self.data.manifest["frames"],
                "timing": {"encode_ms": 1e3 * (encoded - start),
                           "search_ms": 1e3 * (done - encoded)},
                "results": results, "embedding": emb}

    def path_of(self, video: dict[str, Any]) -> str:
        """The video's file as the index recorded it (its root joined with its source)."""
        path = self.data.video_file(video["row"])
        return str(path) if path is not None else video["source"]


def search(config: SearchConfig) -> dict[str, Any]:
    """Run one ``mof-cli search``.

    Returns:
        :meth:`Searcher.query`'s answer with each result's ``path``, and, with ``expect``,
        ``expected``: ``video_id``, ``rank`` among all videos, ``tied`` and ``score``.

    Raises:
        FileNotFoundError: not an index, or no IVF index for ``approximate``.
        KeyError: ``expect`` names no indexed video.
        SearchIndexError: an unreadable or empty index.
    """
    searcher = Searcher(config.index, config.device, approximate=config.approximate)
    expected = searcher.find(config.expect) if config.expect is not None else None
    text = config.query
    if text is None:
        captions = searcher.data.videos[expected]["captions"]
        if not captions:
            raise KeyError(f"video {config.expect!r} has no caption to query with: give a QUERY")
        text = captions[0]
    answer = searcher.query(text, config.top, config.nprobe)
    for result in answer["results"]:
        result["path"] = searcher.path_of(result)
    if expected is not None:
        rank, tied, score = rank_of(searcher.data.embeddings, answer["embedding"], expected)
        answer["expected"] = {"video_id": config.expect, "rank": rank, "tied": tied,
                              "score": score}
    del answer["embedding"]
    return answer


def format_results(answer: dict[str, Any], as_json: bool = False) -> str:
    """What ``mof-cli search`` prints: a table, or the answer as JSON."""
    if as_json:
        return json.dumps(answer, indent=2)
    t = answer["timing"]
    lines = [(f"{answer['query']!r}: {answer['search']} search over {answer['videos']} videos "
              f"({answer['model']}, U={answer['frames']}; query {t['encode_ms']:.1f} ms, "
              f"search {t['search_ms']:.1f} ms)"),
             f"{'rank':>4}  {'score':>7}  {'video':<24} path"]
    for r in answer["results"]:
        lines.append(f"{r['rank']:>4}  {r['score']:7.4f}  {r['video_id']:<24} {r['path']}")
    if "expected" in answer:
        e = answer["expected"]
        tie = f", tied with {e['tied']} others" if e["tied"] else ""
        lines.append(f"expected video {e['video_id']} ranks {e['rank']} of {answer['videos']} "
                     f"(score {e['score']:.4f}{tie})")
    return "\n".join(lines)
