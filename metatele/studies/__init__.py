"""Studies on real data with a user-style `nn.Sequential` model: each module runs one experiment end to end
(training, statistics, tables, figures, TensorBoard) behind a `metatele` subcommand."""
from __future__ import annotations
