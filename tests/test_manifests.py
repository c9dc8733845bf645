"""Manifests: descriptors, the official annotation formats with their quirks, error reports."""

from __future__ import annotations

import json
import logging
import pickle
import re
from collections import OrderedDict
from pathlib import Path

import pytest

from pipeline.datasets.manifests import load_records, load_splits, missing_files, resolve_dataset
from pipeline.datasets.parsers.common import ManifestError
from pipeline.datasets.parsers.descriptor import list_datasets, load_descriptor
from pipeline.datasets.parsers.msvd import load_caption_pickle
from tests.fixtures_annotations import (
    didemo_full,
    msrvtt_full,
    msvd_full,
    touch,
    write_csv,
    write_didemo,
    write_jsonl,
    write_msrvtt,
    write_msvd,
)


def object_line(path: Path, needle: str) -> int:
    """1-based line of the ``{`` that opens the JSON object holding the first ``needle``."""
    text = path.read_text(encoding="utf-8")
    return text[: text.rindex("{", 0, text.index(needle))].count("\n") + 1


def assert_reports(err: ManifestError, *expected: tuple[str, int | None, str]) -> None:
    """Each ``(file, line, fragment)`` is one listed problem, with its location in the message."""
    for file, line, fragment in expected:
        hits = [p for p in err.problems
                if p.file == file and p.line == line and fragment in p.message]
        assert hits, f"no problem {file}:{line} containing {fragment!r} in\n{err}"
        assert str(hits[0]) in str(err)


# --- descriptors -----------------------------------------------------------------------------


def test_shipped_descriptors_validate():
    assert list_datasets() == ["didemo", "msrvtt", "msvd", "synthetic"]
    for name in list_datasets():
        desc = load_descriptor(name)
        assert desc.name == name and desc.splits and desc.path.name == f"{name}.yaml"
    assert load_descriptor("msrvtt").splits["val"].alias_of == "test"
    assert load_descriptor("didemo").video_extensions[0] == ""


def test_descriptor_reports_every_problem_with_its_line(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text(
        "name: other\n"
        "format: msvd\n"
        "colour: blue\n"
        "annotations:\n"
        "  subtitles: subs.txt\n"
        "splits:\n"
        "  train:\n"
        "    list: /etc/train.txt\n"
        "    queries: every\n"
        "  dev:\n"
        "    queries: all\n"
        "  val:\n"
        "    alias_of: nowhere\n"
        "videos:\n"
        "  dirs: [videos]\n"
        "  extensions: [avi]\n"
        "expected_videos:\n"
        "  test: -3\n"
    )
    with pytest.raises(ManifestError) as info:
        load_descriptor(bad)
    f = str(bad)
    assert_reports(
        info.value,
        (f, 1, "must be 'mine'"),
        (f, 3, "colour: unknown key"),
        (f, 4, "annotations.captions: missing"),
        (f, 5, "annotations.subtitles: unknown role"),
        (f, 8, "must be relative"),
        (f, 9, "queries: must be one of all, first, paragraph"),
        (f, 10, "splits.dev: unknown split"),
        (f, 13, "alias_of: must name another split"),
        (f, 16, "extensions: must be a non-empty list of suffixes"),
        (f, 18, "not a split of this descriptor"),
        (f, 18, "must be a positive integer"),
    )
    assert len(info.value.problems) == 11


def test_unknown_dataset_split_and_format(tmp_path):
    with pytest.raises(ManifestError, match="known datasets: didemo, msrvtt, msvd, synthetic"):
        load_records("kinetics", tmp_path, "train")
    with pytest.raises(ManifestError, match="unknown split 'val'; synthetic has train, test"):
        load_records("synthetic", tmp_path, "val")
    (tmp_path / "odd.yaml").write_text("name: odd\nformat: avi\nsplits: {}\nfoo: 1\n")
    with pytest.raises(ManifestError) as info:
        load_descriptor(tmp_path / "odd.yaml")
    assert_reports(info.value, (str(tmp_path / "odd.yaml"), 2, "unknown format 'avi'"),
                   (str(tmp_path / "odd.yaml"), 4, "foo: unknown key"))


# --- synthetic and the generic format --------------------------------------------------------


def synth_lines(n: int) -> list[dict]:
    return [{"video_id": f"synth{i:05d}", "path": f"videos/synth{i:05d}.mp4",
             "captions": [f"a red circle appears {i}", f"then a blue square moves {i}"],
             "split": "train" if i % 4 else "test"} for i in range(n)]


def test_synthetic_reads_the_synth_annotation_file(tmp_path):
    lines = synth_lines(12)
    write_jsonl(tmp_path / "annotations.jsonl", reversed(lines), trailing_blank=2)
    for line in lines[1:]:
        touch(tmp_path, line["path"])
    train = load_records("synthetic", tmp_path, "train")
    test = load_records("synthetic", tmp_path, "test")
    assert [r.video_id for r in train] == [x["video_id"] for x in lines if x["split"] == "train"]
    assert [r.video_id for r in test] == ["synth00000", "synth00004", "synth00008"]
    assert test[0].captions == tuple(lines[0]["captions"]) and test[0].split == "test"
    assert test[0].path == "videos/synth00000.mp4"
    assert [r.video_id for r in missing_files(test, tmp_path)] == ["synth00000"]
    assert load_splits("synthetic", tmp_path) == {"train": train, "test": test}


def test_generic_csv_quirks(tmp_path):
    rows = [
        ["clips/a.mp4", 'a man says "hello, world"', "train"],
        ["clips/b.", "a dog,\nrunning", "test"],
        ["clips/a.mp4", "a man talks", "train"],
        ["clips/a.mp4", "a man talks", "train"],  # a duplicate caption stays a query
        ["./clips/c.avi", "  padded caption  ", "val"],
    ]
    csv_file = write_csv(tmp_path / "ann.csv", ["path", "caption", "split"], rows, crlf=True,
                         bom=True, trailing_blank=2)
    assert b"\r\n" in csv_file.read_bytes() and csv_file.read_bytes().startswith(b"\xef\xbb\xbf")
    train = load_records(csv_file, tmp_path, "train")
    assert [(r.video_id, r.path, r.captions) for r in train] == [
        ("clips/a", "clips/a.mp4", ('a man says "hello, world"', "a man talks", "a man talks"))]
    assert train[0].extra["source"] == "ann.csv:2"
    test = load_records("ann.csv", tmp_path, "test")  # relative to the root
    assert (test[0].video_id, test[0].path, test[0].captions) == ("clips/b", "clips/b.",
                                                                  ("a dog,\nrunning",))
    val = load_records(csv_file, tmp_path, "val")
    assert val[0].captions == ("padded caption",) and val[0].path == "clips/c.avi"
    assert resolve_dataset(csv_file, tmp_path).name == "ann"


def test_generic_jsonl_captions_list_and_ids(tmp_path):
    write_jsonl(tmp_path / "set.jsonl", [
        {"path": "v/x.mp4", "captions": ["one", "two"], "split": "test", "video_id": "X"},
        {"path": "v/y.mp4", "caption": "three", "split": "test"},
        {"path": "v/x.mp4", "caption": "four", "split": "test", "video_id": "X"},
    ], crlf=True)
    records = load_records(tmp_path / "set.jsonl", tmp_path, "test")
    assert [(r.video_id, r.captions) for r in records] == [("X", ("one", "two", "four")),
                                                          ("v/y", ("three",))]
    with pytest.raises(ManifestError, match="split 'train' has no videos"):
        load_records(tmp_path / "set.jsonl", tmp_path, "train")


def test_generic_jsonl_reports_every_problem(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [
        {"path": "v/ok.mp4", "caption": "fine", "split": "train"},
        {"path": "v/ok.mp4", "caption": "moved", "split": "test"},
        {"caption": "no path", "split": "train"},
        {"path": "v/dev.mp4", "caption": "x", "split": "dev"},
        {"path": "v/empty.mp4", "captions": [], "split": "train"},
        {"path": "../outside.mp4", "caption": "x", "split": "train"},
        {"path": "v/blank.mp4", "captions": ["ok", "  "], "split": "train"},
        ["not", "an", "object"],
    ])
    with open(f, "a", encoding="utf-8") as handle:
        handle.write('{"path": "v/broken.mp4", "caption": \n\n')
    with pytest.raises(ManifestError) as info:
        load_records(f, tmp_path, "train")
    assert_reports(info.value,
                   ("bad.jsonl", 2, "is test/v/ok.mp4 here but train/v/ok.mp4 at bad.jsonl:1"),
                   ("bad.jsonl", 3, "path must be a non-empty string"),
                   ("bad.jsonl", 4, "unknown split 'dev'"),
                   ("bad.jsonl", 5, "no caption"),
                   ("bad.jsonl", 6, "must be relative"),
                   ("bad.jsonl", 7, "non-empty strings"),
                   ("bad.jsonl", 8, "expected a JSON object"),
                   ("bad.jsonl", 9, "invalid JSON"))
    assert len(info.value.problems) == 8
    assert str(info.value).startswith("8 problem(s) in the bad annotations")


def test_generic_csv_missing_column_and_bad_rows(tmp_path):
    f = write_csv(tmp_path / "a.csv", ["video_id", "split"], [["a", "train"]])
    with pytest.raises(ManifestError) as info:
        load_records(f, tmp_path, "train")
    assert_reports(info.value, ("a.csv", 1, "missing column(s) path"))
    g = write_csv(tmp_path / "b.csv", ["path", "captions", "split"],
                  [["v/a.mp4", '["x", "y"]', "train"], ["v/b.mp4", "[oops", "train"],
                   ["v/c.mp4", '["z"]'], ["v/a.mp4", '["w"]', "train", "extra"]])
    with pytest.raises(ManifestError) as info:
        load_records(g, tmp_path, "train")
    assert_reports(info.value, ("b.csv", 3, "not a JSON list"), ("b.csv", 4, "2 fields"),
                   ("b.csv", 5, "4 fields"))


# --- MSR-VTT ---------------------------------------------------------------------------------


def small_msrvtt(root: Path, **options) -> dict[str, list[str]]:
    captions = {f"video{i}": [f"sentence {k} of video{i}" for k in range(3)] for i in range(6)}
    captions["video1"].append("sentence 0 of video1")  # repeated sentences are kept
    test = [("video4", 'a man says "hi, there"'), ("video5", "cars race,\nfast")]
    write_msrvtt(root, captions, ["video0", "video1", "video2", "video3"], test, **options)
    return captions


@pytest.mark.parametrize("original", [False, True])
def test_msrvtt_1k_a(tmp_path, original, caplog):
    captions = small_msrvtt(tmp_path, original=original, crlf=True, bom=True)
    assert (tmp_path / "MSRVTT_data.json").exists() != original
    touch(tmp_path, "videos/all/video0.mp4")
    touch(tmp_path, "videos/all/video1.webm")  # the descriptor's alternative extension
    touch(tmp_path, "videos/video2.mp4")  # and alternative folder
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets.manifests"):
        train = load_records("msrvtt", tmp_path, "train")
    assert "msrvtt train: 4 videos listed, the official annotations list 9000" in caplog.text
    assert [r.video_id for r in train] == ["video0", "video1", "video2", "video3"]
    assert [r.path for r in train] == ["videos/all/video0.mp4", "videos/all/video1.webm",
                                       "videos/video2.mp4", "videos/all/video3.mp4"]
    assert train[1].captions == tuple(captions["video1"]) and len(train[1].captions) == 4
    assert [r.video_id for r in missing_files(train, tmp_path)] == ["video3"]
    test = load_records("msrvtt", tmp_path, "test")
    assert [(r.video_id, r.captions) for r in test] == [
        ("video4", ('a man says "hi, there"',)), ("video5", ("cars race,\nfast",))]
    assert test[0].extra["source"] == "MSRVTT_JSFUSION_test.csv:2"
    assert test[1].extra["source"] == "MSRVTT_JSFUSION_test.csv:3"
    val = load_records("msrvtt", tmp_path, "val")
    assert [(r.video_id, r.captions, r.split) for r in val] == [
        (r.video_id, r.captions, "val") for r in test]
    assert val[0].extra["alias_of"] == "test"


def test_msrvtt_in_the_unpacked_zip_folder(tmp_path):
    small_msrvtt(tmp_path / "msrvtt_data")
    assert len(load_records("msrvtt", tmp_path, "test")) == 2


def test_msrvtt_reports_every_problem(tmp_path):
    small_msrvtt(tmp_path)
    data = json.loads((tmp_path / "MSRVTT_data.json").read_text())
    data["sentences"][4]["caption"] = ""
    data["sentences"] = [s for s in data["sentences"] if s["video_id"] != "video2"]
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps(data, indent=1))
    write_csv(tmp_path / "MSRVTT_train.9k.csv", ["video_id"],
              [["video0"], ["video1"], ["video2"], ["video4"], ["video0"]])
    write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", ["key", "video_id", "caption"],
              [["ret0", "video4", "x"]])
    with pytest.raises(ManifestError) as info:
        load_splits("msrvtt", tmp_path)
    sentence_line = object_line(tmp_path / "MSRVTT_data.json", '"caption": ""')
    assert_reports(
        info.value,
        ("MSRVTT_data.json", sentence_line, "sentences[4]: needs a 'video_id' and a"),
        ("MSRVTT_train.9k.csv", 4, "'video2' is listed in train but has no captions"),
        ("MSRVTT_train.9k.csv", 6, "'video0' is listed twice in train"),
        ("MSRVTT_JSFUSION_test.csv", 1, "missing column(s) sentence"),
    )
    assert len(info.value.problems) == 4


def test_msrvtt_without_caption_file(tmp_path):
    small_msrvtt(tmp_path)
    (tmp_path / "MSRVTT_data.json").unlink()
    with pytest.raises(ManifestError, match="expected MSRVTT_data.json or "
                       "train_val_videodatainfo.json \\+ test_videodatainfo.json"):
        load_records("msrvtt", tmp_path, "train")


# --- MSVD ------------------------------------------------------------------------------------


def test_msvd_every_caption_is_a_query(tmp_path):
    captions = {
        "-4wsuPCjDBc_5_15": [["a", "cat", "plays"], ["a", "cat", "plays"], ["kitten", "plays"]],
        "zv2RIbUsnSw_159_165": [["a", "man", "sings"]],
        "abc_1_2": [["someone", "cooks"], ["a", "woman", "is", "cooking"]],
    }
    write_msvd(tmp_path, captions, {"train": ["abc_1_2"], "val": ["zv2RIbUsnSw_159_165"],
                                    "test": ["-4wsuPCjDBc_5_15"]},
               crlf=True, bom=True, trailing_blank=3)
    touch(tmp_path, "YouTubeClips/-4wsuPCjDBc_5_15.avi")
    test = load_records("msvd", tmp_path, "test")
    assert test[0].captions == ("a cat plays", "a cat plays", "kitten plays")
    assert test[0].path == "YouTubeClips/-4wsuPCjDBc_5_15.avi" and not missing_files(test, tmp_path)
    train = load_records("msvd", tmp_path, "train")
    assert train[0].captions == ("someone cooks", "a woman is cooking")
    assert train[0].path == "YouTubeClips/abc_1_2.avi" and missing_files(train, tmp_path) == train


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_msvd_pickle_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    write_msvd(tmp_path, {"a_1_2": [["x"]]}, {"train": ["a_1_2"], "val": [], "test": []})
    with open(tmp_path / "raw-captions.pkl", "wb") as handle:
        pickle.dump({"a_1_2": [["x"]], "evil": _Payload(marker)}, handle)
    with pytest.raises(ManifestError, match="refusing to load global io.open"):
        load_records("msvd", tmp_path, "train")
    assert not marker.exists()
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        blob = tmp_path / f"p{protocol}.pkl"
        blob.write_bytes(pickle.dumps({"v": [["é", "x"]]}, protocol=protocol))
        assert load_caption_pickle(blob) == {"v": [["é", "x"]]}
        blob.write_bytes(pickle.dumps({"v": OrderedDict(a=1)}, protocol=protocol))
        with pytest.raises(pickle.UnpicklingError, match="collections.OrderedDict"):
            load_caption_pickle(blob)


def test_msvd_reports_every_problem(tmp_path):
    captions = {"a_1_2": [["x"]], "b_1_2": [], "c_1_2": [["ok"], ["y", 3]], "d_1_2": [["z"]]}
    write_msvd(tmp_path, captions, {"train": ["a_1_2", "b_1_2", "c_1_2"],
                                    "val": ["d_1_2", "gone_1_2"], "test": ["a_1_2"]})
    with pytest.raises(ManifestError) as info:
        load_splits("msvd", tmp_path)
    assert_reports(info.value,
                   ("raw-captions.pkl", None, "video 'b_1_2' has no captions"),
                   ("raw-captions.pkl", None, "video 'c_1_2': caption 1 is not a list of token"),
                   ("val_list.txt", 2, "'gone_1_2' is listed in val but has no captions"),
                   ("test_list.txt", 1, "'a_1_2' is in both train (train_list.txt:1) and test"))
    assert len(info.value.problems) == 4


# --- DiDeMo ----------------------------------------------------------------------------------

ODD_NAMES = ["1234@N05_5678_9abc.mov", "99@N00_12_34.", "5@N01_6_7.m4v", "8@N02_9_10.3gp"]


def test_didemo_paragraphs_and_file_names(tmp_path):
    a, b, c, d = ODD_NAMES
    moments = {
        "train": [(a, "a man walks in."), (b, "the dog jumps"), (a, " he sits down "),
                  (a, "a man walks in."), (c, "unlisted video")],
        "val": [(d, "a car turns")],
        "test": [(c, "the light flashes"), (c, "it stops")],
    }
    write_didemo(tmp_path, moments, {"train": [b, a], "test": [c]}, crlf=True, bom=True,
                 trailing_blank=1)
    val_json = tmp_path / "val_data.json"
    val_json.write_bytes(b"\xef\xbb\xbf" + val_json.read_bytes().replace(b"\n", b"\r\n"))
    touch(tmp_path, f"videos/{a}")
    touch(tmp_path, f"videos/{b}")
    touch(tmp_path, f"videos/{c}.mp4")  # saved as <name>.mp4 by the AWS downloader
    train = load_records("didemo", tmp_path, "train")
    assert [r.video_id for r in train] == sorted([a, b])
    by_id = {r.video_id: r for r in train}
    assert by_id[a].captions == ("a man walks in. he sits down a man walks in.",)
    assert by_id[b].path == "videos/99@N00_12_34." and by_id[b].captions == ("the dog jumps",)
    assert not missing_files(train, tmp_path)
    test = load_records("didemo", tmp_path, "test")
    assert test[0].path == f"videos/{c}.mp4" and test[0].captions == ("the light flashes it stops",)
    val = load_records("didemo", tmp_path, "val")  # no val list: every video of the JSON
    assert [r.video_id for r in val] == [d] and missing_files(val, tmp_path) == val
    assert val[0].extra["source"] == f"val_data.json:{object_line(tmp_path / 'val_data.json', d)}"


def test_didemo_reports_every_problem(tmp_path):
    a, b, c, _ = ODD_NAMES
    write_didemo(tmp_path, {"train": [(a, "one"), (b, "two"), (a, "")],
                            "val": [(b, "again")], "test": [(c, "three")]},
                 {"test": [c, "missing.mp4"]})
    (tmp_path / "val_data.json").write_text('{"video": "x"}')
    with pytest.raises(ManifestError) as info:
        load_splits("didemo", tmp_path)
    empty_moment = object_line(tmp_path / "train_data.json", '"description": ""')
    assert_reports(info.value,
                   ("train_data.json", empty_moment, "moment 2: moment of '1234@N05"),
                   ("val_data.json", 1, "expected a JSON list of moments"),
                   ("test_list.txt", 2, "'missing.mp4' is listed in test but has no"))
    (tmp_path / "val_data.json").write_text(json.dumps([{"video": b, "description": "x"}]))
    with pytest.raises(ManifestError, match=re.escape(f"{b!r} is in both train")):
        load_splits("didemo", tmp_path)


# --- full-size counts ------------------------------------------------------------------------


@pytest.mark.parametrize("name, write, videos, queries", [
    ("msrvtt", msrvtt_full, {"train": 9000, "test": 1000, "val": 1000},
     {"train": 180000, "test": 1000, "val": 1000}),
    # MSVD: every caption of a video is a query, so the query count is the caption count.
    ("msvd", msvd_full, {"train": 1200, "val": 100, "test": 670}, None),
    ("didemo", didemo_full, {"train": 8392, "val": 1065, "test": 1004},
     {"train": 8392, "val": 1065, "test": 1004}),
], ids=["msrvtt", "msvd", "didemo"])
def test_full_size_counts(tmp_path, caplog, name, write, videos, queries):
    """The parsers give the official counts on full-size annotation sets in the real formats."""
    expected = write(tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.datasets.manifests"):
        splits = load_splits(name, tmp_path)
    assert {split: len(records) for split, records in splits.items()} == videos
    for split, records in splits.items():
        wanted = expected[records[0].extra.get("alias_of", split)]
        assert {r.video_id: r.captions for r in records} == wanted
        count = sum(len(r.captions) for r in records)
        assert count == (queries[split] if queries else sum(map(len, wanted.values())))
    assert not [r for r in caplog.records if r.name == "pipeline.datasets.manifests"]
