"""One location resolver for models, data and teachers: a local path, `s3://` / `minio://` (fetched,
verified), or `builtin://` demo assets (materialised on first use)."""
from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def local_path(location: str, dest=None, what: str = "location") -> Path:
    """A local folder for `location`; object-store URIs are downloaded into `dest` (default: the cache)."""
    from . import storage

    location = str(location)
    if location.startswith("builtin://"):
        from .demo.digits import materialize_builtin

        return Path(materialize_builtin(location))
    if storage.is_remote(location):
        return storage.fetch(location, dest)
    if "://" in location:
        raise ConfigError(f"{what}: {location} uses an unsupported scheme; use a local path, s3://, minio:// "
                          "or builtin://")
    return Path(location)


def existing_folder(location: str, what: str) -> Path:
    """`local_path`, and an error naming the key when a local folder does not exist."""
    path = local_path(location, what=what)
    if not path.exists():
        raise ConfigError(f"{what}: {location} does not exist")
    return path
