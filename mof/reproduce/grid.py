"""The cells of Table IV and the paper's numbers beside them.

A *cell* is one frame setting of the table: a baseline trained and tested on ``U`` uniform
frames (the paper's "Frozen [Our Imp.]" rows, ``SF = U``), or MOF trained from ``R`` regular
frames into ``U`` learnable ones and tested on ``U`` uniform frames (``SF = R ⇒ U``). A MOF cell
costs the same at test time as the baseline with the same ``U``: that baseline is the one it
has to beat.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DEFAULT_GRID",
    "PAPER_TABLE4",
    "Cell",
    "PaperRow",
    "equal_cost_baseline",
    "paper_rows",
    "parse_grid",
]

#: The grid of Table IV plus the 4-frame baseline that 8⇒4 and 16⇒4 are compared with.
DEFAULT_GRID = "1,4,8,32,16:1,8:4,16:4,8:8,32:8"


@dataclass(frozen=True, order=True)
class Cell:
    """One frame setting.

    Attributes:
        used: U, frames the model sees per video in training and at test time.
        regular: R, regular frames MOF learns from; ``None`` for the baseline.
    """

    used: int
    regular: int | None = None

    @property
    def is_mof(self) -> bool:
        return self.regular is not None

    @property
    def frames(self) -> str:
        """The ``--frames`` value of ``mof-cli train``: ``"U"`` or ``"R:U"``."""
        return f"{self.regular}:{self.used}" if self.is_mof else str(self.used)

    @property
    def name(self) -> str:
        """A directory name: ``base-8``, ``mof-16-4``."""
        return f"mof-{self.regular}-{self.used}" if self.is_mof else f"base-{self.used}"

    @property
    def label(self) -> str:
        """The paper's SF column: ``8`` or ``16 ⇒ 4``."""
        return f"{self.regular} ⇒ {self.used}" if self.is_mof else str(self.used)

    @property
    def stored_frames(self) -> int:
        """Frames the shards must hold for this cell (R, or U for the baseline)."""
        return self.regular if self.is_mof else self.used


def parse_grid(spec: str) -> list[Cell]:
    """``"1,8,16:4"`` → cells, in the order given, without duplicates.

    Raises:
        ValueError: an item that is not ``U`` or ``R:U`` with positive integers and R >= U,
            or a repeated item (every problem listed).
    """
    cells: list[Cell] = []
    problems: list[str] = []
    for item in (s.strip() for s in str(spec).split(",")):
        parts = item.split(":")
        if not item or len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
            problems.append(f"{item!r} is not 'U' or 'R:U'")
            continue
        values = [int(p) for p in parts]
        if min(values) < 1 or (len(values) == 2 and values[0] < values[1]):
            problems.append(f"{item!r}: frames must be positive and R >= U")
            continue
        cell = Cell(values[-1], values[0] if len(values) == 2 else None)
        if cell in cells:
            problems.append(f"{item!r} is listed twice")
        else:
            cells.append(cell)
    if not cells and not problems:
        problems.append("the grid is empty")
    if problems:
        raise ValueError(f"--grid {spec!r}: " + "; ".join(problems))
    return cells


def equal_cost_baseline(cell: Cell) -> Cell:
    """The baseline that sees as many frames at test time as ``cell`` (itself if a baseline)."""
    return Cell(cell.used)


@dataclass(frozen=True)
class PaperRow:
    """One row of the paper's Table IV (text-to-video, Frozen backbone).

    Attributes:
        r1, r5, r10: recall at 1/5/10 in percent. medr: median rank.
        train_h: training time in hours. test_s: test time in seconds.
    """

    r1: float
    r5: float
    r10: float
    medr: float
    train_h: float
    test_s: float


def _rows(table: dict[str, tuple[float, ...]]) -> dict[str, PaperRow]:
    return {frames: PaperRow(*values) for frames, values in table.items()}


#: Table IV of Han et al. (IEEE TMM 2024), keyed by dataset then by ``--frames``. There is no
#: 4-frame baseline in the paper.
PAPER_TABLE4: dict[str, dict[str, PaperRow]] = {
    "msrvtt": _rows({
        "1": (20.7, 43.7, 55.6, 7.0, 6, 11), "8": (31.3, 59.6, 70.6, 3.0, 8, 46),
        "32": (35.0, 63.1, 73.0, 2.0, 20, 124), "16:1": (22.1, 46.2, 57.5, 7.0, 14, 12),
        "8:4": (30.2, 58.5, 70.2, 3.0, 9, 24), "16:4": (31.1, 59.3, 71.1, 3.0, 17, 24),
        "8:8": (33.2, 60.5, 71.7, 3.0, 10, 46), "32:8": (33.8, 62.1, 72.8, 2.0, 28, 46),
    }),
    "msvd": _rows({
        "1": (36.3, 67.8, 78.2, 2.0, 2.5, 42), "8": (37.9, 73.6, 83.2, 2.0, 4, 52),
        "32": (41.7, 77.2, 85.8, 2.0, 6, 65), "16:1": (36.4, 68.5, 79.3, 2.0, 4, 42),
        "8:4": (38.5, 73.2, 82.5, 2.0, 4.5, 50), "16:4": (39.3, 73.7, 82.9, 2.0, 6, 50),
        "8:8": (40.5, 73.8, 84.2, 2.0, 5, 52), "32:8": (41.0, 74.1, 85.3, 2.0, 9, 52),
    }),
    "didemo": _rows({
        "1": (21.5, 47.3, 60.3, 6.0, 10, 80), "8": (31.2, 59.9, 72.4, 3.0, 15, 130),
        "32": (35.0, 64.2, 74.8, 3.0, 38, 155), "16:1": (22.0, 49.0, 61.2, 6.0, 16, 80),
        "8:4": (30.8, 59.5, 72.0, 3.0, 21, 95), "16:4": (31.5, 60.2, 72.5, 3.0, 30, 95),
        "8:8": (32.3, 60.7, 72.6, 3.0, 25, 130), "32:8": (33.6, 62.5, 74.3, 3.0, 52, 130),
    }),
}


def paper_rows(dataset: str) -> tuple[str, dict[str, PaperRow]]:
    """The paper's rows to print beside ``dataset``'s results: its own, else MSR-VTT's.

    Returns:
        ``(reference dataset name, rows by --frames)``.
    """
    name = dataset if dataset in PAPER_TABLE4 else "msrvtt"
    return name, PAPER_TABLE4[name]
