"""`LearnedOptimizer`: a shipped or trained learned optimizer (any `metatele.methods.Method`) as a
`torch.optim.Optimizer`, for one's own training loop.

Each step views the parameters of a param group as a batch of one task (every tensor gets a leading dim B = 1,
computed in float32) and calls `metatele.step.apply_method`, the same function the inner step of meta-training
and evaluation calls: there is no second copy of the update rule. The group's `lr` multiplies the method's
update (1.0: the update as meta-trained), so `torch.optim.lr_scheduler` can drive it. A divergence guard
(`metatele.optim.guard`) skips a step whose loss or gradient is non-finite or whose loss explodes, and rolls the
parameters back to the last good weights.

float32 and bfloat16 (any floating dtype) parameters are supported: the method always computes in float32 and
the result is written back in the parameter's dtype (no float32 master copy is kept).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metatele import checkpoints
from metatele.checkpoints import shipped_names
from metatele.methods.base import Method
from metatele.optim.guard import DivergenceGuard
from metatele.step import apply_method

__all__ = ["LearnedOptimizer", "shipped_names", "load_method"]

COMPUTE_DTYPE = torch.float32


def load_method(method: str | os.PathLike[str] | Method, device: torch.device) -> Method:
    """A `Method` from a shipped name, a checkpoint path (a model.safetensors or its directory) or a Method
    instance, on `device`. Unknown names raise ValueError; bad checkpoints CheckpointError."""
    if isinstance(method, (str, os.PathLike)):
        name = os.fspath(method)
        if name in shipped_names():
            return checkpoints.load_pretrained(name, device=device)
        if Path(name).exists():
            return checkpoints.load_model(name, device=device)
        raise ValueError(f"unknown learned optimizer {name!r}: neither a shipped name ({', '.join(shipped_names())}) "
                         "nor an existing checkpoint path")
    if isinstance(method, Method):
        return method.to(device) if isinstance(method, nn.Module) else method
    raise TypeError(f"method must be a shipped name, a checkpoint path or a metatele Method, got {type(method).__name__}")


def _update_only(method: Method) -> Method:
    """The method with its teleport switched off where it offers that (its update is unchanged)."""
    try:
        return method.without_teleport()  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no such switch, or the update lives in the teleport part (lstm-lr-tele)
        return method


def _fixed_widths(method: Method) -> tuple[int, ...]:
    """The widths a fixed-size method was trained for (() for a size-agnostic one)."""
    return tuple(getattr(getattr(method, "spec", None), "widths", ()) or ())


def _leaves(tree: Any) -> list[torch.Tensor]:
    """The tensors of a nested state (lists, tuples, dataclasses), in a fixed order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for x in tree for t in _leaves(x)]
    if hasattr(tree, "__dataclass_fields__"):
        return [t for k in tree.__dataclass_fields__ for t in _leaves(getattr(tree, k))]
    return []


def _fill(template: Any, values: Iterator[torch.Tensor]) -> Any:
    """`template` with its tensors replaced, in `_leaves` order, by `values`."""
    if isinstance(template, torch.Tensor):
        return next(values)
    if isinstance(template, (list, tuple)):
        return type(template)(_fill(x, values) for x in template)
    if hasattr(template, "__dataclass_fields__"):
        return type(template)(**{k: _fill(getattr(template, k), values) for k in template.__dataclass_fields__})
    return template


@dataclass
class _Segment:
    """Parameters that one call of the method updates together (a param group): its own method state."""

    group: int
    params: list[torch.Tensor]
    state: Any = None


class LearnedOptimizer(torch.optim.Optimizer):
    """A learned optimizer for any model's parameters.

        opt = LearnedOptimizer(model.parameters(), "any-update")
        loss.backward(); opt.step()          # or opt.step(closure), closure() returning the loss

    method: a shipped name (`shipped_names()`: the size-agnostic `any-*` run on any parameter tensor; the
    fixed-size `lstm-*` only on the bias-free MLP shape they were trained for), a checkpoint path, or any
    `metatele.methods.Method`. lr: multiplier on the method's update (1.0: as meta-trained). max_loss_ratio:
    the divergence guard's bound on the loss relative to its running minimum (None: non-finite values only).
    Parameters without a gradient at a step keep their values; a step that the guard refuses does not advance
    the method's state.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
                 method: str | os.PathLike[str] | Method = "any-update", *, lr: float = 1.0,
                 max_loss_ratio: float | None = 1e3) -> None:
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0.0 <= lr < float("inf"):
            raise ValueError(f"lr must be a finite number ≥ 0, got {lr!r}")
        self._segments: list[_Segment] = []
        self._method: Method | None = None
        self._widths: tuple[int, ...] = ()
        super().__init__(params, {"lr": float(lr)})
        devices = {p.device for g in self.param_groups for p in g["params"]}
        if len(devices) != 1:
            raise ValueError(f"all parameters must be on one device, got {sorted(map(str, devices))}")
        loaded = load_method(method, devices.pop())
        self.method_name: str = str(getattr(loaded, "name", type(loaded).__name__))
        self._method = _update_only(loaded)
        self._widths = _fixed_widths(loaded)
        for seg in self._segments:
            self._check_shapes(seg)
        self.guard = DivergenceGuard(max_loss_ratio)
        self.steps_taken = 0

    @property
    def method(self) -> Method:
        """The method that runs each step (its teleport switched off)."""
        assert self._method is not None
        return self._method

    @property
    def skipped_steps(self) -> int:
        """Steps the divergence guard skipped (rolling back to the last good weights)."""
        return self.guard.skipped

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for p in group["params"]:
            if not p.is_floating_point():
                raise TypeError(f"LearnedOptimizer optimizes floating-point parameters; got one of dtype {p.dtype} "
                                f"and shape {tuple(p.shape)}")
        seg = _Segment(len(self.param_groups) - 1, [p for p in group["params"] if p.requires_grad])
        if self._method is not None:
            self._check_shapes(seg)
        self._segments.append(seg)

    def _check_shapes(self, seg: _Segment) -> None:
        widths = self._widths
        if not widths:
            return
        want = [(b, a) for a, b in zip(widths, widths[1:])]
        got = [tuple(p.shape) for p in seg.params]
        if got != want:
            raise ValueError(f"{self.method_name} is a fixed-size optimizer trained for the bias-free "
                             f"{'-'.join(map(str, widths))} MLP (weight shapes {want}); this param group has shapes "
                             f"{got}. Use a size-agnostic one ({', '.join(n for n in shipped_names() if n.startswith('any'))})")

    def _views(self, seg: _Segment) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The segment as a batch of one task: weights and gradients (1, *shape) in float32."""
        ws, gs = [], []
        for p in seg.params:
            w = p.detach().to(COMPUTE_DTYPE)
            g = torch.zeros_like(w) if p.grad is None else p.grad.detach().to(COMPUTE_DTYPE)
            ws.append(w[None])
            gs.append(g[None])
        return ws, gs

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One update of every param group; with `closure` (re-evaluates the model and returns the loss) the
        loss is also checked by the divergence guard. Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                raise TypeError("the closure must return the loss as a one-element tensor (call backward() inside "
                                f"it and `return loss`), got {'None' if loss is None else type(loss).__name__}"
                                f"{'' if not isinstance(loss, torch.Tensor) else f' of shape {tuple(loss.shape)}'}")
        value = None if loss is None else float(loss.detach())
        params = [p for seg in self._segments for p in seg.params]
        if self.guard.check(value, [p.grad for p in params if p.grad is not None]):
            self._rollback(params)
            return loss
        self._remember(params)
        for seg in self._segments:
            if not seg.params:
                continue
            ws, gs = self._views(seg)
            if seg.state is None:
                seg.state = self.method.init_state(ws)
            new, seg.state, _ = apply_method(self.method, ws, gs, seg.state, lr=float(self.param_groups[seg.group]["lr"]))
            for p, w in zip(seg.params, new):
                if p.grad is not None:
                    p.copy_(w[0])
        self.steps_taken += 1
        return loss

    def _remember(self, params: list[torch.Tensor]) -> None:
        for p in params:
            st = self.state[p]
            if "last_good" in st:
                st["last_good"].copy_(p)
            else:
                st["last_good"] = p.detach().clone()

    def _rollback(self, params: list[torch.Tensor]) -> None:
        for p in params:
            if "last_good" in self.state[p]:
                p.copy_(self.state[p]["last_good"])

    def state_dict(self) -> dict[str, Any]:
        """torch's state dict (param groups, last good weights) plus "learned": the method's state per param
        group (plain tensors), the guard's record and the step count."""
        sd = super().state_dict()
        sd["learned"] = {"method": self.method_name, "steps": self.steps_taken, "guard": self.guard.state_dict(),
                         "states": [None if s.state is None else _leaves(s.state) for s in self._segments]}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict()` of a LearnedOptimizer with the same method and parameter layout; the loop then
        continues bit for bit."""
        learned = state_dict.get("learned") if isinstance(state_dict, dict) else None
        if not isinstance(learned, dict) or not isinstance(learned.get("states"), list):
            raise ValueError("not a LearnedOptimizer state dict (no 'learned' entry)")
        if learned.get("method") != self.method_name:
            raise ValueError(f"the state dict is of method {learned.get('method')!r}, this optimizer runs "
                             f"{self.method_name!r}")
        if len(learned["states"]) != len(self._segments):
            raise ValueError(f"the state dict has {len(learned['states'])} param groups' states, this optimizer "
                             f"has {len(self._segments)} param groups")
        super().load_state_dict(state_dict)
        for seg, leaves in zip(self._segments, learned["states"]):
            seg.state = None if leaves is None else self._restore(seg, leaves)
        self.guard.load_state_dict(learned["guard"])
        self.steps_taken = int(learned["steps"])

    def _restore(self, seg: _Segment, leaves: list[torch.Tensor]) -> Any:
        template = self.method.init_state(self._views(seg)[0])
        want = _leaves(template)
        if len(leaves) != len(want) or any(not isinstance(v, torch.Tensor) or v.shape != t.shape
                                           for v, t in zip(leaves, want)):
            raise ValueError(f"the state dict's method state for param group {seg.group} does not match its "
                             "parameters (different shapes)")
        return _fill(template, iter([v.to(t.device, t.dtype) for v, t in zip(leaves, want)]))
