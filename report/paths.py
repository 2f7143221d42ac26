"""Keeping the machine's absolute paths out of a report: it is shared, the machine's layout is not its business.

Why two passes. `PathScrubber.text` / `.data` work on the *data* a page shows
(settings values, record fields, skipped reasons) before any escaping or
JSON: there a path is still the raw string, whatever characters its folders
have (`o'brien & co` is `o&#x27;brien &amp; co` once escaped, and no longer
matches). A path under the run folder or the report's parent becomes
relative to the report folder; any other absolute path of two or more
components becomes its last component (`/data/x.jsonl` -> `…/x.jsonl`).
`PathScrubber.final` is a safety net on the written text: the run, report
and home folders, raw and in their HTML- and JSON-escaped forms, made
relative. It never applies the general pattern, which would also match
inside base64 images and scripts.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

_PART = r"[\w.@+~%=-]"  # characters of a path component the general pattern follows
# an absolute POSIX path of 2+ components, not part of a URL, a relative path or a word ("and/or", "1/2/3")
# ("local:/models/m" is a path after a colon; in "http://host/a" no slash is both preceded right and followed by a name)
ABSOLUTE_PATH = re.compile(rf"(?<![\w.~/\\+-])/(?:{_PART}+/)+{_PART}+")


def shown_path(path: Path, out: Path) -> str:
    """A path as the pages show it: relative to the report folder (never the machine's absolute path)."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(out).resolve())
    except ValueError:  # another drive (Windows)
        return Path(path).name


def _forms(path: Path) -> set[str]:
    """The spellings a folder may have in the data: as given (made absolute) and with its links resolved."""
    return {str(Path(path).absolute()), str(Path(path).resolve())} - {"/"}


class PathScrubber:
    """Replaces absolute paths in what a report shows; built once per report (it runs on every page)."""

    def __init__(self, root: Path, out: Path) -> None:
        folders = {Path(root), Path(out), Path(out).absolute().parent}
        pairs = {(form, shown_path(folder, out)) for folder in folders for form in _forms(folder)}
        self._pairs = sorted(pairs, key=lambda p: -len(p[0]))  # the deepest folder first
        self._known = [(re.compile(re.escape(old) + rf"(?!{_PART})"), new) for old, new in self._pairs]
        final = list(self._pairs)
        home = str(Path.home())
        if len(home) > 1:
            final.append((home + "/", "~/"))
        self._final = [(o, n) for old, new in final for o, n in _escaped(old, new)]

    def text(self, value: str) -> str:
        """A shown string with its paths made relative (under the run / the report's parent) or cut to a name."""
        if "/" not in value:
            return value
        for pattern, new in self._known:
            value = pattern.sub(lambda m: new, value)
        return ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(0).rsplit("/", 1)[1], value)

    def data(self, value: Any, keep: Iterable[str] = ()) -> Any:
        """`text` applied to every string of nested dicts and lists; dict keys in `keep` are left as they are
        (corpus text such as exemplar tokens is the corpus's, not the machine's)."""
        kept = frozenset(keep)
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: v if k in kept else self.data(v, kept) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.data(v, kept) for v in value)
        return value

    def final(self, text: str) -> str:
        """The safety net on written text: the known folders, raw, HTML-escaped and JSON-escaped."""
        for old, new in self._final:
            if old in text:
                text = text.replace(old, new)
        return text


def _escaped(old: str, new: str) -> list[tuple[str, str]]:
    def js(s: str) -> str:  # as `report.feature_data.js_json` writes a string
        return json.dumps(s, ensure_ascii=True)[1:-1].replace("<", "\\u003c").replace(">", "\\u003e") \
            .replace("&", "\\u0026")

    forms = {(old, new), (html.escape(old, quote=True), html.escape(new, quote=True)), (js(old), js(new))}
    return sorted(forms, key=lambda p: -len(p[0]))
