"""Atomic file writes shared by the exporter, the CLI and the benchmarks (standard library only).

Example::

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.txt")
    >>> atomic_write(path, "hello")
    >>> open(path).read()
    'hello'
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Union


def current_umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Union[str, "os.PathLike[str]"], data: Union[bytes, str], mode: Optional[int] = None) -> None:
    """Write ``data`` (str is UTF-8 encoded) to ``path`` atomically: a temp file in the same directory,
    flushed and fsynced, then ``os.replace``. Readers never see a partial file; the temp file is removed
    if anything fails. ``mode``: the file's permissions (default ``0o666 & ~umask``, what ``open`` gives;
    ``mkstemp`` alone would leave 0600).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
