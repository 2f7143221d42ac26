"""What every stage does to survive kill -9 and refuse to mix runs: one implementation for all.

Every stage writes small JSON records (settings, markers, results) that a
rerun trusts, so each must be either the old or the new file after a crash,
never a torn one: written to a temporary sibling, fsynced, renamed, and the
folder fsynced so the rename itself is durable. Every stage also refuses to
continue into an output made with other settings, because the result would
silently mix two experiments; the message names what differs and the fix.

Every command takes its output through `claim_output` (check, lock, compare
with the recorded settings, write the record), so the refusal has one wording.
Lives in `common/`, which every package may import; it imports nothing of the
toolkit but the error type.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from common.errors import UserError
from common.locks import output_lock

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
    trash = _move_aside(target) if target.is_dir() and not target.is_symlink() else None
    os.replace(tmp, target)
    _fsync_dir(target.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def remove_atomically(target: str | Path) -> None:
    """Remove the folder `target` in one step (a crash leaves it whole or gone, never half of it)."""
    target = Path(target)
    if target.exists():
        trash = _move_aside(target)
        _fsync_dir(target.parent)
        shutil.rmtree(trash, ignore_errors=True)


def _move_aside(target: Path) -> Path:
    """Rename `target` into a new hidden folder beside it, in one step; returns that folder, for removal."""
    trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.replace(target, trash / target.name)
    return trash


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


@contextmanager
def staging_file(target: str | Path) -> Iterator[Path]:
    """A hidden temporary path beside `target` for a file written by a library (h5py, safetensors, matplotlib),
    for `replace_atomically`; it keeps `target`'s suffix (matplotlib picks the format by it) and its name is
    fixed, so a run killed while writing leaves one stale file that the next run overwrites. Removed if the
    block ends without moving it into place."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp{target.suffix}")
    try:
        yield tmp
    finally:
        if tmp.exists():
            tmp.unlink()


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
    """The keys whose values differ (or that only one side has), sorted, ignoring runtime-only keys."""
    skip = set(ignore)
    return [k for k in sorted((set(old) | set(new)) - skip) if old.get(k) != new.get(k)]


def rerun_fix(can_overwrite: bool, flag: str = "--out") -> str:
    """The fix every refusal of an output made with other settings names (without --overwrite: the other two)."""
    if can_overwrite:
        return f"rerun with the same settings to resume, pass --overwrite to replace it, or choose another {flag}"
    return f"rerun with the same settings to resume, or choose another {flag}"


def require_same_settings(recorded: dict, asked: dict, where: str, *, source: str, can_overwrite: bool,
                          ignore: Iterable[str] = (), what: str = "run", flag: str = "--out",
                          error: type[UserError] = UserError) -> None:
    """The one refusal of an output made with other settings (`claim_output` and the per-folder checks of a sweep).

    One line: the output, every differing key, at most three of them with the
    value `source` (the record: `settings.json`, the cache's `file`) has and the
    one this command asks, each cut to a readable length because a record can
    hold long lists (paths, hooks), and the fix.
    """
    keys = differing_keys(recorded, asked, ignore)
    if not keys:
        return
    shown = []
    for k in keys[:3]:
        text = f"{k}: {source} has {recorded.get(k)!r}, command asks {asked.get(k)!r}"
        shown.append(text if len(text) < 200 else text[:197] + "...")
    more = f"; and {len(keys) - 3} more" if len(keys) > 3 else ""
    raise error(f"{where} holds a {what} made with other settings ({', '.join(keys)}): {'; '.join(shown)}{more}: "
                f"{rerun_fix(can_overwrite, flag)}")


def require_same_digest(recorded: dict, key: str, settings: dict, where: str, *, source: str, what: str) -> None:
    """The refusal of `require_same_settings` for an output that records a digest of its settings (`key`, see
    `settings_digest`) and, beside it, the settings themselves (`key`_record; older outputs hold only the
    digest, and then the digest is what the refusal names). Commands without --overwrite (a sweep's folders)."""
    digest = settings_digest(settings)
    if recorded.get(key) == digest:
        return
    old = recorded.get(f"{key}_record")
    new = json.loads(json.dumps(settings, default=str))  # as a record reads back (tuples are lists)
    if not isinstance(old, dict) or not differing_keys(old, new):
        old, new = {key: recorded.get(key)}, {key: digest}
    require_same_settings(old, new, where, source=source, can_overwrite=False, what=what)


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


# -- claiming an output --------------------------------------------------------------------------

SETTINGS_RECORD = "settings.json"


@dataclass
class Claim:
    """An output this process holds (see `claim_output`): compare it with the settings, write their record."""

    path: Path
    overwrite: bool | None  # None: the command has no --overwrite
    records: tuple[str, ...] = ()  # JSON files in the folder that record the settings; the first is written
    key: str | None = None  # the settings are this key of each record (None: the whole record)
    read: Callable[[Path], dict[str, dict]] | None = None  # {source: settings} of an output that is not a folder
    ignore: tuple[str, ...] = ()
    what: str = "run"
    flag: str = "--out"
    error: type[UserError] = UserError
    settings: dict | None = None
    recorded: dict[str, dict] = field(default_factory=dict)  # source -> settings found (equal to `settings`)

    @property
    def resumes(self) -> bool:
        """Whether the output already holds a record of these same settings (the run continues it)."""
        return bool(self.recorded)

    def compare(self, settings: dict) -> "Claim":
        """Refuse an output recorded with other settings, naming what differs (--overwrite: nothing is compared)."""
        self.settings = settings
        self.recorded = {} if self.overwrite else self.read(self.path) if self.read else self._read_records()
        for source, old in self.recorded.items():
            require_same_settings(old, settings, self._where(), source=source, can_overwrite=self.overwrite is not None,
                                  ignore=self.ignore, what=self.what, flag=self.flag, error=self.error)
        return self

    def write_record(self, extra: dict | None = None) -> Path:
        """Record the compared settings in the folder, with `extra` keys a rerun does not compare."""
        if not self.records or self.settings is None:
            raise ValueError("write_record needs a record file and settings given to `compare`")
        doc = {**(extra or {}), self.key: self.settings} if self.key else {**self.settings, **(extra or {})}
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.path / self.records[0], doc)
        return self.path / self.records[0]

    def _where(self) -> str:
        return f"{self.flag} {str(self.path)!r}"

    def _read_records(self) -> dict[str, dict]:
        found = {}
        fix = ("pass --overwrite to replace it, or choose another " if self.overwrite is not None else
               "delete it, or choose another ") + self.flag
        for name in self.records:
            path = self.path / name
            if not path.exists():
                continue
            data = read_json(path, "a settings record", fix)
            settings = data.get(self.key) if self.key and isinstance(data, dict) else data
            if not isinstance(settings, dict):
                raise self.error(f"{self._where()} holds {name} without a settings record (an older version, or "
                                 f"not this command's output), so it cannot be resumed: {fix}")
            found[name] = settings
        return found


@contextmanager
def claim_output(path: str | Path, settings: dict | None, overwrite: bool | None, *, folder: bool = True,
                 record: str | tuple[str, ...] | None = SETTINGS_RECORD, key: str | None = None,
                 read: Callable[[Path], dict[str, dict]] | None = None, ignore: Iterable[str] = (),
                 what: str = "run", flag: str = "--out", error: type[UserError] = UserError) -> Iterator[Claim]:
    """Take `path` as this command's output for the block: the one way every command does it.

    1. Check: `path` can become a writable folder (`folder`) or file, before any slow work.
    2. Lock: this process holds it until the block ends (`output_lock`); a second writer gets one line.
    3. Compare: the settings recorded in it must equal `settings`, apart from `ignore`d (runtime) keys, or the
       run is refused before anything is written, in the one wording of `require_same_settings`. The record
       is the JSON file `record` inside the folder (several: each must agree; `key`: the settings are that key
       of it), or what `read(path)` returns ({source: settings}, e.g. an HDF5 file's attributes).
       `overwrite` True: nothing is compared, the command replaces the output; None: the command has no
       --overwrite, and the refusal does not offer it. `settings` None: the command compares later with
       `Claim.compare` (a record that needs inputs read under the lock), or never (an output without a
       settings record, such as the report).
    4. Write the record: `Claim.write_record`, called when the command starts writing (most commands first
       check further inputs, so that a refused run leaves the output as it was).
    """
    path = check_output_folder(path, flag) if folder else check_output_file(path, flag)
    records = () if record is None else (record,) if isinstance(record, str) else tuple(record)
    with output_lock(path, folder=folder, flag=flag):
        claim = Claim(path, overwrite, records if folder else (), key, read, tuple(ignore), what, flag, error)
        if settings is not None:
            claim.compare(settings)
        yield claim
