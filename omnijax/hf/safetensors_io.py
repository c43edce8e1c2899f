"""Lazy safetensors reading and sharded writing, bfloat16 included (numpy + ml_dtypes).

The format is an 8-byte little-endian header length, a JSON header (dtype, shape, byte offsets per
tensor) and the raw little-endian data. Reading memory-maps each file, so a tensor is read from disk
only when asked for (tensor by tensor: a 7B checkpoint never has to fit in host memory). A file cut short or not
in this format is refused when the directory is opened (``omnijax.errors.DamagedFileError``), before any tensor is
read.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable, Mapping

import ml_dtypes
import numpy as np

from omnijax.errors import DamagedFileError

DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in DTYPES.items()}

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


REFETCH = "download or copy the checkpoint again (or export it again)"



def pickle_fix(pt_path: str, out_dir: str, state_key: str, config_key: str, architecture: str) -> str:
    """The one-line shell command that turns a reference ``.pt`` (``{state_key: state dict, config_key: config
    dict}``) into a directory of ``model.safetensors`` + ``config.json`` with ``architectures=[architecture]``
    (run it only on a file you trust: it unpickles)."""
    return ("python -c \"import json, os, torch; from safetensors.torch import save_file; "
            f"c = torch.load('{pt_path}', map_location='cpu', weights_only=True); os.makedirs('{out_dir}', "
            f"exist_ok=True); save_file({{k: v.clone().contiguous() for k, v in c['{state_key}'].items()}}, "
            f"'{out_dir}/model.safetensors'); json.dump(dict(c['{config_key}'], architectures=['{architecture}']), "
            f"open('{out_dir}/config.json', 'w'))\"")

class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read as asked; the message names the fix."""


def _read_header(path: str) -> tuple[dict, int]:
    """(tensor name -> dtype, shape, data_offsets; where the data starts); a ``DamagedFileError`` for a file that is
    cut short or not safetensors."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise DamagedFileError(path, f"truncated: {size} bytes, not even the 8-byte header length", REFETCH)
        (n,) = struct.unpack("<Q", raw)
        if 8 + n > size:
            raise DamagedFileError(path, f"wrong format or truncated: its first 8 bytes give a header of {n} bytes, "
                                         f"longer than the file ({size} bytes)", REFETCH)
        try:
            header = json.loads(f.read(n))
            header.pop("__metadata__", None)
            end = max((int(info["data_offsets"][1]) for info in header.values()), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:  # JSON, or not a tensor table
            raise DamagedFileError(path, f"wrong format: the header is not a safetensors tensor table ({e})",
                                   REFETCH) from None
    if 8 + n + end > size:
        raise DamagedFileError(path, f"truncated: {size} bytes, its header places tensor data up to byte {8 + n + end}",
                               REFETCH)
    return header, 8 + n


class SafetensorsDir:
    """Read-only view of a HF weights directory (``model.safetensors`` or sharded with an index)."""

    def __init__(self, hf_dir: str):
        self.dir = hf_dir
        index = os.path.join(hf_dir, INDEX_FILE)
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        elif os.path.exists(os.path.join(hf_dir, SINGLE_FILE)):
            weight_map = None
        else:
            files = sorted(os.listdir(hf_dir)) if os.path.isdir(hf_dir) else []
            pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
            if pickles:
                raise CheckpointError(
                    f"{hf_dir} holds only PyTorch pickle weights ({', '.join(pickles[:3])}); omnijax reads "
                    "safetensors only (a pickle can run code when loaded). Convert it once with transformers: "
                    "`AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(OUT)` writes safetensors."
                )
            raise CheckpointError(f"{hf_dir} has no {SINGLE_FILE} or {INDEX_FILE}")
        self._files: dict[str, tuple[dict, int]] = {}
        self._key_file: dict[str, str] = {}
        names = sorted(set(weight_map.values())) if weight_map else [SINGLE_FILE]
        for name in names:
            path = os.path.join(hf_dir, name)
            if not os.path.exists(path):
                raise CheckpointError(f"{INDEX_FILE} in {hf_dir} names {name}, which is missing")
            self._files[name] = _read_header(path)
            for key in self._files[name][0]:
                self._key_file[key] = name

    def keys(self) -> list[str]:
        return list(self._key_file)

    def __contains__(self, key: str) -> bool:
        return key in self._key_file

    def _info(self, key: str) -> tuple[str, dict, int]:
        name = self._key_file[key]
        header, base = self._files[name]
        return name, header[key], base

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._info(key)[1]["shape"])

    def dtype(self, key: str) -> np.dtype:
        return np.dtype(DTYPES[self._info(key)[1]["dtype"]])

    def get(self, key: str) -> np.ndarray:
        """The tensor as a numpy array, read from the memory map (a copy, so the file can close)."""
        name, info, base = self._info(key)
        start, end = info["data_offsets"]
        dtype = np.dtype(DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        if end == start:
            return np.zeros(shape, dtype)
        mm = np.memmap(os.path.join(self.dir, name), dtype=np.uint8, mode="r", offset=base + start,
                       shape=(end - start,))
        return np.array(mm.view(dtype).reshape(shape))


class SafetensorsDirs:
    """Several weights directories read as one (``SafetensorsDir``'s API): ``dirs`` maps a key prefix to a directory,
    whose keys read as ``<prefix>/<key>`` (the prefix ``''``: as they are). Ola's release keeps its speech encoders
    in files beside the model's weights."""

    def __init__(self, dirs: Mapping[str, str]):
        self._readers = {prefix: SafetensorsDir(d) for prefix, d in dirs.items()}

    def _split(self, key: str) -> tuple[SafetensorsDir | None, str]:
        prefix, _, name = key.partition("/")
        if name and prefix in self._readers:
            return self._readers[prefix], name
        return self._readers.get(""), key

    def keys(self) -> list[str]:
        return [f"{p}/{k}" if p else k for p, r in self._readers.items() for k in r.keys()]

    def __contains__(self, key: str) -> bool:
        reader, name = self._split(key)
        return reader is not None and name in reader

    def shape(self, key: str) -> tuple[int, ...]:
        reader, name = self._split(key)
        return reader.shape(name)

    def dtype(self, key: str) -> np.dtype:
        reader, name = self._split(key)
        return reader.dtype(name)

    def get(self, key: str) -> np.ndarray:
        reader, name = self._split(key)
        return reader.get(name)


def _write_file(path: str, tensors: Mapping[str, np.ndarray]) -> None:
    header, offset = {}, 0
    for key, a in tensors.items():
        nbytes = a.size * a.dtype.itemsize
        header[key] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for a in tensors.values():
            f.write(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes())


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Group keys (in order) into shards of at most ``max_shard_bytes`` (a larger tensor gets its own)."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, n in sizes.items():
        if shards[-1] and used + n > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += n
    return shards


def write_sharded(
    out_dir: str,
    shards: list[list[str]],
    tensors: Iterable[tuple[str, np.ndarray]],
) -> None:
    """Write tensors (yielded in shard order, one at a time) as ``model.safetensors`` or
    ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``."""
    n = len(shards)
    names = [SINGLE_FILE] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    it = iter(tensors)
    weight_map, total = {}, 0
    for name, keys in zip(names, shards):
        batch = {}
        for key in keys:
            got, a = next(it)
            assert got == key, (got, key)
            batch[key] = a
            weight_map[key] = name
            total += a.size * a.dtype.itemsize
        _write_file(os.path.join(out_dir, name), batch)
    if n > 1:
        with open(os.path.join(out_dir, INDEX_FILE), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)


def nbytes(shape, dtype) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize
