"""Error types. Every error names the problem and the fix; the CLI maps them to exit codes."""


class AutoCompressError(Exception):
    """Base class: a problem the user can fix. The message says what and how."""

    exit_code = 2


class ConfigError(AutoCompressError):
    """Invalid configuration: unknown key, wrong type, unsupported combination."""


class ModelError(AutoCompressError):
    """The model files are missing, ambiguous, corrupt or in an unsupported format."""


class DataError(AutoCompressError):
    """The data is empty, malformed or does not match the model's inputs."""


class EvalError(AutoCompressError):
    """The evaluation callback raised or returned a non-finite value."""


class DeviceError(AutoCompressError):
    """The requested device is not available in this Paddle build."""


class StorageError(AutoCompressError):
    """Object-store problems: missing bucket/key, bad credentials, checksum mismatch."""


class TrainingError(AutoCompressError):
    """Training diverged (NaN/inf loss or weights) or cannot continue; the last good checkpoint is kept."""
