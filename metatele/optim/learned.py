"""`LearnedOptimizer`: a shipped or trained learned optimizer (any `metatele.methods.Method`) as a
`torch.optim.Optimizer`, for one's own training loop.

Each step views parameters as a batch of one task (a leading dim B = 1, computed in float32) and calls
`metatele.step.apply_method`, the same function the inner step of meta-training and evaluation calls: there is no
second copy of the update rule. The parameters are cut into segments, each with its own method state: every
teleportable chain of the model (`metatele.nn.find_chains`, or chains the user names) when the method teleports and
`model` is given, as its augmented weights [W b] (1, d_out, d_in + 1) like `metatele.nn.SequentialTask`'s; and the
other parameters of each param group, one tensor (1, *shape) each. The group's `lr` multiplies the method's update
(1.0: as meta-trained), so `torch.optim.lr_scheduler` can drive it; it does not scale teleports. After the updates, a
chain teleports every `teleport_every` steps (`metatele.optim.teleport`). A divergence guard
(`metatele.optim.guard`) skips a step whose loss or gradient is non-finite or whose loss explodes, and rolls the
parameters back to the last good weights.

float32 and bfloat16 (any floating dtype) parameters are supported: the method always computes in float32 and
the result is written back in the parameter's dtype (no float32 master copy is kept).
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from metatele import checkpoints
from metatele.checkpoints import shipped_names
from metatele.methods.base import DEFAULT_HORIZON, Method, set_horizon
from metatele.nn import Chain, TeleportWarning, chain_of, find_chains
from metatele.optim.guard import DivergenceGuard
from metatele.optim.teleport import ChainTeleporter, Sampler, TeleportRecord
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
    raise TypeError("method must be a shipped name, a checkpoint path or a metatele Method, got "
                    f"{type(method).__name__}")


def _update_only(method: Method) -> Method:
    """The method with its teleport switched off where it offers that (its update is unchanged)."""
    try:
        return method.without_teleport()  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no such switch, or the update lives in the teleport part (lstm-lr-tele)
        return method


def _fixed_widths(method: Method) -> tuple[int, ...]:
    """The widths a fixed-size method was trained for (() for a size-agnostic one)."""
    spec = getattr(method, "spec", None)
    return tuple(getattr(spec, "fixed_widths", None) or getattr(spec, "widths", ()) or ())


def _proposes_teleport(method: Method, widths: Sequence[int], device: torch.device) -> bool:
    """Whether `method` proposes a teleport at its first step (probed on a small bias-free MLP of `widths`)."""
    ws = [torch.full((1, b, a), 0.1, device=device) for a, b in zip(widths, widths[1:])]
    prop, _ = method.propose(ws, [w.clone() for w in ws], method.init_state(ws))
    return prop.teleport is not None and (callable(getattr(prop.teleport, "direction", None))
                                          or getattr(prop.teleport, "rescaling", None) is not None)


def _leaves(tree: Any) -> list[torch.Tensor]:
    """The tensors of a nested state (lists, tuples, dataclasses), in a fixed order; numbers (a step counter)
    become 0-dim tensors (int64 or float64)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (bool, int, float)):
        return [torch.tensor(tree, dtype=torch.float64 if isinstance(tree, float) else torch.int64)]
    if isinstance(tree, (list, tuple)):
        return [t for x in tree for t in _leaves(x)]
    if hasattr(tree, "__dataclass_fields__"):
        return [t for k in tree.__dataclass_fields__ for t in _leaves(getattr(tree, k))]
    return []


def _fill(template: Any, values: Iterator[torch.Tensor]) -> Any:
    """`template` with its tensors replaced, in `_leaves` order, by `values`."""
    if isinstance(template, torch.Tensor):
        return next(values)
    if isinstance(template, (bool, int, float)):
        return type(template)(next(values).item())
    if isinstance(template, (list, tuple)):
        return type(template)(_fill(x, values) for x in template)
    if hasattr(template, "__dataclass_fields__"):
        return type(template)(**{k: _fill(getattr(template, k), values) for k in template.__dataclass_fields__})
    return template


@dataclass
class _Segment:
    """Parameters that one call of the method updates together, with its own method state: a teleportable chain
    (its Linear layers' weights and biases, as augmented matrices) or the other parameters of a param group."""

    group: int
    params: list[torch.Tensor]
    chain: Chain | None = None
    state: Any = None


def _chain_params(chain: Chain) -> list[torch.Tensor]:
    return [p for lin in chain.linears for p in ((lin.weight, lin.bias) if chain.bias else (lin.weight,))]


class LearnedOptimizer(torch.optim.Optimizer):
    """A learned optimizer for any model's parameters.

        opt = LearnedOptimizer(model.parameters(), "any-update")
        loss.backward(); opt.step()          # or opt.step(closure), closure() returning the loss

    method: a shipped name (`shipped_names()`: the size-agnostic `any-*` run on any parameter tensor; the
    fixed-size `lstm-*` only on the bias-free MLP shape they were trained for), a checkpoint path, or any
    `metatele.methods.Method`. lr: multiplier on the method's update (1.0: as meta-trained). max_loss_ratio:
    the divergence guard's bound on the loss relative to its running minimum (None: non-finite values only).
    Teleport (methods that propose one): model, the module the parameters belong to; chains, lists of Linear
    layer names that the model's forward runs as Linear → LeakyReLU(negative_slope) → Linear … (default: every
    chain found in the model's nn.Sequentials); teleport_every, teleport at steps 0, k, 2k, … (0: never);
    teleport_batch, "step" (the current step's batch, captured by hooks) or a callable returning the loss on a
    batch of its choice. Parameters without a gradient at a step keep their values; a step that the guard refuses
    does not advance the method's state. total_steps: how many steps the run will take, T of a method with progress
    features (lstm-* trained with progress, adafac*); None: `metatele.methods.DEFAULT_HORIZON`. Past T the features
    saturate (the method behaves as at the end of a run).
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
                 method: str | os.PathLike[str] | Method = "any-update", *, lr: float = 1.0,
                 max_loss_ratio: float | None = 1e3, model: nn.Module | None = None,
                 chains: Sequence[Sequence[str]] | None = None, negative_slope: float | None = None,
                 teleport_every: int = 1, teleport_batch: str | Sampler = "step", total_steps: int | None = None
                 ) -> None:
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not 0.0 <= lr < float("inf"):
            raise ValueError(f"lr must be a finite number ≥ 0, got {lr!r}")
        if total_steps is not None and (not isinstance(total_steps, int) or isinstance(total_steps, bool)
                                        or total_steps < 1):
            raise ValueError(f"total_steps must be a whole number ≥ 1 (or None), got {total_steps!r}")
        if chains is not None and (model is None or negative_slope is None):
            raise ValueError("naming chains needs model= and negative_slope= (the LeakyReLU slope between them)")
        self._segments: list[_Segment] = []
        self._ready = False
        super().__init__(params, {"lr": float(lr)})
        devices = {p.device for g in self.param_groups for p in g["params"]}
        if len(devices) != 1:
            raise ValueError(f"all parameters must be on one device, got {sorted(map(str, devices))}")
        device = devices.pop()
        self._full = load_method(method, device)
        set_horizon(self._full, DEFAULT_HORIZON if total_steps is None else total_steps)
        self.method_name: str = str(getattr(self._full, "name", type(self._full).__name__))
        self._update = _update_only(self._full)
        self._widths = _fixed_widths(self._full)
        self.guard = DivergenceGuard(max_loss_ratio)
        self.steps_taken = 0
        self._teleporter: ChainTeleporter | None = None
        self._chains: list[Chain] = []
        self._layout()  # shapes are checked before anything else is said about the model
        if teleport_every != 0 and _proposes_teleport(self._full, self._widths or (3, 4, 2), device):
            self._chains = self._teleport_chains(model, chains, negative_slope)
            self._teleporter = ChainTeleporter(self._chains, teleport_every, teleport_batch)
            self._teleporter.arm(0)
            self._layout()
        self._ready = True

    def __del__(self) -> None:
        if getattr(self, "_teleporter", None) is not None:
            self._teleporter.remove()  # the capture hooks on the model's chains

    @property
    def method(self) -> Method:
        """The method that updates the parameters outside teleporting chains (its teleport switched off)."""
        return self._update

    @property
    def skipped_steps(self) -> int:
        """Steps the divergence guard skipped (rolling back to the last good weights)."""
        return self.guard.skipped

    @property
    def teleport_chains(self) -> list[tuple[str, ...]]:
        """The Linear layers of each chain that teleports."""
        return [c.names for c in self._chains]

    @property
    def teleport_counts(self) -> Counter[str]:
        """Teleports by outcome: applied, applied on a sub-batch, undone, skipped."""
        return self._teleporter.counts if self._teleporter is not None else Counter()

    @property
    def teleports(self) -> list[TeleportRecord]:
        """The records of the latest teleports (`metatele.optim.teleport.TeleportRecord`)."""
        return list(self._teleporter.history) if self._teleporter is not None else []

    def _teleport_chains(self, model: nn.Module | None, names: Sequence[Sequence[str]] | None,
                         slope: float | None) -> list[Chain]:
        """The chains that teleport; warns once, naming the optimized layers that do not."""
        if model is None:
            warnings.warn(f"{self.method_name} teleports, but no model= was given: teleport is off and only the "
                          "update runs (pass model=model, and chains= for chains outside an nn.Sequential)",
                          TeleportWarning, stacklevel=3)
            return []
        if names is None:
            found = find_chains(model)
        else:
            found = [chain_of(model, c, slope) for c in names]  # type: ignore[arg-type]
        group_of = {p: i for i, g in enumerate(self.param_groups) for p in g["params"] if p.requires_grad}
        usable, notes = [], []
        for c in found:
            groups = {group_of.get(p) for p in _chain_params(c)}
            if None in groups or len(groups) != 1:
                why = "not all optimized" if None in groups else "in several param groups"
                notes.append(f"{'/'.join(c.names)} (its parameters are {why})")
            elif self._widths and (c.bias or c.widths != self._widths):
                notes.append(f"{'/'.join(c.names)} (not the {'-'.join(map(str, self._widths))} bias-free shape "
                             f"{self.method_name} was trained for)")
            else:
                usable.append(c)
        in_chain = {p for c in usable for p in _chain_params(c)}
        modules = sorted({name.rsplit(".", 1)[0] if "." in name else name for name, p in model.named_parameters()
                          if p in group_of and p not in in_chain})
        if modules or notes:
            warnings.warn(f"{self.method_name}: teleport is off for {', '.join(modules + notes)} (teleport needs a "
                          "Linear, (LeakyReLU, Linear)+ chain); they get the update only", TeleportWarning,
                          stacklevel=3)
        return usable

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if not p.is_floating_point():
                raise TypeError(f"LearnedOptimizer optimizes floating-point parameters; got one of dtype {p.dtype} "
                                f"and shape {tuple(p.shape)}")
        if self._ready:
            self._layout()

    def _layout(self) -> None:
        """Cut the parameters into segments (the class docstring) and check them against a fixed-size method."""
        def key(s: _Segment) -> tuple[int, tuple[int, ...], tuple[str, ...] | None]:
            return s.group, tuple(map(id, s.params)), None if s.chain is None else s.chain.names
        old = {key(s): s for s in self._segments}
        self._segments = []
        for gi, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.requires_grad]
            chains = [c for c in self._chains if _chain_params(c)[0] in set(params)]
            in_chain = {p for c in chains for p in _chain_params(c)}
            segs = [_Segment(gi, _chain_params(c), c) for c in chains]
            rest = [p for p in params if p not in in_chain]
            segs += [_Segment(gi, rest)] if rest else []
            for seg in segs:
                self._check_shapes(seg)
                kept = old.get(key(seg))
                self._segments.append(kept if kept is not None else seg)

    def _check_shapes(self, seg: _Segment) -> None:
        widths = self._widths
        if not widths:
            return
        want = [(b, a) for a, b in zip(widths, widths[1:])]
        got = [tuple(w.shape[1:]) for w in self._views(seg)[0]]
        if got != want:
            raise ValueError(f"{self.method_name} is a fixed-size optimizer trained for the bias-free "
                             f"{'-'.join(map(str, widths))} MLP (weight shapes {want}); these parameters have shapes "
                             f"{got}. Use a size-agnostic one "
                             f"({', '.join(n for n in shipped_names() if n.startswith('any'))})")

    def _views(self, seg: _Segment) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The segment as a batch of one task, in float32: a chain's augmented weights and gradients
        (1, d_out, d_in [+ 1]), or each parameter and its gradient (1, *shape)."""
        def grad(p: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(p, dtype=COMPUTE_DTYPE) if p.grad is None else p.grad.detach().to(COMPUTE_DTYPE)
        if seg.chain is not None:
            c = seg.chain
            ws = [w.to(COMPUTE_DTYPE) for w in c.get_weights()]
            gs = [(torch.cat([grad(lin.weight), grad(lin.bias)[:, None]], dim=1) if c.bias else grad(lin.weight))[None]
                  for lin in c.linears]
            return ws, gs
        return [p.detach().to(COMPUTE_DTYPE)[None] for p in seg.params], [grad(p)[None] for p in seg.params]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One update of every parameter, then the teleports due; with `closure` (re-evaluates the model and
        returns the loss) the loss is also checked by the divergence guard. Returns the closure's loss."""
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
        teleports = []
        for seg in self._segments:
            method = self._full if seg.chain is not None else self._update
            ws, gs = self._views(seg)
            if seg.state is None:
                seg.state = method.init_state(ws)
            new, seg.state, prop = apply_method(method, ws, gs, seg.state, lr=float(self.param_groups[seg.group]["lr"]))
            if seg.chain is not None:
                seg.chain.set_weights_(new)
                if prop.teleport is not None:
                    teleports.append((seg.chain, prop.teleport, new))
            else:
                for p, w in zip(seg.params, new):
                    if p.grad is not None:
                        p.copy_(w[0])
        tele = self._teleporter
        if tele is not None and teleports and tele.due(self.steps_taken):
            batches, sampled = tele.batch([c for c, _, _ in teleports])
            for chain, proposal, new in teleports:
                tele.teleport(chain, proposal, new, self.steps_taken, batches[chain.names], sampled)
        self.steps_taken += 1
        if tele is not None:
            tele.arm(self.steps_taken)
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
        """torch's state dict (param groups, last good weights) plus "learned": the method's state per segment
        (plain tensors), the guard's record, the teleport counts and the step count."""
        sd = super().state_dict()
        sd["learned"] = {"method": self.method_name, "steps": self.steps_taken, "guard": self.guard.state_dict(),
                         "teleport_counts": dict(self.teleport_counts),
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
            raise ValueError(f"the state dict has {len(learned['states'])} parameter segments' states, this optimizer "
                             f"has {len(self._segments)} (different param groups or teleporting chains)")
        super().load_state_dict(state_dict)
        for seg, leaves in zip(self._segments, learned["states"]):
            seg.state = None if leaves is None else self._restore(seg, leaves)
        self.guard.load_state_dict(learned["guard"])
        self.steps_taken = int(learned["steps"])
        if self._teleporter is not None:
            counts = dict(learned.get("teleport_counts", {}))
            self._teleporter.counts = Counter({str(k): int(v) for k, v in counts.items()})
            self._teleporter.arm(self.steps_taken)

    def _restore(self, seg: _Segment, leaves: list[torch.Tensor]) -> Any:
        method = self._full if seg.chain is not None else self._update
        template = method.init_state(self._views(seg)[0])
        want = _leaves(template)
        if len(leaves) != len(want) or any(not isinstance(v, torch.Tensor) or v.shape != t.shape
                                           for v, t in zip(leaves, want)):
            raise ValueError(f"the state dict's method state for param group {seg.group} does not match its "
                             "parameters (different shapes)")
        return _fill(template, iter([v.to(t.device, t.dtype) for v, t in zip(leaves, want)]))
