"""ABL / ClarifyVLM ambiguity data: answer when the question is clear, ask when it is not.

Input: JSONL (or JSON) files, typically one ambiguous and one unambiguous split file, with
``image_filename``, ``qa`` (a JSON string: ``{"question": ..., "answers": {"1": ..., ...,
"4": ...}}``; answers may also be a list of four) and ``entity_description`` (a JSON string,
sometimes wrapped in a ```json fence). Whether a file is ambiguous comes from its name
(``unambig``... before ``ambig``...), or from ``split="ambig"|"unambig"`` for all inputs.

Sample: user = [image, question]; assistant = answer ``"4"`` (the clarifying question) when
ambiguous, answer ``"1"`` (the direct answer) otherwise; meta: ``type`` (``ambig``/
``unambig``, what the clarify rewards read), ``facts`` (the parsed entity description),
``question``, ``answers``, ``answer_key``, ``image_filename``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmtune.data.converters.base import (
    ConvertError, Context, check_columns, find_image, input_files, iter_records, json_cell, record_columns, require,
)
from vlmtune.data.sample import BadSample, Sample

COLUMNS = {"image": "image_filename", "qa": "qa", "entity_description": "entity_description", "id": "id"}
REQUIRED = ("image", "qa", "entity_description")
TYPES = ("ambig", "unambig")
TARGET_KEY = {"ambig": "4", "unambig": "1"}


def file_type(path: Path) -> str | None:
    """``"unambig"``/``"ambig"`` from a file name (``unambiguous.jsonl``, ``ambig_val.jsonl``)."""
    name = path.name.lower()
    if "unambig" in name or "non_ambig" in name or "nonambig" in name:
        return "unambig"
    if "ambig" in name:
        return "ambig"
    return None


def samples(ctx: Context) -> Iterator[Sample]:
    """Yield one sample per record (see the module docstring)."""
    if ctx.split is not None and ctx.split not in TYPES:
        raise ConvertError(ctx.input, detail=f"split must be one of {TYPES}, got {ctx.split!r}")
    for file in input_files(ctx.input, (".jsonl", ".json")):
        kind = ctx.split or file_type(file)
        if kind is None:
            raise ConvertError(file, detail="cannot tell ambiguous from unambiguous: the file name has "
                                            "neither 'ambig' nor 'unambig'; pass --split ambig|unambig")
        actual = check_columns(file, record_columns(file), ctx, REQUIRED)
        base = ctx.image_base(file).absolute()
        for row, record in iter_records(file):
            try:
                if isinstance(record, BadSample):
                    raise record
                sample = _sample(record, actual, kind, base)
            except BadSample as e:
                ctx.bad(file, row, e.reason, e.detail)
                continue
            sample.source = (str(file), row)
            yield sample


def _answers(qa: dict) -> dict[str, str]:
    answers = qa.get("answers")
    if isinstance(answers, list):
        answers = {str(i + 1): a for i, a in enumerate(answers)}
    if not isinstance(answers, dict):
        raise BadSample("bad_schema", "qa.answers must be an object with keys '1'-'4' (or a list)")
    return {str(k).strip(): str(v) for k, v in answers.items()}


def _sample(record: dict, actual: dict[str, str], kind: str, base: Path) -> Sample:
    qa = json_cell(require(record, actual, "qa"), actual["qa"])
    if not isinstance(qa, dict) or not isinstance(qa.get("question"), str) or not qa["question"].strip():
        raise BadSample("bad_schema", "qa must be an object with a non-empty 'question'")
    answers = _answers(qa)
    key = TARGET_KEY[kind]
    if not answers.get(key, "").strip():
        raise BadSample("bad_schema", f"qa.answers has no answer {key!r} (keys: {sorted(answers)})")
    facts = json_cell(require(record, actual, "entity_description"), actual["entity_description"])
    image_name = str(require(record, actual, "image"))
    image = find_image(image_name, base)
    meta: dict[str, Any] = {
        "type": kind, "facts": facts, "question": qa["question"], "answers": answers,
        "answer_key": key, "image_filename": image_name,
    }
    if record.get(actual["id"]) is not None:
        meta["id"] = record[actual["id"]]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": qa["question"]}]},
        {"role": "assistant", "content": [{"type": "text", "text": answers[key]}]},
    ]
    return Sample(messages=messages, images=[image], meta=meta)
