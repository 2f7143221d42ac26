"""HTML building blocks: escaping, highlighted fragments, inline SVG histograms, tables, the page shell.

Every string that comes from a corpus, a model, an explanation or a file
name goes through `esc` (html.escape with quotes, control characters as
visible escapes), which is the only way text enters the page here; markup
is built only from constants and numbers.
As a second wall, the page carries a Content-Security-Policy that allows
exactly one script (the page's own, by its SHA-256) and images from data:
URIs, so even a missed escape could not run a corpus script.

The one inline script (`PAGE_SCRIPT`) runs on load and records on <body>
how many images decoded (`data-images-loaded` / `data-images-total`) and how
many feature cards exist (`data-cards`): a person sees broken plots at a
glance, and a headless browser can read the same facts from the DOM.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
from typing import Any, Iterable, Sequence


# C0 controls other than TAB/LF/CR, DEL, C1 controls, lone surrogates and the bidirectional embedding / override /
# isolate controls: never copied raw into the page (NUL and ESC are invalid in HTML, lone surrogates cannot even be
# written as UTF-8, and U+202E would reverse the text after it); shown as visible escapes.
_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """`text` with every control character written as a visible escape (`\\x1b`, `\\x00`, `\\ud800`)."""
    return _INVISIBLE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                          else f"\\u{ord(m.group()):04x}", text)


def esc(value: Any) -> str:
    return html.escape(visible(str(value)), quote=True)


def fmt(value: Any, spec: str = ".3f", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and (math.isnan(value) or math.isinf(value))):
        return missing
    if isinstance(value, (int, float)):
        return format(value, spec)
    return esc(value)


def png_img(png: bytes, alt: str, css_class: str = "plot") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="{css_class}" alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], css_class: str = "") -> str:
    """Headers are escaped here; cells must already be HTML (built with esc/fmt)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    cls = f' class="{esc(css_class)}"' if css_class else ""
    return f"<table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def display_token(token: str) -> str:
    """Make whitespace-only and control characters visible without changing what the token is."""
    return token.replace("\r", "\\r").replace("\n", "↵").replace("\t", "⇥")


def highlighted_fragment(tokens: Sequence[str], acts: Sequence[float], scale: float) -> str:
    """One fragment, each active token's background as dark as its activation relative to `scale`."""
    parts = []
    for token, act in zip(tokens, acts):
        text = esc(display_token(str(token)))
        a = float(act)
        if a > 0 and scale > 0:
            alpha = 0.15 + 0.85 * min(1.0, a / scale)
            parts.append(f'<span class="tok" style="background:rgba(255,120,0,{alpha:.2f})" '
                         f'title="{a:.3g}">{text}</span>')
        else:
            parts.append(text)
    return "".join(parts)


def svg_histogram(series: Sequence[tuple[str, str, Sequence[float]]], bins: int = 20,
                  width: int = 260, height: int = 90) -> str:
    """A small stacked histogram as inline SVG; `series` is [(label, colour, values)] (colours are constants).

    Inline SVG rather than one PNG per card: hundreds of cards stay light and
    need no matplotlib figure each.
    """
    values = [v for _, _, vs in series for v in vs]
    if not values:
        return '<p class="muted">no active tokens in the shown fragments</p>'
    top = max(values)
    lo = 0.0
    span = (top - lo) or 1.0
    counts = [[0] * bins for _ in series]
    for s, (_, _, vs) in enumerate(series):
        for v in vs:
            counts[s][min(bins - 1, int((v - lo) / span * bins))] += 1
    totals = [sum(c[b] for c in counts) for b in range(bins)]
    peak = max(totals) or 1
    pad_b, pad_l = 16, 4
    plot_h, plot_w = height - pad_b - 4, width - pad_l - 4
    bar_w = plot_w / bins
    rects = []
    for b in range(bins):
        y = height - pad_b
        for s, (label, colour, _) in enumerate(series):
            c = counts[s][b]
            if not c:
                continue
            h = plot_h * c / peak
            y -= h
            rects.append(f'<rect x="{pad_l + b * bar_w:.1f}" y="{y:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                         f'height="{h:.1f}" fill="{colour}"><title>{esc(label)}: {c} tokens in '
                         f'[{lo + span * b / bins:.3g}, {lo + span * (b + 1) / bins:.3g})</title></rect>')
    axis = (f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - 4}" y2="{height - pad_b}" stroke="#888"/>'
            f'<text x="{pad_l}" y="{height - 3}" class="ax">0</text>'
            f'<text x="{width - 4}" y="{height - 3}" class="ax" text-anchor="end">{top:.3g}</text>'
            f'<text x="{width / 2:.0f}" y="{height - 3}" class="ax" text-anchor="middle">activation</text>')
    legend = " ".join(f'<span class="swatch" style="background:{colour}"></span>{esc(label)} ({len(vs)})'
                      for label, colour, vs in series)
    return (f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="activation histogram">{"".join(rects)}{axis}</svg>'
            f'<div class="legend">{legend}</div>')


PAGE_SCRIPT = ("window.addEventListener('load',function(){var im=document.images,ok=0;"
               "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0){ok++}"
               "else{im[i].classList.add('broken')}}"
               "var b=document.body;b.setAttribute('data-images-loaded',String(ok));"
               "b.setAttribute('data-images-total',String(im.length));"
               "b.setAttribute('data-cards',String(document.querySelectorAll('.feature-card').length));});")

CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#ddd; --card:#fafafa; --accent:#b34700; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1200px; padding: 18px 22px 60px; }
h1 { font-size: 24px; margin: 4px 0 2px; } h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
.muted { color: var(--muted); } .small { font-size: 12px; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
.banner { background: #fff4e5; border: 1px solid #f0b060; border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.notrun { background: #f3f3f3; border: 1px dashed #bbb; border-radius: 6px; padding: 8px 12px; color: #555; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border-bottom: 1px solid var(--line); padding: 3px 9px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
td.l, th.l { text-align: left; }
img.plot { max-width: min(100%, 760px); border: 1px solid var(--line); border-radius: 4px; margin: 4px 0; }
img.broken { outline: 3px solid red; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr)); gap: 12px; }
.feature-card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; min-width: 0; }
.feature-card header { display: flex; justify-content: space-between; gap: 8px; align-items: baseline; }
.feature-card .fid { font-weight: 600; } .feature-card .where { color: var(--muted); font-size: 12px; }
.explanation { margin: 6px 0; padding: 6px 9px; background: #fff; border-left: 3px solid var(--accent);
               overflow-wrap: anywhere; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px; }
.scores { font-size: 12.5px; margin: 4px 0; } .scores b { font-variant-numeric: tabular-nums; }
.top-row { display: flex; gap: 12px; align-items: flex-start; }
.frags { margin: 4px 0 0; padding: 0; list-style: none; }
.frags li { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; white-space: pre-wrap;
            overflow-wrap: anywhere; background: #fff; border: 1px solid #eee; border-radius: 4px; padding: 3px 6px; margin: 3px 0; }
.frags .max { color: var(--muted); font-size: 11px; float: right; margin-left: 6px; }
.tok { border-radius: 2px; }
.fraglabel { font-size: 12px; color: var(--muted); margin-top: 6px; }
svg.hist text.ax { font-size: 9px; fill: #666; }
.legend { font-size: 11px; color: var(--muted); } .swatch { display: inline-block; width: 9px; height: 9px; margin: 0 3px 0 6px; }
.status-failed { border-color: #e0a0a0; } .badge { font-size: 11px; padding: 1px 6px; border-radius: 8px; background: #eee; }
details > summary { cursor: pointer; }
"""


def page(title: str, body: str, scripts: Sequence[str] = ()) -> str:
    """The page shell; `scripts` are more inline scripts (constants of this package), each allowed by its hash."""
    allowed = (PAGE_SCRIPT, *scripts)
    digests = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode("ascii") + "'"
                       for s in allowed)
    csp = (f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
           f"script-src {digests}; base-uri 'none'; form-action 'none'")
    tags = "".join(f"<script>{s}</script>\n" for s in allowed)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
            f"{tags}</body></html>\n")
