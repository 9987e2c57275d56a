"""Files other processes read while we write them (the config, the drained-backends list).

A reader (the file watcher, a worker's SIGHUP reload, an editor) must see the old
file or the new one, never half of either: the data goes to a temporary file in the
same directory, is fsync'ed, takes over the old file's mode and owner, and is renamed
over it; the directory is fsync'ed so the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(target: Path, data: bytes) -> None:
    try:
        st: os.stat_result | None = target.stat()
    except OSError:
        st = None
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            with contextlib.suppress(PermissionError):  # only root may give a file away
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
