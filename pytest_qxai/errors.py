"""Exceptions that carry one readable line for the user instead of a traceback."""

from __future__ import annotations


class QxaiError(Exception):
    """A problem the user can fix; its message is shown as one line, never with a traceback."""


class QxaiUsageError(QxaiError):
    """Bad command-line or ini input, detected before any model is loaded (pytest exit code 4)."""


class BackendMissingError(QxaiUsageError):
    """A quantization backend library is not installed; the message names the extra to install."""


class BaselineError(QxaiError):
    """A baseline file is unreadable, foreign, of an unknown schema, or stale."""


class DatasetError(QxaiError):
    """A bundled or user-supplied dataset is empty or malformed."""


class ArchitectureError(QxaiError):
    """The probes cannot find the modules they need in this model architecture."""


class ModelMismatchError(QxaiUsageError):
    """Input that contradicts the loaded model (``keep=`` naming a layer it lacks): exit code 4 once it is known."""
