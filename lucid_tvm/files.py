"""File helpers shared by the kernel cache and the artifacts (no TVM needed)."""

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path, write):
    """``write(tmp)`` then rename onto ``path``: readers see the old file or the new, never half,
    and a process that has the old one mapped (a loaded kernel library) keeps reading the old.
    The file gets the mode a plain ``open`` would give it: ``mkstemp``'s 0600 would leave an
    artifact exported by one user unreadable to the others."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def file_lock(path):
    """An exclusive lock across processes on the file ``path`` (made if missing); none when its
    directory cannot be written (a read-only kernel cache or database is only read)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except OSError:
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
