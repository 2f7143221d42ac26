"""OUT/explanations.jsonl: one JSON record per (dictionary, feature), append-only, safe to kill.

Every record is appended as one line, flushed and fsynced before the next
feature starts, so a kill loses at most the feature in progress; a write
torn by the kill is a last line without its newline, which `read_records`
ignores (and cuts off when repairing). Rewrites (dropping `failed` records
to retry them) replace the whole file atomically, so a kill during one
leaves the old or the new file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from common.errors import UserError
from common.runstate import write_text_atomic

RESULTS_FILE = "explanations.jsonl"


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def read_records(path: str | Path, repair: bool = False) -> list[dict[str, Any]]:
    """Records of an explanations.jsonl.

    Every record is written as one line ending in a newline, so a last line
    without one (or that is not JSON) is a write torn by a kill: it is ignored,
    and cut off when `repair`, so the feature is simply done again. A bad line
    anywhere else means the file was edited, which is an error.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    pos = good_end = 0
    line_no = 0
    while pos < len(data):
        line_no += 1
        nl = data.find(b"\n", pos)
        if nl == -1:
            break  # torn: the newline never made it
        line = data[pos:nl]
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if data[nl + 1:].strip():
                    raise UserError(f"line {line_no} of {path} is not JSON ({err.msg}) and is not the last line: "
                                    "the file was edited or damaged; fix or delete that line") from err
                break
        pos = good_end = nl + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def rewrite_records(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace the file with `records` (old or new file after a crash, never a mix)."""
    write_text_atomic(path, "".join(_line(r) for r in records))


class ResultsWriter:
    """Appends records, each fsynced before `write` returns (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(_line(record))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "ResultsWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
