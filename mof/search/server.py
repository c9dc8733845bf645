"""``mof-cli serve``: a local web page that searches an index and plays the videos it finds.

The standard library's ``http.server`` is enough for one user on the loopback: four routes, no
sessions, no templates, and nothing to install. It listens on 127.0.0.1 by default. Routes::

    GET /                      the page (mof/search/page.html)
    GET /api/search?q=TEXT&k=K the ranked videos as JSON (400 with {"error"} for bad input)
    GET /thumb/ROW             the thumbnail strip of index row ROW (JPEG)
    GET /video/ROW             the source video of row ROW (byte ranges supported for seeking)

Files are named by row number only, never by a path from the request, and every file served is
resolved (symbolic links included) and must lie inside the index directory (thumbnails) or
the video root (videos): a source path recorded as ``../x`` or a link out of the root is
refused with 403.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import re
import shutil
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mof.search.config import ServeConfig
from mof.search.query import Searcher

__all__ = ["MAX_QUERY_CHARS", "make_server", "serve_index"]

#: Longest query accepted (characters); a longer one is a 400, not a truncation.
MAX_QUERY_CHARS = 500
_FILE_ROUTE = re.compile(r"/(thumb|video)/(\d{1,12})")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_PAGE = Path(__file__).with_name("page.html")


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every link resolved, lies inside ``root`` (also resolved)."""
    try:
        return path.resolve(strict=True).is_relative_to(root.resolve(strict=True))
    except (FileNotFoundError, RuntimeError, OSError):
        return False


class _App:
    """What the handler needs: the searcher (one query at a time), roots and limits."""

    def __init__(self, config: ServeConfig):
        self.searcher = Searcher(config.index)
        self.config = config
        self.lock = threading.Lock()
        self.page = _PAGE.read_bytes()

    def search(self, params: dict[str, list[str]]) -> dict[str, Any]:
        """The JSON answer to ``/api/search``; ``ValueError`` names what is wrong."""
        query = (params.get("q") or [""])[0].strip()
        if not query:
            raise ValueError("q: give a non-empty query")
        if len(query) > MAX_QUERY_CHARS:
            raise ValueError(f"q: at most {MAX_QUERY_CHARS} characters, got {len(query)}")
        k_text = (params.get("k") or [str(self.config.top)])[0]
        if not k_text.isdigit() or not 1 <= int(k_text) <= self.config.max_top:
            raise ValueError(f"k: an integer in 1..{self.config.max_top}, got {k_text!r}")
        with self.lock:
            answer = self.searcher.query(query, int(k_text))
        del answer["embedding"]
        for r in answer["results"]:
            r["thumb"] = f"/thumb/{r['row']}"
            r["video"] = f"/video/{r['row']}" if self.video_file(r["row"]) else None
        return answer

    def video_file(self, row: int) -> Path | None:
        """Row ``row``'s video if it exists inside its root, else ``None``."""
        data = self.searcher.data
        root = self.config.root
        if root is None:
            index = data.videos[row].get("root")
            if index is None:
                return None
            root = data.manifest["roots"][index]
        path = data.video_file(row, Path(root))
        return path if path is not None and _inside(path, Path(root)) else None

    def thumb_file(self, row: int) -> Path | None:
        path = self.searcher.data.path / self.searcher.data.videos[row]["thumb"]
        return path if _inside(path, self.searcher.data.path) else None


class _Handler(BaseHTTPRequestHandler):
    app: _App  # set on the subclass make_server creates
    server_version = "mof-search"

    def do_HEAD(self) -> None:  # http.server's naming
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            return self._send(HTTPStatus.OK, "text/html; charset=utf-8", self.app.page)
        if url.path == "/api/search":
            try:
                answer = self.app.search(parse_qs(url.query))
            except ValueError as err:
                return self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
            return self._json(HTTPStatus.OK, answer)
        match = _FILE_ROUTE.fullmatch(url.path)
        if match is None:
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {url.path}"})
        row = int(match.group(2))
        if row >= len(self.app.searcher.data.videos):
            return self._json(HTTPStatus.NOT_FOUND, {"error": f"no row {row} in the index"})
        kind = match.group(1)
        path = self.app.thumb_file(row) if kind == "thumb" else self.app.video_file(row)
        if path is None:
            return self._json(HTTPStatus.FORBIDDEN,
                              {"error": f"the {kind} of row {row} is not a file inside its root"})
        return self._file(path)

    def _send(self, status: HTTPStatus, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: Any) -> None:
        self._send(status, "application/json", json.dumps(obj).encode())

    def _file(self, path: Path) -> None:
        """Send a file, or the one byte range the request asks for (what seeking uses)."""
        size = path.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        header = self.headers.get("Range")
        if header:
            match = _RANGE.fullmatch(header.strip())
            if match and match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2) or end), size - 1)
            elif match and match.group(2):  # a suffix: the last N bytes
                start = max(0, size - int(match.group(2)))
            if match is None or start > end:
                self.send_response(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self.send_header("Content-Type", ctype)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.command == "HEAD":
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            # The browser may stop reading (it seeks by opening another range).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                shutil.copyfileobj(_Limited(fh, end - start + 1), self.wfile)


class _Limited:
    """A file object that reads at most ``remaining`` bytes (for ``shutil.copyfileobj``)."""

    def __init__(self, fh: Any, remaining: int):
        self.fh, self.remaining = fh, remaining

    def read(self, size: int = -1) -> bytes:
        size = self.remaining if size < 0 else min(size, self.remaining)
        data = self.fh.read(size)
        self.remaining -= len(data)
        return data


def make_server(config: ServeConfig) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server for ``config``; its port is ``server_address[1]``."""
    handler = type("Handler", (_Handler,), {"app": _App(config)})
    return ThreadingHTTPServer((config.host, config.port), handler)


def serve_index(config: ServeConfig, announce: Callable[[str], None] = print) -> None:
    """Serve until interrupted; ``announce`` receives the address line once listening."""
    server = make_server(config)
    host, port = server.server_address[:2]
    videos = len(server.RequestHandlerClass.app.searcher.data.videos)
    announce(f"serving {config.index} ({videos} videos) at http://{host}:{port}/ "
             "(Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
