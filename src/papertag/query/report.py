"""A self-contained HTML report of the database: charts a person can read at a glance.

One file: plotly.js and the data are inlined, nothing is fetched when it is
opened (it works offline and from an e-mail attachment). Charts: labels per
field, technique × target-metric co-occurrence, techniques per digest, the
confidence distribution, review progress, and with a gold file per-label F1 and
a reliability diagram (scored by :func:`papertag.query.evaluate.evaluate`).
"""

from __future__ import annotations

import datetime as dt
import html
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from ..annotators import DEFAULT_ANNOTATOR
from ..db import Store
from ..errors import ConfigError
from ..files import check_out_path, temp_beside
from ..schema import ACCEPT_THRESHOLD, DROP_THRESHOLD
from ..scoring import EvalResult
from ..taxonomy import FIELDS
from .evaluate import evaluate

#: Techniques shown by name in the per-digest chart; the rest are summed as "other techniques".
TOP_TECHNIQUES = 8

_TEMPLATE = "plotly_white"
_FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"
_PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class Chart:
    id: str
    title: str
    note: str
    figure: go.Figure


@dataclass
class ReportResult:
    path: Path
    charts: list[str]
    summary: dict[str, Any] = field(default_factory=dict)
    bytes: int = 0


def _rows(store: Store, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    return store.con.execute(sql, params or []).fetchall()


def _style(fig: go.Figure, *, height: int = 420, **layout: Any) -> go.Figure:
    fig.update_layout(
        template=_TEMPLATE,
        height=height,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        font={"family": _FONT, "size": 13},
        legend={"orientation": "h", "y": -0.15},
        **layout,
    )
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def _empty(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font={"size": 16}, x=0.5, y=0.5)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _style(fig, height=200)


# --------------------------------------------------------------------- summary
# The review queue: current labels and candidates with DROP <= confidence < ACCEPT. An item
# counts as reviewed once a person has decided its paper's field in final_labels.
_QUEUE_SQL = """
SELECT q.field,
       EXISTS (SELECT 1 FROM final_labels f
               WHERE f.decided_by = 'person' AND f.paper_id = q.paper_id AND f.field = q.field)
           AS reviewed
FROM (SELECT paper_id, field, confidence FROM labels WHERE current
      UNION ALL SELECT paper_id, field, confidence FROM candidates WHERE current) q
WHERE q.confidence >= ? AND q.confidence < ?
"""
_QUEUE_PARAMS = [DROP_THRESHOLD, ACCEPT_THRESHOLD]


def summary(store: Store) -> dict[str, Any]:
    """The counts in the report's summary line."""
    row = _rows(
        store,
        f"""
        SELECT (SELECT count(*) FROM papers),
               (SELECT count(*) FROM digests),
               (SELECT count(DISTINCT paper_id) FROM annotation_status WHERE current),
               (SELECT count(*) FROM labels WHERE current),
               (SELECT count(*) FROM final_labels),
               (SELECT list(DISTINCT annotator || '/' || model ORDER BY annotator || '/' || model)
                  FROM labels WHERE current),
               (SELECT count(*) FROM ({_QUEUE_SQL})),
               (SELECT count(*) FROM ({_QUEUE_SQL}) WHERE reviewed)
        """,
        [*_QUEUE_PARAMS, *_QUEUE_PARAMS],
    )[0]
    keys = (
        "papers",
        "digests",
        "annotated_papers",
        "current_labels",
        "final_labels",
        "annotators",
        "review_queue",
        "reviewed",
    )
    return dict(zip(keys, row, strict=True))


# ---------------------------------------------------------------------- charts
def label_counts(store: Store) -> Chart:
    rows = _rows(
        store,
        "SELECT field, label, count(DISTINCT paper_id) AS papers FROM labels WHERE current "
        "GROUP BY ALL ORDER BY field, papers, label DESC",
    )
    by_field: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for f, label, n in rows:
        by_field[f].append((label, n))
    title = "Papers per label"
    note = "How many papers carry each label (current annotations, any annotator)."
    if not rows:
        return Chart("label-counts", title, note, _empty("No labels yet: run papertag annotate"))
    fig = make_subplots(
        rows=1,
        cols=len(FIELDS),
        subplot_titles=[f.replace("_", " ") for f in FIELDS],
        horizontal_spacing=0.14,
    )
    for i, f in enumerate(FIELDS, start=1):
        pairs = by_field.get(f, [])
        fig.add_trace(
            go.Bar(
                x=[n for _, n in pairs],
                y=[label for label, _ in pairs],
                orientation="h",
                name=f,
                text=[n for _, n in pairs],
                textposition="auto",
                hovertemplate="%{y}: %{x} papers<extra></extra>",
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="papers", row=1, col=i)
    height = max(360, 22 * max((len(v) for v in by_field.values()), default=0) + 120)
    return Chart("label-counts", title, note, _style(fig, height=height, showlegend=False))


def cooccurrence(store: Store) -> Chart:
    rows = _rows(
        store,
        """
        SELECT t.label, m.label, count(DISTINCT t.paper_id)
        FROM labels t JOIN labels m
          ON m.annotation_id = t.annotation_id AND m.field = 'target_metric'
        WHERE t.current AND t.field = 'technique'
        GROUP BY ALL
        """,
    )
    title = "Technique × target metric"
    note = "Papers whose annotation has both labels: what each technique is used to improve."
    if not rows:
        return Chart("cooccurrence", title, note, _empty("No labels yet"))
    counts = {(t, m): n for t, m, n in rows}

    def by_total(index: int) -> list[str]:
        totals: dict[str, int] = defaultdict(int)
        for key, n in counts.items():
            totals[key[index]] += n
        return sorted(totals, key=lambda k: (-totals[k], k))

    techniques, metrics = by_total(0), by_total(1)
    z = [[counts.get((t, m), 0) for m in metrics] for t in techniques]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=metrics,
            y=techniques,
            colorscale="Blues",
            text=[[str(v) if v else "" for v in row] for row in z],
            texttemplate="%{text}",
            hovertemplate="%{y} × %{x}: %{z} papers<extra></extra>",
            colorbar={"title": {"text": "papers"}},
        )
    )
    fig.update_yaxes(autorange="reversed", title_text="technique")
    fig.update_xaxes(title_text="target metric", tickangle=-30)
    return Chart(
        "cooccurrence", title, note, _style(fig, height=max(380, 26 * len(techniques) + 160))
    )


def techniques_over_digests(store: Store) -> Chart:
    rows = _rows(
        store,
        """
        SELECT d.digest_id, coalesce(CAST(d.digest_date AS VARCHAR), d.source), d.digest_date,
               l.label, count(DISTINCT l.paper_id)
        FROM digests d
        JOIN digest_papers dp USING (digest_id)
        JOIN labels l ON l.paper_id = dp.paper_id AND l.current AND l.field = 'technique'
        GROUP BY ALL
        """,
    )
    title = "Techniques per digest"
    note = (
        "Papers each digest listed, by technique, in digest-date order (a digest without a "
        "date is shown by its file name, after the dated ones; digests sharing a date or a "
        f"name add the start of their id). The {TOP_TECHNIQUES} most "
        "frequent techniques are named; the rest are summed."
    )
    if not rows:
        return Chart("techniques-over-digests", title, note, _empty("No digest with labels yet"))
    dates: dict[str, dt.date | None] = {}
    names: dict[str, str] = {}
    totals: dict[str, int] = defaultdict(int)
    for digest, name, date, label, n in rows:
        dates[digest], names[digest] = date, name
        totals[label] += n
    digests = sorted(dates, key=lambda d: (dates[d] is None, dates[d] or dt.date.min, names[d], d))
    # Two digests of one date, or two undated files of one name, are still two bars.
    shared = Counter(names.values())
    axis = [f"{names[d]} ({d[:8]})" if shared[names[d]] > 1 else names[d] for d in digests]
    top = sorted(totals, key=lambda k: (-totals[k], k))[:TOP_TECHNIQUES]
    series: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for digest, _, _, label, n in rows:
        series[label if label in top else "other techniques"][digest] += n
    fig = go.Figure()
    for name in [*top, "other techniques"]:
        if name in series:
            fig.add_trace(
                go.Bar(
                    name=name,
                    x=axis,
                    y=[series[name].get(d, 0) for d in digests],
                    hovertemplate=f"{name}: %{{y}} papers<extra>%{{x}}</extra>",
                )
            )
    fig.update_xaxes(title_text="digest", type="category")
    fig.update_yaxes(title_text="papers")
    return Chart("techniques-over-digests", title, note, _style(fig, barmode="stack"))


def confidence_distribution(store: Store) -> Chart:
    rows = _rows(
        store,
        "SELECT 'labels' AS kind, confidence FROM labels WHERE current "
        "UNION ALL SELECT 'runner-up candidates', confidence FROM candidates WHERE current",
    )
    title = "Confidence"
    note = (
        f"Labels at or above {ACCEPT_THRESHOLD} are accepted without review; labels below it and "
        f"candidates from {DROP_THRESHOLD} up go to the review queue; the rest are dropped."
    )
    if not rows:
        return Chart("confidence", title, note, _empty("No labels yet"))
    fig = go.Figure()
    for kind in ("labels", "runner-up candidates"):
        values = [c for k, c in rows if k == kind]
        if values:
            fig.add_trace(
                go.Histogram(
                    x=values,
                    name=kind,
                    xbins={"start": 0, "end": 1.0001, "size": 0.05},
                    hovertemplate="%{x}: %{y}<extra>" + kind + "</extra>",
                )
            )
    for x, text in ((DROP_THRESHOLD, "drop"), (ACCEPT_THRESHOLD, "accept")):
        fig.add_vline(
            x=x,
            line_dash="dash",
            line_color="#555",
            annotation_text=f"{text} {x}",
            annotation_position="top",
        )
    fig.update_xaxes(title_text="confidence", range=[0, 1])
    fig.update_yaxes(title_text="labels")
    return Chart("confidence", title, note, _style(fig, barmode="stack"))


def review_progress(store: Store) -> Chart:
    rows = _rows(
        store,
        f"SELECT field, count(*) FILTER (WHERE reviewed), count(*) FILTER (WHERE NOT reviewed) "
        f"FROM ({_QUEUE_SQL}) GROUP BY field",
        _QUEUE_PARAMS,
    )
    done = {f: (r, w) for f, r, w in rows}
    reviewed = sum(r for r, _ in done.values())
    total = reviewed + sum(w for _, w in done.values())
    title = "Review progress"
    share = f"{reviewed / total:.0%}" if total else "nothing to review"
    note = (
        f"Review queue: labels and candidates with confidence from {DROP_THRESHOLD} to below "
        f"{ACCEPT_THRESHOLD}. Reviewed {reviewed:,} of {total:,} ({share}); an item counts as "
        "reviewed once a person has decided its paper's field."
    )
    fig = go.Figure()
    names = [f.replace("_", " ") for f in FIELDS]
    for i, (name, color) in enumerate((("reviewed", "#2a9d8f"), ("waiting", "#e9c46a"))):
        values = [done.get(f, (0, 0))[i] for f in FIELDS]
        fig.add_trace(
            go.Bar(
                name=name,
                y=names,
                x=values,
                orientation="h",
                marker_color=color,
                text=values,
                textposition="auto",
                hovertemplate=f"%{{y}}: %{{x}} {name}<extra></extra>",
            )
        )
    fig.update_xaxes(title_text="labels and candidates in the review queue")
    return Chart("review-progress", title, note, _style(fig, height=300, barmode="stack"))


def per_label_f1(result: EvalResult) -> Chart:
    fig = make_subplots(
        rows=1,
        cols=len(FIELDS),
        subplot_titles=[f.replace("_", " ") for f in FIELDS],
        horizontal_spacing=0.14,
    )
    longest = 0
    for i, f in enumerate(FIELDS, start=1):
        table = sorted(result.fields[f].per_label.items(), key=lambda kv: (kv[1]["f1"], kv[0]))
        longest = max(longest, len(table))
        fig.add_trace(
            go.Bar(
                x=[v["f1"] for _, v in table],
                y=[label for label, _ in table],
                orientation="h",
                text=[f"{v['f1']:.2f}" for _, v in table],
                textposition="auto",
                customdata=[[int(v["support"]), v["precision"], v["recall"]] for _, v in table],
                hovertemplate="%{y}: F1 %{x:.2f} (precision %{customdata[1]:.2f}, recall "
                "%{customdata[2]:.2f}, %{customdata[0]} gold papers)<extra></extra>",
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="F1", range=[0, 1], row=1, col=i)
    micro = ", ".join(f"{f.replace('_', ' ')} {result.fields[f].micro_f1:.2f}" for f in FIELDS)
    note = (
        f"Against {result.n_papers} gold papers (annotator {result.annotator}/{result.model}). "
        f"Micro-F1: {micro}."
    )
    return Chart(
        "per-label-f1",
        "Per-label F1 against the gold set",
        note,
        _style(fig, height=max(360, 22 * longest + 120), showlegend=False),
    )


def reliability(result: EvalResult) -> Chart:
    bins = result.reliability
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=[(b["lo"] + b["hi"]) / 2 for b in bins],
            y=[b["accuracy"] for b in bins],
            width=[(b["hi"] - b["lo"]) * 0.9 for b in bins],
            name="share right, per confidence bin",
            marker_color="#457b9d",
            customdata=[[int(b["n"]), b["confidence"]] for b in bins],
            hovertemplate="mean confidence %{customdata[1]:.2f}: %{y:.0%} right "
            "(%{customdata[0]} labels)<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfect calibration",
            line={"dash": "dash", "color": "#555"},
        )
    )
    fig.update_xaxes(title_text="confidence", range=[0, 1])
    fig.update_yaxes(title_text="share of labels that are right", range=[0, 1])
    note = (
        f"Labels and candidates of the gold papers in {len(bins)} confidence bins; bars on the "
        f"diagonal mean a confidence can be read as a probability. Expected calibration error "
        f"{result.ece:.3f} over {result.n_items} items."
    )
    return Chart("reliability", "Calibration (reliability diagram)", note, _style(fig))


# ------------------------------------------------------------------------ page
_CSS = """
body { font-family: %(font)s; margin: 0; background: #f6f7f9; color: #1d2330; }
header { background: #1d3557; color: #fff; padding: 24px 32px; }
header h1 { margin: 0 0 6px; font-size: 26px; }
header p { margin: 0; opacity: .9; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 40px; }
section { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08);
          margin: 18px 0; padding: 16px 20px; }
section h2 { margin: 0 0 4px; font-size: 19px; }
section p.note { margin: 0 0 8px; color: #555; font-size: 14px; }
footer { color: #777; font-size: 12px; text-align: center; padding-bottom: 24px; }
"""


def _summary_line(s: dict[str, Any]) -> str:
    annotators = ", ".join(s["annotators"] or []) or "none"
    return (
        f"{s['papers']:,} papers from {s['digests']:,} digests · {s['annotated_papers']:,} "
        f"annotated · {s['current_labels']:,} current labels ({annotators}) · "
        f"{s['final_labels']:,} accepted · {s['review_queue']:,} in the review queue, "
        f"{s['reviewed']:,} reviewed"
    )


def render(charts: list[Chart], summary_data: dict[str, Any], *, source: str) -> str:
    """The report's HTML: one page, plotly.js inlined once, one section per chart."""
    sections = []
    for chart in charts:
        div = chart.figure.to_html(
            full_html=False,
            include_plotlyjs=False,
            div_id=f"plot-{chart.id}",
            config=_PLOT_CONFIG,
        )
        sections.append(
            f'<section id="{chart.id}"><h2>{html.escape(chart.title)}</h2>'
            f'<p class="note">{html.escape(chart.note)}</p>'
            f'<div class="chart" data-chart="{chart.id}">{div}</div></section>'
        )
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>papertag report: {html.escape(source)}</title>"
        f"<style>{_CSS % {'font': _FONT}}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>"
        f"<header><h1>papertag report</h1><p>{html.escape(_summary_line(summary_data))}</p></header>"
        f"<main>{''.join(sections)}</main>"
        f"<footer>{html.escape(source)} · generated {now} by papertag</footer>"
        "</body></html>\n"
    )


def build_charts(store: Store, result: EvalResult | None = None) -> list[Chart]:
    charts = [
        label_counts(store),
        cooccurrence(store),
        techniques_over_digests(store),
        confidence_distribution(store),
        review_progress(store),
    ]
    if result is not None:
        charts += [per_label_f1(result), reliability(result)]
    return charts


def write_report(
    db: Store | str | Path | None,
    out: str | Path = "report.html",
    *,
    gold: str | Path | None = None,
    annotator: str = DEFAULT_ANNOTATOR,
    model: str | None = None,
) -> ReportResult:
    """Write the HTML report to ``out`` (replacing it) and return what it holds.

    With ``gold``, labels of ``annotator`` (and ``model``) are scored like ``papertag
    eval`` scores them: the database is only read.
    """
    path = Path(out)
    check_out_path(path, overwrite=True)
    store = db if isinstance(db, Store) else Store(db, read_only=True)
    try:
        result = (
            evaluate(store, gold, annotator=annotator, model=model) if gold is not None else None
        )
        data = summary(store)
        charts = build_charts(store, result)
        page = render(charts, data, source=str(store.path))
    finally:
        if not isinstance(db, Store):
            store.close()
    tmp = temp_beside(path)
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return ReportResult(
        path=path,
        charts=[c.id for c in charts],
        summary=data,
        bytes=len(page.encode("utf-8")),
    )
