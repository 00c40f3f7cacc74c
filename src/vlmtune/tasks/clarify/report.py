"""The clarify task's report sections: strategic accuracy per level, its chart, the confusion
matrix gold × predicted strategy; for data without levels (converted ABL), ClarifyVLM's
metrics per question type as a chart.

:func:`report_sections` is the task's ``report_sections`` hook; the generic report
(:mod:`vlmtune.eval.report`) puts these sections first and adds the metric and split tables
and the sample grid itself.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from vlmtune.eval.report import OVERALL, Cell, Section, Table, bar_chart, fmt, level_key, line_chart

__all__ = ["CLARIFYVLM_CHART", "confusion", "grpo_curve_section", "level_table", "report_sections"]

Stages = dict[str, tuple[list[dict], dict]]
CLARIFYVLM_CHART = ("em", "f1", "rouge1", "rouge_l", "rta", "factual_pass")


def level_table(records: list[dict]) -> dict[str, dict[str, Any]]:
    """Per level (and ``overall``): scored samples, correct ones and their ratio."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # n, scored, correct
    for r in records:
        level = r.get("level")
        for key in ([str(level)] if level is not None else []) + [OVERALL]:
            c = counts[key]
            c[0] += 1
            if r.get("correct") is not None:
                c[1] += 1
                c[2] += bool(r["correct"])
    return {k: {"n": n, "scored": s, "correct": ok, "accuracy": ok / s if s else None}
            for k, (n, s, ok) in sorted(counts.items(), key=lambda kv: level_key(kv[0]))}


def confusion(records: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], int]]:
    """Gold × predicted counts (rows gold levels, columns predictions incl. none/failed)."""
    cells = Counter((str(r["gold"]), str(r.get("pred"))) for r in records
                    if r.get("gold") is not None and r.get("level") is not None)
    golds = sorted({g for g, _ in cells}, key=level_key)
    preds = sorted({p for _, p in cells} | set(golds), key=level_key)
    return golds, preds, dict(cells)


def _level_summary(names: list[str], tables: dict[str, dict], levels: list[str]) -> Table:
    header = [[Cell("level", rowspan=2), *(Cell(n, colspan=2) for n in names)],
              [c for _ in names for c in (Cell("accuracy"), Cell("correct / scored"))]]
    rows = []
    for lv in [*levels, OVERALL]:
        cls = "strong" if lv == OVERALL else ""
        row = [Cell(lv, cls=cls)]
        for n in names:
            t = tables[n].get(lv)
            row += [Cell(fmt(t["accuracy"]) if t else "–", cls=cls),
                    Cell(f"{t['correct']}/{t['scored']}" if t else "–", cls=cls)]
        rows.append(row)
    return Table(header=header, rows=rows, id="summary-table", cls="summary")


def _confusion_table(stage: str, records: list[dict]) -> Table | None:
    golds, preds, cells = confusion(records)
    if not golds:
        return None
    rows = [[Cell(g), *(Cell(str(cells.get((g, p), 0)), cls="diag" if g == p else "") for p in preds)]
            for g in golds]
    return Table(header=[[Cell("gold \\ pred"), *(Cell(p) for p in preds)]], rows=rows, caption=stage,
                 cls="confusion")


def _clarifyvlm_chart(stages: Stages) -> dict[str, Any] | None:
    """One bar per question type (and stage) for each ClarifyVLM metric."""
    tables = {n: m.get("clarifyvlm") for n, (_, m) in stages.items() if isinstance((m or {}).get("clarifyvlm"), dict)}
    if not tables:
        return None
    series = {(f"{n} · {split}" if len(stages) > 1 else split): [table[split].get(k) for k in CLARIFYVLM_CHART]
              for n, table in tables.items() for split in table}
    return bar_chart(list(CLARIFYVLM_CHART), series, y_label="score by question type")


def report_sections(stages: Stages) -> list[Section]:
    """With levels: accuracy per level (table and chart, one column/bar per stage) and the
    confusion matrix per stage; without (ABL data): ClarifyVLM's metrics per question type."""
    names = list(stages)
    tables = {n: level_table(list(recs)) for n, (recs, _) in stages.items()}
    if not any(len(t) > 1 for t in tables.values()):  # no record has a level
        chart = _clarifyvlm_chart(stages)
        return [Section("ClarifyVLM metrics by question type", chart=chart)] if chart else []
    levels = sorted({lv for t in tables.values() for lv in t if lv != OVERALL}, key=level_key)
    groups = [*levels, OVERALL]
    chart = bar_chart(groups, {n: [tables[n].get(g, {}).get("accuracy") for g in groups] for n in names},
                      y_label="strategic accuracy")
    confusions = [t for n, (recs, _) in stages.items() if (t := _confusion_table(n, list(recs))) is not None]
    sections = [Section("Strategic accuracy per level", tables=[_level_summary(names, tables, levels)], chart=chart)]
    if confusions:
        sections.append(Section("Confusion matrix", tables=confusions, side_by_side=True,
                                note='rows gold strategy, columns predicted; "none" = no strategy or judge failure'))
    return sections


def grpo_curve_section(curve: list[dict], spread: dict[str, float]) -> Section:
    """GRPO's learning curve (rows of :func:`vlmtune.tasks.clarify.demo.learning_curve`): the
    validation strategic accuracy and the mean train reward since the previous point, as a
    line chart and a table per level; and the reward's spread inside groups, per component."""
    steps = [r["step"] for r in curve]
    chart = line_chart(steps, {"validation strategic accuracy": [r["val_accuracy"] for r in curve],
                               "train reward (mean since the previous point)": [r["train_reward"] for r in curve]},
                       y_label="accuracy / reward", x_label="GRPO step")
    levels = sorted({lv for r in curve for lv in r["val_per_level"]}, key=level_key)
    rows = [[Cell(str(r["step"])), Cell(fmt(r["train_reward"])), Cell(fmt(r["val_accuracy"]), cls="strong"),
             *(Cell(fmt(r["val_per_level"][lv])) for lv in levels)] for r in curve]
    table = Table(header=[[Cell("step"), Cell("train reward"), Cell("validation"), *(Cell(lv) for lv in levels)]],
                  rows=rows, id="grpo-curve", caption="learning curve")
    spreads = Table(header=[[Cell("part of the reward"), Cell("mean std inside groups")]],
                    rows=[[Cell("groups with no spread (share)"), Cell(f"{100 * v:.1f}%")] if k == "zero_spread_groups"
                          else [Cell(k), Cell(fmt(v))] for k, v in spread.items()],
                    id="reward-spread", caption="what the policy is pushed on")
    return Section("GRPO learning curve", tables=[table, spreads], side_by_side=True, line_chart=chart,
                   note="validation split, greedy; train reward over the sampled completions")
