"""LLaMA-Factory ShareGPT data: ``conversations`` of ``{"from", "value"}`` turns (``human``/
``gpt``/``system``; ``role``/``content`` keys are accepted too), ``<image>`` placeholders in
the text, an ``images`` list and an optional top-level ``system`` prompt. JSONL / JSON /
Parquet. Image paths are relative to ``image_dir`` (LLaMA-Factory's ``media_dir``) or the
data file's folder. Tool turns (``function_call``/``observation``) are not supported and are
reported as ``bad_schema``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vlmtune.data.converters.base import Context, convert_records, image_entry, require, text_with_images
from vlmtune.data.sample import BadSample, Sample

COLUMNS = {"conversations": "conversations", "images": "images", "system": "system"}
REQUIRED = ("conversations",)
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "model": "assistant", "system": "system"}


def samples(ctx: Context) -> Iterator[Sample]:
    """Yield one sample per record."""
    return convert_records(ctx, REQUIRED, _sample)


def _sample(record: dict, actual: dict[str, str], base: Path) -> Sample:
    turns = require(record, actual, "conversations")
    if not isinstance(turns, list) or not turns:
        raise BadSample("bad_schema", f"{actual['conversations']!r} must be a non-empty list")
    messages = []
    system = record.get(actual["system"])
    if isinstance(system, str) and system.strip():
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadSample("bad_schema", f"conversations[{i}] is not an object")
        who = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if who not in ROLES:
            raise BadSample("bad_schema", f"conversations[{i}] has unsupported role {who!r}")
        if not isinstance(text, str):
            raise BadSample("bad_schema", f"conversations[{i}] has no string 'value'")
        messages.append({"role": ROLES[who], "content": text_with_images(text)})
    return Sample(messages=messages, images=images_list(record, actual, base), meta=_meta(record, actual))


def images_list(record: dict, actual: dict[str, str], base: Path) -> list:
    """The row's images column as canonical entries (a single value is a one-image list)."""
    images = record.get(actual["images"])
    if images is None:
        return []
    if not isinstance(images, list):
        images = [images]
    return [image_entry(img, base) for img in images]


def _meta(record: dict, actual: dict[str, str]) -> dict:
    used = set(actual.values())
    return {k: v for k, v in record.items() if k not in used}
