"""Checkpoints: safetensors files whose header metadata holds one JSON document under "metatele".

Two kinds, as in learned_optimization:
- the *deployable* meta-optimizer `model.safetensors`: parameters + spec (rebuilds the model alone);
- the *resumable* training state `train_state.safetensors`: parameters, Adam state and progress.

Files are written atomically (`metatele.io`). Loading never unpickles:
a file that is not safetensors (a pickle, a zip from torch.save, truncated, empty) is refused.
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open
from torch import nn

from metatele.io import atomic_write_bytes, regular_file
from metatele._version import __version__
from metatele.errors import CheckpointError, NonFiniteError
from metatele.learned import LearnedSpec, MetaOptimizer, build, spec_from_dict

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_KEY = "metatele"
FORMAT = 1
SHIPPED_PACKAGE = "_shipped"  # the shipped checkpoints inside an installed package (see setup.py)
ADAM_STATE = ("step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")  # torch.optim.Adam's per-parameter state


def _nonfinite_keys(obj: Any, where: str = "") -> list[str]:
    """Where in a JSON-like value a float is NaN or ±inf (dotted keys, [i] for list items)."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [where or "(top)"]
    if isinstance(obj, dict):
        return [k for key, v in obj.items() for k in _nonfinite_keys(v, f"{where}.{key}" if where else str(key))]
    if isinstance(obj, (list, tuple)):
        return [k for i, v in enumerate(obj) for k in _nonfinite_keys(v, f"{where}[{i}]")]
    return []


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write tensors and JSON metadata atomically. NaN and inf are refused (NonFiniteError), in the tensors
    and in the metadata alike: they never reach the disk."""
    meta = {"format": FORMAT, "version": __version__, **meta}
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    bad = [f"tensor {k}" for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    bad += [f"metadata {k}" for k in _nonfinite_keys(meta)]
    if bad:
        raise NonFiniteError(f"refusing to write {path}: {', '.join(bad[:3])}{' …' if len(bad) > 3 else ''} "
                             "holds NaN or inf")
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata={META_KEY: json.dumps(meta, allow_nan=False)}))


def _sniff(path: Path) -> None:
    """Refuse files that are clearly not safetensors before handing them to the parser (a FIFO or a device at
    once, without reading it)."""
    size = regular_file(path, CheckpointError, "checkpoint")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
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
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path} has unreadable metatele metadata") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has metatele metadata that is not a JSON object")
    return tensors, meta


def check_tensors(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights that are not floating point (an int or bool tensor would be silently cast) or that hold
    NaN or inf."""
    for k, v in tensors.items():
        if not v.is_floating_point():
            raise CheckpointError(f"{path}: tensor {k} has dtype {v.dtype}; weights must be floating point")
        if not bool(torch.isfinite(v).all()):
            raise CheckpointError(f"{path}: tensor {k} holds NaN or inf")


LEGACY_SPEC_KEYS = {"eps": "magnitude"}  # format-1 files written before 0.2 named the teleport magnitude "eps"


def spec_from_meta(meta: dict[str, Any], path: str | Path) -> LearnedSpec:
    """The learned method's spec in (untrusted) checkpoint metadata, or CheckpointError. The method must be
    registered (`metatele.learned.LEARNED`); types and ranges are checked before anything is allocated."""
    try:
        spec_d = {LEGACY_SPEC_KEYS.get(k, k): v for k, v in dict(meta["spec"]).items()}
        return spec_from_dict(spec_d)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata has no valid meta-optimizer spec ({e})") from None


def save_model(path: str | Path, model: MetaOptimizer, **extra: Any) -> None:
    """Write a deployable checkpoint: parameters + spec + any extra JSON metadata."""
    save(path, model.state_dict(), {"kind": "meta_optimizer", "spec": model.spec.to_dict(), **extra})


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
    if widths is not None and spec.fixed_widths and tuple(widths) != spec.fixed_widths:
        raise CheckpointError(f"{path} was trained for widths {list(spec.fixed_widths)}, not {list(widths)}")
    check_tensors(tensors, path)
    model = build(spec)
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


def warm_start(model: MetaOptimizer, source: MetaOptimizer, path: str | Path) -> list[str]:
    """Initialize `model`'s meta-parameters from `source` (a checkpoint of the same method, loaded from `path`), in
    place, so that a new model that reads more inputs starts as the source exactly: a tensor of the same shape is
    copied; an input layer that reads extra features after the source's (equal shapes but a longer last axis) gets
    the source's columns and zeros in the new ones; a tensor the source lacks keeps its fresh value (the added
    heads are zero-initialized). Returns the names of the tensors not copied whole; CheckpointError for anything
    else (another method, widths or sizes)."""
    if source.spec.method != model.spec.method:
        raise CheckpointError(f"{path} holds method {source.spec.method!r}; cannot initialize {model.spec.method!r}")
    new, old = model.state_dict(), source.state_dict()
    if old.keys() - new.keys():
        raise CheckpointError(f"{path}: tensors {', '.join(sorted(old.keys() - new.keys()))} have no place in "
                              f"{model.spec.method} (another configuration)")
    partial = sorted(new.keys() - old.keys())
    with torch.no_grad():
        for k, v in old.items():
            t = new[k]
            if t.shape == v.shape:
                t.copy_(v)
            elif t.dim() == v.dim() and t.shape[:-1] == v.shape[:-1] and t.shape[-1] > v.shape[-1]:
                t.zero_()
                t[..., :v.shape[-1]].copy_(v)
                partial.append(k)
            else:
                raise CheckpointError(f"{path}: tensor {k} has shape {tuple(v.shape)}, the model needs "
                                      f"{tuple(t.shape)} (another configuration)")
    return sorted(partial)


def save_train_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any],
                     extra: dict[str, torch.Tensor] | None = None) -> None:
    """Write a resumable training state: the model's and the optimizer's state dicts as tensors, the
    optimizer's param groups and `meta` (progress, config) as JSON; `extra` tensors (e.g. an average of the
    parameters) under "extra.<name>"."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    osd = opt.state_dict()
    for i, s in osd["state"].items():
        for k, v in s.items():
            tensors[f"adam.{i}.{k}"] = torch.as_tensor(v)
    save(path, tensors, {"kind": "train_state", **meta, "adam_param_groups": osd["param_groups"]})


def restore_train_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any], model: nn.Module,
                        opt: torch.optim.Optimizer, path: str | Path) -> dict[str, torch.Tensor]:
    """Load a read training state into template `model` and `opt` (built from the stored config), after
    checking it as untrusted input: tensor names, dtypes, shapes and finiteness, and param groups equal to
    the template's (the config fixes them; the caller sets the template's lr to the meta-lr schedule's value at the
    stored point). Returns the `extra` tensors by name, for the caller to check."""
    if meta.get("kind") != "train_state":
        raise CheckpointError(f"{path} is not a training state")
    check_tensors(tensors, path)
    load_state_dict_checked(model, {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}, path)
    device = next(model.parameters()).device
    params = [q for g in opt.param_groups for q in g["params"]]  # the state dict numbers them in this order
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith(("model.", "extra.")):
            continue
        _, i, name = (k.split(".", 2) + ["", ""])[:3] if k.startswith("adam.") else ("", "", "")
        if not (i.isdigit() and int(i) < len(params) and name in ADAM_STATE):
            raise CheckpointError(f"{path}: unexpected tensor {k} in the training state")
        want = () if name == "step" else tuple(params[int(i)].shape)
        if tuple(v.shape) != want:
            raise CheckpointError(f"{path}: optimizer tensor {k} has shape {tuple(v.shape)}, the model implies {want}")
        if name == "step" and float(v) < 0:
            raise CheckpointError(f"{path}: optimizer step count {k} is negative ({float(v)})")
        state.setdefault(int(i), {})[name] = v.to(device) if name != "step" else v
    groups = meta.get("adam_param_groups")
    fresh = json.loads(json.dumps(opt.state_dict()["param_groups"]))  # what the stored config implies
    if not (isinstance(groups, list) and len(groups) == len(fresh) and all(
            isinstance(g, dict) and "params" in g and all(g[k] == f[k] for k in g.keys() & f.keys())
            for g, f in zip(groups, fresh))):
        raise CheckpointError(f"{path}: the optimizer's settings (adam_param_groups) do not match its config")
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: optimizer state does not match the model ({e})") from None
    return {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}


def pretrained_dir() -> Path:
    """Where the shipped checkpoints live: $METATELE_CHECKPOINTS if set; else the package data of an installed
    metatele (metatele/_shipped: setup.py installs the repository's checkpoints/ there); else the repository's
    checkpoints/ (a source checkout or an editable install)."""
    env = os.environ.get("METATELE_CHECKPOINTS")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    installed = package / SHIPPED_PACKAGE
    return installed if installed.is_dir() else package.parent / "checkpoints"


def shipped_names() -> list[str]:
    """The names `load_pretrained` accepts: the folders of `pretrained_dir()` that hold a model file."""
    d = pretrained_dir()
    return sorted(p.name for p in d.iterdir() if (p / MODEL_FILE).is_file()) if d.is_dir() else []


def load_pretrained(name: str, device: str | torch.device = "cpu") -> MetaOptimizer:
    """A shipped pretrained meta-optimizer by name (one of `shipped_names()`). A name that is not shipped, or a
    path, raises CheckpointError listing the shipped names; checkpoints from a path load with `load_model`."""
    names = shipped_names()
    if name not in names:
        raise CheckpointError(
            f"{name!r} is not a shipped pretrained optimizer; load_pretrained takes one of: "
            f"{', '.join(names) or f'(none found in {pretrained_dir()})'}. To load a checkpoint file or folder, "
            f"use metatele.load_model(path)")
    return load_model(pretrained_dir() / name / MODEL_FILE, method=name, device=device)
