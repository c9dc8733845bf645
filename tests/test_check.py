"""``mof-cli check``: counts, missing and duplicate entries, header probes on real files."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cli import main
from pipeline.datasets.check import CheckConfig, check_dataset, probe_video
from tests.fixtures_annotations import touch, write_csv, write_msvd
from tests.videos import make_audio_only, make_video


@pytest.fixture(scope="module")
def msvd_root(tmp_path_factory):
    """An MSVD set: train/val/test lists, real videos of two codecs, and broken entries."""
    root = tmp_path_factory.mktemp("msvd")
    captions = {f"v{i}_1_2": [["a", "clip", str(k)] for k in range(i + 1)] for i in range(6)}
    captions["dup_1_2"] = [["twice"]]
    write_msvd(root, captions, {"train": ["v0_1_2", "v1_1_2", "v2_1_2", "dup_1_2", "dup_1_2"],
                                "val": ["v3_1_2"], "test": ["v4_1_2", "v5_1_2", "v0_1_2"]})
    clips = root / "YouTubeClips"
    clips.mkdir()
    make_video(clips / "v0_1_2.avi", codec="mpeg4", size=(48, 32), frames=4)
    make_video(clips / "v1_1_2.mp4", size=(48, 32), frames=4)  # found by its second extension
    make_audio_only(clips / "v2_1_2.avi")  # no video stream
    (clips / "dup_1_2.avi").write_bytes(b"not a video at all\n" * 10)
    make_video(clips / "v3_1_2.avi", codec="mpeg4", size=(48, 32), frames=4)
    make_video(clips / "v4_1_2.avi", codec="mpeg4", size=(48, 32), frames=4)
    # v5_1_2 has no file
    return root


def test_every_split_counts_missing_duplicates_and_probes(msvd_root):
    report = check_dataset(CheckConfig("msvd", str(msvd_root), probe=True, workers=2))
    by = {s.split: s for s in report.splits}
    assert list(by) == ["train", "val", "test"] and not report.ok
    # A split whose list has a problem is reported, not counted.
    assert by["train"].videos == 0 and len(by["train"].duplicates) == 1
    assert "'dup_1_2' is listed twice in train" in by["train"].duplicates[0]
    assert (by["val"].videos, by["val"].captions, by["val"].errors) == (1, [4], 0)
    assert by["test"].videos == 3 and by["test"].captions == [1, 5, 6]
    assert by["test"].missing == ["YouTubeClips/v5_1_2.avi"]
    assert by["test"].codecs == {"mpeg4": 2} and by["val"].codecs == {"mpeg4": 1}
    text = report.format()
    assert "test: missing video files:\n  YouTubeClips/v5_1_2.avi" in text
    assert "codecs: mpeg4 3" in text and text.endswith("error(s)")


def test_one_split_and_cross_split_duplicates(msvd_root, tmp_path):
    test = check_dataset(CheckConfig("msvd", str(msvd_root), split="test", probe=True))
    assert [s.split for s in test.splits] == ["test"]
    (val,) = check_dataset(CheckConfig("msvd", str(msvd_root), split="val")).splits
    assert val.errors == 0 and val.codecs == {}  # not probed
    # Fix train's list: v0_1_2 is then in train and test.
    root = tmp_path / "msvd"
    (root / "YouTubeClips").mkdir(parents=True)
    write_msvd(root, {"a_1_2": [["x"]], "b_1_2": [["y"]]},
               {"train": ["a_1_2"], "val": ["b_1_2"], "test": ["a_1_2"]})
    for name in ("a_1_2", "b_1_2"):
        make_video(root / "YouTubeClips" / f"{name}.avi", codec="mpeg4", size=(48, 32), frames=2)
    report = check_dataset(CheckConfig("msvd", str(root), probe=True))
    by = {s.split: s for s in report.splits}
    assert by["test"].duplicates == ["'a_1_2' is in both train and test (test_list.txt:1)"]
    assert by["train"].errors == 0 and by["train"].codecs == {"mpeg4": 1}


def test_unreadable_files_name_the_reason(msvd_root):
    codec, reason = probe_video(str(msvd_root / "YouTubeClips" / "v2_1_2.avi"))
    assert codec is None and reason.startswith("no video stream")
    codec, reason = probe_video(str(msvd_root / "YouTubeClips" / "dup_1_2.avi"))
    assert codec is None and "FFmpeg" in reason
    assert probe_video(str(msvd_root / "YouTubeClips" / "v1_1_2.mp4")) == ("h264", None)


def test_generic_file_checked_as_a_whole(tmp_path):
    write_csv(tmp_path / "ann.csv", ["path", "caption", "split"], [
        ["v/a.mp4", "one", "train"], ["v/a.mp4", "two", "train"], ["v/b.mp4", "three", "test"]])
    touch(tmp_path, "v/a.mp4")
    report = check_dataset(CheckConfig(str(tmp_path / "ann.csv"), str(tmp_path)))
    assert [(s.split, s.videos, s.captions, s.missing) for s in report.splits] == [
        ("train", 1, [2], []), ("test", 1, [1], ["v/b.mp4"])]
    (tmp_path / "one.tsv").write_text("a caption\tv/a.mp4\n")
    report = check_dataset(CheckConfig(str(tmp_path / "one.tsv"), str(tmp_path),
                                       columns="caption,path"))
    assert [s.split for s in report.splits] == ["all"] and "no 'split' column" in report.format()
    ok = check_dataset(CheckConfig(str(tmp_path / "one.tsv"), str(tmp_path), split="val",
                                   columns="caption,path"))
    assert ok.ok and ok.splits[0].videos == 1


def test_alias_split_is_named_not_rechecked(tmp_path):
    from tests.fixtures_annotations import write_msrvtt

    write_msrvtt(tmp_path, {"video1": ["a"], "video2": ["b"]}, ["video1"], [("video2", "b")])
    report = check_dataset(CheckConfig("msrvtt", str(tmp_path)))
    assert "val    alias of test" in report.format()
    (val,) = check_dataset(CheckConfig("msrvtt", str(tmp_path), split="val")).splits
    assert (val.videos, val.missing) == (1, ["videos/all/video2.mp4"])


def test_cli_check_exit_codes(msvd_root):
    bad = CliRunner().invoke(main, ["check", "--dataset", "msvd", "--root", str(msvd_root)])
    assert bad.exit_code == 1 and "missing video files" in bad.output
    good = CliRunner().invoke(main, ["check", "--dataset", "msvd", "--root", str(msvd_root),
                                     "--split", "val", "--probe"])
    assert good.exit_code == 0, good.output
    assert good.output.splitlines()[-1] == "OK"
    usage = CliRunner().invoke(main, ["check", "--dataset", "msvd", "--root", str(msvd_root),
                                      "--split", "dev"])
    assert usage.exit_code == 2 and "--split must be one of" in usage.output
    unknown = CliRunner().invoke(main, ["check", "--dataset", "list.txt", "--root",
                                        str(msvd_root)])
    assert unknown.exit_code == 1 and "unsupported annotation file format" in unknown.output
