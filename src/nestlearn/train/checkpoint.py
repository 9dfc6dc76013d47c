"""Checkpoints: one safetensors file holding every tensor, with JSON metadata in its header.

One file makes the write atomic: it is written to a temporary file in the same folder, flushed to
disk, then renamed over the old checkpoint, so a crash at any moment leaves either the old or the
new checkpoint, never a partial one. Loading parses only safetensors and JSON: nothing is unpickled.

Arbitrary nested state (an optimizer's ``state_dict``) is stored by :func:`flatten`: tensors go to
the tensor table under ``prefix/path``, everything else stays in the JSON tree with a reference.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from nestlearn.errors import CheckpointError

META_KEY = "nestlearn"
_TENSOR_REF = "__tensor__"


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor in a nested dict/list structure into ``tensors``; return the JSON-able rest."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {_TENSOR_REF: prefix}
    if isinstance(obj, dict):
        return {"__dict__": [[flatten(k, f"{prefix}/k{i}", tensors), flatten(v, f"{prefix}/{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__":
                [flatten(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, torch.dtype):
        return {"__dtype__": str(obj).removeprefix("torch.")}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(obj, dict):
        if _TENSOR_REF in obj:
            try:
                return tensors[obj[_TENSOR_REF]]
            except KeyError:
                raise CheckpointError(f"checkpoint is missing tensor {obj[_TENSOR_REF]!r}") from None
        if "__dict__" in obj:
            return {unflatten(k, tensors): unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [unflatten(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
        if "__dtype__" in obj:
            dtype = getattr(torch, obj["__dtype__"], None)
            if not isinstance(dtype, torch.dtype):
                raise CheckpointError(f"checkpoint names an unknown dtype {obj['__dtype__']!r}")
            return dtype
    return obj


def encode_bytes(t: torch.Tensor) -> str:
    """A uint8 tensor (an RNG state) as base64 text for JSON metadata."""
    return base64.b64encode(t.numpy().tobytes()).decode("ascii")


def decode_bytes(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Atomically write ``tensors`` and ``meta`` (JSON-able) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata={META_KEY: json.dumps(meta)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _temp_pattern(name: str) -> re.Pattern:
    """Names :func:`save_checkpoint`'s ``mkstemp`` gives the temporary file of target ``name``:
    "." + name + "." + 8 characters of tempfile's alphabet + ".tmp"."""
    return re.compile(rf"\.{re.escape(name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temp_files(folder: str | Path, name: str = "checkpoint.safetensors") -> list[Path]:
    """Delete what a killed :func:`save_checkpoint` of ``folder/name`` left behind; returns the paths.

    A process killed between ``mkstemp`` and the rename keeps a checkpoint-sized temporary file; only
    files whose name is exactly that temporary name for ``name`` are removed, nothing else in ``folder``.
    Call it when a run starts or resumes, never while another process may be writing that checkpoint.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = _temp_pattern(name)
    stale = [p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_file() and not p.is_symlink()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`; errors name the file and the problem.

    ``what`` names the file in those errors (``"state file"`` for :func:`nestlearn.stateful.load_state`).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is not a readable {what} (corrupt or truncated?): {err}") from None
    if META_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a nestlearn {what} (no '{META_KEY}' metadata)")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: corrupt metadata: {err}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt metadata: expected a JSON object, got {type(meta).__name__}")
    return tensors, meta
