"""The project's error types: each names the problem in one line for the user.

They derive from Hydra's CompactHydraException, which Hydra reports as the message alone with
exit code 1 (the full traceback still shows with HYDRA_FULL_ERROR=1).
"""

from hydra.errors import CompactHydraException


class Hw4Error(CompactHydraException):
    """A problem the user can fix (bad input, data or settings)."""


class ConfigError(Hw4Error):
    """A configuration value is out of range or inconsistent."""


class DataError(Hw4Error):
    """A dataset file or folder is missing or malformed."""


class TrackingError(Hw4Error):
    """The MLflow tracking store cannot be used."""


class TrainingDiverged(Hw4Error):
    """The loss became NaN or infinite."""
