"""The clarify task's report sections: accuracy per level, its chart, the confusion matrix;
ClarifyVLM's chart for data without levels."""

from __future__ import annotations

import pytest

from vlmtune.eval.report import write_report
from vlmtune.tasks.clarify import ClarifyTask
from vlmtune.tasks.clarify.report import confusion, level_table

LEVELS = ("L0", "L1", "L2", "L3")


def _stages(n: int = 8) -> dict:
    out = {}
    for k, name in enumerate(("baseline", "sft", "grpo")):
        recs = []
        for i in range(n):
            gold = LEVELS[i % 4]
            pred = gold if (i + k) % 3 else LEVELS[(i + 1) % 4]
            recs.append({"id": i, "question": "q", "level": gold, "gold": gold, "pred": pred, "correct": pred == gold,
                         "response": "r", "verdicts": {}})
        out[name] = (recs, {"strategic_accuracy": sum(r["correct"] for r in recs) / n, "n": n})
    return out


def test_level_table_counts():
    recs = [{"level": "L0", "correct": True}, {"level": "L0", "correct": False},
            {"level": "L2", "correct": True}, {"level": "L3", "correct": None}]
    t = level_table(recs)
    assert list(t) == ["L0", "L2", "L3", "overall"]
    assert t["L0"] == {"n": 2, "scored": 2, "correct": 1, "accuracy": 0.5}
    assert t["L3"]["accuracy"] is None
    assert t["overall"] == {"n": 4, "scored": 3, "correct": 2, "accuracy": 2 / 3}


def test_confusion_counts_gold_by_prediction():
    recs = [{"level": "L0", "gold": "L0", "pred": "L0"}, {"level": "L0", "gold": "L0", "pred": "none"},
            {"level": "L3", "gold": "L3", "pred": "L0"}, {"level": None, "gold": "x", "pred": "L0"}]
    golds, preds, cells = confusion(recs)
    assert golds == ["L0", "L3"] and preds == ["L0", "L3", "none"]
    assert cells == {("L0", "L0"): 1, ("L0", "none"): 1, ("L3", "L0"): 1}


def test_report_has_level_table_chart_and_confusion(tmp_path):
    html = write_report(tmp_path, _stages(), task=ClarifyTask()).read_text()
    # summary table per level with one column pair per stage, grouped bars (4 levels + overall) x 3
    assert 'id="summary-table"' in html and html.count('class="bar"') == 5 * 3
    assert html.count('class="confusion"') == 3 and 'class="diag"' in html
    assert 'id="chart"' not in html  # the task's chart replaces the generic one
    assert html.index('id="summary-table"') < html.index('id="metrics-table"')


def test_report_without_levels_charts_clarifyvlm(tmp_path):
    recs = [{"id": 0, "question": "q", "gold": "Which one?", "pred": None, "correct": True, "response": "Which?"}]
    table = {t: {"em": 0.5, "f1": 0.5, "rouge1": 0.5, "rouge_l": 0.5, "rta": 1.0, "factual_pass": None}
             for t in ("ambig", "unambig", "all")}
    html = write_report(tmp_path, {"m": (recs, {"clarifyvlm": table})}, task=ClarifyTask()).read_text()
    assert 'id="summary-table"' not in html and html.count('class="bar"') == 6 * 3
    assert "ClarifyVLM metrics by question type" in html


@pytest.mark.parametrize("levels", [True, False])
def test_sections_only_from_the_hook(tmp_path, levels):
    stages = _stages() if levels else {"s": ([{"id": 0, "correct": True}], {"acc": 1.0})}
    html = write_report(tmp_path, stages).read_text()  # no task: nothing clarify-specific
    assert 'id="summary-table"' not in html and 'class="confusion"' not in html


def test_grpo_curve_section(tmp_path):
    from vlmtune.tasks.clarify.report import grpo_curve_section

    per_level = {"L0": 1.0, "L1": 0.5, "L2": 0.25, "L3": 1.0}
    curve = [{"step": 0, "val_accuracy": 0.6875, "val_per_level": per_level, "train_reward": None},
             {"step": 10, "val_accuracy": 0.75, "val_per_level": {**per_level, "L2": 0.5}, "train_reward": 0.61}]
    section = grpo_curve_section(curve, {"reward": 0.21, "aqua/strategy": 0.2, "aqua/distortion": 0.05,
                                         "zero_spread_groups": 0.375})
    chart = section.line_chart
    assert [len(line["markers"]) for line in chart["lines"]] == [2, 1]  # no train reward before step 0
    table, spread = section.tables
    assert [[c.text for c in row] for row in table.rows] == [["0", "–", "0.688", "1.000", "0.500", "0.250", "1.000"],
                                                             ["10", "0.610", "0.750", "1.000", "0.500", "0.500", "1.000"]]
    assert [[c.text for c in row] for row in spread.rows] == [["reward", "0.210"], ["aqua/strategy", "0.200"],
                                                              ["aqua/distortion", "0.050"],
                                                              ["groups with no spread (share)", "37.5%"]]
    html = write_report(tmp_path, _stages(), task=ClarifyTask(), sections=[section]).read_text()
    assert 'id="grpo-curve"' in html and 'id="reward-spread"' in html and "<polyline" in html
    assert html.index('class="confusion"') < html.index('id="grpo-curve"')  # after the task's own sections
