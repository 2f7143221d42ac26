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
inside base64 images and scripts, and it replaces only whole paths (the
same left boundary as `ABSOLUTE_PATH`, a name character may not follow),
only folders of 2+ components, and never inside a data: URI: a short folder
such as the report's parent `/code` would otherwise turn `</code>` into
`<..>` and corrupt base64 images.
"""

from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

_PART = r"[\w.@+~%=-]"  # characters of a path component the general pattern follows
# no path starts right after these: a word, a relative path, a URL's host or path ("https://host/tmp/x"), base64
_LEFT = r"(?<![\w.~/\\+-])"
# an absolute POSIX path of 2+ components, not part of a URL, a relative path or a word ("and/or", "1/2/3")
# ("local:/models/m" is a path after a colon; in "http://host/a" no slash is both preceded right and followed by a name)
ABSOLUTE_PATH = re.compile(rf"{_LEFT}/(?:{_PART}+/)+{_PART}+")
DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+;base64,[A-Za-z0-9+/=]*")  # never touched by the final pass


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
        self._pairs = sorted(pairs, key=lambda p: (-len(p[0]), p))  # the deepest folder first
        self._known = [(re.compile(_LEFT + re.escape(old) + rf"(?!{_PART})"), new) for old, new in self._pairs]
        # the safety net: only the run and report folders (the data pass handles the report's parent, which may
        # be as short as /tmp or /code), of 2+ components, and the home folder, each found as a whole path
        final = [(form, shown_path(folder, out)) for folder in (Path(root), Path(out)) for form in _forms(folder)]
        home = str(Path.home())
        final.append((home, "~"))
        final = [(old, new) for old, new in final if len(Path(old).parts) >= 3]  # "/", then 2+ components
        self._final = _final_replacements(final)
        alternatives = "|".join(re.escape(old) for old in sorted(self._final, key=lambda o: (-len(o), o)))
        self._final_re = re.compile(rf"{_LEFT}(?:{alternatives})(?!{_PART})") if self._final else None

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
        """The safety net on written text: the run, report and home folders, raw, HTML-escaped and JSON-escaped,
        as whole paths (never inside a longer path, a word or a URL) and never inside a data: URI (base64 images)."""
        if self._final_re is None or not any(old in text for old in self._final):  # most pages: no folder at all
            return text
        sub = lambda chunk: self._final_re.sub(lambda m: self._final[m.group(0)], chunk)
        parts, at = [], 0
        for m in DATA_URI.finditer(text):
            parts += [sub(text[at:m.start()]), m.group(0)]
            at = m.end()
        parts.append(sub(text[at:]))
        return "".join(parts)


def _final_replacements(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """old -> new over the raw, HTML- and JSON-escaped forms of each pair, one replacement per old string.

    Why the order: where two forms of a folder are spelled alike (no special character in it) but its
    replacement is not (`../x<i>y`), the escaped replacement wins, so no raw `<` is written into a page,
    and the choice does not depend on set order (PYTHONHASHSEED)."""
    chosen: dict[str, str] = {}
    for old, new in sorted(pairs, key=lambda p: (-len(p[0]), p)):
        for form in _escaped(old, new):
            chosen.setdefault(*form)
    return chosen


def _escaped(old: str, new: str) -> list[tuple[str, str]]:
    """The HTML-escaped, then JSON-escaped (as `report.feature_data.js_json` writes a string), then raw form."""
    def js(s: str) -> str:
        return json.dumps(s, ensure_ascii=True)[1:-1].replace("<", "\\u003c").replace(">", "\\u003e") \
            .replace("&", "\\u0026")

    return [(html.escape(old, quote=True), html.escape(new, quote=True)), (js(old), js(new)), (old, new)]
