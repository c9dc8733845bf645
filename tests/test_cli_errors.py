"""``mof-cli`` maps the toolkit's errors to exit statuses in one place (``cli._reported``)."""

from __future__ import annotations

from click.testing import CliRunner

from cli import USER_ERRORS, main
from mof.reproduce.runner import CellMismatch
from mof.train.config import ConfigError
from pipeline.datasets.parsers.common import ManifestError
from pipeline.decode.common import DecodeError
from pipeline.errors import MofError
from pipeline.framestore.format import FrameStoreMismatchError
from pipeline.sharding.index import ShardIndexError
from pipeline.sharding.samples import ShardReadError
from pipeline.sharding.write import ShardConfigMismatch
from pipeline.synth.dataset import SynthConfigError, SynthError


def test_every_error_of_the_toolkit_is_a_mof_error_the_cli_reports():
    for cls in (CellMismatch, ConfigError, DecodeError, FrameStoreMismatchError, ManifestError,
                ShardConfigMismatch, ShardIndexError, ShardReadError, SynthConfigError,
                SynthError):
        assert issubclass(cls, MofError) and issubclass(cls, USER_ERRORS), cls


def test_bad_options_exit_2_with_usage(tmp_path):
    result = CliRunner().invoke(main, ["synth", "--out", str(tmp_path / "s"), "--size", "63"])
    assert result.exit_code == 2 and "Usage:" in result.output
    assert "--size must be even" in result.output
    assert not (tmp_path / "s").exists()  # nothing was written


def test_errors_while_working_exit_1_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["shard", "--merge-index", str(tmp_path)])
    assert result.exit_code == 1 and "Usage:" not in result.output
    assert result.output.strip() == f"Error: {tmp_path}: no partial indexes " \
        "(index.node-*-of-*.json) to merge"
