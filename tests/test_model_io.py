"""Our model files (safetensors + model.json) and safe loading of foreign ones."""

from __future__ import annotations

import argparse
import builtins
import json
import os
import pathlib
import subprocess
from collections import OrderedDict

import numpy as np
import pytest
import torch

from mof.models import create_model
from mof.models.io import (
    UnsafePickleError,
    load_model,
    read_state_dict,
    safe_torch_load,
    save_model,
)
from mof.models.tokenizer import WordTokenizer
from pipeline.atomic import atomic_directory

SMALL = {"frame_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2, "max_frames": 4,
         "text": {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}}


def _tiny():
    return create_model("frozen-tiny", tokenizer=WordTokenizer.build(["a dog runs"]), depth=1)


# ------------------------------------------------------------------------ save_model/load_model
def test_save_inside_atomic_directory_replaces_and_leaves_no_temporaries(tmp_path):
    first, second = _tiny(), _tiny()
    with torch.no_grad():
        for p in second.parameters():
            p.fill_(0.5)
    for model in (first, second):
        with atomic_directory(tmp_path / "m") as tmp:
            save_model(model, tmp)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "model.json", "model.safetensors", "tokenizer.json"]
    loaded = load_model(tmp_path / "m")
    assert all(p.eq(0.5).all() for p in loaded.parameters())
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["format_version"] == 1 and meta["spec"] == {"name": "frozen-tiny", "depth": 1}
    assert meta["contract"]["tokenizer"] == "wordlevel"
    assert meta["tokenizer"] == {"kind": "wordlevel", "path": "tokenizer.json"}


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_model(tmp_path)
    save_model(_tiny(), tmp_path / "m")
    meta_path = tmp_path / "m" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "spec": {**meta["spec"], "depth": 2}}))
    with pytest.raises(RuntimeError, match="blocks.1"):
        load_model(tmp_path / "m")
    meta_path.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        load_model(tmp_path / "m")


def test_spec_must_be_json(tmp_path):
    model = _tiny()
    model.spec = {"name": "frozen-tiny", "bad": object()}
    with pytest.raises(ValueError, match="JSON"):
        save_model(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_tokenizer_directory_round_trip(tmp_path):
    from transformers import DistilBertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\ndog\nruns\n")
    tok_dir = tmp_path / "tok"
    # transformers 5 reads a WordPiece vocab file from ``vocab=``; ``vocab_file=`` is ignored.
    DistilBertTokenizerFast(vocab=str(vocab)).save_pretrained(tok_dir)
    torch.manual_seed(0)
    model = create_model("frozen", tokenizer_dir=str(tok_dir), **SMALL).eval()
    batch = model.tokenize(["a dog runs", "a cat"])
    assert batch["input_ids"].tolist() == [[2, 5, 6, 7, 3], [2, 5, 1, 3, 0]]
    video = torch.randn(2, 3, 3, 32, 32)
    expected = model(video, **batch)
    save_model(model, tmp_path / "saved")
    meta = json.loads((tmp_path / "saved" / "model.json").read_text())
    assert meta["tokenizer"] == {"kind": "directory", "path": "tokenizer"}
    assert "tokenizer_dir" not in meta["spec"] and meta["sources"]["tokenizer_dir"] == str(tok_dir)
    loaded = load_model(tmp_path / "saved")
    assert loaded.tokenize(["a dog runs", "a cat"])["input_ids"].tolist() == \
        batch["input_ids"].tolist()
    torch.testing.assert_close(loaded(video, **batch), expected, atol=0, rtol=0)


# ------------------------------------------------ safe loading: torch.load(weights_only=True)
class _Reduce:
    """Pickles as a call of ``func(*args)``: what a malicious checkpoint does."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Stateful:
    """A class whose ``__setstate__`` has a side effect: it must never run on load."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):  # pragma: no cover - runs only if the loader is unsafe
        pathlib.Path(state["marker"]).write_text("ran")
        self.__dict__.update(state)


def _payloads(marker: pathlib.Path):
    code = f"open({str(marker)!r}, 'w').write('pwned')"
    return {
        "os.system": _Reduce(os.system, f"touch {marker}"),
        "builtins.exec": _Reduce(builtins.exec, code),
        "subprocess.call": _Reduce(subprocess.call, ["touch", str(marker)]),
        "builtins.eval": _Reduce(builtins.eval, code),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", ["os.system", "builtins.exec", "subprocess.call", "builtins.eval"])
def test_malicious_checkpoint_is_refused(tmp_path, name, legacy):
    marker = tmp_path / "marker"
    path = tmp_path / "model_best.pth"
    payload = _payloads(marker)[name]
    torch.save({"state_dict": {"w": torch.ones(2)}, "config": payload}, path,
               _use_new_zipfile_serialization=not legacy)
    refused = rf"model_best\.pth: refused by torch\.load\(weights_only=True\).*{name.split('.')[1]}"
    with pytest.raises(UnsafePickleError, match=refused):
        safe_torch_load(path)
    with pytest.raises(UnsafePickleError, match=refused):
        read_state_dict(path)
    assert not marker.exists()


def test_the_payload_is_real(tmp_path):
    # The unsafe loader runs the same file's code: the test above guards something real.
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    torch.save({"config": _payloads(marker)["builtins.exec"]}, path)
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


class _TensorWithState:
    """Pickles as a tensor followed by BUILD, which would set its backward hooks."""

    def __reduce__(self):
        func, args = torch.ones(2).__reduce_ex__(2)
        return func, args, (False, None, OrderedDict(hook=print))


class _ParameterWithHook:
    """Pickles as a parameter whose backward hooks hold a function of the file's choice."""

    def __reduce__(self):
        return torch._utils._rebuild_parameter, (torch.ones(2), True, OrderedDict(hook=print))


@pytest.mark.parametrize("evil", [_TensorWithState, _ParameterWithHook])
def test_tensor_state_and_hooks_are_refused(tmp_path, evil):
    path = tmp_path / "t.pth"
    torch.save({"w": evil()}, path)
    with pytest.raises(UnsafePickleError, match=r"t\.pth: refused.*print"):
        safe_torch_load(path)


def test_protocol0_instantiation_with_arguments_is_refused(tmp_path):
    marker = tmp_path / "marker"
    # INST opcode: "(S'touch …'\nios\nsystem\n." calls os.system at load under plain pickle.
    path = tmp_path / "evil.pkl"
    path.write_bytes(b"(S'touch " + str(marker).encode() + b"'\nios\nsystem\n.")
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refused"):
        safe_torch_load(path)
    assert not marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_allowed_data_loads_and_other_classes_are_refused(tmp_path, legacy):
    obj = {
        "paths": [pathlib.PosixPath("/data/run"), pathlib.PureWindowsPath("C:/x")],
        "misc": OrderedDict(a={1, 2}, c=b"\x00\xff", d=complex(1, 2)),
        "numpy": np.float64(0.25),
        "array": np.arange(3, dtype=np.int16),
        "args": argparse.Namespace(model="resnet50", lr=0.1),
        "torch": [torch.float16, torch.device("cpu"), torch.Size([2, 3]),
                  torch.nn.Parameter(torch.ones(2))],
    }
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    loaded = safe_torch_load(path)
    assert loaded["paths"] == [pathlib.PurePosixPath("/data/run"), pathlib.PureWindowsPath("C:/x")]
    assert loaded["misc"] == obj["misc"] and float(loaded["numpy"]) == 0.25
    assert loaded["array"].tolist() == [0, 1, 2] and loaded["array"].dtype == np.int16
    assert loaded["args"] == obj["args"]
    dtype, device, size, param = loaded["torch"]
    assert dtype is torch.float16 and device == torch.device("cpu") and size == (2, 3)
    assert isinstance(param, torch.nn.Parameter) and param.eq(1).all()
    marker = tmp_path / "marker"
    torch.save({"stateful": _Stateful(marker)}, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafePickleError, match=r"ckpt\.pth: refused.*_Stateful"):
        safe_torch_load(path)
    assert not marker.exists()


def test_read_state_dict_formats(tmp_path):
    state = {"a.weight": torch.randn(3, 2), "b": torch.arange(4)}
    torch.save(state, tmp_path / "plain.pth")
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "wrapped.pth.tar")
    np.savez(tmp_path / "arrays.npz", **{k: v.numpy() for k, v in state.items()})
    for name in ("plain.pth", "wrapped.pth.tar", "arrays.npz"):
        read = read_state_dict(tmp_path / name)
        assert read.keys() == state.keys() and all(torch.equal(read[k], state[k]) for k in state)
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        read_state_dict(tmp_path / "objects.npz")
    torch.save({"epoch": 1}, tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="nothing.pth"):
        read_state_dict(tmp_path / "nothing.pth")
    with pytest.raises(FileNotFoundError):
        safe_torch_load(tmp_path / "missing.pth")
