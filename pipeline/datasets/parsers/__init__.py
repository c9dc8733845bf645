"""Annotation parsers, one module per official format plus the generic csv/tsv/jsonl format.

Each parser is a :class:`~pipeline.datasets.parsers.common.Format`: the schema its descriptors must
follow and ``parse(descriptor, root, log, splits) -> list[Entry]``, which reads the given splits of
the annotation set, records each problem in ``log`` (file and line) and carries on.
"""

from __future__ import annotations

from pipeline.datasets.parsers.common import Format
from pipeline.datasets.parsers.didemo import DIDEMO
from pipeline.datasets.parsers.generic import CSV, JSONL, TSV
from pipeline.datasets.parsers.msrvtt import MSRVTT
from pipeline.datasets.parsers.msvd import MSVD

__all__ = ["FORMATS"]

# Descriptor `format:` value -> parser.
FORMATS: dict[str, Format] = {
    "csv": CSV,
    "didemo": DIDEMO,
    "jsonl": JSONL,
    "msrvtt": MSRVTT,
    "msvd": MSVD,
    "tsv": TSV,
}
