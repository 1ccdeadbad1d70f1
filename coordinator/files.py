"""The one way horde writes a file: never through a link.

People share bundles and results directories; a link planted at a name horde writes
(``report.html.tmp`` -> ``~/.ssh/authorized_keys``) must not turn a report into a write
anywhere the user can write. So every write here:

- creates a temporary file exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) beside the
  target, writes it, then renames it over the target; a reader sees the old file or the
  new one, never half of one;
- refuses a target whose last component is a link (``UnsafePathError`` naming the path);
- appends (a bundle's ``windows.jsonl`` while a run goes) open with ``O_NOFOLLOW``.

Directories a path passes through are the user's to choose (a results directory may well
be a link to a bigger disk); only the name being written is checked.

    write_text(path, text)                 a whole file, text
    write_bytes(path, data, mode=0o600)    a whole file, bytes
    with replacing(path, "w") as f: ...    a whole file, streamed
    open_append(path, "a")                 an append-only file
    refuse_link(path)                      before handing a path to a library (SQLite, a rename)
    taken(path)                            is the name used? (a link there is refused, not skipped)
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

FILE_MODE = 0o644  # what open() gives under the usual umask; the umask still applies
PRIVATE_MODE = 0o600
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC
_TRIES = 16  # names taken by someone else in a shared directory before giving up


class UnsafePathError(OSError):
    """A write horde refused: its path is a link (or not a regular file where one is written)."""


def refuse_link(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path, or UnsafePathError if its last component is a symbolic link."""
    p = Path(path)
    if p.is_symlink():
        raise UnsafePathError(f"refusing to write {p}: it is a symbolic link (to {os.readlink(p)}); remove it first")
    return p


def taken(path: str | os.PathLike[str]) -> bool:
    """Whether a name horde picks for itself is in use; a link there is refused, not skipped,
    so a planted link is reported rather than silently stepped around."""
    return os.path.lexists(refuse_link(path))


@contextlib.contextmanager
def replacing(
    path: str | os.PathLike[str],
    mode: str = "w",
    *,
    perm: int = FILE_MODE,
    encoding: str = "utf-8",
    newline: str | None = None,
) -> Iterator[IO[Any]]:
    """Yield a file open for writing that becomes `path` when the block ends without an error
    (nothing changes at `path` otherwise). `mode` is "w" or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"replacing(): mode {mode!r} is not 'w' or 'wb'")
    target = refuse_link(path)
    fd, tmp = _create_beside(target, perm)
    try:
        if mode == "wb":
            f: IO[Any] = os.fdopen(fd, "wb")
        else:
            f = os.fdopen(fd, "w", encoding=encoding, newline=newline)
        with f:
            yield f
        refuse_link(target)  # again: the name may have been swapped for a link meanwhile
        os.replace(tmp, target)  # rename replaces a link itself, never what it points to
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text(
    path: str | os.PathLike[str],
    text: str,
    *,
    perm: int = FILE_MODE,
    encoding: str = "utf-8",
    newline: str | None = None,
) -> Path:
    with replacing(path, "w", perm=perm, encoding=encoding, newline=newline) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, perm: int = FILE_MODE) -> Path:
    with replacing(path, "wb", perm=perm) as f:
        f.write(data)
    return Path(path)


def open_append(path: str | os.PathLike[str], mode: str = "a", *, perm: int = FILE_MODE) -> IO[Any]:
    """Open `path` for appending ("a" or "ab"), creating it; a link at `path` is refused."""
    if mode not in ("a", "ab"):
        raise ValueError(f"open_append(): mode {mode!r} is not 'a' or 'ab'")
    target = refuse_link(path)
    try:
        fd = os.open(target, _APPEND_FLAGS, perm)
    except OSError as exc:
        if target.is_symlink():  # planted between the check and the open: O_NOFOLLOW caught it
            raise UnsafePathError(f"refusing to write {target}: it is a symbolic link") from exc
        raise
    return os.fdopen(fd, mode) if mode == "ab" else os.fdopen(fd, mode, encoding="utf-8")


def _create_beside(target: Path, perm: int) -> tuple[int, str]:
    """A new file in `target`'s directory, created exclusively (no link is followed, no
    existing file reused): a hidden name, so listings and globs skip it."""
    for _ in range(_TRIES):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, _CREATE_FLAGS, perm), str(tmp)
        except FileExistsError:
            continue
    raise UnsafePathError(f"refusing to write {target}: {_TRIES} temporary names beside it were all taken")
