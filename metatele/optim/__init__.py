"""Learned optimizers as `torch.optim` optimizers, for one's own training loop (see `LearnedOptimizer`)."""
from metatele.optim.guard import DivergenceGuard, DivergenceWarning
from metatele.optim.learned import LearnedOptimizer, load_method, shipped_names
from metatele.optim.teleport import TeleportRecord

__all__ = ["LearnedOptimizer", "DivergenceGuard", "DivergenceWarning", "TeleportRecord", "load_method",
           "shipped_names"]
