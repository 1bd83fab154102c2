"""Pretrained weights from local files (never the network): torchvision ResNet-50 and Hugging Face BERT.

Each loader returns `(module, variables)` for our Flax modules:
  load_resnet50(path): `module.apply(variables, images_nhwc, train=False)` → pooled features [B, 2048];
  load_bert(directory): `module.apply(variables, input_ids, attention_mask)` → last hidden states [B, T, H].
safetensors files are parsed here (a JSON header and raw little-endian arrays), so they need no extra
package; PyTorch pickles (.pth/.pt/.bin) need torch and are read with `weights_only=True`.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import struct

import jax
import ml_dtypes
import numpy as np

from cxr_jax.data.sources.fileio import DataError
from cxr_jax.models import bert, resnet

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A PyTorch state dict as NumPy arrays, from .safetensors or a torch file (.pth, .pt, .bin)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        import torch
    except ImportError as e:
        raise DataError(f"{path}: reading a PyTorch file needs torch (pip install torch==2.13.0), or convert it "
                        "to .safetensors") from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file.
        raise DataError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: {e})") from e
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise DataError(f"{path}: expected a state dict (name → tensor), got {type(state).__name__}")
    others = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if others:
        raise DataError(f"{path}: expected a state dict (name → tensor); {others[:5]} are not tensors")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The arrays of a safetensors file, whose header must tile its byte buffer exactly (as the format requires).

    Every tensor's `data_offsets` must lie in the buffer, match its dtype and shape, and the tensors must cover
    the buffer without gaps or overlaps, so no tensor can alias another or read past the end.
    """
    data = path.read_bytes()
    try:
        (size,) = struct.unpack("<Q", data[:8])
        if size > len(data) - 8:
            raise ValueError(f"header length {size} runs past the end of the {len(data)}-byte file")
        header = json.loads(data[8:8 + size])
        if not isinstance(header, dict):
            raise ValueError(f"the header is a JSON {type(header).__name__}, not an object")
    except (struct.error, ValueError) as e:
        raise DataError(f"{path}: not a safetensors file ({e})") from e
    buffer = memoryview(data)[8 + size:]
    tensors = {name: _safetensors_entry(path, name, info, len(buffer)) for name, info in header.items()
               if name != "__metadata__"}
    end = 0
    for name, (_dtype, _shape, start, stop) in sorted(tensors.items(), key=lambda item: item[1][2:]):
        if start != end:
            raise DataError(f"{path}: tensor {name!r} starts at byte {start} of the data, expected {end} "
                            f"({'overlaps the previous tensor' if start < end else 'a gap before it'})")
        end = stop
    if end != len(buffer):
        raise DataError(f"{path}: the tensors cover {end} of the {len(buffer)} data bytes")
    out = {}
    for name, (dtype, shape, start, stop) in tensors.items():
        array = np.frombuffer(buffer[start:stop], dtype).reshape(shape)
        out[name] = array.astype(np.float32) if array.dtype == ml_dtypes.bfloat16 else array
    return out


def _safetensors_entry(path: pathlib.Path, name: str, info, buffer_size: int) -> tuple:
    """(dtype, shape, start, stop) of one header entry, checked against the data buffer's size."""
    try:
        dtype_name, shape, (start, stop) = info["dtype"], info["shape"], info["data_offsets"]
        if not all(isinstance(v, int) and v >= 0 for v in (*shape, start, stop)):
            raise ValueError("shape and offsets must be non-negative integers")
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: tensor {name!r} has a malformed header entry {info!r} ({e})") from None
    if dtype_name not in _SAFETENSORS_DTYPES:
        raise DataError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_name])
    if not start <= stop <= buffer_size:
        raise DataError(f"{path}: tensor {name!r} has data_offsets [{start}, {stop}] outside the "
                        f"{buffer_size}-byte data buffer (file truncated or header corrupt)")
    if stop - start != math.prod(shape) * dtype.itemsize:
        raise DataError(f"{path}: tensor {name!r} has {stop - start} bytes for shape {shape} of {dtype_name}")
    return dtype, tuple(shape), start, stop


# --- ResNet-50 (torchvision) ---------------------------------------------------------------------------------

def load_resnet50(path: str | pathlib.Path, in_channels: int = 3) -> tuple[resnet.ResNet, dict]:
    """A torchvision ResNet-50 state dict as our `ResNet((3, 4, 6, 3), 'bottleneck', 64)`, fc dropped.

    With `in_channels=1` the first conv's RGB kernels are summed, which is the same as feeding a gray image
    in all three channels.
    """
    state = {k: v for k, v in read_state_dict(path).items()
             if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    module = resnet.ResNet((3, 4, 6, 3), "bottleneck", 64)
    variables = {"params": {}, "batch_stats": {}}
    for name, array in state.items():
        _put(variables, _resnet_path(name, path), _torch_to_flax(array, name))
    if in_channels == 1:
        variables["params"]["conv1"]["kernel"] = variables["params"]["conv1"]["kernel"].sum(2, keepdims=True)
    _check_against(module, variables, path, np.zeros((1, 64, 64, in_channels), np.float32))
    return module, variables


def _resnet_path(name: str, path) -> tuple[str, ...]:
    """A torchvision name → (collection, module, ..., leaf) in our ResNet."""
    match = re.fullmatch(r"(?:layer(\d)\.(\d+)\.)?(conv\d|bn\d|downsample\.[01])\.(weight|bias|running_mean|"
                         r"running_var)", name)
    if not match:
        raise DataError(f"{path}: unexpected tensor {name!r} for a torchvision ResNet-50")
    stage, block, layer, leaf = match.groups()
    if stage is None:  # The stem: conv1, bn1.
        module = (layer,)
    else:  # In a bottleneck: conv1..3 / bn1..3 are Conv_0..2 / BatchNorm_0..2; downsample is the 4th of each.
        kind, index = ("Conv", 3) if layer == "downsample.0" else ("BatchNorm", 3) if layer == "downsample.1" else (
            "Conv" if layer.startswith("conv") else "BatchNorm", int(layer[-1]) - 1)
        module = (f"layer{stage}_{block}", f"{kind}_{index}")
    conv = layer.startswith("conv") or layer == "downsample.0"
    flax_leaf = {"weight": "kernel" if conv else "scale", "bias": "bias", "running_mean": "mean",
                 "running_var": "var"}[leaf]
    collection = "batch_stats" if leaf.startswith("running") else "params"
    return (collection, *module, flax_leaf)


# --- BERT (Hugging Face) ---------------------------------------------------------------------------------------

def load_bert(directory: str | pathlib.Path, **overrides) -> tuple[bert.Bert, dict]:
    """A Hugging Face BERT directory (config.json + model.safetensors or pytorch_model.bin) as our `Bert`.

    `overrides` set module fields the checkpoint does not fix (e.g. `frozen_layers`, `dropout`). The
    directory's vocab.txt is what `cxr_jax.data.text.Tokenizer.from_file` reads.
    """
    directory = pathlib.Path(directory)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise DataError(f"{config_file}: missing (expected a Hugging Face BERT directory)")
    try:
        cfg = json.loads(config_file.read_bytes())
    except ValueError as e:
        raise DataError(f"{config_file}: not valid JSON ({e})") from e
    if not isinstance(cfg, dict):
        raise DataError(f"{config_file}: expected a JSON object, got a {type(cfg).__name__}")
    if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
        raise DataError(f"{config_file}: only BERT with gelu and absolute positions is supported")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "intermediate_size", "max_position_embeddings", "type_vocab_size", "layer_norm_eps")
               if k not in cfg]
    if missing:
        raise DataError(f"{config_file}: not a BERT config; missing {missing}")
    weights = next((directory / f for f in ("model.safetensors", "pytorch_model.bin")
                    if (directory / f).is_file()), None)
    if weights is None:
        raise DataError(f"{directory}: no model.safetensors or pytorch_model.bin")
    fields = dict(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"], num_layers=cfg["num_hidden_layers"],
                  num_heads=cfg["num_attention_heads"], intermediate_size=cfg["intermediate_size"],
                  max_positions=cfg["max_position_embeddings"], type_vocab_size=cfg["type_vocab_size"],
                  layer_norm_eps=cfg["layer_norm_eps"], dropout=cfg.get("hidden_dropout_prob", 0.1))
    module = bert.Bert(**{**fields, **overrides})
    variables = {"params": {}}
    for name, array in read_state_dict(weights).items():
        target = _bert_path(name, weights)
        if target is not None:
            _put(variables, ("params", *target), _torch_to_flax(array, name))
    ids = np.zeros((1, 4), np.int32)
    _check_against(module, variables, weights, ids, np.ones_like(ids))
    return module, variables


_BERT_NAMES = {
    "embeddings.word_embeddings.weight": ("word_embeddings", "embedding"),
    "embeddings.position_embeddings.weight": ("position_embeddings", "embedding"),
    "embeddings.token_type_embeddings.weight": ("token_type_embeddings", "embedding"),
}
_BERT_LAYER = {"attention.self.query": ("attention", "query"), "attention.self.key": ("attention", "key"),
               "attention.self.value": ("attention", "value"), "attention.output.dense": ("attention", "output"),
               "attention.output.LayerNorm": ("attention", "output_norm"), "intermediate.dense": ("intermediate",),
               "output.dense": ("output",), "output.LayerNorm": ("output_norm",)}


def _bert_path(name: str, path) -> tuple[str, ...] | None:
    """HF name → our parameter path; None for parts we do not use (pooler, pretraining heads)."""
    name = name.removeprefix("bert.")
    if name.startswith(("pooler.", "cls.")) or name.endswith("position_ids"):
        return None
    if name in _BERT_NAMES:
        return _BERT_NAMES[name]
    leaf = {"weight": "kernel", "bias": "bias", "gamma": "scale", "beta": "bias"}
    if match := re.fullmatch(r"embeddings\.LayerNorm\.(weight|bias|gamma|beta)", name):
        return ("embeddings_norm", "scale" if match[1] in ("weight", "gamma") else "bias")
    if match := re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias|gamma|beta)", name):
        index, part, kind = match.groups()
        if part in _BERT_LAYER:
            norm = part.endswith("LayerNorm")
            return (f"layer_{index}", *_BERT_LAYER[part], "scale" if norm and kind in ("weight", "gamma")
                    else leaf[kind])
    raise DataError(f"{path}: unexpected tensor {name!r} for a BERT model")


# --- Shared ----------------------------------------------------------------------------------------------------

def _torch_to_flax(array: np.ndarray, name: str) -> np.ndarray:
    """Conv OIHW → HWIO and Linear [out, in] → [in, out]; embeddings and vectors unchanged."""
    array = np.asarray(array, np.float32)
    if array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if array.ndim == 2 and "embeddings" not in name:
        return array.T
    return array


def _put(tree: dict, keys: tuple[str, ...], value) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _check_against(module, variables: dict, path, *example) -> None:
    """Every parameter the module expects is present with its shape, and nothing else."""
    expected = jax.eval_shape(module.init, jax.random.key(0), *example)
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    wrong = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or wrong:
        raise DataError(f"{path}: weights do not fit the model; missing {missing[:5]}, unexpected {extra[:5]}, "
                        f"wrong shapes {[(k, got[k], want[k]) for k in wrong[:5]]}")
