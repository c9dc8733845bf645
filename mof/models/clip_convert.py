"""CLIP4Clip's checkpoint format ↔ transformers' CLIP: key maps, reading, architecture.

A CLIP4Clip ``pytorch_model.bin`` is ``model.state_dict()`` of a meanP model: a plain tensor
dict (``torch.load(weights_only=True)``-safe), 302 keys for ViT-B/32, all ``clip.`` + OpenAI
CLIP's module names, fp16 for conv/linear/attention weights and projections (CLIP's
``convert_weights``) and fp32 for the rest, with no ``module.`` prefix. Mapping onto
transformers' ``CLIPModel``:

- ``[visual.]transformer.resblocks.N.attn.in_proj_{weight,bias}``: rows stacked q, k, v, split
  into ``{text,vision}_model.encoder.layers.N.self_attn.{q,k,v}_proj``;
- ``ln_1/ln_2/mlp.c_fc/mlp.c_proj/attn.out_proj`` → ``layer_norm1/layer_norm2/mlp.fc1/mlp.fc2/
  self_attn.out_proj``;
- ``text_projection`` and ``visual.proj`` are applied as ``x @ P``: transposed into Linear weights;
- embeddings, ``ln_pre``/``ln_post``/``ln_final`` and ``logit_scale`` one to one.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mof.models.common import load_strictly

__all__ = [
    "hf_to_openai", "load_openai_state", "openai_arch", "openai_to_hf",
    "read_clip4clip_checkpoint",
]

# OpenAI CLIP names (CLIP4Clip's keys minus ``clip.``) → transformers CLIPModel names.
_OPENAI_TO_HF = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "logit_scale": "logit_scale",
}
# OpenAI applies these as ``x @ P``; transformers holds Linear weights, i.e. ``P.T``.
_PROJECTIONS = {"text_projection": "text_projection.weight",
                "visual.proj": "visual_projection.weight"}
_BLOCK_PARTS = {"attn.out_proj.": "self_attn.out_proj.", "ln_1.": "layer_norm1.",
                "ln_2.": "layer_norm2.", "mlp.c_fc.": "mlp.fc1.", "mlp.c_proj.": "mlp.fc2."}
_OPENAI_BLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")
_HF_BLOCK = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")
_IN_PROJ = re.compile(r"^self_attn\.([qkv])_proj\.(weight|bias)$")
# Entries of OpenAI's JIT archive that are not weights.
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")


def openai_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI CLIP state_dict (no ``clip.`` prefix) → transformers ``CLIPModel`` state_dict.

    Raises:
        ValueError: a key that is no part of OpenAI's CLIP (names them).
    """
    out, unknown = {}, []
    for key, value in state.items():
        if key in _OPENAI_TO_HF:
            out[_OPENAI_TO_HF[key]] = value
        elif key in _PROJECTIONS:
            out[_PROJECTIONS[key]] = value.t().contiguous()
        elif (match := _OPENAI_BLOCK.match(key)) is not None:
            prefix = f"{'vision' if match[1] else 'text'}_model.encoder.layers.{match[2]}."
            rest = match[3]
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip("qkv", value.chunk(3)):  # rows stacked q, k, v
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            part = next((p for p in _BLOCK_PARTS if rest.startswith(p)), None)
            if part is None:
                unknown.append(key)
            else:
                out[prefix + _BLOCK_PARTS[part] + rest[len(part):]] = value
        elif key not in _NOT_WEIGHTS:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) are not OpenAI CLIP weights, e.g. {unknown[:5]}")
    return out


def hf_to_openai(state: dict[str, torch.Tensor], prefix: str = "clip.") -> dict[str, torch.Tensor]:
    """transformers ``CLIPModel`` state_dict → OpenAI names under ``prefix`` (CLIP4Clip's).

    The inverse of :func:`openai_to_hf`; exports a model for CLIP4Clip's own code.
    """
    fixed = {v: k for k, v in _OPENAI_TO_HF.items()}
    projections = {v: k for k, v in _PROJECTIONS.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in fixed:
            out[prefix + fixed[key]] = value
        elif key in projections:
            out[prefix + projections[key]] = value.t().contiguous()
        elif (match := _HF_BLOCK.match(key)) is not None:
            block = f"{prefix}{'visual.' if match[1] == 'vision' else ''}" \
                    f"transformer.resblocks.{match[2]}."
            rest = match[3]
            if (proj := _IN_PROJ.match(rest)) is not None:
                qkv.setdefault(f"{block}attn.in_proj_{proj[2]}", {})[proj[1]] = value
                continue
            part = next(p for p, h in _BLOCK_PARTS.items() if rest.startswith(h))
            out[block + part + rest[len(_BLOCK_PARTS[part]):]] = value
        elif not key.endswith("position_ids"):
            raise ValueError(f"{key!r} is not a transformers CLIPModel weight")
    for key, parts in qkv.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def read_clip4clip_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The OpenAI-named CLIP weights of a CLIP4Clip ``pytorch_model.bin`` (``clip.`` stripped).

    Read with ``torch.load(weights_only=True)``: a plain tensor dict loads, anything that would
    run pickled code is refused. ``module.`` prefixes are dropped. A file with no ``clip.`` key
    at all is taken as a bare OpenAI CLIP state_dict.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a tensor dict, or keys outside ``clip.*`` (a seqLSTM/seqTransf/
            tightTransf checkpoint: only meanP has no parameters of its own).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP4Clip checkpoint {path} does not exist")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path}: refused by torch.load(weights_only=True): {err}") from None
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: not a plain tensor state_dict ({type(obj).__name__})")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    if not any(k.startswith("clip.") for k in state):
        return state
    foreign = sorted(k for k in state if not k.startswith("clip."))
    if foreign:
        raise ValueError(f"{path}: {len(foreign)} key(s) outside clip.*, e.g. {foreign[:5]}: "
                         "not a meanP checkpoint (only meanP is implemented)")
    return {k.removeprefix("clip."): v for k, v in state.items()}


def openai_arch(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """:class:`Clip4ClipConfig` fields of an OpenAI CLIP state_dict, read off its shapes.

    Heads are width / 64, as in every OpenAI CLIP.

    Raises:
        KeyError: a tensor every CLIP has is missing (names it).
    """
    depth = {False: set(), True: set()}
    for key in state:
        if (match := _OPENAI_BLOCK.match(key)) is not None:
            depth[bool(match[1])].add(match[2])
    patch = state["visual.conv1.weight"]
    grid = math.isqrt(state["visual.positional_embedding"].shape[0] - 1)
    text_width = state["ln_final.weight"].shape[0]
    return {
        "frame_size": grid * patch.shape[-1],
        "projection_dim": state["text_projection"].shape[1],
        "text": {"vocab_size": state["token_embedding.weight"].shape[0],
                 "max_position_embeddings": state["positional_embedding"].shape[0],
                 "hidden_size": text_width, "num_attention_heads": text_width // 64,
                 "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                 "num_hidden_layers": len(depth[False])},
        "vision": {"hidden_size": patch.shape[0], "patch_size": patch.shape[-1],
                   "num_attention_heads": patch.shape[0] // 64,
                   "intermediate_size":
                       state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                   "num_hidden_layers": len(depth[True])},
    }


def load_openai_state(
    clip: nn.Module, state: dict[str, torch.Tensor], source: str | Path
) -> None:
    """Load OpenAI-named CLIP weights into a transformers ``CLIPModel`` strictly.

    fp16 tensors are cast to the model's dtype.

    Raises:
        ValueError: keys or shapes that do not fit ``clip`` (names them and ``source``).
    """
    try:
        converted = openai_to_hf(state)
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    load_strictly(clip, converted, source)
