"""Checkpoints: safetensors files whose header metadata holds one JSON document under "metatele".

Two kinds, as in learned_optimization:
- the *deployable* meta-optimizer `model.safetensors`: parameters + spec (rebuilds the model alone);
- the *resumable* training state `train_state.safetensors`: parameters, Adam state and progress.

Files are written to a temporary file and renamed into place (atomic). Loading never unpickles:
a file that is not safetensors (a pickle, a zip from torch.save, truncated, empty) is refused.
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from metatele._version import __version__
from metatele.errors import CheckpointError
from metatele.learned.meta_optimizer import MetaOptimizer, MetaOptSpec

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_KEY = "metatele"
FORMAT = 1


def atomic_write(path: str | Path, write: Callable[[str], object]) -> None:
    """Call write(tmp_path) and rename the finished file over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    meta = {"format": FORMAT, "version": __version__, **meta}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={META_KEY: json.dumps(meta)}))


def _sniff(path: Path) -> None:
    """Refuse files that are clearly not safetensors before handing them to the parser."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")
    if len(head) < 9 or head[8:9] != b"{":  # a safetensors header length may start with byte 0x80: check this first
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise CheckpointError(f"{path} is a pickle/torch.save file, not safetensors; refusing to load it "
                                  "(unpickling runs code)")
        raise CheckpointError(f"{path} is not a safetensors file (bad header)")
    (n,) = struct.unpack("<Q", head[:8])
    if 8 + n > size:
        raise CheckpointError(f"checkpoint {path} is truncated (header says {n} bytes, file has {size})")


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load tensors and metadata, or raise CheckpointError with a one-line reason."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is corrupt or truncated: {str(e).splitlines()[0][:200]}") from None
    if raw is None:
        raise CheckpointError(f"{path} is a safetensors file without metatele metadata")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path} has unreadable metatele metadata") from None
    return tensors, meta


LEGACY_SPEC_KEYS = {"eps": "magnitude"}  # format-1 files written before 0.2 named the teleport magnitude "eps"


def spec_from_meta(meta: dict[str, Any], path: str | Path) -> MetaOptSpec:
    """The MetaOptSpec in (untrusted) checkpoint metadata, or CheckpointError."""
    try:
        spec_d = {LEGACY_SPEC_KEYS.get(k, k): v for k, v in dict(meta["spec"]).items()}
        spec_d["widths"] = tuple(spec_d["widths"])
        return MetaOptSpec(**spec_d)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata has no valid meta-optimizer spec ({e})") from None


def save_model(path: str | Path, model: MetaOptimizer, **extra: Any) -> None:
    """Write a deployable checkpoint: parameters + spec + any extra JSON metadata."""
    save(path, model.state_dict(), {"kind": "meta_optimizer", "spec": asdict(model.spec), **extra})


def load_state_dict_checked(module: nn.Module, params: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load `params` into `module` after checking names and shapes against it (the template)."""
    expected = module.state_dict()
    if set(params) != set(expected):
        raise CheckpointError(f"{path}: weights do not match the metadata (tensor names differ)")
    for k, v in expected.items():
        if params[k].shape != v.shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(params[k].shape)}, metadata implies {tuple(v.shape)}")
    module.load_state_dict(params)


def model_from(tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path,
               method: str | None = None, widths: Sequence[int] | None = None) -> MetaOptimizer:
    """Rebuild a MetaOptimizer from read tensors and metadata (a model file or a training state)."""
    spec = spec_from_meta(meta, path)
    if method is not None and spec.method != method:
        raise CheckpointError(f"{path} holds method {spec.method!r}, not the requested {method!r}")
    if widths is not None and spec.widths and tuple(widths) != spec.widths:
        raise CheckpointError(f"{path} was trained for widths {list(spec.widths)}, not {list(widths)}")
    model = MetaOptimizer(spec)
    load_state_dict_checked(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
                            or tensors, path)
    model.metadata = meta
    return model


def load_model(path: str | Path, method: str | None = None, widths: Sequence[int] | None = None,
               device: str | torch.device = "cpu") -> MetaOptimizer:
    """Rebuild a MetaOptimizer from a checkpoint's metadata alone and load its weights.

    `path` may be a model.safetensors, a train_state.safetensors or a directory holding them.
    method/widths, if given, must match the checkpoint.
    """
    tensors, meta = read(path)
    return model_from(tensors, meta, path, method, widths).to(device)


def save_train_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Write a resumable training state: the model's and the optimizer's state dicts as tensors, the
    optimizer's param groups and `meta` (progress, config) as JSON."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for i, s in osd["state"].items():
        for k, v in s.items():
            tensors[f"adam.{i}.{k}"] = torch.as_tensor(v)
    save(path, tensors, {"kind": "train_state", **meta, "adam_param_groups": osd["param_groups"]})


def restore_train_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: nn.Module,
                        opt: torch.optim.Optimizer, path: str | Path) -> None:
    """Load a read training state into template `model` and `opt` (built from the stored config)."""
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training state")
    load_state_dict_checked(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    device = next(model.parameters()).device
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("adam."):
            _, i, name = k.split(".", 2)
            state.setdefault(int(i), {})[name] = v.to(device) if name != "step" else v
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["adam_param_groups"]})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: optimizer state does not match the model ({e})") from None


def pretrained_dir() -> Path:
    """Where shipped checkpoints live: $METATELE_CHECKPOINTS, else the repository's checkpoints/."""
    env = os.environ.get("METATELE_CHECKPOINTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "checkpoints"


def load_pretrained(name: str, device: str | torch.device = "cpu") -> MetaOptimizer:
    """A shipped pretrained meta-optimizer by method name (see `metatele.methods.LEARNED`)."""
    return load_model(pretrained_dir() / name / MODEL_FILE, method=name, device=device)
