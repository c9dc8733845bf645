"""Search a video collection by text: index it at U frames, query it, serve it on a web page.

``build_index`` (``mof-cli index``) encodes shards into an index directory
(:mod:`mof.search.store` describes its files), ``search`` (``mof-cli search``) ranks its videos
for a text query, exactly or through a FAISS inverted file (:mod:`mof.search.ann`), and
``serve_index``
(``mof-cli serve``) answers queries from a local web page.
"""

from mof.search.build import IndexSummary, build_index
from mof.search.config import IndexConfig, SearchConfig, ServeConfig
from mof.search.query import Searcher, format_results, search
from mof.search.server import serve_index
from mof.search.store import SearchIndexError, load_index

__all__ = [
    "IndexConfig",
    "IndexSummary",
    "SearchConfig",
    "SearchIndexError",
    "Searcher",
    "ServeConfig",
    "build_index",
    "format_results",
    "load_index",
    "search",
    "serve_index",
]
