"""Errors a user can cause. Each message names the problem and the fix; the CLI prints it
as one line on stderr and exits with code 2."""

from __future__ import annotations


class NpllmError(Exception):
    """Base class of every error npllm raises for bad input or misuse."""


class ShapeError(NpllmError, ValueError):
    """Arrays whose shapes do not fit the operation."""


class GradError(NpllmError, RuntimeError):
    """Misuse of the autograd engine (e.g. backward on a non-scalar without a gradient)."""


class GradcheckError(NpllmError, AssertionError):
    """An analytic gradient disagrees with central finite differences."""


class ConfigError(NpllmError, ValueError):
    """An invalid configuration value or flag."""


class DataError(NpllmError, ValueError):
    """A corpus, token file or tokenizer input that cannot be used."""


class CheckpointError(NpllmError, RuntimeError):
    """A checkpoint or run folder that is missing, corrupt or does not match."""


class GrammarError(NpllmError, ValueError):
    """A regex, JSON Schema or grammar that cannot be used to constrain generation:
    unsupported syntax or keyword, or no output could ever satisfy it."""
