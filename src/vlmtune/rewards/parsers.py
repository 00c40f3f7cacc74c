"""Parsers that turn a judge's free-text reply into a number (or None when unparseable).

Every parser has the shape ``parser(text) -> float | None``; a ``None`` is counted by the
judge client as a ``parse`` failure and then handled by the recipe's failure policy. Options
(score range, JSON key) are bound with ``functools.partial``.
"""

from __future__ import annotations

import json
import re
from typing import Any

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_SCORE_TAG = re.compile(rf"<\s*score\s*>\s*({_NUM})\s*(?:/\s*\d+\s*)?<\s*/\s*score\s*>", re.I)


def _in_range(x: float, lo: float | None, hi: float | None) -> float | None:
    if (lo is not None and x < lo) or (hi is not None and x > hi):
        return None
    return x


def parse_score_tag(text: str | None, lo: float | None = None,
                    hi: float | None = None) -> float | None:
    """``<score>N</score>`` -> N. Spaces, decimals and ``N/4`` are tolerated; the last tag wins
    (judges often restate the format before giving their verdict). Out of [lo, hi] -> None."""
    if not text:
        return None
    found = _SCORE_TAG.findall(text)
    return _in_range(float(found[-1]), lo, hi) if found else None


_PASS = re.compile(r"\bpass(?:es|ed)?\b", re.I)
_FAIL = re.compile(r"\bfail(?:s|ed|ure)?\b", re.I)
# An explicit verdict ("Verdict: FAIL", "<verdict>PASS</verdict>") beats words in the reasoning.
_LABELLED = re.compile(
    r"(?:<\s*(?:verdict|answer|result)\s*>\s*"
    r"|\b(?:verdict|final answer|result|decision)\s*[:=]\s*\**\s*)"
    r"(pass(?:es|ed)?|fail(?:s|ed|ure)?)\b", re.I)


def parse_pass_fail(text: str | None) -> float | None:
    """PASS -> 1.0, FAIL -> 0.0 (case-insensitive whole words). A labelled verdict wins; otherwise
    a reply containing both words is ambiguous -> None, as is one with neither."""
    if not text:
        return None
    labelled = _LABELLED.findall(text)
    if labelled:
        return 1.0 if labelled[-1].lower().startswith("pass") else 0.0
    has_pass, has_fail = bool(_PASS.search(text)), bool(_FAIL.search(text))
    if has_pass == has_fail:
        return None
    return 1.0 if has_pass else 0.0


_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)


def _first_json_object(text: str) -> dict | None:
    decoder = json.JSONDecoder()
    for chunk in [*_FENCE.findall(text), text]:
        for m in re.finditer(r"\{", chunk):
            try:
                obj, _ = decoder.raw_decode(chunk, m.start())
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                return obj
    return None


def _as_number(v: Any) -> float | None:
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        return float(v) if v == v else None  # NaN is not a score
    if isinstance(v, str):
        s = v.strip()
        if re.fullmatch(_NUM, s):
            return float(s)
        return parse_pass_fail(s) if s.lower() in {"pass", "fail", "passed", "failed"} else (
            {"yes": 1.0, "true": 1.0, "no": 0.0, "false": 0.0}.get(s.lower()))
    return None


def parse_json_verdict(text: str | None, key: str = "score", lo: float | None = None,
                       hi: float | None = None) -> float | None:
    """The first JSON object in the reply (```json fences are looked at first) -> ``obj[key]``.
    Numbers, numeric strings, booleans and PASS/FAIL/yes/no strings are understood."""
    if not text:
        return None
    obj = _first_json_object(text)
    if obj is None or key not in obj:
        return None
    value = _as_number(obj[key])
    return None if value is None else _in_range(value, lo, hi)


_LEVEL_TAG = re.compile(r"<\s*level\s*>\s*(?:L|level)?\s*([0-3])\s*<\s*/\s*level\s*>", re.I)
_LEVEL = re.compile(r"(?<![A-Za-z0-9])(?:L|level)\s*[-_ ]?\s*([0-3])(?!\.?\d)", re.I)


def parse_level(text: str | None) -> float | None:
    """Strategy level 0-3 from "L2", "level 2", "Level-3" or ``<level>2</level>``; a tag wins,
    otherwise the last mention wins ("not L1 but L2" -> 2)."""
    if not text:
        return None
    found = _LEVEL_TAG.findall(text) or _LEVEL.findall(text)
    return float(found[-1]) if found else None
