"""The HTML report: escaping, self-containment, thumbnails, stages, and a headless-Chromium
check that the page renders its tables and images without console messages.

The browser test drives Debian's ``chromium`` directly (no PyPI package): ``--headless
--dump-dom`` prints the DOM after the page's scripts ran; the page's own script writes
``data-images-loaded="k/n"`` (images decoded) and ``data-tables-visible="k/n"`` (tables
with a layout height) on ``<body>`` at the load event; ``--enable-logging=stderr --v=0``
makes Chromium print every console message (``console.*`` calls and uncaught errors) as a
``CONSOLE`` line on stderr, and the report must print none. A deliberately broken page
checks that this detector does catch errors.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from vlmtune.data.builtin import make_shapes_dataset
from vlmtune.data.readers import read_samples
from vlmtune.eval.report import Cell, Section, Table, bar_chart, line_chart, split_tables, write_report
from vlmtune.tasks.clarify import ClarifyTask

LEVELS = ("L0", "L1", "L2", "L3")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> list:
    out = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset(out, n=1, seed=0, eval_n=8)
    samples, _ = read_samples(out / "eval.jsonl", require_assistant=False)
    return samples


def _records(samples, stage_seed: int, response: str | None = None) -> list[dict]:
    recs = []
    for i, s in enumerate(samples):
        gold = LEVELS[i % 4]
        pred = gold if (i + stage_seed) % 3 else LEVELS[(i + 1) % 4]
        recs.append({"id": s.meta["id"], "question": "What colour is the shape?", "image": str(s.images[0]),
                     "level": gold, "gold": gold, "response": response or f"answer {i}", "pred": pred,
                     "correct": pred == gold, "verdicts": {"judge": "rule", "strategy": pred, "distortion": "PASS"}})
    return recs


def _stages(samples) -> dict:
    out = {}
    for k, name in enumerate(("baseline", "sft", "grpo")):
        recs = _records(samples, k)
        out[name] = (recs, {"strategic_accuracy": sum(r["correct"] for r in recs) / len(recs), "n": len(recs)})
    return out


def test_bar_chart_grouped_bars():
    chart = bar_chart(["L0", "L1", "overall"], {"a": [0.5, 1.0, None], "b": [0.0, 0.25, 0.75]})
    assert len(chart["bars"]) == 6
    full = next(b for b in chart["bars"] if b["stage"] == "a" and b["group"] == "L1")
    assert full["h"] == pytest.approx(chart["bottom"] - chart["top"])
    assert next(b for b in chart["bars"] if b["group"] == "overall" and b["stage"] == "a")["missing"]


def test_line_chart_geometry():
    chart = line_chart([0, 10, 20], {"val": [0.5, 1.0, None], "reward": [None, 0.0, 0.25]}, x_label="step")
    val, reward = chart["lines"]
    assert [m["x"] for m in val["markers"]] == [chart["left"], chart["left"] + (chart["right"] - chart["left"]) / 2]
    assert val["markers"][1]["y"] == chart["top"]  # 1.0 at the top of the plot, 0 at the bottom
    assert reward["markers"][0]["y"] == chart["bottom"] and len(reward["markers"]) == 2  # None left out
    assert val["points"] == " ".join(f"{m['x']},{m['y']}" for m in val["markers"])
    assert [t["text"] for t in chart["x_ticks"]] == ["0", "10", "20"]
    assert len(line_chart(list(range(101)), {"a": [0.5] * 101})["x_ticks"]) <= 11


def test_report_takes_a_callers_sections(tmp_path, shapes):
    chart = line_chart([0, 5], {"validation": [0.25, 0.5]}, y_label="accuracy", x_label="GRPO step")
    extra = Section("Training curve", tables=[Table(header=[[Cell("step")]], rows=[[Cell("<5>")]], id="curve-table")],
                    line_chart=chart)
    html = write_report(tmp_path, {"m": (_records(shapes[:1], 0), {})}, sections=[extra]).read_text()
    assert "Training curve" in html and 'id="curve-table"' in html and "&lt;5&gt;" in html
    assert html.count("<polyline") == 1 and html.count("<circle") == 2 and "GRPO step" in html


def test_report_escapes_user_text(tmp_path, shapes):
    recs = _records(shapes[:2], 0, response="<script>alert('x')</script> & more")
    recs[0]["question"] = '<img src=x onerror="alert(1)">'
    path = write_report(tmp_path, {"<b>stage</b>": (recs, {"strategic_accuracy": 0.5})}, title="<i>t</i>")
    html = path.read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more" in html
    assert '<img src=x onerror' not in html and "&lt;img src=x onerror=" in html
    assert "<b>stage</b>" not in html and "&lt;b&gt;stage&lt;/b&gt;" in html
    assert "<i>t</i>" not in html
    assert html.count("<script>") == 1  # only the page's own filter script


def test_report_self_contained_with_small_thumbnails(tmp_path, shapes):
    path = write_report(tmp_path / "report", _stages(shapes), title="compare")
    assert path == tmp_path / "report" / "index.html"
    html = path.read_text()
    # nothing is fetched: no external src/href (the SVG namespace URI is not a fetch)
    assert not re.search(r'(?:src|href)\s*=\s*"(?:https?:)?//', html)
    assert "<link rel=\"stylesheet\"" not in html
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(uris) == 3 * len(shapes)
    for b64 in set(uris):
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        assert max(im.size) <= 96
    # without a task's own sections: the metric table and one bar per rate metric and stage
    assert 'id="metrics-table"' in html and 'id="summary-table"' not in html
    assert html.count('class="bar"') == 1 * 3  # strategic_accuracy; n is a count, not a rate
    for name in ("baseline", "sft", "grpo"):
        assert f'data-stage="{name}"' in html
    assert html.count('class="card ') == 3 * len(shapes)


def test_report_generic_metric_table(tmp_path):
    recs = [{"id": 1, "question": "q", "gold": "red.", "response": "red.", "pred": "red.", "correct": True,
             "verdicts": {"exact_match": 1.0}}]
    html = write_report(tmp_path, {"run": (recs, {"exact_match": 1.0, "token_f1": 0.75, "n": 1})}).read_text()
    assert 'id="metrics-table"' in html and "token_f1" in html and 'id="summary-table"' not in html
    assert 'class="noimg"' in html  # a record without an image shows a placeholder


class UserTask:
    """A task of one's own: a split table in its metrics, a title for it and a section of its own."""

    name = "mine"
    report_tables = {"per_colour": "Accuracy by colour"}

    def report_sections(self, stages):
        rows = [[Cell(n), Cell(str(len(recs)))] for n, (recs, _) in stages.items()]
        return [Section("Samples per stage", tables=[Table(header=[[Cell("stage"), Cell("n")]], rows=rows, id="mine")],
                        chart=bar_chart(["x"], {"run": [0.25]}, y_label="my score"))]


def test_split_tables_found_generically():
    metrics = {"acc": 0.5, "per_colour": {"red": {"acc": 1.0}}, "by_len": {"short": {"acc": 0.0, "n": 2}},
               "flat": {"a": 1}, "run": {"x": {"y": 1}}, "empty": {}}
    assert [(k, t) for k, t, _ in split_tables(metrics)] == [("per_colour", "per_colour"), ("by_len", "by_len")]
    assert [(k, t) for k, t, _ in split_tables(metrics, {"by_len": "By length", "nope": "-"})] == \
        [("by_len", "By length"), ("per_colour", "per_colour")]


def test_report_of_a_user_task(tmp_path):
    recs = [{"id": 1, "question": "q", "gold": "red", "response": "red", "pred": "red", "correct": True}]
    metrics = {"acc": 0.5, "per_colour": {"red": {"acc": 1.0, "n": 1}}, "by_len": {"short": {"acc": 0.25}}}
    html = write_report(tmp_path / "plain", {"run": (recs, metrics)}).read_text()
    assert "<h2>per_colour</h2>" in html and "<h2>by_len</h2>" in html  # no task: titled by key
    assert html.count('class="bar"') == 1 and 'id="chart"' in html  # acc is the one rate
    html = write_report(tmp_path / "task", {"run": (recs, metrics)}, task=UserTask()).read_text()
    assert "<h2>Accuracy by colour</h2>" in html and "<h2>by_len</h2>" in html
    assert "<h2>Samples per stage</h2>" in html and 'id="mine"' in html and "<td>run</td><td>1</td>" in html
    assert html.count('class="bar"') == 1 and 'id="chart"' not in html  # the task drew its chart: no rates chart
    assert html.index("Samples per stage") < html.index('id="metrics-table"')  # the task's sections first


def test_report_caps_samples(tmp_path, shapes):
    html = write_report(tmp_path, {"s": (_records(shapes, 0), {})}, max_samples=3).read_text()
    assert html.count('class="card ') == 3 and "showing the first 3 of 8" in html


# --------------------------------------------------------------------------- headless Chromium

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000"]


def _chromium() -> str:
    """The chromium binary, installed with apt-get when missing (skip if that is impossible)."""
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    apt = shutil.which("apt-get")
    if apt is None:
        pytest.skip("chromium is not installed and apt-get is not available to install it")
    env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    try:
        r = subprocess.run([apt, "install", "-y", "-q", "chromium"], capture_output=True, text=True,
                           timeout=900, env=env)
        if r.returncode != 0:  # stale package lists: update once and retry
            subprocess.run([apt, "update", "-q"], capture_output=True, timeout=300, env=env)
            r = subprocess.run([apt, "install", "-y", "-q", "chromium"], capture_output=True, text=True,
                               timeout=900, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"could not install chromium with apt-get: {e}")
    path = shutil.which("chromium")
    if r.returncode != 0 or path is None:
        pytest.skip(f"could not install chromium with apt-get (rc {r.returncode}): {r.stderr[-300:]}")
    return path


def _render(chromium: str, page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after scripts ran, and the console lines Chromium logged."""
    r = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
                        page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    console = [line for line in r.stderr.splitlines() if ":CONSOLE" in line]
    return r.stdout, console


def test_report_renders_in_headless_chromium(tmp_path, shapes):
    chromium = _chromium()
    page = write_report(tmp_path / "report", _stages(shapes), title="baseline vs sft vs grpo", task=ClarifyTask())

    # the detector works: a broken page's error is seen
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>missingFunction();</script></body></html>")
    _, bad_console = _render(chromium, bad, tmp_path / "profile-bad")
    assert any("Uncaught" in line for line in bad_console), bad_console

    dom, console = _render(chromium, page, tmp_path / "profile")
    assert console == [], console
    n_images = 3 * len(shapes)
    assert f'data-images-loaded="{n_images}/{n_images}"' in dom, re.findall(r"<body[^>]*>", dom)
    tables = re.search(r'data-tables-visible="(\d+)/(\d+)"', dom)
    assert tables and tables.group(1) == tables.group(2) and int(tables.group(1)) >= 2
    assert 'id="summary-table"' in dom and dom.count("<tr") >= 2 + 5  # two header rows + L0..L3 + overall
    assert re.search(r'id="shown-count"[^>]*>\d+ of \d+ shown<', dom)  # the filter script ran
