"""Loading and validating dataset descriptors (``manifests/<name>.yaml``).

A descriptor is checked as a whole against the schema of its format before any annotation
file is opened; every problem is reported at once with the descriptor's line number.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from pipeline.datasets.parsers import FORMATS
from pipeline.datasets.parsers.common import (
    KNOWN_SPLITS,
    QUERY_RULES,
    Descriptor,
    FormatSchema,
    ManifestError,
    Problem,
    ProblemLog,
    SplitSpec,
    check_relative_path,
)

__all__ = ["MANIFEST_DIR", "list_datasets", "load_descriptor"]


def _manifest_dir() -> Path:
    """``manifests/`` beside the ``pipeline`` package (a checkout or an editable install), else
    the copy a regular ``pip install`` puts under ``<prefix>/share/mof/manifests``."""
    beside = Path(__file__).resolve().parents[3] / "manifests"
    installed = Path(sys.prefix) / "share" / "mof" / "manifests"
    return installed if installed.is_dir() and not beside.is_dir() else beside


MANIFEST_DIR = _manifest_dir()

# Top-level keys -> whether they are required.
_TOP_KEYS = {
    "name": True, "format": True, "splits": True, "description": False, "source": False,
    "annotation_dirs": False, "annotations": False, "videos": False, "expected_videos": False,
}


def list_datasets() -> list[str]:
    """Names of the descriptors in ``manifests/``, sorted."""
    return sorted(p.stem for p in MANIFEST_DIR.glob("*.yaml"))


class _Checker:
    """Records problems against a descriptor, locating each by its key path."""

    def __init__(self, file: Path, lines: dict[tuple, int]) -> None:
        self.log = ProblemLog()
        self.file = file
        self.lines = lines

    def __call__(self, at: tuple, message: str) -> None:
        line, prefix = None, at
        while line is None and prefix:
            line, prefix = self.lines.get(prefix), prefix[:-1]
        label = ".".join(str(k) for k in at)
        self.log.add(self.file, line, f"{label}: {message}" if label else message)


def _key_lines(node: yaml.Node, at: tuple, out: dict[tuple, int]) -> dict[tuple, int]:
    """Key path -> 1-based line of that key (or of the item, in a list)."""
    out.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[at + (key.value,)] = key.start_mark.line + 1
            _key_lines(value, at + (key.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _key_lines(item, at + (i,), out)
    return out


def _paths(check: _Checker, at: tuple, value: Any) -> tuple[str, ...]:
    """A relative path or a non-empty list of them, as a tuple."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        check(at, f"must be a relative path or a non-empty list of them, got {value!r}")
        return ()
    problems = [(i, check_relative_path(p)) for i, p in enumerate(items)]
    for i, problem in problems:
        if problem:
            check(at + (i,) if isinstance(value, list) else at, problem)
    return tuple(items) if not any(p for _, p in problems) else ()


def _annotations(check: _Checker, raw: Any, schema: FormatSchema) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, Mapping):
        check(("annotations",), "must map file roles to file names")
        return {}
    for role in raw:
        if role not in schema.annotations:
            check(("annotations", role), "unknown role; this format has "
                                         f"{', '.join(schema.annotations) or 'none'}")
    for role, required in schema.annotations.items():
        if required and role not in raw:
            check(("annotations", role), "missing")
    return {r: _paths(check, ("annotations", r), v) for r, v in raw.items()
            if r in schema.annotations}


def _split(check: _Checker, name: str, body: Any, schema: FormatSchema) -> SplitSpec | None:
    at = ("splits", name)
    if name not in KNOWN_SPLITS:
        check(at, f"unknown split; splits are {', '.join(KNOWN_SPLITS)}")
        return None
    if not isinstance(body, Mapping):
        check(at, "must be a mapping of settings")
        return None
    if "alias_of" in body:
        if len(body) > 1:
            check(at, "an alias takes no other settings")
        return SplitSpec(name, alias_of=str(body["alias_of"]))
    known = {"queries", *schema.split_files, *schema.split_options}
    for key in body:
        if key not in known:
            check(at + (key,), f"unknown key; known: {', '.join(sorted(known))}")
    if body.get("queries") not in QUERY_RULES:
        check(at + ("queries",), f"must be one of {', '.join(QUERY_RULES)}, "
                                 f"got {body.get('queries')!r}")
    files = {}
    for key, required in schema.split_files.items():
        if key not in body:
            if required:
                check(at + (key,), "missing")
        elif problem := check_relative_path(body[key]):
            check(at + (key,), problem)
        else:
            files[key] = body[key]
    for key, allowed in schema.split_options.items():
        if body.get(key) not in allowed:
            check(at + (key,), f"must be one of {', '.join(allowed)}, got {body.get(key)!r}")
    options = {k: body[k] for k in schema.split_options if k in body}
    return SplitSpec(name, str(body.get("queries")), files, options)


def _splits(check: _Checker, raw: Any, schema: FormatSchema) -> dict[str, SplitSpec]:
    if not isinstance(raw, Mapping) or not raw:
        if raw is not None:  # a missing key is already reported
            check(("splits",), "must map train / val / test to their settings")
        return {}
    specs = {n: s for n, s in ((n, _split(check, n, b, schema)) for n, b in raw.items()) if s}
    for name, spec in specs.items():
        target = specs.get(spec.alias_of) if spec.alias_of else None
        if spec.alias_of is not None and (target is None or target.alias_of is not None):
            check(("splits", name, "alias_of"), "must name another split of this descriptor "
                                                "that is not itself an alias")
    return specs


def _videos(check: _Checker, raw: Any, schema: FormatSchema) -> tuple[tuple, tuple]:
    if not schema.videos:
        if raw is not None:
            check(("videos",), "this format names each video's path itself; remove it")
        return (), ()
    if not isinstance(raw, Mapping):
        check(("videos",), "missing: give dirs and extensions")
        return (), ()
    for key in raw:
        if key not in ("dirs", "extensions"):
            check(("videos", key), "unknown key; known: dirs, extensions")
    dirs = _paths(check, ("videos", "dirs"), raw.get("dirs"))
    exts = raw.get("extensions")
    good = isinstance(exts, list) and exts and all(
        isinstance(e, str) and (e == "" or e.startswith(".")) and "/" not in e for e in exts)
    if not good:
        check(("videos", "extensions"), "must be a non-empty list of suffixes, each '' (the id "
                                        f"as it is) or starting with '.', got {exts!r}")
    return dirs, tuple(exts) if good else ()


def _expected(check: _Checker, raw: Any, splits: Mapping[str, SplitSpec]) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        check(("expected_videos",), "must map splits to video counts")
        return {}
    for split, count in raw.items():
        if split not in splits:
            check(("expected_videos", split), "not a split of this descriptor")
        if not isinstance(count, int) or isinstance(count, bool) or count <= 0:
            check(("expected_videos", split), f"must be a positive integer, got {count!r}")
    return dict(raw)


def _validate(data: Any, file: Path, lines: dict[tuple, int]) -> Descriptor:
    check = _Checker(file, lines)
    if not isinstance(data, Mapping):
        check((), "a descriptor is a YAML mapping")
        check.log.raise_if_any(f"descriptor {file}")
    for key in data:
        if key not in _TOP_KEYS:
            check((key,), f"unknown key; known: {', '.join(_TOP_KEYS)}")
    for key, required in _TOP_KEYS.items():
        if required and key not in data:
            check((key,), "missing")
    if "name" in data and data["name"] != file.stem:
        check(("name",), f"must be {file.stem!r}, the descriptor's file name")
    for key in ("description", "source"):
        if not isinstance(data.get(key, ""), str):
            check((key,), "must be text")
    if "format" in data and data["format"] not in FORMATS:
        check(("format",), f"unknown format {data['format']!r}; known: {', '.join(FORMATS)}")
    if data.get("format") not in FORMATS:
        # Everything below depends on the format's schema.
        check.log.raise_if_any(f"descriptor {file}")
    schema = FORMATS[data["format"]].schema
    splits = _splits(check, data.get("splits"), schema)
    video_dirs, video_extensions = _videos(check, data.get("videos"), schema)
    desc = Descriptor(
        name=str(data.get("name")),
        format=str(data.get("format")),
        description=data.get("description", ""),
        annotation_dirs=_paths(check, ("annotation_dirs",), data.get("annotation_dirs", ".")),
        annotations=_annotations(check, data.get("annotations", {}), schema),
        splits=splits,
        video_dirs=video_dirs,
        video_extensions=video_extensions,
        expected_videos=_expected(check, data.get("expected_videos", {}), splits),
        source=data.get("source", ""),
        path=file,
    )
    check.log.raise_if_any(f"descriptor {file}")
    return desc


def load_descriptor(dataset: str | Path) -> Descriptor:
    """Load and validate a descriptor.

    Args:
        dataset: a name from :func:`list_datasets` or the path of a ``.yaml`` descriptor.

    Raises:
        ManifestError: unknown name, unreadable YAML, or every schema problem at once.
    """
    text = str(dataset)
    file = Path(text) if text.endswith((".yaml", ".yml")) else MANIFEST_DIR / f"{text}.yaml"
    if not file.is_file():
        raise ManifestError([Problem(text, None, "no such dataset descriptor; known datasets: "
                                                 f"{', '.join(list_datasets())}")])
    source = file.read_text(encoding="utf-8-sig")
    try:
        data = yaml.safe_load(source)
        node = yaml.compose(source, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ManifestError([Problem(str(file), line, f"invalid YAML: {err}")]) from None
    lines = _key_lines(node, (), {}) if node is not None else {}
    return _validate(data, file, lines)
