"""TRL-style conversational data: ``messages`` (chat turns, content as a string or typed
parts) plus ``images`` (paths, ``{bytes, path}`` structs or base64), as TRL's VLM SFT
examples and Hugging Face datasets hold them. JSONL / JSON / Parquet.

Normalised by :meth:`vlmtune.data.sample.Sample.from_dict` exactly as the canonical reader
does (relative image paths against ``image_dir`` or the file's folder); other columns go to
meta.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from vlmtune.data.converters.base import Context, convert_records, require
from vlmtune.data.sample import BadSample, Sample

COLUMNS = {"messages": "messages", "images": "images"}
REQUIRED = ("messages",)


def samples(ctx: Context) -> Iterator[Sample]:
    """Yield one sample per record."""
    return convert_records(ctx, REQUIRED, _sample)


def _sample(record: dict, actual: dict[str, str], base: Path) -> Sample:
    messages = require(record, actual, "messages")
    if isinstance(messages, str):
        raise BadSample("bad_schema", f"column {actual['messages']!r} is a string, expected a list of messages")
    rest = {k: v for k, v in record.items() if k not in (actual["messages"], actual.get("images"))}
    images = record.get(actual["images"])
    return Sample.from_dict({**rest, "messages": messages, "images": images}, base)
