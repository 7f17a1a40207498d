"""Feature cards as HTML and as terminal text (SAEDashboard / Neuronpedia layout), from a `FeatureCards` set.

Pure string building, no torch, nothing fetched: every page is one self-contained file that works offline.

- `card_html`: one static card (``<section class="card" id="feature-{f}">``): header (layer, id, heuristic label,
  density, max/mean activation, Neuronpedia link when the SAE has one), the histogram of nonzero activations
  (inline SVG), logit lens, features that fire together and nearest decoder directions (links), the top
  contexts and the quantile examples with token-level highlighting, and, given a run's steering effects, what
  steering with the feature did.
- `cards_page`: a page of static cards (readable without JS; a tiny inline filter when JS runs).
- `index_page`: every feature of the SAE in one static table; a row opens its card, rendered in the browser from
  compact JSON in the page (the token stream once, per feature only positions and values), so 3,072 features
  stay a few MB. ``index.html#feature-1398`` opens card 1398.
- `card_text`: one card for a terminal.

A highlighted token's background is proportional to its activation / the feature's max activation. Only the
activations of stored examples are known, so other tokens in a window show no value (not a measured zero).
"""

from __future__ import annotations

import html
import json
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

from crl.cards.label import HEURISTIC_MARK
from crl.cards.store import NEURONPEDIA_URL, FeatureCards, neuronpedia_url
from crl.cards.tokens import token_type

LABEL_HELP = (
    "Heuristic label, not a checked description: the token(s) this feature fires on most in its top examples "
    "(and the token before them), then → the two most promoted whole-word logit-lens tokens (crl/cards/label.py)."
)
LEVEL_NAMES = {1: "amplify", -1: "suppress"}
SPARK = "▁▂▃▄▅▆▇█"
_GLYPHS = {"\n": "↵", "\t": "⇥", "\r": "␍"}  # terminal
# HTML: "↵" renders tiny in common monospace fonts; an escaped "\n" in grey reads at any size
_HTML_GLYPHS = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}

# -- small formatting helpers ---------------------------------------------------------------------------------------


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def shown_token(tok: str, glyphs: dict[str, str] = _GLYPHS) -> str:
    """A token as displayed: newlines, tabs and carriage returns as visible glyphs, spaces kept."""
    return "".join(glyphs.get(c, c) for c in tok) if tok else "∅"


def _html_token(tok: str) -> str:
    return _e(shown_token(tok, _HTML_GLYPHS))


def density_text(density: float) -> str:
    """``1.92% (1 in 52 tokens)``; ``never fired`` for a dead feature."""
    if density <= 0:
        return "never fired"
    return f"{density * 100:.3g}% (1 in {round(1 / density):,} tokens)"


def shown_label(cards: FeatureCards, f: int) -> str:
    return f"{HEURISTIC_MARK} {cards.label(f)}"


def level_name(level: float) -> str:
    return LEVEL_NAMES.get(level, f"level {level:+g}")  # 1.0 finds 1: equal numbers hash alike


def _text_line(cards: FeatureCards) -> tuple[str, str]:
    """(what the cards were computed on, per-source token counts) from cards.meta["text"]."""
    text = cards.meta.get("text") or {}
    n_tok = text.get("n_tokens")
    rows = f" ({text['n_rows']} rows × {text['seq']})" if "n_rows" in text and "seq" in text else ""
    line = f"Computed on {n_tok:,} held-out tokens{rows}" if n_tok else "Computed on held-out text"
    if text.get("source"):
        line += f": {text['source']}"
    by_source = ", ".join(f"{k} {v:,}" for k, v in (text.get("tokens_by_source") or {}).items())
    return line + ".", by_source


def _bin_shares(cards: FeatureCards, f: int) -> dict[int, float]:
    """Share of the feature's nonzero activations in each quantile bin (from the histogram)."""
    centres, counts = cards.histogram(f)
    total = sum(counts) or 1
    n_bins = int(cards.meta["quantile_bins"])
    out = dict.fromkeys(range(n_bins), 0.0)
    top = float(cards.max_act[f]) or 1.0
    for c, n in zip(centres, counts, strict=True):
        out[min(int(c / top * n_bins), n_bins - 1)] += n / total
    return out


# -- HTML pieces ----------------------------------------------------------------------------------------------------

CSS = """
:root{--fg:#1f2328;--mu:#656d76;--ln:#d8dee4;--bg:#f6f8fa;--lk:#0969da}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:1200px;margin:0 auto;padding:12px 16px 40px}
h1{font-size:20px;margin:8px 0 2px}
a{color:var(--lk);text-decoration:none}a:hover{text-decoration:underline}
.sub{color:var(--mu);font-size:13px;margin:0 0 10px}
.mono,.tk,.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.heur{cursor:help;border-bottom:1px dotted var(--mu)}
.card{background:#fff;border:1px solid var(--ln);border-radius:8px;padding:12px 16px;margin:14px 0}
.card>header h2{font-size:16px;margin:0;display:flex;gap:10px;align-items:baseline;flex-wrap:wrap}
.card>header h2 .lab{font:600 14px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.stats{color:var(--mu);font-size:13px;margin-top:2px}.stats b{color:var(--fg);font-weight:600}
.grid{display:grid;grid-template-columns:300px minmax(0,1fr);gap:20px;margin-top:6px}
@media (max-width:800px){.grid{grid-template-columns:1fr}}
h3{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:var(--mu);margin:12px 0 4px}
h3 small{text-transform:none;letter-spacing:0;font-weight:400}
.ctx{display:grid;grid-template-columns:3.6em minmax(0,1fr) auto minmax(0,1fr);font-size:12px;line-height:21px}
.ctx:nth-child(even){background:#fafbfc}
.ctx .v{color:var(--mu);text-align:right;padding-right:.5em}
.ctx .l,.ctx .r{display:flex;overflow:hidden;white-space:pre}.ctx .l{justify-content:flex-end}
.ctx span{flex:none;white-space:pre}
.t{border-radius:2px}.t.at{outline:1.5px solid #bc4c00;outline-offset:-1px;font-weight:600}
.t.g{color:#8c959f}.t.at.g{color:var(--fg)}
.bin{margin:6px 0 2px;font-size:12px;color:var(--mu)}
table.lens{border-collapse:collapse;width:100%;font-size:12px}
table.lens td{padding:0 4px 0 0;white-space:nowrap}
table.lens td.tk{max-width:110px;overflow:hidden;text-overflow:ellipsis;white-space:pre}
table.lens td.bar{width:100%}table.lens td.num{text-align:right;color:var(--mu)}
.bar span{display:block;height:10px;border-radius:2px}
.pos .bar span{background:#8fd19e}.neg .bar span{background:#ffaba8}
.chip{display:inline-block;background:var(--bg);border:1px solid var(--ln);border-radius:3px;padding:0 3px;
margin:1px 2px;white-space:pre;font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
.chip i{font-style:normal;color:var(--mu);margin-left:3px}
ul.nb{list-style:none;margin:0;padding:0;font-size:12px}
ul.nb li{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
ul.nb .num{color:var(--mu);display:inline-block;width:3.2em}
ul.nb .lab{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;color:var(--mu)}
svg.hist{display:block}svg.hist rect{fill:#fb8f44}svg.hist text{font-size:10px;fill:var(--mu)}
.fx{margin-top:10px;border-top:1px solid var(--ln);padding-top:4px}
.fx .lv{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:14px}
.fx table{border-collapse:collapse;font-size:12px}.fx td{padding:0 10px 0 0}
.note{color:var(--mu);font-size:12px;margin:8px 0 0}
.muted{color:var(--mu)}
h3 .run{text-transform:none;letter-spacing:0;color:var(--fg)}
#q{font:14px system-ui,sans-serif;padding:5px 8px;width:320px;max-width:100%;border:1px solid var(--ln);
border-radius:6px;margin:6px 0}
table.toc,table.idx{border-collapse:collapse;background:#fff;border:1px solid var(--ln);font-size:13px;width:100%}
table.toc th,table.toc td,table.idx th,table.idx td{text-align:left;padding:2px 8px;border-bottom:1px solid #eef1f4}
table.toc td.num,table.idx td.num{text-align:right;font-variant-numeric:tabular-nums}
table.toc td.lab,table.idx td.lab{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}
table.idx tbody tr.row{cursor:pointer;scroll-margin-top:28px}table.idx tbody tr.row:hover{background:#f3f6fa}
table.idx tr.open{background:#fff4e5}table.idx tr.det>td{padding:0 6px;background:var(--bg)}
table.idx thead th{position:sticky;top:0;background:#fff}
"""


def _token_spans(tokens: list[str], values: list[float], at: int, top: float, lo: int, hi: int) -> str:
    out = []
    for j in range(lo, hi):
        tok, v = tokens[j], values[j]
        cls = ["t"]
        if j == at:
            cls.append("at")
        if token_type(tok) in ("special", "newline") or not tok.strip():
            cls.append("g")
        attrs = ""
        if v > 0:
            alpha = min(1.0, v / top) * 0.85 if top > 0 else 0.0
            attrs = f' style="background:rgba(251,143,68,{alpha:.2f})" title="{v:.2f}"'
        out.append(f'<span class="{" ".join(cls)}"{attrs}>{_html_token(tok)}</span>')
    return "".join(out)


def _context_html(ex: dict[str, Any], top: float) -> str:
    toks, vals, at = ex["tokens"], ex["values"], int(ex["maxValueTokenIndex"])
    return (
        f'<div class="ctx"><span class="v">{ex["maxValue"]:.2f}</span>'
        f'<span class="l">{_token_spans(toks, vals, at, top, 0, at)}</span>'
        f"{_token_spans(toks, vals, at, top, at, at + 1)}"
        f'<span class="r">{_token_spans(toks, vals, at, top, at + 1, len(toks))}</span></div>'
    )


def _hist_svg(cards: FeatureCards, f: int, width: int = 290, height: int = 86) -> str:
    centres, counts = cards.histogram(f)
    if not any(counts):
        return '<p class="muted">no nonzero activation on the card text</p>'
    peak, n = max(counts), len(counts)
    top, plot_h, bw = float(cards.max_act[f]), height - 16, width / n
    rects = []
    for i, (c, k) in enumerate(zip(centres, counts, strict=True)):
        h = plot_h * k / peak
        half = top / n / 2
        tip = f"{c - half:.2f}–{c + half:.2f}: {k:,}"
        rects.append(
            f'<rect x="{i * bw + 0.5:.1f}" y="{plot_h - h:.1f}" width="{bw - 1:.1f}" height="{h:.1f}">'
            f"<title>{tip}</title></rect>"
        )
    axis = (
        f'<text x="0" y="{height - 3}">0</text>'
        f'<text x="{width}" y="{height - 3}" text-anchor="end">{top:.2f}</text>'
        f'<text x="{width}" y="9" text-anchor="end">{peak:,}</text>'
    )
    return (
        f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="histogram of nonzero activations">{"".join(rects)}{axis}</svg>'
    )


def _lens_table(rows: list[tuple[str, float]], cls: str) -> str:
    if not rows:
        return ""
    top = max(abs(v) for _, v in rows) or 1.0
    body = "".join(
        f'<tr><td class="tk">{_html_token(t)}</td><td class="bar"><span style="width:{abs(v) / top * 100:.0f}%">'
        f'</span></td><td class="num">{v:+.2f}</td></tr>'
        for t, v in rows
    )
    return f'<table class="lens {cls}">{body}</table>'


def _feature_link(g: int, href: Callable[[int], str | None]) -> str:
    target = href(g)
    return f'<a href="{_e(target)}">#{g}</a>' if target else f'<span class="mono">#{g}</span>'


def _neighbours_html(cards: FeatureCards, f: int, kind: str, href: Callable[[int], str | None]) -> str:
    items = cards.neighbours(f, kind)
    if not items:
        return '<p class="muted">none</p>'
    lis = "".join(
        f'<li><span class="num">{v:.2f}</span>{_feature_link(g, href)} '
        f'<span class="lab" title="{_e(shown_label(cards, g))}">{_e(shown_label(cards, g))}</span></li>'
        for g, v in items
    )
    return f'<ul class="nb">{lis}</ul>'


def _chips(pairs: Iterable[tuple[str, float]], fmt: str = "{:+.2f}") -> str:
    return "".join(f'<span class="chip">{_html_token(t)}<i>{fmt.format(v)}</i></span>' for t, v in pairs)


def _effects_html(effects: list[dict[str, Any]], run_name: str | None) -> str:
    blocks = []
    for rec in sorted(effects, key=lambda r: -float(r.get("level", 0))):
        level = float(rec.get("level", 0))
        coef = rec.get("coef")
        head = f"{level_name(level)} ({level:+g} × coef {coef:g})" if coef is not None else level_name(level)
        rows = [
            ("KL, neutral prompts", f"{rec['kl_neutral']:.3g}", rec.get("n_neutral")),
            ("KL, task prompts", f"{rec['kl_task']:.3g}", rec.get("n_task")),
            ("top-1 token changed, neutral", f"{rec['top1_changed_neutral'] * 100:.0f}%", rec.get("n_neutral")),
            ("top-1 token changed, task", f"{rec['top1_changed_task'] * 100:.0f}%", rec.get("n_task")),
        ]
        table = "".join(
            f"<tr><td>{name}</td><td><b>{val}</b></td><td class='muted'>{f'{n} prompts' if n else ''}</td></tr>"
            for name, val, n in rows
        )
        promotes = _chips((t, float(v)) for t, v in rec.get("promotes", []))
        demotes = _chips((t, float(v)) for t, v in rec.get("demotes", []))
        blocks.append(
            f"<div><h3>{_e(head)}</h3><table>{table}</table>"
            f'<div class="note">promotes (Δ log-prob): {promotes or "–"}</div>'
            f'<div class="note">demotes: {demotes or "–"}</div></div>'
        )
    who = _e(run_name or "this run")
    head = f'<h3>When <span class="run">{who}</span> steers with it</h3>'
    return f'<div class="fx">{head}<div class="lv">{"".join(blocks)}</div></div>'


def _default_href(g: int) -> str:
    return f"#feature-{g}"


def card_html(
    cards: FeatureCards,
    f: int,
    effects: list[dict[str, Any]] | None = None,
    run_name: str | None = None,
    *,
    href: Callable[[int], str | None] | None = None,
) -> str:
    """One static card, ``<section class="card" id="feature-{f}">`` (module docstring). `effects`: this feature's
    steering-effect records of a run (one per level); `href(g)`: where a link to feature g points (default
    ``#feature-g``; None leaves g unlinked)."""
    f = cards.check(f)
    href = href or _default_href
    layer = cards.layer
    top = float(cards.max_act[f])
    url = neuronpedia_url(cards.meta.get("neuronpedia_id"), f)
    np_link = f' · <a href="{_e(url)}" rel="noopener" target="_blank">Neuronpedia ↗</a>' if url else ""
    label = shown_label(cards, f)
    header = (
        f'<header><h2><a href="#feature-{f}">{"L" + str(layer) + " · " if layer is not None else ""}feature {f}</a>'
        f'<span class="lab heur" title="{_e(LABEL_HELP)}">{_e(label)}</span></h2>'
        f'<div class="stats">density <b>{density_text(float(cards.density[f]))}</b> · max act <b>{top:.2f}</b>'
        f" · mean act <b>{float(cards.mean_act[f]):.2f}</b>{np_link}</div></header>"
    )
    pos, neg = cards.logit_lens(f)
    left = (
        f"<h3>Nonzero activations <small>({density_text(float(cards.density[f]))})</small></h3>{_hist_svg(cards, f)}"
        f"<h3>Logit lens: promotes</h3>{_lens_table(pos, 'pos')}"
        f"<h3>Logit lens: suppresses</h3>{_lens_table(neg, 'neg')}"
        f"<h3>Fires together <small>(phi)</small></h3>{_neighbours_html(cards, f, 'cofire', href)}"
        f"<h3>Nearest decoder directions <small>(cosine)</small></h3>{_neighbours_html(cards, f, 'cos', href)}"
    )
    tops = cards.examples(f, "top")
    right = [f"<h3>Top activations <small>({len(tops)})</small></h3>"]
    right += [_context_html(ex, top) for ex in tops] or ['<p class="muted">never fired on the card text</p>']
    quantiles = cards.examples(f, "quantile")
    if quantiles:
        shares = _bin_shares(cards, f)
        right.append("<h3>Examples across the activation range <small>(random, per bin)</small></h3>")
        for b in sorted({ex["bin_index"] for ex in quantiles}, reverse=True):
            exs = [ex for ex in quantiles if ex["bin_index"] == b]
            right.append(
                f'<div class="bin">bin {b + 1}: activation {exs[0]["bin_min"]:.2f}–{exs[0]["bin_max"]:.2f}, '
                f"{shares.get(b, 0.0) * 100:.1f}% of nonzero activations</div>"
            )
            right += [_context_html(ex, top) for ex in exs]
    fx = _effects_html(effects, run_name) if effects else ""
    line, by_source = _text_line(cards)
    note = f'<p class="note" title="{_e(by_source)}">{_e(line)} SAE {_e(cards.identity)}.</p>'
    return (
        f'<section class="card" id="feature-{f}">{header}<div class="grid"><div>{left}</div>'
        f"<div>{''.join(right)}</div></div>{fx}{note}</section>"
    )


_FILTER_JS = """
(function () {
  var q = document.getElementById('q');
  var rows = [].slice.call(document.querySelectorAll('tr[data-f]'));
  q.hidden = false;
  q.addEventListener('input', function () {
    var s = q.value.trim().toLowerCase();
    rows.forEach(function (r) {
      var hit = !s || r.dataset.f === s || r.textContent.toLowerCase().indexOf(s) >= 0;
      var card = document.getElementById('feature-' + r.dataset.f);
      r.style.display = hit ? '' : 'none';
      if (card) card.style.display = hit ? '' : 'none';
    });
  });
})();
"""


def _page(title: str, body: str, script: str = "") -> str:
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body><main>{body}</main>"
        f"{f'<script>{script}</script>' if script else ''}</body></html>\n"
    )


def _sae_line(cards: FeatureCards) -> str:
    m = cards.meta
    return f"{m.get('model')} · {m.get('hook_name')} · {cards.d_sae:,} features · SAE {cards.identity}"


def cards_page(
    cards: FeatureCards,
    features: list[int],
    title: str,
    effects: dict[int, list[dict[str, Any]]] | None = None,
    run_name: str | None = None,
    index_href: str | None = None,
) -> str:
    """A self-contained page of the static cards of `features` (in this order), with a table of contents and a
    filter box. Links to features not on the page go to `index_href` (the full index) when set, else none."""
    features = [cards.check(f) for f in dict.fromkeys(features)]
    on_page = set(features)

    def href(g: int) -> str | None:
        if g in on_page:
            return f"#feature-{g}"
        return f"{index_href}#feature-{g}" if index_href else None

    toc = "".join(
        f'<tr data-f="{f}"><td class="num"><a href="#feature-{f}">{f}</a></td>'
        f'<td class="lab">{_e(shown_label(cards, f))}</td>'
        f'<td class="num">{_e(density_text(float(cards.density[f])))}</td></tr>'
        for f in features
    )
    index = f' · <a href="{_e(index_href)}">all {cards.d_sae:,} features</a>' if index_href else ""
    body = (
        f"<h1>{_e(title)}</h1><p class='sub'>{_e(_sae_line(cards))}{index}</p>"
        f'<input id="q" type="search" placeholder="filter by id or label" hidden>'
        f'<table class="toc"><thead><tr><th>feature</th><th><span class="heur" title="{_e(LABEL_HELP)}">'
        f"label {HEURISTIC_MARK} (heuristic)</span></th><th>density</th></tr></thead><tbody>{toc}</tbody></table>"
        + "".join(card_html(cards, f, (effects or {}).get(f), run_name, href=href) for f in features)
    )
    return _page(title, body, _FILTER_JS)


# -- the index: a static table plus compact data the browser renders cards from ---------------------------------------


def _r(x: float) -> float:
    return round(float(x), 2)


def _flat(*columns: Iterable) -> list:
    """Parallel columns interleaved into one flat list: [a0, b0, a1, b1, ...] (ints stay ints)."""
    return [x.item() if hasattr(x, "item") else x for row in zip(*columns, strict=True) for x in row]


def index_data(cards: FeatureCards) -> dict[str, Any]:
    """The compact data `index_page` embeds: the token stream once (as ids into a page-local vocabulary) and, per
    feature, flat lists: top examples [pos, val, ...], quantile examples [pos, val, bin, ...], histogram counts,
    logit lens [token, val, ...], neighbours [id, val, ...]."""
    local: dict[int, int] = {}

    def tid(t: int) -> int:
        return local.setdefault(int(t), len(local))

    stream = [tid(t) for t in cards.tokens.reshape(-1)]
    feats: dict[str, list] = {k: [] for k in ("top", "q", "hist", "lp", "ln", "cf", "cs")}
    for f in range(cards.d_sae):
        keep = cards.top_pos[f] >= 0
        feats["top"].append(_flat(cards.top_pos[f][keep], map(_r, cards.top_val[f][keep])))
        keep = cards.q_pos[f] >= 0
        feats["q"].append(_flat(cards.q_pos[f][keep], map(_r, cards.q_val[f][keep]), cards.q_bin[f][keep]))
        feats["hist"].append([int(c) for c in cards.hist[f]])
        feats["lp"].append(_flat(map(tid, cards.logit_pos_ids[f]), map(_r, cards.logit_pos_val[f])))
        feats["ln"].append(_flat(map(tid, cards.logit_neg_ids[f]), map(_r, cards.logit_neg_val[f])))
        for key, kind in (("cf", "cofire"), ("cs", "cos")):
            ids, vals = zip(*cards.neighbours(f, kind), strict=True) if cards.neighbours(f, kind) else ((), ())
            feats[key].append(_flat(ids, map(_r, vals)))
    line, by_source = _text_line(cards)
    np_id = cards.meta.get("neuronpedia_id")
    meta = {
        "layer": cards.layer,
        "seq": int(cards.tokens.shape[1]),
        "context": 10,
        "quantile_bins": int(cards.meta["quantile_bins"]),
        "np_url": NEURONPEDIA_URL.format(np_id=np_id, feature="{f}") if np_id else None,
        "text": line,
        "by_source": by_source,
        "identity": cards.identity,
        "label_help": LABEL_HELP,
        "mark": HEURISTIC_MARK,
    }
    vocab = [""] * len(local)
    for t, i in local.items():
        vocab[i] = cards.token(t)
    return {
        "meta": meta,
        "vocab": vocab,
        "tokens": stream,
        "labels": list(cards.labels),
        "density": [float(f"{d:.4g}") for d in cards.density],
        "max": [_r(v) for v in cards.max_act],
        "mean": [_r(v) for v in cards.mean_act],
        **feats,
    }


def _json_for_script(data: Any) -> str:
    # "<" only occurs inside JSON strings, where \u003c means the same character: no "</script>" can end the block.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


# The browser-side card: the same structure and classes as `card_html` (no steering effects: those are per run).
_INDEX_JS = r"""
(function () {
var D = JSON.parse(document.getElementById('cards-data').textContent), M = D.meta;
var GLYPH = {'\n': '\\n', '\t': '\\t', '\r': '\\r'};
function esc(s) { return String(s).replace(/[&<>"']/g, function (c) { return '&#' + c.charCodeAt(0) + ';'; }); }
function num(x) { return x.toLocaleString('en-US'); }
function shown(t) {
  if (!t) return '∅';
  var o = '';
  for (var i = 0; i < t.length; i++) o += GLYPH[t[i]] || t[i];
  return o;
}
function dens(d) {
  return d <= 0 ? 'never fired' : +(d * 100).toPrecision(3) + '% (1 in ' + num(Math.round(1 / d)) + ' tokens)';
}
function lab(g) { return M.mark + ' ' + D.labels[g]; }
function grey(t) { return !t.trim() || t.indexOf('\n') >= 0 || /^<\|[^<>]{1,40}\|>$|^<\/?s>$/.test(t.trim()); }
function spans(toks, vals, at, top, lo, hi) {
  var o = '';
  for (var j = lo; j < hi; j++) {
    var v = vals[j], cls = 't' + (j === at ? ' at' : '') + (grey(toks[j]) ? ' g' : ''), attr = '';
    if (v > 0) {
      var alpha = (Math.min(1, v / top) * 0.85).toFixed(2);
      attr = ' style="background:rgba(251,143,68,' + alpha + ')" title="' + v.toFixed(2) + '"';
    }
    o += '<span class="' + cls + '"' + attr + '>' + esc(shown(toks[j])) + '</span>';
  }
  return o;
}
function ctx(f, pos, val, known) {  // one example: the window around flat position pos, same row only
  var seq = M.seq, row = Math.floor(pos / seq), col = pos % seq;
  var lo = Math.max(0, col - M.context), hi = Math.min(seq, col + M.context + 1);
  var toks = [], vals = [], at = col - lo, top = D.max[f];
  for (var c = lo; c < hi; c++) {
    var p = row * seq + c;
    toks.push(D.vocab[D.tokens[p]]);
    vals.push(known[p] || 0);
  }
  return '<div class="ctx"><span class="v">' + val.toFixed(2) + '</span>' +
    '<span class="l">' + spans(toks, vals, at, top, 0, at) + '</span>' + spans(toks, vals, at, top, at, at + 1) +
    '<span class="r">' + spans(toks, vals, at, top, at + 1, toks.length) + '</span></div>';
}
function hist(f) {
  var h = D.hist[f], n = h.length, peak = Math.max.apply(null, h), top = D.max[f];
  var W = 290, H = 86, ph = H - 16, bw = W / n, w = top / n, o = '';
  if (!peak) return '<p class="muted">no nonzero activation on the card text</p>';
  for (var i = 0; i < n; i++) {
    var y = ph * h[i] / peak;
    o += '<rect x="' + (i * bw + 0.5).toFixed(1) + '" y="' + (ph - y).toFixed(1) + '" width="' + (bw - 1).toFixed(1) +
      '" height="' + y.toFixed(1) + '"><title>' + (w * i).toFixed(2) + '–' + (w * (i + 1)).toFixed(2) + ': ' +
      num(h[i]) + '</title></rect>';
  }
  return '<svg class="hist" width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + ' ' + H + '">' + o +
    '<text x="0" y="' + (H - 3) + '">0</text>' +
    '<text x="' + W + '" y="' + (H - 3) + '" text-anchor="end">' + top.toFixed(2) + '</text>' +
    '<text x="' + W + '" y="9" text-anchor="end">' + num(peak) + '</text></svg>';
}
function lens(a, cls) {  // a = [token, value, token, value, ...]
  if (!a.length) return '';
  var m = 0, o = '', i;
  for (i = 1; i < a.length; i += 2) m = Math.max(m, Math.abs(a[i]));
  for (i = 0; i < a.length; i += 2) {
    var v = a[i + 1];
    o += '<tr><td class="tk">' + esc(shown(D.vocab[a[i]])) + '</td><td class="bar"><span style="width:' +
      Math.round(Math.abs(v) / (m || 1) * 100) + '%"></span></td><td class="num">' + (v >= 0 ? '+' : '') +
      v.toFixed(2) + '</td></tr>';
  }
  return '<table class="lens ' + cls + '">' + o + '</table>';
}
function nb(a) {  // a = [feature, value, ...]
  if (!a.length) return '<p class="muted">none</p>';
  var o = '';
  for (var i = 0; i < a.length; i += 2) {
    var g = a[i];
    o += '<li><span class="num">' + a[i + 1].toFixed(2) + '</span><a href="#feature-' + g + '">#' + g + '</a> ' +
      '<span class="lab" title="' + esc(lab(g)) + '">' + esc(lab(g)) + '</span></li>';
  }
  return '<ul class="nb">' + o + '</ul>';
}
function bins(f, q, known) {  // quantile examples grouped by bin, highest first, with range and share
  var nbin = M.quantile_bins, hs = D.hist[f], top = D.max[f], tot = 0, share = {}, o = '', i, b;
  for (i = 0; i < hs.length; i++) tot += hs[i];
  for (i = 0; i < hs.length; i++) {
    b = Math.min(Math.floor((i + 0.5) / hs.length * nbin), nbin - 1);
    share[b] = (share[b] || 0) + hs[i] / (tot || 1);
  }
  for (b = nbin - 1; b >= 0; b--) {
    var first = true;
    for (i = 0; i < q.length; i += 3) {
      if (q[i + 2] !== b) continue;
      if (first) {
        o += '<div class="bin">bin ' + (b + 1) + ': activation ' + (top * b / nbin).toFixed(2) + '–' +
          (top * (b + 1) / nbin).toFixed(2) + ', ' + ((share[b] || 0) * 100).toFixed(1) +
          '% of nonzero activations</div>';
        first = false;
      }
      o += ctx(f, q[i], q[i + 1], known);
    }
  }
  return '<h3>Examples across the activation range <small>(random, per bin)</small></h3>' + o;
}
function card(f) {  // the same structure and classes as card_html in crl/cards/render.py
  var top = D.max[f], t = D.top[f], q = D.q[f], known = {}, i;
  for (i = 0; i < t.length; i += 2) known[t[i]] = t[i + 1];
  for (i = 0; i < q.length; i += 3) known[q[i]] = q[i + 1];
  var np = M.np_url ? ' · <a href="' + esc(M.np_url.replace('{f}', f)) +
    '" rel="noopener" target="_blank">Neuronpedia ↗</a>' : '';
  var h = '<section class="card"><header><h2><a href="#feature-' + f + '">' +
    (M.layer !== null ? 'L' + M.layer + ' · ' : '') + 'feature ' + f + '</a>' +
    '<span class="lab heur" title="' + esc(M.label_help) + '">' + esc(lab(f)) + '</span></h2>' +
    '<div class="stats">density <b>' + dens(D.density[f]) + '</b> · max act <b>' + top.toFixed(2) +
    '</b> · mean act <b>' + D.mean[f].toFixed(2) + '</b>' + np + '</div></header><div class="grid"><div>' +
    '<h3>Nonzero activations <small>(' + dens(D.density[f]) + ')</small></h3>' + hist(f) +
    '<h3>Logit lens: promotes</h3>' + lens(D.lp[f], 'pos') +
    '<h3>Logit lens: suppresses</h3>' + lens(D.ln[f], 'neg') +
    '<h3>Fires together <small>(phi)</small></h3>' + nb(D.cf[f]) +
    '<h3>Nearest decoder directions <small>(cosine)</small></h3>' + nb(D.cs[f]) +
    '</div><div><h3>Top activations <small>(' + t.length / 2 + ')</small></h3>';
  if (!t.length) h += '<p class="muted">never fired on the card text</p>';
  for (i = 0; i < t.length; i += 2) h += ctx(f, t[i], t[i + 1], known);
  if (q.length) h += bins(f, q, known);
  return h + '</div></div><p class="note" title="' + esc(M.by_source) + '">' + esc(M.text) + ' SAE ' +
    esc(M.identity) + '.</p></section>';
}
var tbody = document.getElementById('rows');
function toggle(tr, keepOpen) {  // open the card under its row (or close it)
  var f = +tr.id.slice(8), next = tr.nextElementSibling, open = next && next.className === 'det';
  if (open && !keepOpen) {
    next.parentNode.removeChild(next);
    tr.classList.remove('open');
  } else if (!open) {
    var d = document.createElement('tr');
    d.className = 'det';
    d.innerHTML = '<td colspan="4">' + card(f) + '</td>';
    tr.parentNode.insertBefore(d, tr.nextSibling);
    tr.classList.add('open');
  }
}
tbody.addEventListener('click', function (e) {
  if (e.target.closest('a')) return;
  var tr = e.target.closest('tr.row');
  if (tr) toggle(tr, false);
});
function fromHash() {  // index.html#feature-1398 opens card 1398
  var m = /^#feature-(\d+)$/.exec(location.hash), tr = m && document.getElementById('feature-' + m[1]);
  if (!tr) return;
  tr.style.display = '';
  toggle(tr, true);
  tr.scrollIntoView();
}
window.addEventListener('hashchange', fromHash);
fromHash();
var q = document.getElementById('q'), count = document.getElementById('count');
var rows = [].slice.call(tbody.querySelectorAll('tr.row'));
q.hidden = false;
q.addEventListener('input', function () {
  var s = q.value.trim().toLowerCase(), n = 0;
  rows.forEach(function (r) {
    var hit = !s || r.id.slice(8) === s || r.cells[1].textContent.toLowerCase().indexOf(s) >= 0;
    var next = r.nextElementSibling;
    r.style.display = hit ? '' : 'none';
    if (next && next.className === 'det') next.style.display = hit ? '' : 'none';
    n += hit;
  });
  count.textContent = num(n);
});
})();
"""


def index_page(cards: FeatureCards, title: str | None = None) -> str:
    """Every feature of the SAE in one self-contained page (module docstring): a static table, one row per feature
    (``<tr id="feature-{f}">``), cards rendered in the browser; ``#feature-N`` opens card N."""
    title = title or f"Feature cards: {cards.meta.get('model')} layer {cards.layer}"
    rows = "".join(
        f'<tr class="row" id="feature-{f}"><td class="num">{f}</td><td class="lab">{_e(cards.labels[f])}</td>'
        f'<td class="num">{float(cards.density[f]) * 100:.3g}%</td>'
        f'<td class="num">{float(cards.max_act[f]):.2f}</td></tr>'
        for f in range(cards.d_sae)
    )
    line, _ = _text_line(cards)
    body = (
        f"<h1>{_e(title)}</h1><p class='sub'>{_e(_sae_line(cards))}. {_e(line)}</p>"
        f"<p class='sub'>Click a row (or open <span class='mono'>#feature-N</span>) for its card. "
        f"Labels are heuristic ({HEURISTIC_MARK}): built from the top examples' tokens and the logit lens.</p>"
        "<noscript><p class='sub'>Cards open with JavaScript; without it, <span class='mono'>crl features show N"
        "</span> prints one.</p></noscript>"
        f'<input id="q" type="search" placeholder="filter by id or label" hidden> '
        f'<span class="sub"><span id="count">{cards.d_sae:,}</span> of {cards.d_sae:,} features shown</span>'
        f'<table class="idx"><thead><tr><th>feature</th><th><span class="heur" title="{_e(LABEL_HELP)}">'
        f"label {HEURISTIC_MARK} (heuristic)</span></th><th>density</th><th>max act</th></tr></thead>"
        f'<tbody id="rows">{rows}</tbody></table>'
        f'<script type="application/json" id="cards-data">{_json_for_script(index_data(cards))}</script>'
    )
    return _page(title, body, _INDEX_JS)


# -- terminal -------------------------------------------------------------------------------------------------------


def sparkline(counts: list[int]) -> str:
    """One character per bin, height by count (a space for an empty bin)."""
    peak = max(counts, default=0)
    if peak <= 0:
        return ""
    return "".join(
        " " if c == 0 else SPARK[min(len(SPARK) - 1, int(c / peak * (len(SPARK) - 1) + 0.5))] for c in counts
    )


def _context_text(ex: dict[str, Any], room: int) -> str:
    toks, at = [shown_token(t) for t in ex["tokens"]], int(ex["maxValueTokenIndex"])
    mid = f"«{toks[at]}»"
    left, right = "".join(toks[:at]), "".join(toks[at + 1 :])
    side = max(0, room - len(mid))
    n_left = min(len(left), max(side // 2, side - len(right)))
    n_right = min(len(right), side - n_left)
    left = ("…" + left[len(left) - n_left + 1 :]) if n_left < len(left) and n_left > 0 else left[len(left) - n_left :]
    right = (right[: n_right - 1] + "…") if n_right < len(right) and n_right > 0 else right[:n_right]
    return left + mid + right


def _wrap_items(head: str, items: list[str], width: int) -> list[str]:
    lines, cur = [], head
    for it in items:
        if len(cur) + len(it) + 2 > width and cur.strip() != head.strip():
            lines.append(cur.rstrip(", "))
            cur = " " * len(head)
        cur += it + ", "
    lines.append(cur.rstrip(", "))
    return lines


def card_text(cards: FeatureCards, f: int, effects: list[dict[str, Any]] | None = None, width: int = 100) -> str:
    """One card as plain text for a terminal (module docstring); the activating token is marked «like this»."""
    f = cards.check(f)
    top = float(cards.max_act[f])
    layer = f"L{cards.layer} " if cards.layer is not None else ""
    out = [f"{layer}feature {f}  {shown_label(cards, f)}  (label: heuristic)"]
    stats = (
        f"density {density_text(float(cards.density[f]))} · max act {top:.2f} · mean act {float(cards.mean_act[f]):.2f}"
    )
    out.append(stats)
    url = neuronpedia_url(cards.meta.get("neuronpedia_id"), f)
    if url:
        out.append(f"Neuronpedia: {url}")
    out += textwrap.wrap(_text_line(cards)[0], width, subsequent_indent="  ", break_on_hyphens=False)
    spark = sparkline(cards.histogram(f)[1])
    if spark:
        out.append(f"activations 0 │{spark}│ {top:.2f}")
    room = width - 8
    tops = cards.examples(f, "top")
    out.append(f"\ntop contexts ({min(10, len(tops))} of {len(tops)}):" if tops else "\nnever fired on the card text")
    out += [f"{ex['maxValue']:7.2f} {_context_text(ex, room)}" for ex in tops[:10]]
    quantiles = cards.examples(f, "quantile")
    if quantiles:
        shares = _bin_shares(cards, f)
        out.append("\none example per activation bin (share of nonzero activations):")
        for b in sorted({ex["bin_index"] for ex in quantiles}, reverse=True):
            ex = next(ex for ex in quantiles if ex["bin_index"] == b)
            out.append(f"  bin {b + 1} [{ex['bin_min']:.1f}, {ex['bin_max']:.1f}] {shares.get(b, 0.0) * 100:4.1f}%")
            out.append(f"{ex['maxValue']:7.2f} {_context_text(ex, room)}")
    pos, neg = cards.logit_lens(f)
    out.append("")
    out += _wrap_items("logit lens promotes:   ", [f"{shown_token(t)!r} {v:+.2f}" for t, v in pos], width)
    out += _wrap_items("logit lens suppresses: ", [f"{shown_token(t)!r} {v:+.2f}" for t, v in neg], width)
    for kind, name in (("cofire", "fires together (phi):"), ("cos", "decoder neighbours (cos):")):
        items = cards.neighbours(f, kind)
        out.append(name + ("" if items else " none"))
        for g, v in items:
            out.append(f"  #{g:<6} {v:5.2f}  {shown_label(cards, g)}"[:width])
    if effects:
        out.append("\nsteering effects in this run:")
        for rec in sorted(effects, key=lambda r: -float(r.get("level", 0))):
            level = float(rec.get("level", 0))
            out.append(
                f"  {level_name(level)}: KL neutral {rec['kl_neutral']:.3g}, task {rec['kl_task']:.3g}; top-1 changed "
                f"neutral {rec['top1_changed_neutral'] * 100:.0f}%, task {rec['top1_changed_task'] * 100:.0f}%"
            )
            for key in ("promotes", "demotes"):
                items = [f"{shown_token(t)!r} {float(v):+.2f}" for t, v in rec.get(key, [])]
                if items:
                    out += _wrap_items(f"    {key}: ", items, width)
    return "\n".join(out)
