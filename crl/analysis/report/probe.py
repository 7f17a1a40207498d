"""`crl probe`'s outputs from its record (crl.analysis.replay.probe.headroom): the terminal table, a bar plot, and
probe.json + probe.html in one directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crl.analysis.report.document import Report, para
from crl.analysis.report.plots import _figure, _save

JSON_FILE, HTML_FILE, PNG_FILE = "probe.json", "probe.html", "probe.png"
BARS = ("probe", "mlp", "shuffled", "unsteered", "majority", "oracle", "static")  # one bar per number, per layer
COLORS = {
    "probe": "#4c72b0",
    "mlp": "#8172b3",
    "shuffled": "#b0b0b0",
    "unsteered": "#c44e52",
    "majority": "#8c8c8c",
    "oracle": "#55a868",
    "static": "#dd8452",
}


def _ci(value: float | None, ci: Any = None) -> str:
    """`0.953 [0.930, 0.969]`, or `-`.

    >>> _ci(0.5, (0.25, 0.75))
    '0.500 [0.250, 0.750]'
    >>> _ci(None)
    '-'
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if ci is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _action(a: dict[str, Any] | None) -> str:
    """A (feature, coefficient) action as the table shows it.

    >>> _action({"feature": 1777, "coef": -1.0})
    '(1777 @ -1)'
    """
    if not a:
        return "-"
    return f"({a['feature']} @ {a['coef']:+g})"


def shortlist_line(short: dict[str, Any] | None) -> str | None:
    """The oracle's feature shortlist as `crl probe` prints it (None where the record has none: n_oracle=0,
    shortlist_k=0, or a record from before the shortlist).

    >>> shortlist_line({"features": [5, 2], "covered": 4, "n_wrong": 4, "command": "crl train masking=fixed ..."})
    'shortlist (covers 4/4 of the prompts the model gets wrong): crl train masking=fixed ...'
    >>> shortlist_line({"features": [], "covered": 0, "n_wrong": 0, "command": None})
    'shortlist: none (the model gets every oracle prompt right)'
    """
    if short is None:
        return None
    if not short["n_wrong"]:
        return "shortlist: none (the model gets every oracle prompt right)"
    if not short["features"]:
        return f"shortlist: none (no single feature fixes any of the {short['n_wrong']} prompts the model gets wrong)"
    covers = f"covers {short['covered']}/{short['n_wrong']} of the prompts the model gets wrong"
    features = ",".join(map(str, short["features"]))
    command = short.get("command") or f"masking=fixed 'masking.features=[{features}]'"  # an oracle record of its own
    return f"shortlist ({covers}): {command}"


def numbers(record: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per layer: each bar's value and CI (None where not measured)."""
    rows = []
    for e in record["layers"]:
        o = e.get("oracle") or {}
        s = o.get("best_static") or {}
        rows.append(
            {
                "layer": e["layer"],
                "probe": (e["probe"]["value"], e["probe"]["ci"]) if "probe" in e else (None, None),
                "shuffled": (e["shuffled"]["value"], e["shuffled"]["ci"]) if "shuffled" in e else (None, None),
                "mlp": (e["mlp"]["value"], e["mlp"]["ci"]) if "mlp" in e else (None, None),
                "mlp_shuffled": (e["mlp_shuffled"]["value"], e["mlp_shuffled"]["ci"]) if "mlp" in e else (None, None),
                "unsteered": (record["unsteered"]["accuracy"], record["unsteered"]["ci"]),
                "majority": (record["majority"]["accuracy"], record["majority"]["ci"]),
                "oracle": (o.get("accuracy"), o.get("ci")),
                "oracle_unsteered": o.get("unsteered"),
                "oracle_n": o.get("n"),
                "static": (s.get("accuracy"), s.get("ci")),
                "static_action": s or None,
                "verdict": e["verdict"],
                "why": e.get("why", ""),
                "shortlist": o.get("shortlist"),
            }
        )
    return rows


def _oracle_cells(rows: list[dict[str, Any]]) -> tuple[str, list[str]]:
    """The oracle column's header and cells: one column whatever each layer's n. The header carries n where every
    measured layer has the same n (the oracle's prompts are capped by its rollout budget, so a layer with more actions
    can get fewer), else each measured cell carries its own.

    >>> row = lambda v, n: {"oracle": (v, (0.5, 1.0) if n else None), "oracle_n": n}
    >>> _oracle_cells([row(0.875, 16), row(0.75, 16)])
    ('oracle (n=16)', ['0.875 [0.500, 1.000]', '0.750 [0.500, 1.000]'])
    >>> _oracle_cells([row(0.875, 16), row(0.75, 8), row(None, None)])
    ('oracle', ['0.875 [0.500, 1.000] (n=16)', '0.750 [0.500, 1.000] (n=8)', '-'])
    """
    ns = {r["oracle_n"] for r in rows if r["oracle_n"]}
    if len(ns) == 1:
        return f"oracle (n={ns.pop()})", [_ci(*r["oracle"]) for r in rows]
    cells = [_ci(*r["oracle"]) + (f" (n={r['oracle_n']})" if r["oracle_n"] else "") for r in rows]
    return "oracle", cells


def table(record: dict[str, Any]) -> pd.DataFrame:
    """The terminal / HTML table: one row per layer, one column per number (the oracle's n in its header, or in each
    cell where the layers' n differ; the no-steer and best-static columns are on those same oracle prompts)."""
    metric = "AUROC" if record["target"] == "correct" else "acc"
    rows = numbers(record)
    oracle_header, oracle_cells = _oracle_cells(rows)
    out = []
    for r, oracle in zip(rows, oracle_cells, strict=True):
        out.append(
            {
                "layer": r["layer"],
                f"probe {metric}": _ci(*r["probe"]),
                f"shuffled {metric}": _ci(*r["shuffled"]),
                f"MLP probe {metric}": _ci(*r["mlp"]),
                f"MLP shuffled {metric}": _ci(r["mlp_shuffled"][0]),
                "model (no steer)": _ci(*r["unsteered"]),
                "majority": _ci(r["majority"][0]),
                oracle_header: oracle,
                "no steer, same prompts": _ci(r["oracle_unsteered"]),
                "best static": _ci(r["static"][0]) + (f" {_action(r['static_action'])}" if r["static_action"] else ""),
            }
        )
    return pd.DataFrame(out)


def format_table(record: dict[str, Any]) -> str:
    """What `crl probe` prints: a header, the table, one verdict line per layer."""
    target = (
        "the gold answer (" + ", ".join(record["classes"]) + ")"
        if record["target"] == "answer"
        else "whether the unsteered model is right (AUROC)"
    )
    st = record["steering"]
    fixed = st.get("masking_features")  # absent from records written before masking=fixed
    masking = st["masking"] + (f" [{','.join(map(str, fixed))}]" if fixed else "")
    head = [
        f"crl probe: task {record['task']}, {record['model']}; the probe reads {target} from the residual at the "
        f"decision position ({record['n_train']} train / {record['n_test']} test prompts)",
        f"oracle actions: each unmasked feature (masking={masking}, eval) x levels {st['coef_levels']} at coef "
        f"{st['coef']:g} ({st['coef_mode']})" + (", plus no steering" if st["allow_noop"] else ""),
    ]
    if record.get("none_applies"):
        head.append(record["none_applies"])
    body = table(record).to_string(index=False)
    verdicts = []
    for r in numbers(record):
        verdicts.append(f"layer {r['layer']}: {r['verdict']}" + (f" ({r['why']})" if r["why"] else ""))
        line = shortlist_line(r["shortlist"])
        if line:
            verdicts.append(f"  {line}")
    return "\n".join([*head, "", body, "", *verdicts])


def bars(record: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars per layer (linear and MLP probe, shuffled, no steering, majority, oracle, best static) with their
    95% CIs."""
    rows = numbers(record)
    fig, (ax,) = _figure(max(6.4, 2.2 * len(rows) + 2), 3.8)
    width = 0.8 / len(BARS)
    for j, name in enumerate(BARS):
        xs, ys, lo, hi = [], [], [], []
        for i, r in enumerate(rows):
            value, ci = r[name]
            if value is None or (isinstance(value, float) and np.isnan(value)):
                continue
            xs.append(i + (j - (len(BARS) - 1) / 2) * width)
            ys.append(value)
            lo.append(max(0.0, value - ci[0]) if ci else 0.0)
            hi.append(max(0.0, ci[1] - value) if ci else 0.0)
        label = {"unsteered": "no steering", "static": "best static action", "probe": "linear probe"}.get(name, name)
        label = "MLP probe (policy-shaped)" if name == "mlp" else label
        if name in ("probe", "mlp", "shuffled") and record["target"] == "correct":
            label += " (AUROC)"
        ax.bar(xs, ys, width, yerr=[lo, hi] if xs else None, color=COLORS[name], label=label, capsize=2)
    ax.set_xticks(range(len(rows)), [f"layer {r['layer']}" for r in rows])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy (95% CI)")
    ax.set_title(f"Headroom: {record['task']}")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    return _save(fig, path)


def write_probe(out_dir: str | Path, record: dict[str, Any]) -> dict[str, Path]:
    """probe.json, probe.png and probe.html (self-contained) in `out_dir`."""
    from crl.logs.atomic import atomic_write_json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / JSON_FILE, record)
    png = bars(record, out / PNG_FILE)
    report = Report(f"crl probe: {record['task']}")
    parts = report.section("Headroom")
    parts.append(para(format_table(record).split("\n\n")[0]))
    report.add_image(parts, "headroom", png)
    report.add_table(parts, "headroom", table(record))
    for r in numbers(record):
        parts.append(para(f"layer {r['layer']}: {r['verdict']}" + (f" ({r['why']})" if r["why"] else "")))
    shortlists = [(e["layer"], (e.get("oracle") or {}).get("shortlist")) for e in record["layers"]]
    if any(short is not None for _, short in shortlists):
        section = report.section("Feature shortlist for masking=fixed (oracle)")
        section.append(
            para(
                "Greedy set cover of the oracle prompts the unsteered model gets wrong: each feature covers the "
                "prompts one of its levels makes right; new: the prompts it adds, cumulative: the share of the wrong "
                "prompts covered so far.",
                "note",
            )
        )
        for layer, short in shortlists:
            if short is None:
                continue
            section.append(para(f"layer {layer}: {shortlist_line(short)}"))
            if short["features"]:
                rows = {
                    "feature": short["features"],
                    "label": short.get("labels") or [None] * len(short["features"]),
                    "new prompts covered": short["new"],
                    "cumulative share": [f"{c:.3f}" for c in short["cumulative"]],
                }
                report.add_table(section, f"shortlist_{layer}", pd.DataFrame(rows))
    fixers = report.section("Features that fix the most prompts (oracle)")
    for e in record["layers"]:
        o = e.get("oracle")
        if o and o.get("top_fixers"):
            fixers.append(para(f"layer {e['layer']} ({o['method']}; {o['seconds']} s):"))
            report.add_table(fixers, f"fixers_{e['layer']}", pd.DataFrame(o["top_fixers"]))
    return {"json": out / JSON_FILE, "png": png, "html": report.write(out / HTML_FILE)}
