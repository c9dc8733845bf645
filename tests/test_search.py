"""Search end to end on real components: a tiny trained run, real shards, an index on disk,
``mof-cli search``, and ``mof-cli serve`` as a real process driven by headless Chromium.

One tiny baseline run (one epoch on the session's synthetic shards) is shared by the module.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from cli import main
from mof.evaluate.evaluate import resolve_checkpoint
from mof.frames import to_model_input
from mof.models.io import load_model
from mof.search.build import build_index
from mof.search.config import IndexConfig, SearchConfig
from mof.search.query import search
from mof.search.store import SearchIndexError, load_index
from mof.train import train
from pipeline.sampling import uniform_subset
from pipeline.sharding.reader import ShardDataset
from pipeline.sharding.samples import resolve_shards
from tests.train_data import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES = 4


@pytest.fixture(scope="module")
def run(train_data, tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("search") / "run"
    train(tiny_config(train_data, out, frames=str(FRAMES)), progress=False)
    return out


@pytest.fixture(scope="module")
def test_index(run, train_data, tmp_path_factory) -> Path:
    """The index of the 4 test videos (2 shards, so 2 chunks)."""
    out = tmp_path_factory.mktemp("index") / "test"
    build_index(IndexConfig(shards=train_data["test"], out=str(out), checkpoint=str(run),
                            batch_size=3, progress=False))
    return out


def _direct_embeddings(run: Path, shards: str) -> tuple[list[dict], np.ndarray]:
    """Samples and their normalised embeddings computed by hand from the run's model."""
    model = load_model(resolve_checkpoint(run)[0]).eval()
    samples = list(ShardDataset(shards, rank=0, world_size=1))
    with torch.no_grad():
        video = torch.stack([to_model_input(s["frames"], model.contract,
                                            uniform_subset(s["frames"].shape[0], FRAMES))
                             for s in samples])
        emb = torch.nn.functional.normalize(model.encode_video(video), dim=1)
    return samples, emb.numpy()


def test_index_holds_the_models_embeddings_rows_thumbnails_and_model(run, train_data,
                                                                      test_index):
    samples, want = _direct_embeddings(run, train_data["test"])
    data = load_index(test_index)
    np.testing.assert_allclose(data.embeddings, want, atol=1e-5)
    manifest = data.manifest
    assert manifest["frames"] == FRAMES and manifest["dim"] == want.shape[1]
    assert [c["videos"] for c in manifest["chunks"]] == [3, 1]
    assert [v["video_id"] for v in data.videos] == [s["meta"]["video_id"] for s in samples]
    for video, sample in zip(data.videos, samples, strict=True):
        path = data.video_file(video["row"])
        assert path.is_file() and path.name == Path(sample["meta"]["source"]).name
        assert video["captions"] == sample["meta"]["captions"]
        strip = Image.open(test_index / video["thumb"])
        assert strip.size == (64 * FRAMES, 64)
    copied = sorted(p.name for p in (test_index / "model").iterdir())
    assert "trainer_state.pt" not in copied and "model.safetensors" in copied


def test_search_ranks_by_the_models_cosine_similarity(run, test_index):
    data = load_index(test_index)
    model = load_model(resolve_checkpoint(run)[0]).eval()
    target = data.videos[2]
    answer = search(SearchConfig(str(test_index), expect=target["video_id"], top=3))
    assert answer["query"] == target["captions"][0] and answer["search"] == "exact"
    with torch.no_grad():
        text = model.encode_text(**model.tokenize([answer["query"]]))
        sims = model.similarity(text, torch.from_numpy(data.embeddings))[0].numpy()
    order = np.argsort(-sims, kind="stable")
    assert [r["row"] for r in answer["results"]] == order[:3].tolist()
    np.testing.assert_allclose([r["score"] for r in answer["results"]], sims[order[:3]],
                               atol=1e-5)
    assert answer["expected"]["rank"] == int((sims > sims[2]).sum()) + 1
    assert all(Path(r["path"]).is_file() for r in answer["results"])


def test_cli_search_prints_ranks_and_the_expected_video(test_index):
    data = load_index(test_index)
    vid = data.videos[0]["video_id"]
    result = CliRunner().invoke(main, ["search", str(test_index), "--expect", vid, "--top", "2"])
    assert result.exit_code == 0, result.output
    assert f"expected video {vid} ranks" in result.output and "of 4" in result.output
    result = CliRunner().invoke(main, ["search", str(test_index), "a red circle", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3, 4]
    result = CliRunner().invoke(main, ["search", str(test_index), "--expect", "nope"])
    assert result.exit_code != 0 and "'nope' is not in the index" in result.output


def test_resume_rewrites_only_the_uncommitted_chunk(run, train_data, tmp_path):
    """A run stopped after its first chunk leaves stray files of the second; the next run
    keeps the first chunk as it is and writes the second again."""
    shards = resolve_shards(train_data["train"])
    out = tmp_path / "index"
    build_index(IndexConfig(shards=shards[:1], out=str(out), checkpoint=str(run),
                            progress=False))
    first = (out / "chunks" / "000000.npy").stat().st_mtime_ns
    (out / "chunks" / "000001.npy").write_bytes(b"half-written")
    (out / "thumbs" / "000001.tmp").mkdir(parents=True)
    summary = build_index(IndexConfig(shards=shards, out=str(out), progress=False))
    assert (summary.chunks_skipped, summary.chunks_added, summary.videos_total) == (1, 3, 12)
    assert (out / "chunks" / "000000.npy").stat().st_mtime_ns == first
    assert not (out / "thumbs" / "000001.tmp").exists()
    _, want = _direct_embeddings(run, train_data["train"])
    np.testing.assert_allclose(load_index(out).embeddings, want, atol=1e-5)
    again = build_index(IndexConfig(shards=shards, out=str(out), progress=False))
    assert (again.chunks_added, again.chunks_skipped) == (0, 4)


def test_append_shards_and_refuse_another_model_or_u(run, train_data, test_index, tmp_path):
    out = tmp_path / "index"
    shutil.copytree(test_index, out)
    result = CliRunner().invoke(main, ["index", "--shards", train_data["train"], "--out",
                                       str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    data = load_index(out)
    assert len(data.videos) == 16 and len(data.manifest["chunks"]) == 6
    assert search(SearchConfig(str(out), query="a red circle", top=16))["videos"] == 16
    with pytest.raises(SearchIndexError, match="built at U=4 frames, not --frames 2"):
        build_index(IndexConfig(shards=train_data["train"], out=str(out), frames=2,
                                progress=False))
    other = tmp_path / "other"
    train(tiny_config(train_data, other, frames="2", max_steps=1), progress=False)
    with pytest.raises(SearchIndexError, match="weights .* differ"):
        build_index(IndexConfig(shards=train_data["train"], out=str(out),
                                checkpoint=str(other), progress=False))
    copy = tmp_path / "copy"
    shutil.copytree(train_data["test"], copy)
    with pytest.raises(SearchIndexError, match="is already in the index"):
        build_index(IndexConfig(shards=str(copy), out=str(out), progress=False))


def test_ivf_answers_like_exact_search_and_follows_appends(run, train_data, test_index,
                                                           tmp_path):
    out = tmp_path / "index"
    shutil.copytree(test_index, out)
    build_index(IndexConfig(shards=train_data["test"], out=str(out), ann="ivf", progress=False))
    query = load_index(out).videos[0]["captions"][0]
    exact = search(SearchConfig(str(out), query=query, top=4))
    approx = search(SearchConfig(str(out), query=query, top=4, approximate=True))
    assert approx["search"] == "ivf"
    assert [r["row"] for r in approx["results"]] == [r["row"] for r in exact["results"]]
    np.testing.assert_allclose([r["score"] for r in approx["results"]],
                               [r["score"] for r in exact["results"]], atol=1e-5)
    build_index(IndexConfig(shards=train_data["train"], out=str(out), progress=False))
    grown = search(SearchConfig(str(out), query=query, top=16, approximate=True))
    assert len(grown["results"]) == 16  # rebuilt over the appended videos
    build_index(IndexConfig(shards=train_data["test"], out=str(out), ann="none",
                            progress=False))
    with pytest.raises(FileNotFoundError, match="--ann ivf"):
        search(SearchConfig(str(out), query=query, approximate=True))


def test_folder_of_real_videos_without_captions(run, tmp_path):
    from videos import make_video

    folder = tmp_path / "My Clips"
    for name in ("beach.mp4", "trips/day1.mkv", "trips/day2.webm"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        codec = "libvpx-vp9" if name.endswith(".webm") else "libx264"
        make_video(folder / name, codec=codec, frames=12, size=(80, 64))
    (folder / "notes.txt").write_text("not a video")
    (folder / ".hidden.mp4").write_bytes(b"")
    runner = CliRunner()
    result = runner.invoke(main, ["shard", "--videos", str(folder), "--out",
                                  str(tmp_path / "shards"), "--frames", "8", "--size", "64",
                                  "--backend", "ffmpeg", "--strict"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.tar")) == [
        "My_Clips-test-000000.tar"]
    result = runner.invoke(main, ["index", "--checkpoint", str(run), "--shards",
                                  str(tmp_path / "shards"), "--out", str(tmp_path / "index"),
                                  "--quiet"])
    assert result.exit_code == 0, result.output
    answer = search(SearchConfig(str(tmp_path / "index"), query="a red circle"))
    assert sorted(r["video_id"] for r in answer["results"]) == ["beach", "trips/day1",
                                                                 "trips/day2"]
    assert {Path(r["path"]) for r in answer["results"]} == {
        folder / "beach.mp4", folder / "trips/day1.mkv", folder / "trips/day2.webm"}
    assert all(r["captions"] == [] for r in answer["results"])


def test_generic_manifest_rows_with_a_path_only(tmp_path):
    from pipeline.datasets.manifests import load_records

    (tmp_path / "a.csv").write_text("path\nclips/x.mp4\nclips/y.mp4\n")
    records = load_records(tmp_path / "a.csv", tmp_path, "test")
    assert [(r.video_id, r.captions, r.split) for r in records] == [
        ("clips/x", (), "test"), ("clips/y", (), "test")]
    (tmp_path / "b.jsonl").write_text('{"path": "x.mp4", "split": "train"}\n'
                                      '{"path": "y.mp4"}\n')
    assert [r.video_id for r in load_records(tmp_path / "b.jsonl", tmp_path, "train")] == ["x"]


# --- serve -------------------------------------------------------------------------------------


def _start_server(index: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """``mof-cli serve INDEX --port 0`` as a real process; its base URL once it listens."""
    process = subprocess.Popen(
        [sys.executable, "-c", "from cli import main; main()", "serve", str(index), "--port",
         "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        cwd=Path(__file__).parents[1])
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        raise RuntimeError(f"mof-cli serve did not start: {line!r}")
    return process, line.split("at ", 1)[1].split("/ ", 1)[0]


def _get(base: str, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path, headers=headers or {})  # sent as written: no normalisation
    response = conn.getresponse()
    body = response.read()
    conn.close()
    return response.status, body


@pytest.fixture(scope="module")
def traversal_index(test_index, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the test index whose rows point at a file in the root, one outside it through
    ``..`` and one through a symbolic link."""
    base = tmp_path_factory.mktemp("traversal")
    index, root = base / "index", base / "root"
    shutil.copytree(test_index, index)
    root.mkdir()
    (root / "inside.mp4").write_bytes(b"0123456789" * 10)
    (base / "secret.mp4").write_text("secret")
    (root / "link.mp4").symlink_to(base / "secret.mp4")
    manifest = json.loads((index / "index.json").read_text())
    manifest["roots"] = [str(root)]
    (index / "index.json").write_text(json.dumps(manifest))
    chunk = index / "chunks" / "000000.jsonl"
    rows = [json.loads(line) for line in chunk.read_text().splitlines()]
    for row, source in zip(rows, ["inside.mp4", "../secret.mp4", "link.mp4"], strict=True):
        row.update(source=source, root=0)
    chunk.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return index, root


def test_serve_only_files_inside_the_roots(traversal_index):
    index, root = traversal_index
    process, base = _start_server(index)
    try:
        status, body = _get(base, "/video/0")
        assert (status, body) == (200, (root / "inside.mp4").read_bytes())
        status, body = _get(base, "/video/0", {"Range": "bytes=10-19"})
        assert (status, body) == (206, b"0123456789")
        assert _get(base, "/video/0", {"Range": "bytes=500-"})[0] == 416
        for row in (1, 2):  # ../secret.mp4 and a link out of the root
            status, body = _get(base, f"/video/{row}")
            assert status == 403 and b"secret" not in body
        for path in ("/video/../../../etc/passwd", "/thumb/..%2F..%2Fetc%2Fpasswd",
                     "/%2e%2e/%2e%2e/etc/passwd", "/video/0/../1", "/video/-1", "/video/999",
                     "/thumb/0.jpg", "//etc/passwd", "/index.json", "/model/model.json"):
            status, body = _get(base, path)
            assert status == 404, (path, status)
            assert b"root:" not in body
        assert _get(base, "/thumb/0")[1][:2] == b"\xff\xd8"  # a JPEG
        for query in ("", "q=", "q=%20", "q=x&k=0", "q=x&k=abc", "q=x&k=101",
                      "q=" + "x" * 501):
            status, body = _get(base, "/api/search?" + query)
            assert status == 400 and "error" in json.loads(body), query
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_browser_types_a_query_sees_results_and_plays_a_moved_video(test_index, tmp_path):
    from browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("chromium is not installed (make browser installs it)")
    data = load_index(test_index)
    target, gone = data.videos[1], data.videos[2]
    # The videos moved (--root): the copy lacks one of them, which must not be served from
    # the root the index recorded.
    moved = tmp_path / "moved"
    shutil.copytree(Path(data.manifest["roots"][0]), moved)
    (moved / gone["source"]).unlink()
    process, base = _start_server(test_index, "--root", str(moved))
    browser = Browser(tmp_path / "profile")
    try:
        assert _get(base, f"/video/{gone['row']}")[0] == 403
        browser.goto(base + "/")
        browser.evaluate("document.getElementById('q').focus()")
        browser.type_text(target["captions"][0])
        browser.press_enter()
        shown = browser.wait_for("[...document.querySelectorAll('#results li')]"
                                 ".map(li => li.dataset.videoId)")
        status, body = _get(base, "/api/search?q=" + quote(target["captions"][0]))
        assert status == 200
        assert shown == [r["video_id"] for r in json.loads(body)["results"]]
        assert target["video_id"] in shown
        assert browser.wait_for("[...document.images].every(i => i.complete && "
                                "i.naturalWidth > 0)")
        browser.click(f"#results li[data-video-id='{target['video_id']}']")
        state = browser.wait_for(
            "(() => { const v = document.getElementById('playing'); if (!v) return ''; "
            "return v.error ? 'error ' + v.error.code : (v.readyState >= 2 ? "
            "v.dataset.videoId + ' ' + v.videoWidth : ''); })()")
        assert state == f"{target['video_id']} 64"
        shot = browser.screenshot(tmp_path / "page.png")
        assert Image.open(shot).size[0] > 0
    finally:
        browser.close()
        process.terminate()
        process.wait(timeout=30)
