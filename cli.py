"""``mof-cli``: a thin shell over the toolkit.

Each command parses its options, builds one config dataclass and calls one function. Heavy
imports happen inside the commands so that ``mof-cli --help`` answers at once.
"""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="mof")
def main() -> None:
    """Meta-Optimized Frames: shard videos, train retrieval models with MOF, evaluate, export."""


# --- synth ---------------------------------------------------------------------------------


# --- shard / inspect -----------------------------------------------------------------------


# --- eval ----------------------------------------------------------------------------------


# --- train / export-frames -----------------------------------------------------------------


# --- reproduce -----------------------------------------------------------------------------


if __name__ == "__main__":
    main()
