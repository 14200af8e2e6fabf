"""Atomic outputs: write into a temporary sibling folder, rename into place on success.

A failed stage leaves no half-written folder where a good one is expected (DESIGN §9). A process
killed mid-write (SIGKILL, OOM) cannot clean up: its temporary siblings carry its pid, and the next
write of the same target removes those whose process is gone.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def as_if_created(path: str | os.PathLike, directory: bool = False) -> None:
    """Give a temporary file or folder (mkstemp / mkdtemp make them 0600 / 0700) the permissions a
    plain create would have under the process umask, so a second container or user reading a shared
    volume can read the outputs."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def disk_full(err: BaseException, path) -> Exception | None:
    """The DiskFullError for an OSError that is a full disk or quota (None for any other error)."""
    from .errors import DiskFullError

    if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    folder = Path(path).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    what = "disk quota exceeded" if err.errno == errno.EDQUOT else "no space left on the device"
    return DiskFullError(f"{what} writing {path} ({folder}: {free}); nothing half-written was kept. Free space "
                         "there or choose a save dir on a larger disk (SaveDir / --save-dir), then run again: "
                         "finished PTQ trials and training checkpoints are reused")


def temp_prefix(target: Path) -> str:
    """The prefix of `target`'s temporary siblings: hidden, and naming the writing process."""
    return f".{target.name}.tmp-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def sweep_stale(target: Path) -> list[Path]:
    """Remove the temporary siblings of `target` (`.NAME.tmp-PID-*`, `.NAME.old-PID`) left by a
    process that was killed mid-write. Returns what was removed."""
    removed = []
    for kind in ("tmp", "old"):
        for path in target.parent.glob(f".{glob.escape(target.name)}.{kind}-*"):
            pid = path.name[len(target.name) + len(kind) + 3:].split("-", 1)[0]
            if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike):
    """Yield a fresh temporary folder; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), dir=target.parent))
    as_if_created(tmp, directory=True)
    try:
        yield tmp
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full(err, target)
        if full is not None:
            raise full from err
        raise
    replace_dir(tmp, target)


def replace_dir(src: Path, target: Path) -> None:
    """Move `src` to `target`, replacing an existing `target` with as short a gap as possible."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(src, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=path.parent)
    as_if_created(tmp)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        full = disk_full(err, path)
        if full is not None:
            raise full from err
        raise


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")
