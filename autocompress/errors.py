"""Error types. Every error names the problem and the fix; the CLI maps them to exit codes."""


class AutoCompressError(Exception):
    """Base class: a problem the user can fix. The message says what and how."""

    exit_code = 2
    # a deterministic user error: the same input fails the same way, so a pipeline never retries it
    retryable = False


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


class TransientStorageError(StorageError):
    """The object store kept failing (unreachable, timeouts, truncated bodies) through every in-process
    retry: worth a pipeline retry later, unlike a missing bucket or rejected credentials."""

    retryable = True


class DiskFullError(AutoCompressError):
    """A write ran out of space (ENOSPC, EDQUOT). The atomic writers leave nothing half-written, so
    freeing space (or another save dir) and running again resumes from what was kept."""


class TrainingError(AutoCompressError):
    """Training diverged (NaN/inf loss or weights) or cannot continue; the last good checkpoint is kept."""


def is_user_error(err: BaseException) -> bool:
    """A deterministic error in the user's input: report it, never retry it."""
    return isinstance(err, AutoCompressError) and not err.retryable
