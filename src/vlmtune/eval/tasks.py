"""Evaluation tasks: how a list of responses is scored against its samples.

A task turns ``(samples, responses)`` into per-sample *records* (one dict per sample, JSON
serialisable, with at least ``gold``, ``pred``, ``correct`` and ``verdicts``) and one dict
of aggregate metrics. :data:`TASKS` maps names to tasks:

- ``generic`` — exact match, token F1, ROUGE-1 and ROUGE-L of the response against the
  sample's final assistant turn (the reference); ``correct`` is exact match.
- ``clarify`` — the ambiguity-aware task: a judge classifies each response's strategy
  (L0 answer, L1 resolve, L2 enumerate, L3 ask) and checks it for factual distortion; the
  records then go through :func:`vlmtune.eval.metrics.clarify_report` (strategic accuracy
  per level and overall, confusion matrix, over-asking / under-clarifying rates...). The
  judge is the offline :class:`~vlmtune.rewards.clarify.RuleJudge` unless one is given
  (a :class:`~vlmtune.rewards.judge.JudgeClient`, a ``JudgeConfig`` or ``"rule"``); the
  rule judge uses ``meta.facts.candidates`` to spot enumerations.

The metric functions are imported when a task scores, not when this module is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from vlmtune.data.sample import Sample

__all__ = ["TASKS", "ClarifyTask", "GenericTask", "MCQTask", "Task", "get_task", "reference_text", "question_of"]


class Task(Protocol):
    name: str

    def score(self, samples: Sequence[Sample], responses: Sequence[str]) -> tuple[list[dict], dict]:
        """Per-sample records (same order as ``samples``) and aggregate metrics."""
        ...


def _text(content: Any) -> str:
    from vlmtune.rewards.rules import content_text

    return content_text(content)


def reference_text(sample: Sample) -> str | None:
    """The sample's final assistant turn (the gold response), or ``meta.answer``, or None."""
    if sample.messages and sample.messages[-1].get("role") == "assistant":
        return _text(sample.messages[-1].get("content"))
    answer = sample.meta.get("answer") if isinstance(sample.meta, dict) else None
    return None if answer is None else str(answer)


def question_of(sample: Sample) -> str:
    """The text of the last user turn."""
    users = [m for m in sample.messages if m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


def _metrics():
    try:
        from vlmtune.eval import metrics
    except ImportError as e:  # pragma: no cover - only while the module is being written
        raise ImportError(f"vlmtune.eval.metrics is not available: {e}") from e
    return metrics


def _check(samples: Sequence[Any], responses: Sequence[str]) -> None:
    if len(samples) != len(responses):
        raise ValueError(f"{len(samples)} samples but {len(responses)} responses")


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


class GenericTask:
    """EM / token F1 / ROUGE-1 / ROUGE-L against the final assistant turn."""

    name = "generic"
    metric_names = ("exact_match", "token_f1", "rouge1", "rouge_l")

    def score(self, samples: Sequence[Sample], responses: Sequence[str]) -> tuple[list[dict], dict]:
        _check(samples, responses)
        m = _metrics()
        fns = {name: getattr(m, name) for name in self.metric_names}
        records, no_ref = [], 0
        for sample, response in zip(samples, responses):
            ref = reference_text(sample)
            rec: dict[str, Any] = {"gold": ref, "pred": response, "verdicts": {}}
            if ref is None:
                no_ref += 1
                rec.update({k: None for k in self.metric_names}, correct=None)
            else:
                for k, fn in fns.items():
                    rec[k] = float(fn(response, ref))
                rec["correct"] = rec["exact_match"] >= 1.0
                rec["verdicts"] = {k: round(rec[k], 4) for k in self.metric_names}
            records.append(rec)
        scored = [r for r in records if r["correct"] is not None]
        agg: dict[str, Any] = {"task": self.name, "n": len(records), "n_scored": len(scored),
                               "n_without_reference": no_ref}
        for k in self.metric_names:
            agg[k] = _mean([r[k] for r in scored])
        return records, agg


def level_label(x: Any) -> str | None:
    """"L0".."L3" from anything :func:`normalize_level` reads; None otherwise."""
    from vlmtune.rewards.clarify import normalize_level

    n = normalize_level(x)
    return None if n is None else f"L{n}"


class ClarifyTask:
    """Strategy level per response by a judge, then :func:`metrics.clarify_report`."""

    name = "clarify"
    strategy_template = "aqua_strategy.txt"
    distortion_template = "aqua_distortion.txt"

    def __init__(self, judge: Any = None):
        self.judge = judge

    def _judge(self):
        from vlmtune.rewards.clarify import RuleJudge, resolve_judge

        return RuleJudge() if self.judge is None else resolve_judge(self.judge)

    def verdicts(self, samples: Sequence[Sample], responses: Sequence[str]
                 ) -> tuple[list[float | None], list[float | None], str]:
        """Per response: judged strategy level (0-3, -1 empty, None judge failure) and the
        factual check (1 PASS, 0 FAIL, None failure); plus the judge's name."""
        from vlmtune.rewards.clarify import _ask
        from vlmtune.rewards.parsers import parse_level, parse_pass_fail

        judge = self._judge()
        prompts = [s.messages[:-1] if s.messages and s.messages[-1].get("role") == "assistant"
                   else s.messages for s in samples]
        facts = [s.meta.get("facts") for s in samples]
        golds = [level_label(s.meta.get("level")) for s in samples]
        rows = list(range(len(samples)))
        strategy, passed = _ask(judge, prompts, list(responses), rows,
                                [("strategy", self.strategy_template, parse_level),
                                 ("distortion", self.distortion_template, parse_pass_fail)],
                                {"facts": facts, "level": golds})
        name = "rule" if type(judge).__name__ == "RuleJudge" else type(judge).__name__
        self.judge_stats = dict(getattr(judge, "stats", {}) or {})
        return strategy, passed, name

    def score(self, samples: Sequence[Sample], responses: Sequence[str]) -> tuple[list[dict], dict]:
        _check(samples, responses)
        m = _metrics()
        strategy, passed, judge_name = self.verdicts(samples, responses) if samples else ([], [], "rule")
        records, metric_rows = [], []
        for sample, response, s, p in zip(samples, responses, strategy, passed):
            gold = level_label(sample.meta.get("level"))
            pred = None if s is None else ("none" if int(s) < 0 else f"L{int(s)}")
            distortion = None if p is None else p < 0.5
            kind = sample.meta.get("type")
            if kind is None and gold is not None:
                kind = "unambig" if gold in ("L0", "L1") else "ambig"
            reference = sample.meta.get("references", {}).get(gold) \
                if isinstance(sample.meta.get("references"), dict) else None
            if reference is None:
                reference = reference_text(sample)
            answer, distractors = _short_answer(sample.meta)
            row = {"gold_level": gold, "pred_level": pred, "type": kind, "response": response,
                   "reference": reference, "distortion": distortion, "answer": answer,
                   "distractors": distractors}
            metric_rows.append(row)
            records.append({
                "level": gold, "type": kind, "gold": gold, "pred": pred,
                "correct": None if gold is None else (pred == gold),
                "reference": reference,
                "verdicts": {"judge": judge_name, "strategy": pred,
                             "distortion": None if p is None else ("FAIL" if distortion else "PASS")},
            })
        with_gold = [r for r in metric_rows if r["gold_level"] is not None]
        agg = dict(m.clarify_report(with_gold)) if with_gold else {}
        agg.setdefault("task", self.name)
        agg["n"] = len(records)
        agg["judge"] = judge_name
        agg["judge_failures"] = sum(1 for s in strategy if s is None)
        agg["judge_stats"] = getattr(self, "judge_stats", {})
        agg["n_without_level"] = sum(1 for r in records if r["gold"] is None)
        return records, agg


def _short_answer(meta: dict) -> tuple[str | None, list[str]]:
    """Gold short answer of a clarify sample (its ``answer``, e.g. the target's colour) and
    the colours of the image's other shapes as distractors (from ``scene`` when present)."""
    answer = meta.get("answer")
    scene = meta.get("scene") if isinstance(meta.get("scene"), list) else []
    others = sorted({o.get("colour") for o in scene if isinstance(o, dict) and o.get("colour")} - {answer})
    return answer, others


class MCQTask:
    """Multiple-choice accuracy as RLinf scores Robo2VLM: the answer extracted from the reply
    (last assistant span, ``<think>`` stripped, "answer is"/``\\boxed{}``/last line) must equal
    the normalised ``"B. text"`` target (strict); ``letter_accuracy`` compares letters only."""

    name = "mcq"

    def score(self, samples: Sequence[Sample], responses: Sequence[str]) -> tuple[list[dict], dict]:
        from vlmtune.eval import mcq

        _check(samples, responses)
        records = []
        for sample, response in zip(samples, responses):
            gold = reference_text(sample)
            choices = sample.meta.get("choices")
            strict = None if gold is None else mcq.mcq_correct(response, gold)
            letter = None if gold is None else mcq.mcq_letter_correct(response, gold, choices)
            records.append({"gold": gold, "pred": mcq.extract_answer(response), "correct": strict,
                            "verdicts": {"strict": strict, "letter": letter}})
        scored = [r for r in records if r["correct"] is not None]
        return records, {"task": self.name, "n": len(records), "n_scored": len(scored),
                         "accuracy": _mean([float(r["correct"]) for r in scored]),
                         "letter_accuracy": _mean([float(r["verdicts"]["letter"]) for r in scored])}


TASKS: dict[str, type] = {"generic": GenericTask, "clarify": ClarifyTask, "mcq": MCQTask}


def get_task(name: str, judge: Any = None) -> Task:
    """A task instance by name; unknown names raise ``ValueError`` listing the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    cls = TASKS[name]
    return cls(judge=judge) if cls is ClarifyTask else cls()
