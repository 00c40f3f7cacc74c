"""The clarify task's scorer: a judge classifies each response's strategy (L0 answer, L1
resolve, L2 enumerate, L3 ask) and checks it for factual distortion; the records then go
through :func:`~vlmtune.tasks.clarify.metrics.clarify_report` (strategic accuracy per level
and overall, confusion matrix, over-asking / under-clarifying rates...). The judge is the
offline :class:`~vlmtune.tasks.clarify.judge.RuleJudge` unless one is given; the rule judge
uses ``meta.facts.candidates`` to spot enumerations. Samples with a reference and/or an ABL
``meta.type`` (``ambig``/``unambig``) also get ClarifyVLM's own metrics (EM, F1, ROUGE, RTA,
1-4 judge score; :mod:`vlmtune.tasks.clarify.clarifyvlm`) under ``clarifyvlm`` per type and
overall, so converted ABL data (no levels) is scored too.

Hooks besides ``score``: ``check`` (nothing scorable: the run stops before generating),
``report_sections`` (:mod:`vlmtune.tasks.clarify.report`) and ``demo``
(:mod:`vlmtune.tasks.clarify.demo`, what ``vlmtune demo`` runs).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from vlmtune.data.sample import Sample
from vlmtune.eval.tasks import check_lengths, reference_text
from vlmtune.rewards.judge import Judge
from vlmtune.rewards.parsers import parse_level, parse_pass_fail, parse_score_tag
from vlmtune.tasks.clarify.clarifyvlm import clarifyvlm_report, pair_scores
from vlmtune.tasks.clarify.judge import TYPE_DESCRIPTIONS, RuleJudge, ask_judge, resolve_judge
from vlmtune.tasks.clarify.metrics import clarify_report, level_label, level_type

__all__ = ["ClarifyTask", "sample_type"]


class ClarifyTask:
    """Strategy level per response by a judge, then :func:`metrics.clarify_report`; plus
    ClarifyVLM's own metrics (:mod:`.clarifyvlm`) per question type.

    ``judge``: the offline rule judge by default; a :class:`~vlmtune.rewards.judge.JudgeClient`,
    a ``JudgeConfig``, an offline judge's name (``"rule"``) or any object with ``judge_scores``.
    """

    name = "clarify"
    report_tables = {"clarifyvlm": "ClarifyVLM metrics by question type", "groups": "Metrics by group"}
    console_tables = ("clarifyvlm",)  # the level groups are long: metrics.json and the report have them
    strategy_template = "aqua_strategy.txt"
    distortion_template = "aqua_distortion.txt"
    rubric_template = "clarify_rubric.txt"

    def __init__(self, judge: Any = None):
        self.judge = judge

    def _judge(self) -> Judge:
        return resolve_judge("rule" if self.judge is None else self.judge)

    def check(self, samples: Sequence[Sample]) -> str | None:
        """Why nothing can be scored (no sample has a level, an ABL type or a reference), or None."""
        if any(level_label(s.meta.get("level")) or sample_type(s) or reference_text(s) is not None
               for s in samples):
            return None
        return (f"task 'clarify' can compute nothing: none of the {len(samples)} samples has "
                "meta.level (L0-L3), meta.type (ambig/unambig) or a reference answer (final assistant turn)")

    def verdicts(self, samples: Sequence[Sample], responses: Sequence[str], judge: Any = None
                 ) -> tuple[list[float | None], list[float | None], str]:
        """Per response: judged strategy level (0-3, -1 empty, None judge failure) and the
        factual check (1 PASS, 0 FAIL, None failure); plus the judge's name."""
        judge = self._judge() if judge is None else judge
        golds = [level_label(s.meta.get("level")) for s in samples]
        strategy, passed = ask_judge(judge, _prompts(samples), list(responses), list(range(len(samples))),
                                     [("strategy", self.strategy_template, parse_level),
                                      ("distortion", self.distortion_template, parse_pass_fail)],
                                     {"facts": [s.meta.get("facts") for s in samples], "level": golds})
        name = "rule" if isinstance(judge, RuleJudge) else type(judge).__name__
        self.judge_stats = dict(getattr(judge, "stats", {}) or {})
        return strategy, passed, name

    def rubric(self, samples: Sequence[Sample], responses: Sequence[str], kinds: Sequence[str | None],
               judge: Any) -> list[float | None]:
        """ClarifyVLM's 1-4 strategic judge score for the samples with a type (None elsewhere
        and on judge failure)."""
        rows = [i for i, k in enumerate(kinds) if k is not None]
        if not rows:
            return [None] * len(samples)
        (scores,) = ask_judge(judge, _prompts(samples), list(responses), rows,
                              [("rubric", self.rubric_template, partial(parse_score_tag, lo=1, hi=4))],
                              {"facts": [s.meta.get("facts") for s in samples], "type": list(kinds),
                               "type_description": [TYPE_DESCRIPTIONS.get(k or "", "") for k in kinds]})
        out: list[float | None] = [None] * len(samples)
        for i, score in zip(rows, scores):
            out[i] = score
        return out

    def report_sections(self, stages: dict[str, tuple[list[dict], dict]]) -> list:
        """Accuracy per level and the confusion matrix (:mod:`.report`)."""
        from vlmtune.tasks.clarify.report import report_sections

        return report_sections(stages)

    def demo(self, out: Path, *, fast: bool = False, prompt_variant: int = 0, settings: Any = None,
             judge: str | None = None, judge_model: str = "default") -> dict:
        """``vlmtune demo``: synth -> vision warm-up -> baseline -> SFT on a skewed labelled set ->
        GRPO on unlabelled prompts scored by the judge (:mod:`.demo`)."""
        from vlmtune.tasks.clarify.demo import run_demo

        return run_demo(Path(out), fast=fast, prompt_variant=prompt_variant, settings=settings, judge=judge,
                        judge_model=judge_model)

    def score(self, samples: Sequence[Sample], responses: Sequence[str]) -> tuple[list[dict], dict]:
        check_lengths(samples, responses)
        judge = self._judge()
        strategy, passed, judge_name = self.verdicts(samples, responses, judge) if samples else ([], [], "rule")
        kinds = [sample_type(s) or level_type(s.meta.get("level")) for s in samples]
        rubric = self.rubric(samples, responses, kinds, judge)
        records, metric_rows, seed_rows = [], [], []
        for sample, response, s, p, kind, r in zip(samples, responses, strategy, passed, kinds, rubric):
            gold = level_label(sample.meta.get("level"))
            pred = None if s is None else ("none" if int(s) < 0 else f"L{int(s)}")
            distortion = None if p is None else p < 0.5
            reference = sample.meta.get("references", {}).get(gold) \
                if isinstance(sample.meta.get("references"), dict) else None
            if reference is None:
                reference = reference_text(sample)
            answer, distractors = _short_answer(sample.meta)
            metric_rows.append({"gold_level": gold, "pred_level": pred, "type": kind, "response": response,
                                "reference": reference, "distortion": distortion, "answer": answer,
                                "distractors": distractors})
            ref = reference_text(sample)
            scores = None if ref is None else pair_scores(response, ref)
            seed_rows.append({"type": kind, "scores": scores, "rubric": r, "distortion": distortion})
            # with a level, "correct" is the strategy; without one (ABL), the response type (RTA)
            correct = (pred == gold) if gold is not None else (None if scores is None else scores["rta"] >= 1.0)
            verdicts = {"judge": judge_name, "strategy": pred,
                        "distortion": None if p is None else ("FAIL" if distortion else "PASS")}
            if r is not None:
                verdicts["rubric"] = int(r)
            if scores is not None:
                verdicts.update({k: round(v, 4) for k, v in scores.items()})
            records.append({"level": gold, "type": kind, "gold": gold if gold is not None else ref, "pred": pred,
                            "correct": correct, "reference": reference, "verdicts": verdicts})
        with_gold = [r for r in metric_rows if r["gold_level"] is not None]
        agg = dict(clarify_report(with_gold)) if with_gold else {}
        agg.setdefault("task", self.name)
        agg["n"] = len(records)
        agg["judge"] = judge_name
        agg["judge_failures"] = sum(1 for s in strategy if s is None)
        agg["rubric_failures"] = sum(1 for k, r in zip(kinds, rubric) if k is not None and r is None)
        agg["judge_stats"] = getattr(self, "judge_stats", {})
        agg["n_without_level"] = sum(1 for s in samples if level_label(s.meta.get("level")) is None)
        agg["n_without_reference"] = sum(1 for r in seed_rows if r["scores"] is None)
        if any(r["scores"] is not None or r["type"] is not None for r in seed_rows):
            agg["clarifyvlm"] = clarifyvlm_report(seed_rows)
        return records, agg


def _prompts(samples: Sequence[Sample]) -> list[list[dict]]:
    """Each sample's conversation without its trailing reference answer (what the judge sees)."""
    return [s.messages[:-1] if s.messages and s.messages[-1].get("role") == "assistant" else s.messages
            for s in samples]


def sample_type(sample: Sample) -> str | None:
    """ABL's question type from ``meta.type``: ``"ambig"``/``"unambig"`` or None."""
    kind = sample.meta.get("type") if isinstance(sample.meta, dict) else None
    kind = str(kind).strip().lower() if kind is not None else None
    return kind if kind in ("ambig", "unambig") else None


def _short_answer(meta: dict) -> tuple[str | None, list[str]]:
    """Gold short answer of a clarify sample (its ``answer``, e.g. the target's colour) and
    the colours of the image's other shapes as distractors (from ``scene`` when present)."""
    answer = meta.get("answer")
    scene = meta.get("scene") if isinstance(meta.get("scene"), list) else []
    others = sorted({o.get("colour") for o in scene if isinstance(o, dict) and o.get("colour")} - {answer})
    return answer, others
