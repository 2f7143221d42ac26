"""The feature pages' script and style sheet, and the index's feature-table script: plain JavaScript, no build step.

Why JavaScript draws the pages: 10,000 features of 25 highlighted 64-token
examples each would be ~1 GB of <span>s as static HTML; as numbers plus one
shared fragments file they are ~100 MB, and the browser does the drawing.
Both scripts build the DOM with createElement / textContent only, never
innerHTML, so a corpus string can never become markup (the data is also
cleaned in Python, see `report.feature_data`). The feature page's script is
one shared file (`features/feature.js`); the table's is inline in index.html,
allowed there by its SHA-256 in the page's Content-Security-Policy.

The table's state (sort column and direction, search words, basis, layer,
dictionary, minimum density) lives in the URL fragment, e.g.
`index.html#sort=density&dir=desc&q=comma`, so a view can be linked to and a
headless browser can check one; the controls write the same fragment.
"""

from __future__ import annotations

FEATURE_CSS = """
:root { --fg:#1d1d1f; --muted:#666; --line:#ddd; --accent:#b34700; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1100px; padding: 14px 22px 60px; }
h1 { font-size: 22px; margin: 4px 0 2px; } h2 { font-size: 17px; margin: 22px 0 6px; border-bottom: 1px solid var(--line); }
h3 { font-size: 14px; margin: 12px 0 4px; }
a { color: var(--accent); } nav a { margin-right: 14px; text-decoration: none; }
.muted { color: var(--muted); } .small { font-size: 12px; }
.stats b { font-variant-numeric: tabular-nums; }
.row { display: flex; gap: 24px; flex-wrap: wrap; align-items: flex-start; }
table { border-collapse: collapse; font-size: 13px; margin: 4px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 2px 8px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.tok, th.l, td.l { text-align: left; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
td.tok { white-space: pre; unicode-bidi: isolate; }
.explanation { margin: 6px 0; padding: 6px 9px; background: #fff; border-left: 3px solid var(--accent);
               overflow-wrap: anywhere; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12.5px;
               unicode-bidi: isolate; }
.chip { display: inline-block; font-size: 11.5px; padding: 1px 7px; margin: 1px 3px 1px 0; border-radius: 9px;
        background: #e8f0fb; border: 1px solid #b8cbe6; overflow-wrap: anywhere; unicode-bidi: isolate; }
.frags { margin: 4px 0 0; padding: 0; list-style: none; }
.frags li { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 12px; white-space: pre-wrap;
            overflow-wrap: anywhere; background: #fff; border: 1px solid #eee; border-radius: 4px; padding: 3px 6px;
            margin: 3px 0; unicode-bidi: isolate; }
.frags .max { color: var(--muted); font-size: 11px; float: right; margin-left: 6px; }
.t { border-radius: 2px; }
svg.hist text { font-size: 10px; fill: #666; }
"""

FEATURE_JS = r"""(function () {
'use strict';
var body = document.body;
window.addEventListener('error', function (e) { body.setAttribute('data-error', String(e.message)); });
var D = JSON.parse(document.getElementById('dl-data').textContent);
var F = window.DL_FRAGMENTS || {};
var root = document.getElementById('dl-root');
while (root.firstChild) { root.removeChild(root.firstChild); }
var SVG = 'http://www.w3.org/2000/svg';
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) { e.className = cls; }
  if (text !== undefined && text !== null) { e.textContent = String(text); }
  return e;
}
function add(parent, child) { parent.appendChild(child); return child; }
function num(x, digits) { return (x === null || x === undefined) ? '\u2013' : Number(x).toPrecision(digits || 3); }
function pct(x) { return (x === null || x === undefined) ? '\u2013' : (100 * x).toPrecision(3) + '%'; }
function link(href, text) { var a = el('a', '', text); a.setAttribute('href', href); return a; }
function section(title, id) { var h = add(root, el('h2', '', title)); if (id) { h.id = id; } return h; }
var dict = D.dictionary;

var nav = add(root, el('nav'));
add(nav, link('../../index.html#features-table', '\u2190 all features'));
if (D.prev !== null) { add(nav, link(D.prev + '.html', '\u2039 #' + D.prev)); }
if (D.next !== null) { add(nav, link(D.next + '.html', '#' + D.next + ' \u203a')); }
add(root, el('h1', '', dict.name + ' #' + D.index));
add(root, el('div', 'muted', dict.kind + ' \u00b7 ' + dict.hook));
var stats = add(root, el('p', 'stats'));
add(stats, document.createTextNode('density '));
add(stats, el('b', 'density', pct(D.density)));
add(stats, document.createTextNode(' of ' + dict.n_tokens + ' tokens \u00b7 max activation '));
add(stats, el('b', 'max', num(D.max)));

// explanations, every scorer's metrics, descriptors
section('Explanations', 'explanations');
if (!D.explanations.length) { add(root, el('p', 'muted', 'not explained (run `cli.py explain` on this dictionary)')); }
D.explanations.forEach(function (x) {
  var box = add(root, el('div', 'expl'));
  var meta = x.explainer + ' \u2192 ' + x.simulator + (x.mode ? ' \u00b7 mode ' + x.mode : '') + ' \u00b7 ' + x.status;
  add(box, el('div', 'muted small', meta));
  if (x.explanation !== null) { add(box, el('div', 'explanation', x.explanation)); }
  if (x.error) { add(box, el('div', 'explanation error', x.status + ': ' + x.error)); }
  var names = Object.keys(x.scores);
  if (names.length) {
    var t = add(box, el('table', 'scores'));
    names.forEach(function (s) {
      var tr = add(t, el('tr'));
      add(tr, el('th', 'l', s));
      var parts = Object.keys(x.scores[s]).map(function (m) { return m + ' ' + num(x.scores[s][m]); });
      add(tr, el('td', 'l', parts.join(' \u00b7 ')));
    });
  }
  if (x.candidates.length) {
    var det = add(box, el('details'));
    add(det, el('summary', 'small', 'other candidates (' + x.candidates.length + ')'));
    x.candidates.forEach(function (c) { add(det, el('div', 'explanation', c)); });
  }
});
if (D.descriptors) {
  var chips = add(root, el('div', 'chips'));
  add(chips, el('span', 'muted small', 'descriptors: '));
  D.descriptors.items.forEach(function (d) {
    var c = add(chips, el('span', 'chip', d.text + ' ' + pct(d.frequency)));
    c.title = 'frequency ' + num(d.frequency) + ' among the top documents \u00b7 lift ' + num(d.lift);
  });
  if (D.descriptors.consistency !== null) {
    add(chips, el('span', 'muted small', ' split-half consistency ' + num(D.descriptors.consistency, 2)));
  }
}

// histogram of the non-zero activations, and the logit effects
var row = add(root, el('div', 'row'));
var hbox = add(row, el('div'));
add(hbox, el('h2', '', 'Activation histogram'));
var edges = D.hist.edges, counts = D.hist.counts, W = 420, H = 140, pb = 18, pl = 6;
var svg = document.createElementNS(SVG, 'svg');
svg.setAttribute('class', 'hist'); svg.setAttribute('width', W); svg.setAttribute('height', H);
svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
var peak = Math.max.apply(null, counts.concat([1])), bw = (W - pl - 6) / Math.max(counts.length, 1), bars = 0;
counts.forEach(function (c, i) {
  if (!c) { return; }
  var h = (H - pb - 6) * c / peak, r = document.createElementNS(SVG, 'rect');
  r.setAttribute('x', (pl + i * bw).toFixed(1)); r.setAttribute('y', (H - pb - h).toFixed(1));
  r.setAttribute('width', Math.max(bw - 1, 1).toFixed(1)); r.setAttribute('height', h.toFixed(1));
  r.setAttribute('fill', '#d9661f');
  var tt = document.createElementNS(SVG, 'title');
  tt.textContent = c + ' tokens in (' + num(edges[i]) + ', ' + num(edges[i + 1]) + ']';
  r.appendChild(tt); svg.appendChild(r); bars++;
});
[[pl, 'start', edges.length ? num(edges[0]) : '0'], [W - 6, 'end', edges.length ? num(edges[edges.length - 1]) : ''],
 [W / 2, 'middle', 'activation (non-zero tokens)']].forEach(function (a) {
  var t = document.createElementNS(SVG, 'text');
  t.setAttribute('x', a[0]); t.setAttribute('y', H - 4); t.setAttribute('text-anchor', a[1]); t.textContent = a[2];
  svg.appendChild(t);
});
hbox.appendChild(svg);
if (!bars) { add(hbox, el('p', 'muted', 'never active on these tokens')); }
// logit effects exist only for d_model hooks, and there only with a known unembedding and n_logits > 0
var NO_LOGITS = /(^|\.)hook_(resid_pre|resid_post|mlp_out)$/.test(dict.hook)
  ? 'no logit effects were computed for this dictionary' : 'the hook is not in the residual stream';
function logits(title, rows, cls) {
  var box = add(row, el('div'));
  add(box, el('h2', '', title));
  if (!rows.length) { add(box, el('p', 'muted small', 'none (' + NO_LOGITS + ')')); return; }
  var t = add(box, el('table', 'logits ' + cls));
  var h = add(t, el('tr')); add(h, el('th', 'l', 'token')); add(h, el('th', '', 'logit effect'));
  rows.forEach(function (r) { var tr = add(t, el('tr')); add(tr, el('td', 'tok', r[0])); add(tr, el('td', '', num(r[1]))); });
}
logits('Promoted tokens', D.promoted, 'promoted');
logits('Suppressed tokens', D.suppressed, 'suppressed');

section('Neighbours by decoder cosine', 'neighbours');
var nl = add(root, el('p', 'neighbours'));
D.neighbours.forEach(function (n) {
  var label = '#' + n[0] + ' (' + num(n[1], 2) + ')';
  add(nl, n[2] ? link(n[0] + '.html', label) : el('span', 'muted', label));
  add(nl, document.createTextNode('  '));
});
if (!D.neighbours.length) { add(nl, el('span', 'muted', 'none')); }

// examples: tokens shaded by activation relative to the feature's maximum; hover shows the value
var shown = 0, scale = D.max || 0;
function examples(list) {
  var ul = add(root, el('ul', 'frags'));
  list.forEach(function (ex) {
    var li = add(ul, el('li')), toks = F[String(ex[0])], acts = ex[1];
    shown++;
    add(li, el('span', 'max', 'max ' + num(Math.max.apply(null, acts.concat([0]))) + ' \u00b7 fragment ' + ex[0]));
    if (!toks) { add(li, el('span', 'muted', '(tokens of fragment ' + ex[0] + ' not stored)')); return; }
    toks.forEach(function (tok, i) {
      var a = acts[i] || 0;
      if (a > 0 && scale > 0) {
        var s = add(li, el('span', 't', tok));
        s.style.background = 'rgba(255,120,0,' + (0.15 + 0.85 * Math.min(1, a / scale)).toFixed(2) + ')';
        s.title = String(a);
      } else { add(li, document.createTextNode(tok)); }
    });
  });
  return ul;
}
section('Top examples', 'top');
examples(D.top);
D.quantiles.forEach(function (q, k) {
  add(root, el('h3', '', 'Quantile ' + (k + 1) + ' of ' + D.quantiles.length + ': maximum activation in (' +
                num(q[0]) + ', ' + num(q[1]) + ']'));
  if (!q[2].length) { add(root, el('p', 'muted small', 'no fragment has its maximum in this range')); }
  examples(q[2]);
});
body.setAttribute('data-hist-bars', String(bars));
body.setAttribute('data-examples', String(shown));
body.setAttribute('data-rendered', '1');
})();
"""

TABLE_JS = r"""(function () {
'use strict';
var node = document.getElementById('dl-table-data');
if (!node) { return; }
var D = JSON.parse(node.textContent), body = document.body;
var rowsEl = document.getElementById('dl-rows'), countEl = document.getElementById('dl-count');
var ctl = {q: 'dl-q', basis: 'dl-basis', layer: 'dl-layer', dict: 'dl-dict', min: 'dl-min'};
var DEFAULT = {sort: 'feature', dir: 'asc', q: '', basis: '', layer: '', dict: '', min: '', all: ''};
var state = {};
// row: [dictionary index, feature, density, max, explanation, search text, [scores], has page]
var KEYS = {basis: function (r) { return D.dicts[r[0]].kind; }, layer: function (r) { return D.dicts[r[0]].layer; },
  dictionary: function (r) { return D.dicts[r[0]].name; }, feature: function (r) { return r[1]; },
  density: function (r) { return r[2]; }, max: function (r) { return r[3]; },
  explanation: function (r) { return r[4]; }};
D.scorers.forEach(function (s, i) { KEYS[s] = function (r) { return r[6][i]; }; });
D.rows.forEach(function (r) { r.push((r[5] || '').toLowerCase()); });
function el(tag, text) { var e = document.createElement(tag); if (text !== undefined) { e.textContent = String(text); } return e; }
function options(id, values) {
  var s = document.getElementById(id);
  values.forEach(function (v) { var o = el('option', v); o.value = v; s.appendChild(o); });
}
function uniq(f) { var seen = {}; D.dicts.forEach(function (d) { if (d[f] !== null) { seen[d[f]] = 1; } }); return Object.keys(seen).sort(); }
options('dl-basis', uniq('kind')); options('dl-layer', uniq('layer')); options('dl-dict', uniq('name'));
function readHash() {
  var h = location.hash.replace(/^#/, '');
  if (h.indexOf('=') < 0) { return false; }
  var p = new URLSearchParams(h);
  Object.keys(DEFAULT).forEach(function (k) { state[k] = p.has(k) ? p.get(k) : DEFAULT[k]; });
  return true;
}
function writeHash() {
  var p = new URLSearchParams();
  Object.keys(DEFAULT).forEach(function (k) { if (state[k] !== DEFAULT[k]) { p.set(k, state[k]); } });
  history.replaceState(null, '', '#' + (p.toString() || 'sort=feature'));
}
function syncControls() { Object.keys(ctl).forEach(function (k) { document.getElementById(ctl[k]).value = state[k]; }); }
function fmt(x) { return (x === null || x === undefined) ? '\u2013' : Number(x).toPrecision(3); }
function render() {
  var words = state.q.toLowerCase().split(/\s+/).filter(Boolean), min = parseFloat(state.min);
  var rows = D.rows.filter(function (r) {
    var d = D.dicts[r[0]];
    if (state.basis && d.kind !== state.basis) { return false; }
    if (state.layer && String(d.layer) !== state.layer) { return false; }
    if (state.dict && d.name !== state.dict) { return false; }
    if (!isNaN(min) && !(r[2] >= min)) { return false; }
    for (var i = 0; i < words.length; i++) { if (r[8].indexOf(words[i]) < 0) { return false; } }
    return true;
  });
  var key = KEYS[state.sort] || KEYS.feature, sign = state.dir === 'desc' ? -1 : 1;
  rows.sort(function (a, b) {
    var x = key(a), y = key(b);
    if (x === null || x === undefined) { return (y === null || y === undefined) ? a[0] - b[0] || a[1] - b[1] : 1; }
    if (y === null || y === undefined) { return -1; }
    var c = (typeof x === 'string') ? x.localeCompare(y) : x - y;
    return sign * c || a[0] - b[0] || a[1] - b[1];
  });
  var limit = state.all ? rows.length : Math.min(rows.length, D.page_size);
  var frag = document.createDocumentFragment();
  for (var i = 0; i < limit; i++) {
    var r = rows[i], d = D.dicts[r[0]], tr = el('tr');
    tr.setAttribute('data-dictionary', d.name); tr.setAttribute('data-feature', String(r[1]));
    tr.appendChild(el('td', d.kind)); tr.appendChild(el('td', d.layer === null ? '\u2013' : d.layer));
    tr.appendChild(el('td', d.name));
    var fc = tr.appendChild(el('td'));
    if (r[7]) { var a = el('a', '#' + r[1]); a.setAttribute('href', 'features/' + d.slug + '/' + r[1] + '.html'); fc.appendChild(a); }
    else { fc.textContent = '#' + r[1]; }
    tr.appendChild(el('td', r[2] === null ? '\u2013' : (100 * r[2]).toPrecision(3) + '%'));
    tr.appendChild(el('td', fmt(r[3])));
    var ex = tr.appendChild(el('td', r[4] || ''));
    ex.className = 'x'; ex.title = r[4] || '';
    r[6].forEach(function (s) { tr.appendChild(el('td', fmt(s))); });
    frag.appendChild(tr);
  }
  while (rowsEl.firstChild) { rowsEl.removeChild(rowsEl.firstChild); }
  rowsEl.appendChild(frag);
  countEl.textContent = rows.length + ' of ' + D.rows.length + ' features match; ' + limit + ' shown' +
    (limit < rows.length ? ' (\u201cshow all\u201d for the rest)' : '');
  document.querySelectorAll('#dl-table th[data-key]').forEach(function (th) {
    th.setAttribute('aria-sort', th.getAttribute('data-key') === state.sort ? (state.dir === 'desc' ? 'descending' : 'ascending') : 'none');
  });
  body.setAttribute('data-table-total', String(D.rows.length));
  body.setAttribute('data-table-matching', String(rows.length));
  body.setAttribute('data-table-shown', String(limit));
}
function update(k, v) { state[k] = v; writeHash(); render(); }
Object.keys(ctl).forEach(function (k) {
  document.getElementById(ctl[k]).addEventListener('input', function (e) { update(k, e.target.value); });
});
document.getElementById('dl-more').addEventListener('click', function () { update('all', '1'); });
document.querySelectorAll('#dl-table th[data-key]').forEach(function (th) {
  th.addEventListener('click', function () {
    var k = th.getAttribute('data-key');
    state.dir = (state.sort === k && state.dir === 'asc') ? 'desc' : (state.sort === k ? 'asc' : (k === 'feature' || k === 'basis' || k === 'dictionary' || k === 'layer' || k === 'explanation' ? 'asc' : 'desc'));
    state.sort = k; writeHash(); render();
  });
});
window.addEventListener('hashchange', function () { if (readHash()) { syncControls(); render(); } });
var linked = readHash();
if (!linked) { Object.keys(DEFAULT).forEach(function (k) { state[k] = DEFAULT[k]; }); }
syncControls(); render();
if (linked) { document.getElementById('features-table').scrollIntoView(); }  // a linked view opens on the table
})();
"""
