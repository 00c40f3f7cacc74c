"""The HTML report: one self-contained page per evaluation (or per comparison of stages).

:func:`write_report` takes one or more *stages* (``{"baseline": (records, metrics), "sft":
..., "grpo": ...}``; a single eval run is one stage) and the task that scored them, and
writes ``OUT_DIR/index.html``:

- the task's own sections first, if it has the ``report_sections(stages)`` hook (a list of
  :class:`Section`: tables and/or a bar chart; e.g. the clarify task's accuracy per level
  and confusion matrix);
- then, for every task, built-in or a user's: a bar chart of the rates among its scalar
  metrics (unless the task drew a chart itself), the table of its scalar metrics (one
  column per stage; one nested level as ``a.b``), and one table per *split* — every
  ``{split: {metric: value}}`` dict in its metrics (:func:`split_tables`; titled by the
  task's ``report_tables`` or by the key);
- a browsable grid of samples (thumbnail, question, gold, response, judge verdicts,
  correct/incorrect), filterable by stage, level and correctness with a few lines of
  vanilla JS.

Nothing is fetched from the network: CSS and JS are inline, charts are inline SVG and images
are base64 PNG thumbnails of at most 96 px. All text from records (questions, responses, ids,
stage names) goes through Jinja autoescaping.

Records are the rows of ``predictions.jsonl`` (:mod:`vlmtune.eval.run`): ``id``,
``question``, ``image`` (a path; or ``_image_obj``, any image entry, or ``thumbnail``, a
data URI), ``level``, ``gold``, ``response``, ``pred``, ``correct``, ``verdicts``.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Cell", "Section", "Table", "bar_chart", "fmt", "level_key", "line_chart", "split_tables",
           "text_table", "thumbnail_uri", "write_report"]

TEMPLATE_DIR = Path(__file__).parent / "templates"
THUMB_PX = 96
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#9c755f")
OVERALL = "overall"


def thumbnail_uri(image: Any, max_px: int = THUMB_PX) -> str | None:
    """A ``data:image/png;base64,...`` thumbnail (longest side <= ``max_px``), None if the
    image cannot be read."""
    if image is None or image == "<inline>":
        return None
    from vlmtune.data.sample import load_image

    try:
        im = load_image(image)
    except Exception:  # a missing/unreadable image shows as "no image", never breaks the report
        return None
    im.thumbnail((max_px, max_px))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def level_key(level: str) -> tuple:
    """Sort key of level labels: ``L0 < L1 < ... < other labels < "overall"``."""
    if level == OVERALL:
        return (2, 0, "")
    digits = "".join(c for c in level if c.isdigit())
    return (0, int(digits), level) if level.upper().startswith("L") and digits else (1, 0, level)


@dataclass
class Cell:
    """One table cell (``cls``: a CSS class such as ``diag`` or ``strong``)."""

    text: str
    colspan: int = 1
    rowspan: int = 1
    cls: str = ""


@dataclass
class Table:
    """A table of a report section: header rows and body rows of cells."""

    header: list[list[Cell]]
    rows: list[list[Cell]]
    caption: str = ""  # a small heading above the table (e.g. the stage)
    id: str = ""
    cls: str = ""


@dataclass
class Section:
    """A titled part of the report a task adds (its ``report_sections`` hook, or a caller's
    ``sections``): tables (side by side with ``side_by_side``), then a bar chart
    (:func:`bar_chart` geometry) and a line chart (:func:`line_chart`), each optional."""

    title: str
    tables: list[Table] = field(default_factory=list)
    chart: dict[str, Any] | None = None
    note: str = ""
    side_by_side: bool = False
    line_chart: dict[str, Any] | None = None


def scalar_metrics(metrics: dict, prefix: str = "", depth: int = 1) -> dict[str, float | int | str]:
    """Top-level scalar metrics (and one nested level as ``a.b``), ``run`` left out."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if k == "run":
            continue
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            if isinstance(v, float) and not math.isfinite(v):
                continue
            out[prefix + str(k)] = v
        elif isinstance(v, dict) and depth > 0:
            out.update(scalar_metrics(v, f"{prefix}{k}.", depth - 1))
    return out


def split_tables(metrics: dict, titles: dict[str, str] | None = None) -> list[tuple[str, str, dict[str, dict]]]:
    """Every per-split table in a task's ``metrics``: a non-empty ``{split: {metric: value}}``
    dict (e.g. ClarifyVLM's metrics per question type, ARLArena's per turn), as ``(key,
    title, table)``; the keys of ``titles`` first, in its order and with its titles, then the
    others in metrics order, titled by their key. ``run`` is left out."""
    titles = titles or {}
    found = {k: v for k, v in (metrics or {}).items() if k != "run" and isinstance(v, dict) and v
             and all(isinstance(g, dict) for g in v.values())}
    order = [k for k in titles if k in found] + [k for k in found if k not in titles]
    return [(k, titles.get(k, k), found[k]) for k in order]


def _columns(table: dict[str, dict]) -> list[str]:
    return list(dict.fromkeys(k for g in table.values() for k, v in g.items()
                              if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))))


def text_table(table: dict[str, dict]) -> str:
    """A split table as aligned plain text for the console (rows = splits, columns = metrics)."""
    cols = _columns(table)
    rows = [["", *cols]] + [[str(name), *(fmt(g.get(c)) for c in cols)] for name, g in table.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(cols) + 1)]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in rows)


def bar_chart(groups: list[str], series: dict[str, list[float | None]], *, width: int = 640,
              height: int = 260, y_label: str = "score") -> dict[str, Any]:
    """Geometry of a grouped bar chart (values in [0, 1]) for the template's inline SVG."""
    left, right, top, bottom = 48, 12, 14, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    names = list(series)
    group_w = plot_w / max(len(groups), 1)
    bar_w = max(min(group_w * 0.8 / max(len(names), 1), 60), 2)
    bars, labels = [], []
    for gi, group in enumerate(groups):
        x0 = left + gi * group_w + (group_w - bar_w * len(names)) / 2
        labels.append({"x": round(left + (gi + 0.5) * group_w, 1), "y": height - bottom + 16, "text": group})
        for si, name in enumerate(names):
            v = series[name][gi]
            h = 0.0 if v is None else max(0.0, min(1.0, float(v))) * plot_h
            bars.append({"x": round(x0 + si * bar_w, 1), "y": round(top + plot_h - h, 1), "w": round(bar_w - 1, 1),
                         "h": round(h, 1), "color": PALETTE[si % len(PALETTE)], "stage": name, "group": group,
                         "value": "n/a" if v is None else f"{v:.3f}",
                         "label_y": round(top + plot_h - h - 3, 1), "missing": v is None})
    ticks = [{"y": round(top + plot_h - t * plot_h, 1), "text": f"{t:.2f}".rstrip("0").rstrip(".")}
             for t in (0, 0.25, 0.5, 0.75, 1.0)]
    legend = [{"x": left + i * 110, "y": height - 10, "name": n, "color": PALETTE[i % len(PALETTE)]}
              for i, n in enumerate(names)]
    return {"width": width, "height": height, "left": left, "right": width - right, "top": top,
            "bottom": top + plot_h, "bars": bars, "labels": labels, "ticks": ticks, "legend": legend,
            "y_label": y_label}


def line_chart(xs: list[float], series: dict[str, list[float | None]], *, width: int = 640, height: int = 260,
               y_label: str = "score", x_label: str = "step") -> dict[str, Any]:
    """Geometry of a line chart of values in [0, 1] over the x values ``xs`` (e.g. training
    steps) for the template's inline SVG; a None or NaN value leaves its point out."""
    left, right, top, bottom = 48, 12, 14, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    lo, hi = (min(xs), max(xs)) if xs else (0, 1)
    span = (hi - lo) or 1

    def x_px(x: float) -> float:
        return round(left + (x - lo) / span * plot_w, 1)

    def y_px(v: float) -> float:
        return round(top + plot_h - max(0.0, min(1.0, float(v))) * plot_h, 1)

    lines = []
    for i, (name, values) in enumerate(series.items()):
        kept = [(x, v) for x, v in zip(xs, values) if v is not None and not math.isnan(v)]
        lines.append({"name": name, "color": PALETTE[i % len(PALETTE)],
                      "points": " ".join(f"{x_px(x)},{y_px(v)}" for x, v in kept),
                      "markers": [{"x": x_px(x), "y": y_px(v), "text": f"{name}, {x_label} {x:g}: {v:.3f}"}
                                  for x, v in kept]})
    every = max(1, math.ceil(len(xs) / 11))  # at most about 11 x labels
    x_ticks = [{"x": x_px(x), "text": f"{x:g}"} for x in xs[::every]]
    ticks = [{"y": y_px(t), "text": f"{t:.2f}".rstrip("0").rstrip(".")} for t in (0, 0.25, 0.5, 0.75, 1.0)]
    legend = [{"x": left + i * 200, "y": height - 8, "name": n, "color": PALETTE[i % len(PALETTE)]}
              for i, n in enumerate(series)]
    return {"width": width, "height": height, "left": left, "right": width - right, "top": top,
            "bottom": top + plot_h, "lines": lines, "x_ticks": x_ticks, "ticks": ticks, "legend": legend,
            "y_label": y_label, "x_label": x_label}


def fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _cards(stage: str, records: list[dict], max_samples: int, thumbs: dict) -> list[dict]:
    cards = []
    for r in records[:max_samples]:
        image = r.get("_image_obj", r.get("image"))
        key = r.get("thumbnail") or (str(image) if isinstance(image, (str, Path)) else id(image))
        if r.get("thumbnail"):
            thumbs[key] = r["thumbnail"]
        elif key not in thumbs:
            thumbs[key] = thumbnail_uri(image)
        correct = r.get("correct")
        verdicts = r.get("verdicts") or {}
        cards.append({
            "stage": stage, "id": fmt(r.get("id")), "question": r.get("question") or "",
            "level": "" if r.get("level") is None else str(r["level"]),
            "gold": "" if r.get("gold") is None else str(r["gold"]),
            "response": r.get("response") or "", "pred": "" if r.get("pred") is None else str(r["pred"]),
            "correct": "na" if correct is None else ("yes" if correct else "no"),
            "verdicts": [(str(k), fmt(v)) for k, v in verdicts.items()] if isinstance(verdicts, dict)
            else [("verdicts", str(verdicts))],
            "thumb": thumbs[key], "has_image": image is not None,
        })
    return cards


def _metric_rows(names: list[str], metrics: list[dict]) -> tuple[list[dict], dict[str, dict]]:
    scalars = {n: scalar_metrics(m or {}) for n, m in zip(names, metrics)}
    keys = list(dict.fromkeys(k for s in scalars.values() for k in s))
    return [{"name": k, "values": [fmt(scalars[n].get(k)) for n in names]} for k in keys], scalars


def _rates_chart(names: list[str], scalars: dict[str, dict]) -> dict[str, Any] | None:
    """Bars of the scalar metrics in [0, 1] that are rates (a float somewhere, no count)."""
    keys = list(dict.fromkeys(k for s in scalars.values() for k in s))
    keys = [k for k in keys if all(0 <= float(scalars[n].get(k, 0)) <= 1 for n in names)
            and any(isinstance(scalars[n].get(k), float) for n in names) and k != "n" and not k.startswith("n_")][:8]
    return bar_chart(keys, {n: [scalars[n].get(k) for k in keys] for n in names}, y_label="score") if keys else None


def _split_sections(names: list[str], metrics: list[dict], titles: dict[str, str] | None) -> list[dict]:
    out = []
    for n, m in zip(names, metrics):
        for _, heading, table in split_tables(m or {}, titles):
            cols = _columns(table)
            out.append({"stage": n, "title": heading, "columns": cols,
                        "rows": [{"group": str(name), "values": [fmt(g.get(c)) for c in cols]}
                                 for name, g in table.items()]})
    return out


def write_report(out_dir: str | Path, stages: dict[str, tuple[list[dict], dict]],
                 title: str = "vlmtune evaluation report", max_samples: int = 1000, task: Any = None,
                 sections: list[Section] | None = None) -> Path:
    """Write ``out_dir/index.html`` comparing ``stages`` (name -> (records, metrics)).

    ``task`` is the task that scored them: its ``report_sections(stages)`` hook adds its own
    sections, its ``report_tables`` titles the split tables. ``sections`` (e.g. a demo's
    training curves) follow the task's. Up to ``max_samples`` sample
    cards per stage are embedded (the page says how many were left out). Returns the path
    of the page.
    """
    from jinja2 import Environment, FileSystemLoader

    if not stages:
        raise ValueError("write_report: no stages given")
    stages = {str(n): v for n, v in stages.items()}
    names, metrics = list(stages), [m for _, m in stages.values()]
    hook = getattr(task, "report_sections", None)
    sections = [*(hook(stages) if hook is not None else []), *(sections or [])]
    metric_rows, scalars = _metric_rows(names, metrics)
    chart = None if any(s.chart for s in sections) else _rates_chart(names, scalars)
    group_tables = _split_sections(names, metrics, getattr(task, "report_tables", None))
    levels = sorted({str(r["level"]) for recs, _ in stages.values() for r in recs if r.get("level") is not None},
                    key=level_key)

    thumbs: dict = {}
    cards, shown = [], {}
    for n, (recs, _) in stages.items():
        stage_cards = _cards(n, list(recs), max_samples, thumbs)
        cards += stage_cards
        shown[n] = (len(stage_cards), len(recs))
    truncated = {n: s for n, s in shown.items() if s[0] < s[1]}

    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    html = env.get_template("report.html.jinja").render(
        title=title, stages=names, sections=sections, metric_rows=metric_rows, chart=chart,
        group_tables=group_tables, cards=cards, levels=levels, truncated=truncated,
        n_images=sum(1 for c in cards if c["thumb"]), thumb_px=THUMB_PX)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(html, encoding="utf-8")
    return path
