"""One writer per output: a second process writing the same cache, dictionary or run folder is refused.

Two processes writing one output at once would interleave their files (and
each would take the other's half-written output for one made with other
settings). Commands take this lock through `common.runstate.claim_output`;
it lives here, apart, because it is the one part that talks to the kernel
(flock) and keeps per-process state.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from common.errors import UserError, first_line

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked
    fcntl = None  # type: ignore[assignment]


LOCK_NAME = ".dictlens.lock"
_held: dict[str, int] = {}  # lock path -> nesting depth, for locks this process holds
_held_guard = threading.Lock()


def lock_path_of(path: str | Path, folder: bool) -> Path:
    """Where the lock of an output lives: inside a folder output, beside a file output (`.NAME.lock`)."""
    path = Path(path).resolve()  # one lock per output, however its path is spelled (links, "..")
    return path / LOCK_NAME if folder else path.parent / f".{path.name}.lock"


@contextmanager
def output_lock(path: str | Path, *, folder: bool, flag: str = "--out", optional: bool = False) -> Iterator[Path | None]:
    """Hold the output `path` for this process for the whole block; a second writer gets a one-line error.

    Two processes writing one cache, dictionary or run folder at once would
    interleave their files (and each would take the other's half-written
    output for one made with other settings). The lock is an exclusive
    `flock` on a small file (see `lock_path_of`), so the kernel drops it when
    the process ends, however it ends (kill -9 included): a stale lock file
    never blocks a rerun. The file is removed when the block ends. Nested
    locks of the same output in one process (a stage called by the demo) are
    allowed. `optional`: an output whose lock file cannot be created (a
    read-only folder this run will not write) is not locked.
    """
    lock = lock_path_of(path, folder)
    key = str(lock)
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield lock
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    created = _first_missing(lock.parent)
    try:
        fd = _acquire(lock, path, flag)
    except OSError as err:
        _remove_empty(lock.parent, created)
        if not optional:
            raise UserError(f"{flag} {str(path)!r} cannot be locked for writing ({lock}: {first_line(err)}): "
                            "pass a path you can write to") from err
        fd = None
    if fd is None:
        yield None
        return
    with _held_guard:
        _held[key] = 1
    try:
        yield lock
    finally:
        with _held_guard:
            del _held[key]
        try:
            os.unlink(lock)  # while still holding it: a waiting process then sees a new file, see `_acquire`
        except OSError:
            pass
        os.close(fd)
        _remove_empty(lock.parent, created)


def _first_missing(folder: Path) -> Path | None:
    """The outermost of `folder` and its ancestors that does not exist yet (None if `folder` exists)."""
    missing = None
    while not folder.exists():
        missing, folder = folder, folder.parent
    return missing


def _remove_empty(folder: Path, created: Path | None) -> None:
    """Remove the folders the lock created (from `folder` up to `created`) that the run left empty."""
    if created is None:
        return
    while True:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (the run wrote something), or gone
        if folder == created:
            return
        folder = folder.parent


def _acquire(lock: Path, path: str | Path, flag: str) -> int:
    """An open descriptor of `lock` holding an exclusive flock, or UserError naming the holder's pid."""
    if fcntl is None:  # no flock (Windows): run unlocked, as before
        lock.parent.mkdir(parents=True, exist_ok=True)
        return os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"process {holder}" if holder else "another process"
            raise UserError(f"{flag} {str(path)!r} is being written by {who} right now (it holds {lock}): "
                            "wait for it to finish, or pass another " + flag) from None
        except OSError:
            os.close(fd)
            raise
        # The holder before us may have removed the file between our open and our flock: then we locked
        # an orphan and must retry on the file that is there now.
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _read_pid(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return text if text.isdigit() else ""
