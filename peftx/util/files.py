"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import errno
import os
from pathlib import Path

# Storage errors the user fixes outside peftx (free space, a writable place): named in one line, never a
# traceback; a run stopped by one keeps its last checkpoint for --resume.
STORAGE_ERRORS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def storage_problem(error: BaseException) -> str | None:
    """`disk full: <path>` for an OSError of `STORAGE_ERRORS` (with the file it names, if any); None
    for any other error."""
    if not isinstance(error, OSError) or error.errno not in STORAGE_ERRORS:
        return None
    where = error.filename if error.filename is not None else None
    return STORAGE_ERRORS[error.errno] + (f": {where}" if where is not None else "")


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file so that a reader sees the old or the new content, never half of it, even if the
    machine stops: temporary name, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk keeps no half-written file behind
        raise
