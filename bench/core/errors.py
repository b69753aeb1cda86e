"""Error types. Every user-facing error names the offending field and the allowed values."""


class SmartbenchError(Exception):
    """Base class for errors smartbench reports to the user (exit code 2, nothing written)."""


class ConfigError(SmartbenchError):
    """Bad user input: unknown name, value out of range, pattern that does not fit a layer."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class DataError(SmartbenchError):
    """A dataset is missing or malformed."""
