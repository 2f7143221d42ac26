"""A SQLite cache of every LLM request and its (validated) response.

Why: explanation runs are long and LLM calls cost money or minutes; a rerun
must cost no calls and a killed run must resume where it stopped. Each entry
is keyed by the SHA-256 of the canonical JSON of the *full* request (backend
kind, model identity, endpoint, messages or prompt, every sampling parameter),
so any change to a prompt or parameter is a miss, never a stale hit. API keys
are never part of a request and are never stored.

Only successes are written: backends validate a response (e.g. it carries
digit log-probabilities) before `put`, and a failed call raises instead, so a
failure is retried on the next run rather than replayed. WAL mode lets
readers and one writer work at once (threads of one run, or a second process);
one connection is shared under a lock, which is enough because the database
work is tiny next to an LLM call.

Use::

    cache = LLMCache(path)                  # or LLMCache.disabled()
    hit = cache.get(request)                 # dict | None
    cache.put(request, response)             # both JSON-serialisable dicts
"""

from __future__ import annotations

import hashlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from common.errors import UserError, first_line


def request_key(request: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a request (sorted keys, no whitespace)."""
    blob = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class LLMCache:
    """Thread-safe SQLite request→response store; `path=None` keeps nothing (no caching)."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self.hits = 0
        self.misses = 0
        self._closed = False
        if self.path is not None and self.path.exists():
            self._open()  # an existing cache is checked now: a damaged one fails before any work

    def _open(self) -> sqlite3.Connection | None:
        """The connection, created on first need (call with `_lock` held, or from __init__).

        A cache file is created only when something is stored in it or read
        from an existing one, so a run that stops at a setup error (no API
        key, a model that does not load) leaves no empty database behind.
        """
        if self._conn is not None or self.path is None or self._closed:
            return self._conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                # Two processes opening a new cache file at once: one creates it, switches it to WAL and makes
                # the table while the other waits (a lock on the folder, so no lock file is left behind).
                fcntl.flock(folder, fcntl.LOCK_EX)
                conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=60.0)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, request TEXT NOT NULL, "
                    "response TEXT NOT NULL, created REAL NOT NULL)"
                )
                conn.commit()
            finally:
                os.close(folder)  # releases the lock
        except sqlite3.DatabaseError as err:
            raise UserError(f"cannot open the LLM cache {self.path}: {first_line(err)}; "
                            "delete it or pass another path") from err
        self._conn = conn
        return conn

    @classmethod
    def disabled(cls) -> "LLMCache":
        return cls(None)

    @property
    def enabled(self) -> bool:
        return self.path is not None and not self._closed

    def get(self, request: dict[str, Any]) -> dict[str, Any] | None:
        if not self.enabled:
            return None
        key = request_key(request)
        with self._lock:
            if self._conn is None and not self.path.exists():  # nothing stored yet: a miss, no file made
                self.misses += 1
                return None
            conn = self._open()
            row = conn.execute("SELECT response FROM calls WHERE key = ?", (key,)).fetchone()
            if row is None:
                self.misses += 1
                return None
            self.hits += 1
        return json.loads(row[0])

    def put(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        if not self.enabled:
            return
        key = request_key(request)
        req = json.dumps(request, sort_keys=True, ensure_ascii=False)
        resp = json.dumps(response, ensure_ascii=False)
        with self._lock:
            self._open().execute(
                "INSERT OR REPLACE INTO calls (key, request, response, created) VALUES (?, ?, ?, ?)",
                (key, req, resp, time.time()),
            )
            self._conn.commit()

    def __len__(self) -> int:
        if not self.enabled:
            return 0
        with self._lock:
            if self._conn is None and not self.path.exists():
                return 0
            return int(self._open().execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None
