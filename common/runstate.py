"""What every stage does to survive kill -9 and refuse to mix runs: one implementation for all.

Every stage writes small JSON records (settings, markers, results) that a
rerun trusts, so each must be either the old or the new file after a crash,
never a torn one: written to a temporary sibling, fsynced, renamed, and the
folder fsynced so the rename itself is durable. Every stage also refuses to
continue into an output made with other settings, because the result would
silently mix two experiments; the message names what differs and the fix.

Lives in `activations/` because that is the lowest layer (every stage may
import it; it imports nothing of the toolkit but the error type).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from common.errors import UserError, first_line

try:
    import fcntl
except ImportError:  # Windows: outputs are not locked
    fcntl = None  # type: ignore[assignment]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the file itself is already synced
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old or the new file, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _fsync_dir(path.parent)


def replace_atomically(tmp: str | Path, target: str | Path) -> None:
    """Put a finished temporary file or folder at `target` so that a crash never leaves half of either.

    The one way this tool replaces an output that is not written through
    `write_bytes_atomic` (an HDF5 file built by h5py, a folder of weights, a
    checkpoint, the report's pages): everything in `tmp` is fsynced and given
    the permissions the user's umask gives new files (`follow_umask`: temporary
    files are private, outputs are meant to be shared), an old folder at
    `target` is renamed aside and removed only once the new one is in place,
    and the parent is fsynced after the rename. `tmp` must be on the same
    filesystem as `target` (`staging_folder` makes one beside it).
    """
    tmp, target = Path(tmp), Path(target)
    follow_umask(tmp)
    if tmp.is_dir():
        for folder, _, files in os.walk(tmp):
            for name in files:
                _fsync_file(Path(folder) / name)
            _fsync_dir(Path(folder))
    else:
        _fsync_file(tmp)
    trash = None
    if target.is_dir() and not target.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, trash / target.name)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextmanager
def staging_folder(target: str | Path) -> Iterator[Path]:
    """A hidden temporary folder beside `target` (same filesystem, so `replace_atomically` is one rename),
    removed if the block ends without moving it into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, indent: int | None = 2) -> None:
    """JSON with a trailing newline, written atomically (see `write_bytes_atomic`)."""
    write_text_atomic(path, json.dumps(data, indent=indent, ensure_ascii=False) + "\n")


def follow_umask(path: str | Path) -> None:
    """Give `path` (a file, or a folder and everything in it) the permissions the user's umask gives new files.

    `tempfile.mkdtemp` / `mkstemp` make private (0700 / 0600) entries and
    safetensors writes 0600, but what this tool writes (models, caches,
    dictionaries, reports) is meant to be shared like any file the user makes:
    call this before moving such an output into place.
    """
    path = Path(path)
    mask = _umask()
    if path.is_dir() and not path.is_symlink():
        for folder, _, files in os.walk(path):
            os.chmod(folder, 0o777 & ~mask)
            for name in files:
                if not os.path.islink(os.path.join(folder, name)):
                    os.chmod(os.path.join(folder, name), 0o666 & ~mask)
    elif path.exists():
        os.chmod(path, 0o666 & ~mask)


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str | Path, what: str, fix: str) -> Any:
    """Parse a JSON record this tool wrote; an unreadable one is a one-line error naming `fix`."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path} ({what}) cannot be read ({type(err).__name__}): {fix}") from err


# -- settings identity ---------------------------------------------------------------------------

def settings_digest(identity: Any, length: int = 16) -> str:
    """A stable short hash of a JSON-serialisable settings record (key order does not matter)."""
    text = json.dumps(identity, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def differing_keys(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
    """The keys whose values differ (or that only one side has), sorted, ignoring runtime-only keys.

    For callers that word the difference themselves (the cache names which
    side is the file and which the command); others use `settings_differences`.
    """
    skip = set(ignore)
    return [k for k in sorted((set(old) | set(new)) - skip) if old.get(k) != new.get(k)]


def settings_differences(old: dict, new: dict, ignore: Iterable[str] = ()) -> list[str]:
    """`key: old -> new` for every setting that differs, sorted, ignoring runtime-only keys."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differing_keys(old, new, ignore)]


def require_same_settings(old: dict, new: dict, where: str | Path, fix: str, ignore: Iterable[str] = ()) -> None:
    """Refuse to continue into `where` when it was made with other settings.

    The message shows at most three differences, each cut to a readable
    length, because a settings record can hold long lists (paths, hooks).
    """
    diffs = settings_differences(old, new, ignore)
    if diffs:
        shown = "; ".join(d if len(d) < 160 else d[:157] + "..." for d in diffs[:3])
        more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
        raise UserError(f"{where} holds a run with other settings ({shown}{more}): {fix}")


# -- outputs -------------------------------------------------------------------------------------

def check_output_folder(path: str | Path, flag: str = "--out") -> Path:
    """Fail now, with one line, if `path` cannot become a writable folder: not after hours of work.

    Checks the deepest existing ancestor: it must be a folder we can write
    into (so the missing levels can be created), and `path` itself, if it
    exists, must be a writable folder. Nothing is created.
    """
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{flag} {str(path)!r} is a file, not a folder: pass a folder path")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(f"{flag} {str(path)!r} is not writable by this user: pass a folder you can write to")
        return path
    _check_parent(path, flag)
    return path


def check_output_file(path: str | Path, flag: str = "--out") -> Path:
    """Like `check_output_folder` for a single file: it may exist (it is replaced or resumed), but as a file."""
    path = Path(path)
    if path.exists():
        if path.is_dir():
            raise UserError(f"{flag} {str(path)!r} is a folder, not a file: pass a file path")
        if not os.access(path, os.W_OK):
            raise UserError(f"{flag} {str(path)!r} is not writable by this user: pass a path you can write to")
    _check_parent(path, flag)
    return path


def _check_parent(path: Path, flag: str) -> None:
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"{flag} {str(path)!r} lies under {str(ancestor)!r}, which is a file: pass another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {str(path)!r} cannot be created: {str(ancestor)!r} is not writable by this user; "
                        "pass a path you can write to")


# -- one writer per output -----------------------------------------------------------------------

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
