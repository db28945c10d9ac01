"""Atomic file output: write to a temporary name in the same directory, then rename, so
a killed job never leaves a file that looks finished."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; rename it onto `path` only on success.
    Only regular files are written: an empty name, a directory, a device, a FIFO or a
    symbolic link at `path` is refused (UserError) rather than replaced."""
    check_output_path(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file 0600; results on a shared cluster filesystem must be readable
    # like any other file the user writes (0666 less the umask)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output_path(path) -> None:
    """UserError unless `path` names a regular file or nothing yet."""
    from phaze.errors import UserError

    if path is None or str(path).strip() == "":
        raise UserError("empty output file name", field="-o", fix="name a file")
    p = Path(path)
    if p.is_symlink():
        raise UserError(f"{p} is a symbolic link; phaze writes only regular files", field="-o",
                        fix="name a regular file")
    if p.exists() and not p.is_file():
        kind = "a directory" if p.is_dir() else "not a regular file"
        raise UserError(f"{p} is {kind}", field="-o", fix="name a regular file")


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
