"""User-facing errors. The CLI prints these as one line and exits with code 2."""
from __future__ import annotations


UNREGISTERED = "not registered here: import the module that registers it"  # front ends add how (--plugin)


class MetateleError(Exception):
    """An error the user can act on (bad input, bad file, divergence)."""


class RankDeficientError(MetateleError, ValueError):
    """A layer input h (d × n) has rank < n, so h⁺h ≠ I and the group action cannot be exact.

    Raised by `metatele.teleport.action` unless the caller passes ``least_squares=True``.
    """


class CheckpointError(MetateleError):
    """A checkpoint file is missing, corrupt, not safetensors, or does not match the request."""


class ConfigError(MetateleError):
    """A configuration value or command-line option is invalid. `params`: the parameters (config keys) at fault,
    which a front end may translate into its own option names."""

    def __init__(self, message: str, params: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.params = tuple(params)


class TrainStateError(MetateleError):
    """A training state cannot be used as asked: missing, already there, or from a different config."""


class TrainStateExistsError(TrainStateError):
    """The output directory already holds a training state and resuming was not asked for."""


class SeedOverlapError(ConfigError):
    """Evaluation task seeds overlap the seeds meta-training draws from."""


class StorageError(MetateleError):
    """A file or directory cannot be read or written: disk full, read-only, permission denied, a file where a
    directory is needed, a name too long. Earlier files are left as they were."""


class NonFiniteError(MetateleError):
    """NaN or inf was about to be written, or meta-training produced non-finite meta-parameters."""


class OutputInUseError(TrainStateError):
    """Another running training holds the lock on the output directory."""


class TeleportDriftError(MetateleError):
    """A teleport changed the loss on its own batch by more than the tolerance (it left the level set)."""


class DistributedError(MetateleError):
    """A distributed run cannot go on: a rank died, hung past the timeout, or cannot be reached."""
