"""ms-swift data: ``messages`` of ``{"role", "content"}`` with string content holding
``<image>`` placeholders, plus ``images`` (paths, ``{bytes, path}`` or base64). JSONL / JSON /
Parquet; image paths are relative to ``image_dir`` or the data file's folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vlmtune.data.converters.base import Context, convert_records, require, text_with_images
from vlmtune.data.converters.sharegpt import images_list
from vlmtune.data.sample import BadSample, Sample

COLUMNS = {"messages": "messages", "images": "images"}
REQUIRED = ("messages",)


def samples(ctx: Context) -> Iterator[Sample]:
    """Yield one sample per record."""
    return convert_records(ctx, REQUIRED, _sample)


def _sample(record: dict, actual: dict[str, str], base: Path) -> Sample:
    turns = require(record, actual, "messages")
    if not isinstance(turns, list) or not turns:
        raise BadSample("bad_schema", f"{actual['messages']!r} must be a non-empty list")
    messages = []
    for i, m in enumerate(turns):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str):
            raise BadSample("bad_schema", f"messages[{i}] needs a role and string content")
        messages.append({"role": m.get("role"), "content": text_with_images(m["content"])})
    used = set(actual.values())
    meta = {k: v for k, v in record.items() if k not in used}
    return Sample(messages=messages, images=images_list(record, actual, base), meta=meta)
