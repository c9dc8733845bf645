"""Datasets as users hold them: one split's files only, spreadsheet CSV dialects, headerless
TSV files, and default ids that collide."""

from __future__ import annotations

import json

import pytest

from pipeline.datasets.manifests import load_records, load_splits, parse_columns, resolve_dataset
from pipeline.datasets.parsers.common import ManifestError
from pipeline.datasets.parsers.readers import sniff_delimiter
from tests.fixtures_annotations import (
    write_csv,
    write_didemo,
    write_jsonl,
    write_msrvtt,
    write_msvd,
)

# --- one split's files -----------------------------------------------------------------------


def test_didemo_test_split_needs_only_its_own_files(tmp_path):
    names = {s: [f"{k}@N0{k}_{s}.mp4" for k in range(3)] for s in ("train", "val", "test")}
    moments = {s: [(v, f"{v} moment") for v in vs] for s, vs in names.items()}
    write_didemo(tmp_path, moments, names)
    (tmp_path / "train_data.json").unlink()  # the large file a user evaluating only skips
    test = load_records("didemo", tmp_path, "test")
    assert [r.video_id for r in test] == names["test"]
    assert len(load_records("didemo", tmp_path, "val")) == 3
    with pytest.raises(ManifestError) as info:
        load_records("didemo", tmp_path, "train")
    # One problem (the missing file), not one per listed train video.
    assert len(info.value.problems) == 1 and "train_data.json" in str(info.value)
    with pytest.raises(ManifestError, match="train_data.json"):
        load_splits("didemo", tmp_path)


def test_msrvtt_test_split_without_caption_json_or_train_list(tmp_path):
    captions = {f"video{i}": [f"sentence of video{i}"] for i in range(4)}
    write_msrvtt(tmp_path, captions, ["video0", "video1"], [("video2", "a"), ("video3", "b")])
    (tmp_path / "MSRVTT_data.json").unlink()
    (tmp_path / "MSRVTT_train.9k.csv").unlink()
    test = load_records("msrvtt", tmp_path, "test")
    assert [(r.video_id, r.captions) for r in test] == [("video2", ("a",)), ("video3", ("b",))]
    assert load_records("msrvtt", tmp_path, "val") == [
        r.__class__(r.video_id, r.path, r.captions, "val") for r in test]


def test_msvd_bad_captions_of_another_split_do_not_block(tmp_path):
    captions = {"a_1_2": [["x"]], "b_1_2": [], "t_1_2": [["fine", "caption"]]}
    write_msvd(tmp_path, captions, {"train": ["a_1_2", "b_1_2"], "test": ["t_1_2"]})
    (tmp_path / "val_list.txt").unlink(missing_ok=True)
    assert [r.captions for r in load_records("msvd", tmp_path, "test")] == [("fine caption",)]
    with pytest.raises(ManifestError, match="'b_1_2' has no captions"):
        load_records("msvd", tmp_path, "train")


# --- spreadsheet dialects --------------------------------------------------------------------

SEMICOLON = (
    "\ufeffpath;caption;split\r\n"
    'clips/a.mp4;"a man says ""hi; there""";train\r\n'
    'clips/b.webm;"two lines\r\nin one cell";test\r\n'
    "clips/c.avi;a caption, with a comma;train"  # no final newline
)


def test_semicolon_csv_with_bom_crlf_quoted_newline_and_no_final_newline(tmp_path):
    (tmp_path / "sheet.csv").write_bytes(SEMICOLON.encode())
    train = load_records(tmp_path / "sheet.csv", tmp_path, "train")
    assert [(r.video_id, r.captions) for r in train] == [
        ("clips/a", ('a man says "hi; there"',)), ("clips/c", ("a caption, with a comma",))]
    assert train[1].extra["source"] == "sheet.csv:5"  # line numbers count the quoted newline
    test = load_records(tmp_path / "sheet.csv", tmp_path, "test")
    assert test[0].captions == ("two lines\r\nin one cell",) and test[0].path == "clips/b.webm"


def test_tab_delimited_csv_and_tsv(tmp_path):
    text = "video_id\tpath\tcaptions\tsplit\nv1\tx/1.mp4\t\"[\"\"a, b\"\", \"\"c\"\"]\"\ttest\n"
    (tmp_path / "a.csv").write_text(text)
    (tmp_path / "a.tsv").write_text(text)
    for name in ("a.csv", "a.tsv"):
        (record,) = load_records(tmp_path / name, tmp_path, "test")
        assert (record.video_id, record.path, record.captions) == ("v1", "x/1.mp4", ("a, b", "c"))


def test_sniffing_prefers_known_header_names_then_rarer_delimiters():
    assert sniff_delimiter("path,caption,split\n", ["path", "caption", "split"]) == ","
    assert sniff_delimiter("path;caption\n", ["path", "caption"]) == ";"
    # Headerless: the delimiter giving two fields per record; a comma in a caption loses.
    assert sniff_delimiter("a man, walking\tv/a.mp4\nrain\tv/b.mp4\n", [], width=2) == "\t"
    assert sniff_delimiter("x;v/a.mp4\ny;v/b.mp4\n", [], width=2) == ";"


def test_headerless_caption_path_file_with_columns(tmp_path):
    rows = "a dog runs, fast\tvideos/1.mp4\r\nrain falls\tvideos/2.mp4\r\n"
    rows += "a dog runs again\tvideos/1.mp4"
    (tmp_path / "cc.tsv").write_bytes(rows.encode())
    columns = parse_columns("caption,path")
    test = load_records(tmp_path / "cc.tsv", tmp_path, "test", columns=columns)
    assert [(r.video_id, r.captions, r.split) for r in test] == [
        ("videos/1", ("a dog runs, fast", "a dog runs again"), "test"),
        ("videos/2", ("rain falls",), "test")]
    assert test[0].extra["source"] == "cc.tsv:1"
    with pytest.raises(ManifestError, match="no 'split' column"):
        load_splits(tmp_path / "cc.tsv", tmp_path, columns=columns)
    # Without --columns the first row is taken for a header, which lacks the columns.
    with pytest.raises(ManifestError, match=r"missing column\(s\) path"):
        load_records(tmp_path / "cc.tsv", tmp_path, "test")
    (tmp_path / "short.tsv").write_text("only one field\n")
    with pytest.raises(ManifestError, match="1 fields .* --columns gives 2"):
        load_records(tmp_path / "short.tsv", tmp_path, "test", columns=columns)


def test_columns_option_is_checked():
    assert parse_columns("caption, path,split") == ("caption", "path", "split")
    for bad, why in (("caption,file", "unknown column 'file'"), ("caption", "needs a path"),
                     ("path,path,caption", "named twice")):
        with pytest.raises(ValueError, match=why):
            parse_columns(bad)


def test_unknown_extension_names_the_supported_formats(tmp_path):
    (tmp_path / "list.txt").write_text("a\tb\n")
    for value in (str(tmp_path / "list.txt"), "list.txt", "annotations.parquet"):
        with pytest.raises(ManifestError) as info:
            resolve_dataset(value, tmp_path)
        message = str(info.value)
        assert "unsupported annotation file format" in message
        assert ".csv, .tsv, .jsonl" in message and "msrvtt" in message
    with pytest.raises(ManifestError, match="no such dataset descriptor"):
        resolve_dataset("msrvt", tmp_path)
    with pytest.raises(ManifestError, match="JSON lines name their fields"):
        resolve_dataset("x.jsonl", tmp_path, columns=("caption", "path"))


# --- default ids -----------------------------------------------------------------------------


def test_default_ids_that_collide_keep_their_extension(tmp_path):
    write_csv(tmp_path / "ann.csv", ["path", "caption", "split"], [
        ["clips/clip.mp4", "the mp4", "train"],
        ["clips/clip.avi", "the avi", "test"],
        ["clips/clip.mp4", "the mp4 again", "train"],
        ["clips/other.mp4", "other", "train"],
    ])
    train = load_records(tmp_path / "ann.csv", tmp_path, "train")
    assert [(r.video_id, r.captions) for r in train] == [
        ("clips/clip.mp4", ("the mp4", "the mp4 again")), ("clips/other", ("other",))]
    # The id does not depend on the split read.
    assert [r.video_id for r in load_records(tmp_path / "ann.csv", tmp_path, "test")] == [
        "clips/clip.avi"]


def test_explicit_id_naming_two_files_is_an_error_naming_both(tmp_path):
    write_jsonl(tmp_path / "ann.jsonl", [
        {"video_id": "clip", "path": "a/clip.mp4", "caption": "x", "split": "test"},
        {"video_id": "clip", "path": "b/clip.mp4", "caption": "y", "split": "test"},
    ])
    with pytest.raises(ManifestError) as info:
        load_records(tmp_path / "ann.jsonl", tmp_path, "test")
    (problem,) = info.value.problems
    assert problem.line == 2 and problem.kind == "duplicate"
    assert "a/clip.mp4 (ann.jsonl:1) and b/clip.mp4" in problem.message
    assert "'video_id' column" in problem.message


def test_a_row_of_another_split_conflicting_with_this_split_is_reported(tmp_path):
    rows = [{"path": "v/a.mp4", "caption": "x", "split": "train"},
            {"path": "v/a.mp4", "caption": "y", "split": "test"},
            {"path": "v/b.mp4", "caption": "", "split": "val"}]  # bad, but not test's problem
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ManifestError) as info:
        load_records(tmp_path / "s.jsonl", tmp_path, "test")
    assert [p.line for p in info.value.problems] == [2]
