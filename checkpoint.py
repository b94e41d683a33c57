"""Checkpoint files: the one reader, the one strict loader and the one atomic write of the repository.

`read_tensors` memory-maps (safetensors, `torch.load(mmap=True)`): nothing is read until used. A model
built on the meta device and given those tensors by `load_strict` (`assign=True`) holds no second copy
(bench/memory.py: peak 1.02x the tensor bytes). `atomic_dir` / `atomic_write` write beside the target,
fsync, then rename into place, so a save killed at any point leaves the previous one whole.
"""

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor, nn

INDEX_NAME = "model.safetensors.index.json"  # Hugging Face's shard index: {"weight_map": {key: file}}


def some_keys(keys: list[str], n: int = 8) -> str:
    """The first n keys, and how many there are in all: error messages stay readable."""
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------- reading


def _safetensors_files(path: Path) -> list[Path]:
    """The .safetensors files of a directory: those its index names, or all of them."""
    index = path / INDEX_NAME
    if index.exists():
        files = [path / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        for f in files:
            if not f.exists():
                raise FileNotFoundError(f"shard {f.name} named in {index} is missing")
        return files
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no .safetensors files (and no {INDEX_NAME}) in this folder")
    return files


def read_checkpoint(path: str | Path, keys: Iterable[str] | None = None, skip: Iterable[str] = ()):
    """-> (tensors, extra): every tensor of a checkpoint, memory-mapped, and the file's non-tensor entries.

    path: a `.safetensors` file, a folder of them (sharded with an index, or not), or a `.pt` / `.bin`
    torch file holding a state dict. A torch file `{"model_state_dict": sd, ...}` (OpenAI's Whisper
    `medium.pt`, with its `dims`) gives sd, the other entries going to extra. keys / skip: read only
    those names / not these.
    """
    path = Path(path)
    keys, skip = (None if keys is None else set(keys)), set(skip)

    def keep(k: str) -> bool:
        return (keys is None or k in keys) and k not in skip

    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir() or path.suffix == ".safetensors":
        from safetensors import safe_open

        sd: dict[str, Tensor] = {}
        for file in _safetensors_files(path) if path.is_dir() else [path]:
            with safe_open(str(file), framework="pt") as f:
                for k in filter(keep, f.keys()):
                    if k in sd:
                        raise KeyError(f"{file}: key {k} is also in another file of {path}")
                    sd[k] = f.get_tensor(k)
        return sd, {}
    try:  # weights only: no pickled code runs; mmap: tensors are paged in from the file when used
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # (pre-1.6 torch.save files cannot be memory-mapped: re-save them)
        raise ValueError(f"{path}: cannot read as a torch checkpoint ({e})") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    extra = {}
    if isinstance(obj.get("model_state_dict"), dict):
        extra = {k: v for k, v in obj.items() if k != "model_state_dict"}
        obj = obj["model_state_dict"]
    extra.update({k: v for k, v in obj.items() if not isinstance(v, Tensor)})
    return {k: v for k, v in obj.items() if isinstance(v, Tensor) and keep(k)}, extra


def read_tensors(path: str | Path, keys: Iterable[str] | None = None, skip: Iterable[str] = ()) -> dict[str, Tensor]:
    """The tensors of a checkpoint that is a plain state dict (see `read_checkpoint`), memory-mapped."""
    sd, extra = read_checkpoint(path, keys, skip)
    if extra:
        raise ValueError(f"{path}: not a plain state dict, it also holds {some_keys(sorted(map(str, extra)))}")
    return sd


# ----------------------------------------------------------------------------- strict loading


def load_strict(model: nn.Module, sd: dict, source: str = "checkpoint", dtype=None, origin: dict | None = None) -> None:
    """load_state_dict(assign=True) onto a meta-built model after checking names and shapes.

    A missing, unexpected or mis-shaped key raises naming it (`origin`: our key -> the checkpoint's,
    named too). Floating tensors are cast to dtype (in sd) when it is given. Afterwards no buffer
    may be left on the meta device.
    """

    def name(k):
        return f"{k} (from {origin[k]})" if origin and origin.get(k, k) != k else k

    want = model.state_dict()
    missing = sorted(set(want) - set(sd))
    unexpected = [name(k) for k in sorted(set(sd) - set(want))]
    shapes = [
        f"{name(k)}: {tuple(sd[k].shape)} in the checkpoint, the model wants {tuple(want[k].shape)}"
        for k in want
        if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {some_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {some_keys(unexpected)}")
    if shapes:
        problems.append("mis-shaped keys: " + "; ".join(shapes[:6]))
    if problems:
        raise ValueError(f"{source} does not fit {type(model).__name__}: " + " | ".join(problems))
    if dtype is not None:  # in place, one by one: each original can go once cast (no copy if already dtype)
        for k, v in sd.items():
            if v.is_floating_point():
                sd[k] = v.to(dtype)
    model.load_state_dict(sd, strict=True, assign=True)
    for k, b in model.named_buffers():
        if b.is_meta:
            raise RuntimeError(f"{source}: buffer {k} of {type(model).__name__} was left on the meta device")


# ----------------------------------------------------------------------------- atomic writes
# Write into a hidden sibling, fsync the files and the folder, rename into place (one os.replace), fsync
# the parent. A reader sees the old version or the new one, never half of one; a model memory-mapped
# from the old files keeps its pages (the renamed-away inodes live until it lets go).


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sibling(path: Path, tag: str) -> Path:
    return path.with_name(f".{path.name}.{tag}{os.getpid()}")


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write one file atomically (text as UTF-8), replacing it if it exists."""
    path = Path(path)
    tmp = _sibling(path, "tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)
    return path


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """`with atomic_dir(out) as tmp:` write the files into tmp; on leaving, tmp becomes out.

    An existing out is replaced whole (moved aside, then deleted). An exception inside the block
    deletes tmp and leaves out as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = _sibling(final, "tmp"), _sibling(final, "old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in sorted(tmp.rglob("*"), reverse=True):  # files, then their folders, deepest first
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # (os.replace cannot replace a non-empty folder)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
