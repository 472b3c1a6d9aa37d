"""Errors the library raises for inputs a user must fix; ``regan-train`` reports them in one line (exit code 2)."""


class ConfigError(ValueError):
    """A composed configuration holds a value that cannot work; raised before any training work."""


__all__ = ["ConfigError"]
