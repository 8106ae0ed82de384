"""Exceptions of prunekit. Every message names the value at fault and the fix."""


class PrunekitError(Exception):
    """Base class of all errors prunekit raises on purpose."""


class DataError(PrunekitError):
    """Calibration or evaluation data is missing, empty or unusable."""


class PatternError(PrunekitError):
    """A sparsity pattern is invalid or does not fit a layer."""


class ModelError(PrunekitError):
    """A model cannot be loaded, adapted or written."""


class NumericalError(PrunekitError):
    """NaN/Inf values, or a Hessian that damping cannot make positive definite."""


class UsageError(PrunekitError):
    """An argument is invalid: an unknown method, a bad path, a missing flag."""
