"""Errors the library raises for inputs a user must fix; ``regan-train`` reports them in one line (exit code 2)."""


class ConfigError(ValueError):
    """A composed configuration holds a value that cannot work; raised before any training work."""


class PretrainedWeightsError(ValueError):
    """Trained weights to start from (``init_from``) that are missing, unsafe, damaged, or do not fit the networks."""


__all__ = ["ConfigError", "PretrainedWeightsError"]
