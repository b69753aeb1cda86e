"""A suite's leaderboard as one self-contained HTML page (``smartbench table SUITE --format html --out DIR``).

The page is a renderer of the same :class:`bench.reports.tables.Table` as the md / LaTeX / CSV
tables: every cell's text is ``Table.text(row, "md")`` (bold as ``<strong>``), so the numbers and
marks are those of the Markdown table (a test compares them cell by cell). On top of the table it
shows, per cell, what a reader checks before believing a number, computed here from the same rows:

* the per-seed values, with their run ids and the code version (git sha, ``+dirty``) of each row;
* the paired difference to the column's best over the seeds both finished, mean and 95% CI
  (Student t), its two-sided paired p (``tables.paired_p``) and that p Holm-corrected over every
  (cell, best) comparison of the table;
* the minimum detectable effect of that comparison at 80% power, two-sided alpha 0.05, from the
  exact noncentral-t power of the paired t-test (``bench.reports.stats.mde``) -- what the column
  can and cannot detect.

Everything is in the file: inline CSS and JS, figures as inline SVG (matplotlib, text kept as
text), no request to any network. Without JS the table is complete (the details open as
``<details>``); the script only sorts, filters, switches to retention (pruned / dense) and keeps
that state in the URL fragment (``#sort=3:desc&family=detection&view=retention``), so a view can
be linked. Controls (dense, nomask, random, scratch: ``Pruner.control`` / ``keeps_all``) sit in
their own table body below the pruners.
"""

from __future__ import annotations

import html
import io
import math
import re
from typing import Any

import pandas as pd

from bench.reports import stats
from bench.reports.stats import holm
from bench.reports.tables import ALPHA, Table, _by_seed

POWER = 0.8


# -- the numbers behind a cell -----------------------------------------------------------------------
def paired_difference(first: dict[int, float], second: dict[int, float]) -> dict[str, Any] | None:
    """``first - second`` over the shared seeds: n, mean, 95% CI, paired p and the MDE at 80% power
    (None with fewer than 2 shared seeds)."""
    diff = stats.paired_difference(first, second, 1 - ALPHA)
    if diff is None:
        return None
    mde = stats.mde(diff.sd, diff.n, ALPHA, POWER)
    return {"n": diff.n, "mean": diff.mean, "ci": [diff.ci_low, diff.ci_high], "p": diff.p, "mde": mde}


def controls_of(table: Table, frame: pd.DataFrame) -> set[str]:
    """Labels shown apart: dense, and every label whose pruner is a control or keeps every unit."""
    from bench.core.errors import ConfigError
    from bench.runs.registry import get_pruner_class

    out = {"dense"}
    for label, pruner in frame[["label", "pruner"]].drop_duplicates().values:
        try:
            cls = get_pruner_class(str(pruner))
        except ConfigError:
            continue
        if getattr(cls, "control", False) or getattr(cls, "keeps_all", False):
            out.add(label)
    return out & set(table.labels)


def cell_details(table: Table, frame: pd.DataFrame, versions: dict[str, str]) -> dict[tuple, dict[str, Any]]:
    """{(label, column): per-seed values, run ids, versions, the paired difference to the column's best
    with a Holm-corrected p}; the dense row gets its per-seed dense metrics."""
    details: dict[tuple, dict[str, Any]] = {}
    tests: list[tuple[tuple, float]] = []
    for column in table.columns:
        task, pattern, sparsity = column
        part = frame[(frame["task"] == task) & (frame["pattern"] == pattern) & (frame["sparsity"] == sparsity)]
        best = [label for label in table.labels if (row := table.cell(label, column)) is not None and row["best"]]
        best_seeds = _by_seed(frame, best[0], *column) if best else {}
        for label in table.labels:
            row = table.cell(label, column)
            if row is None:
                continue
            if label == "dense":
                dense = frame[frame["task"] == task].drop_duplicates("seed")
                seeds = [{"seed": int(s), "value": float(v)} for s, v in zip(dense["seed"], dense["dense_metric"])]
                details[(label, column)] = {"seeds": seeds}
                continue
            rows = part[part["label"] == label].sort_values("seed")
            seeds = [
                {"seed": int(r.seed), "value": float(r.metric), "run_id": r.run_id, "code": versions.get(r.run_id, "?")}
                for r in rows.itertuples()
            ]
            entry: dict[str, Any] = {"seeds": seeds}
            if best and label not in best and not bool(row.get("reference", False)):
                diff = paired_difference(_by_seed(frame, label, *column), best_seeds)
                if diff is not None:
                    entry["vs_best"] = {"best": best[0], **diff}
                    if diff["p"] is not None:
                        tests.append(((label, column), diff["p"]))
            details[(label, column)] = entry
    for (key, _), adjusted in zip(tests, holm([p for _, p in tests]), strict=True):
        details[key]["vs_best"]["p_holm"] = adjusted
    return details


def versions_of(rows: list[dict[str, Any]]) -> dict[str, str]:
    """{run id: short git sha, with +dirty for an uncommitted tree} from the store rows' provenance."""
    out = {}
    for row in rows:
        prov = row.get("provenance") or {}
        sha = str(prov.get("git_sha") or "?")[:7]
        out[row.get("run_id")] = sha + ("+dirty" if prov.get("git_dirty") else "")
    return out


# -- figures ------------------------------------------------------------------------------------------
def inline_figures(frame: pd.DataFrame, suite_name: str) -> dict[str, str]:
    """{figure name (plots' file stem): inline SVG} of every figure bench.reports.plots draws."""
    import matplotlib.pyplot as plt

    from bench.reports.plots import figures

    out: dict[str, str] = {}
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": suite_name}):  # text as text: small, searchable
        for name, fig in figures(frame, suite_name):
            fig.tight_layout()
            buffer = io.StringIO()
            fig.savefig(buffer, format="svg", metadata={"Date": None})
            plt.close(fig)
            svg = buffer.getvalue()
            svg = svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: inline in HTML
            out[name.removesuffix(".png")] = re.sub(r"\n\s*", "\n", svg)
    return out


def figures_of_column(suite_name: str, column: tuple, figures: dict[str, str]) -> list[str]:
    """The figure names behind a column: its curve, its allocation, its task's Pareto and speed plots."""
    from bench.reports.plots import _file_name

    task, pattern, sparsity = column
    names = [
        _file_name(suite_name, task, pattern),
        _file_name(suite_name, task, pattern, f"{sparsity:g}", "allocation"),
        _file_name(suite_name, task, "pareto-flops"),
    ]
    names += [name for name in figures if name.startswith(_file_name(suite_name, task, "vs-").removesuffix(".png"))]
    return [n.removesuffix(".png") for n in names if n.removesuffix(".png") in figures]


# -- the page --------------------------------------------------------------------------------------------
def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _md_to_html(text: str) -> str:
    """The md cell text with ``**bold**`` as ``<strong>`` (the only markup Table.text emits)."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _e(text))


def _plain(text: str) -> str:
    return text.replace("**", "")


def _fmt(value: float, digits: int) -> str:
    return f"{value:+.{digits}f}"


def _detail_html(entry: dict[str, Any], digits: int) -> str:
    items = []
    for seed in entry.get("seeds", []):
        where = f" · run {_e(seed['run_id'])} · code {_e(seed['code'])}" if "run_id" in seed else ""
        items.append(f"<li>seed {seed['seed']}: {seed['value']:.{digits}f}{where}</li>")
    parts = [f"<ul class='seeds'>{''.join(items)}</ul>"] if items else []
    vs = entry.get("vs_best")
    if vs:
        low, high = vs["ci"]
        p = "–" if vs["p"] is None else f"{vs['p']:.3g}"
        p_holm = "–" if vs.get("p_holm") is None else f"{vs['p_holm']:.3g}"
        parts.append(
            f"<p>vs best ({_e(vs['best'])}), {vs['n']} paired seeds: {_fmt(vs['mean'], digits)} "
            f"[95% CI {_fmt(low, digits)}, {_fmt(high, digits)}]; p {p}, Holm {p_holm}; "
            f"MDE at 80% power {vs['mde']:.{digits}f}</p>"
        )
    return "".join(parts)


def render_html(
    table: Table,
    frame: pd.DataFrame,
    rows: list[dict[str, Any]],
    summary_md: str = "",
    provenance_md: str = "",
    figures: dict[str, str] | None = None,
) -> str:
    """The page (a string): table, legend and notes, rank summary, provenance and figures."""
    figures = {} if figures is None else figures
    controls = controls_of(table, frame)
    details = cell_details(table, frame, versions_of(rows))
    family_of = dict(zip(frame["task"], frame["family"])) if "family" in frame else {}
    dense_mean = {
        column: (table.cell("dense", column)["mean"] if table.cell("dense", column) is not None else math.nan)
        for column in table.columns
    }
    tracks = {c: "" for c in table.columns}  # protocol v3 rows carry a track; v2 rows do not
    if "track" in frame:
        for column in table.columns:
            task, pattern, sparsity = column
            part = frame[(frame["task"] == task) & (frame["pattern"] == pattern) & (frame["sparsity"] == sparsity)]
            tracks[column] = str(part["track"].dropna().iloc[0]) if part["track"].notna().any() else ""

    head = ["<tr><th scope='col' class='label'><button type='button' data-sort='-1'>pruner</button></th>"]
    for i, column in enumerate(table.columns):
        task, pattern, sparsity = column
        links = figures_of_column(table.suite_name, column, figures)
        fig = f" <a class='fig' href='#fig-{_e(links[0])}' title='figures of this column'>fig</a>" if links else ""
        head.append(
            f"<th scope='col' data-col='{i}' data-family='{_e(family_of.get(task, ''))}' data-pattern='{_e(pattern)}' "
            f"data-track='{_e(tracks[column])}'><button type='button' data-sort='{i}' aria-label='sort by {_e(task)} "
            f"{_e(pattern)} {sparsity:g}'>{_e(task)}<br>{_e(pattern)} · {sparsity:g}</button>{fig}</th>"
        )
    head.append("</tr>")

    def body_row(label: str) -> str:
        cells = [f"<th scope='row' class='label'>{_e(label)}</th>"]
        for i, column in enumerate(table.columns):
            row = table.cell(label, column)
            text = table.text(row, "md")
            if row is None or pd.isna(row["mean"]):
                cells.append(f"<td data-col='{i}' data-value='' data-retention=''>{_e(text)}</td>")
                continue
            mean, dense = float(row["mean"]), dense_mean[column]
            retention = mean / dense if dense and not math.isnan(dense) else math.nan
            rtext = "–" if math.isnan(retention) else f"{retention:.3f}"
            if row["best"]:
                rtext = f"**{rtext}**"
            detail = _detail_html(details.get((label, column), {}), table.digits)
            cells.append(
                f"<td data-col='{i}' data-value='{mean:.6g}' data-retention='{'' if math.isnan(retention) else f'{retention:.6g}'}'"
                f" data-text='{_e(_plain(text))}' data-rtext='{_e(_plain(rtext))}'{' class=best' if row['best'] else ''}>"
                f"<details><summary><span class='v'>{_md_to_html(text)}</span></summary>{detail}</details></td>"
            )
        return "<tr>" + "".join(cells) + "</tr>"

    methods = [label for label in table.labels if label not in controls]
    control_rows = [label for label in table.labels if label in controls]
    width = len(table.columns) + 1
    body = ["<tbody class='methods'>"] + [body_row(label) for label in methods] + ["</tbody>"]
    body += [f"<tbody class='controls'><tr class='group'><th scope='rowgroup' colspan='{width}'>controls</th></tr>"]
    body += [body_row(label) for label in control_rows] + ["</tbody>"]

    families = sorted({family_of.get(c[0], "") for c in table.columns} - {""})
    patterns = list(dict.fromkeys(c[1] for c in table.columns))
    track_values = sorted(set(tracks.values()) - {""})

    def select(name: str, values: list[str]) -> str:
        options = "".join(f"<option value='{_e(v)}'>{_e(v)}</option>" for v in values)
        return f"<label>{name} <select id='filter-{name}' data-filter='{name}'><option value=''>all</option>{options}</select></label>"

    controls_html = select("family", families) + select("pattern", patterns)
    if track_values:
        controls_html += select("track", track_values)
    controls_html += (
        "<fieldset class='view'><legend>show</legend>"
        "<label><input type='radio' name='view' value='metric' checked> metric</label>"
        "<label><input type='radio' name='view' value='retention'> retention (pruned ÷ dense)</label></fieldset>"
    )
    if table.marks == "v2":
        marks = (
            "<li>†: the best beats the runner-up (paired t-test over shared seeds, p &lt; 0.05, uncorrected)</li>"
            "<li>≈: not the best, not separated from it (p ≥ 0.05): not separated is not equivalent</li>"
        )
    else:
        marks = (
            "<li>†: the best is separated from the runner-up (paired t-test over shared seeds, Holm-corrected "
            "over the table, p &lt; 0.05)</li>"
            f"<li>≡: equivalent to the best within ±{table.margin:g} points (paired TOST, p &lt; 0.05)</li>"
            "<li>?: inconclusive: neither separated from the best nor equivalent to it</li>"
        )
    legend = (
        "<ul class='legend'><li><strong>bold</strong>: best of the column</li>"
        + marks
        + "<li>‡: achieved sparsity off its target</li><li>§: collapsed on some seeds (trivial-predictor level)</li>"
        "<li>(n=k): fewer seeds finished than planned</li>"
        "<li>Click a cell: its seeds, run ids, code version, the paired difference to the column's best "
        "with its 95% CI, p and Holm-corrected p over the table, and the MDE at 80% power.</li></ul>"
    )
    notes = "".join(f"<li>{_md_to_html(n)}</li>" for n in table.notes("md"))
    figure_html = "".join(
        f"<figure id='fig-{_e(name)}'>{svg}<figcaption>{_e(name)}</figcaption></figure>"
        for name, svg in figures.items()
    )
    return PAGE.format(
        title=_e(table.suite_name),
        count=len(rows),
        columns=len(table.columns),
        labels=len(table.labels),
        controls=controls_html,
        head="".join(head),
        body="".join(body),
        legend=legend,
        notes=notes,
        summary=_markdown_block(summary_md),
        provenance=_markdown_block(provenance_md),
        figures=figure_html,
        style=STYLE,
        script=SCRIPT,
    )


def _markdown_block(text: str) -> str:
    """The few Markdown forms the summary and provenance use (headings, bullets, pipe tables, paragraphs)
    as HTML, escaped; anything else as a paragraph."""
    out, table = [], []

    def flush_table():
        if table:
            rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
            rows = [r for r in rows if not all(re.fullmatch(r":?-{3,}:?", c) for c in r)]
            header = "".join(f"<th scope='col'>{_md_to_html(c)}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{_md_to_html(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f"<table class='plain'><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>")
            table.clear()

    for line in text.splitlines():
        if line.strip().startswith("|"):
            table.append(line)
            continue
        flush_table()
        if not line.strip():
            continue
        if line.startswith("#"):
            out.append(f"<h3>{_md_to_html(line.lstrip('#').strip())}</h3>")
        elif line.lstrip().startswith(("- ", "* ")):
            out.append(f"<p class='item'>• {_md_to_html(line.lstrip()[2:])}</p>")
        else:
            out.append(f"<p>{_md_to_html(line)}</p>")
    flush_table()
    return "".join(out)


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#111;background:#fff}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em}
.filters{display:flex;flex-wrap:wrap;gap:1em;align-items:center;margin:.8em 0}
.filters fieldset{border:1px solid #ccc;padding:.2em .6em}
.wrap{overflow-x:auto}
table.board{border-collapse:collapse;font-variant-numeric:tabular-nums}
table.board th,table.board td{border:1px solid #ddd;padding:.25em .45em;text-align:right;vertical-align:top;white-space:nowrap}
table.board th.label{text-align:left;position:sticky;left:0;background:#fafafa}
table.board thead th{background:#f0f0f0;position:sticky;top:0}
table.board th button{font:inherit;background:none;border:0;cursor:pointer;padding:0;text-align:inherit}
table.board th button:focus-visible,summary:focus-visible{outline:2px solid #1f77b4}
table.board th[aria-sort=ascending] button::after{content:" ▲"}table.board th[aria-sort=descending] button::after{content:" ▼"}
tbody.controls tr.group th{text-align:left;background:#eee;font-style:italic}
tbody.controls td{color:#444}
td.best{background:#eef6ee}
details summary{cursor:pointer;list-style:none}details summary::-webkit-details-marker{display:none}
details[open]{background:#fffbe6}details ul.seeds{margin:.3em 0;padding-left:1.2em;text-align:left}
details p{margin:.3em 0;text-align:left;white-space:normal;max-width:28em}
.hidden{display:none}
table.plain{border-collapse:collapse}table.plain th,table.plain td{border:1px solid #ddd;padding:.2em .4em}
figure{display:inline-block;margin:.5em;vertical-align:top;max-width:560px}figure svg{max-width:100%;height:auto}
figcaption{font-size:.8em;color:#555}
@media print{.filters,a.fig,#figures{display:none}details[open]>:not(summary){display:none}
table.board{font-size:9px}table.board thead th,table.board th.label{position:static}}
"""

SCRIPT = """
(function(){
const table=document.querySelector('table.board');if(!table)return;
const methods=table.querySelector('tbody.methods'),controls=table.querySelector('tbody.controls');
const state={sort:null,dir:'desc',family:'',pattern:'',track:'',view:'metric'};
function readHash(){const h=new URLSearchParams(location.hash.slice(1));
 if(h.get('sort')!==null){const [c,d]=h.get('sort').split(':');state.sort=parseInt(c,10);state.dir=d==='asc'?'asc':'desc';}
 for(const k of ['family','pattern','track'])state[k]=h.get(k)||'';
 state.view=h.get('view')==='retention'?'retention':'metric';}
function writeHash(){const h=new URLSearchParams();
 if(state.sort!==null)h.set('sort',state.sort+':'+state.dir);
 for(const k of ['family','pattern','track'])if(state[k])h.set(k,state[k]);
 if(state.view!=='metric')h.set('view',state.view);
 history.replaceState(null,'',h.toString()?'#'+h.toString():location.pathname);}
function key(tr){if(state.sort===-1)return tr.querySelector('th').textContent;
 const td=tr.querySelector('td[data-col="'+state.sort+'"]');const v=td?td.dataset[state.view==='retention'?'retention':'value']:'';
 return v===''||v===undefined?null:parseFloat(v);}
function sortRows(body){const rows=[...body.querySelectorAll('tr')].filter(r=>!r.classList.contains('group'));
 rows.sort((a,b)=>{const x=key(a),y=key(b);if(x===null&&y===null)return 0;if(x===null)return 1;if(y===null)return -1;
  const c=typeof x==='string'?x.localeCompare(y):x-y;return state.dir==='asc'?c:-c;});
 for(const r of rows)body.appendChild(r);}
function apply(){
 for(const th of table.querySelectorAll('thead th'))th.removeAttribute('aria-sort');
 if(state.sort!==null){const b=table.querySelector('thead button[data-sort="'+state.sort+'"]');
  if(b)b.parentElement.setAttribute('aria-sort',state.dir==='asc'?'ascending':'descending');
  sortRows(methods);sortRows(controls);}
 const shown=new Set();let visible=0;
 for(const th of table.querySelectorAll('thead th[data-col]')){
  const ok=(!state.family||th.dataset.family===state.family)&&(!state.pattern||th.dataset.pattern===state.pattern)&&(!state.track||th.dataset.track===state.track);
  th.classList.toggle('hidden',!ok);if(ok){shown.add(th.dataset.col);visible++;}}
 for(const td of table.querySelectorAll('td[data-col]'))td.classList.toggle('hidden',!shown.has(td.dataset.col));
 const g=table.querySelector('tr.group th');if(g)g.colSpan=visible+1;
 for(const td of table.querySelectorAll('td[data-text]')){const s=td.querySelector('span.v');
  const t=state.view==='retention'?td.dataset.rtext:td.dataset.text;s.textContent=t;
  if(td.classList.contains('best')){const b=document.createElement('strong');b.textContent=t;s.textContent='';s.appendChild(b);}}
 for(const s of document.querySelectorAll('select[data-filter]'))s.value=state[s.dataset.filter];
 for(const r of document.querySelectorAll('input[name=view]'))r.checked=r.value===state.view;
 document.body.dataset.ready='1';}
table.querySelector('thead').addEventListener('click',e=>{const b=e.target.closest('button[data-sort]');if(!b)return;
 const c=parseInt(b.dataset.sort,10);state.dir=state.sort===c&&state.dir==='desc'?'asc':'desc';state.sort=c;writeHash();apply();});
for(const s of document.querySelectorAll('select[data-filter]'))s.addEventListener('change',()=>{state[s.dataset.filter]=s.value;writeHash();apply();});
for(const r of document.querySelectorAll('input[name=view]'))r.addEventListener('change',()=>{state.view=r.value;writeHash();apply();});
window.addEventListener('hashchange',()=>{readHash();apply();});
readHash();apply();})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:">
<title>{title} — smartbench leaderboard</title>
<style>{style}</style>
</head>
<body>
<h1>{title}</h1>
<p>{count} runs, {columns} columns, {labels} rows (mean ± std over seeds). Generated by
<code>smartbench table {title} --format html</code> from the result store; the Markdown table of the same rows
shows the same cells.</p>
<div class="filters" role="group" aria-label="filters">{controls}</div>
<div class="wrap"><table class="board">
<caption>{title}: test metric per pruner (rows) and column (task · pattern · target sparsity); controls below</caption>
<thead>{head}</thead>
{body}
</table></div>
<h2>Legend</h2>{legend}
<h2>Notes</h2><ul class="notes">{notes}</ul>
<h2>Ranks and verdicts</h2>{summary}
<h2>Provenance</h2>{provenance}
<h2 id="figures-title">Figures</h2><div id="figures">{figures}</div>
<script>{script}</script>
</body>
</html>
"""
