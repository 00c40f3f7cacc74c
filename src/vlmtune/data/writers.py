"""Write canonical samples to JSONL (images as files) or Parquet (images embedded).

Both writers stream: samples may be any iterable (e.g. :func:`iter_samples` or a
converter's generator), and nothing but the current batch is held in memory. Output is
written to a temporary file and moved into place at the end, so an interrupted run never
leaves a half-written file under the final name.

Parquet schema (what :func:`vlmtune.data.readers.read_samples` reads back; the reader
also accepts ``messages``/``meta`` as structs):

=========  ==============================================  ===========================
column     type                                            holds
=========  ==============================================  ===========================
messages   ``string``                                      the messages list as JSON
images     ``list<struct<bytes: binary, path: string>>``   encoded images, in order
meta       ``string``                                      the meta dict as JSON
=========  ==============================================  ===========================

``messages`` is a JSON string rather than ``list<struct>`` because content parts are
heterogeneous (text parts, image parts, extra keys) and a struct column would pad every
part with nulls for every key ever seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlmtune.data.report import DataError
from vlmtune.data.sample import (
    BadSample,
    ImageLike,
    Sample,
    content_name,
    dumps,
    encode_image,
    image_kind,
    image_path,
    relative_path,
)

__all__ = ["PARQUET_SCHEMA", "write_jsonl", "write_parquet"]

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
PARQUET_SCHEMA = pa.schema(
    [("messages", pa.string()), ("images", pa.list_(IMAGE_STRUCT)), ("meta", pa.string())],
    metadata={"vlmtune.format": "canonical-v1"},
)
"""The canonical Parquet schema written by :func:`write_parquet`."""

_FLUSH_BYTES = 64 * 2**20  # flush a Parquet batch once its images reach this size


def write_jsonl(samples: Iterable[Sample], path: str | Path, image_dir: str | Path | None = None) -> int:
    """Write samples as canonical JSONL, storing in-memory images as files.

    Path images are referenced (relative to the output file's folder when inside it,
    absolute otherwise). In-memory images (bytes, ``{"bytes", "path"}`` dicts, base64
    strings, PIL) are saved under ``image_dir`` with content-hash names, so identical
    images are stored once: PIL images as PNG, encoded bytes verbatim with their own
    format's extension (no re-encoding, so nothing is lost).

    Args:
        samples: Samples to write.
        path: Output ``.jsonl`` file (parent folders are created).
        image_dir: Folder for image files; default ``images/`` next to ``path``.

    Returns:
        The number of samples written.

    Raises:
        DataError: A sample cannot be written (row = 0-based sample index).
    """
    path = Path(path)
    image_dir = path.parent / "images" if image_dir is None else Path(image_dir)
    n = 0
    with _atomic(path) as tmp, tmp.open("w", encoding="utf-8") as f:
        for n, sample in enumerate(samples, start=1):
            with _sample_errors(path, n - 1):
                images = [_image_as_file(img, image_dir, path.parent) for img in sample.images]
                f.write(dumps({"messages": sample.messages, "images": images, "meta": sample.meta}) + "\n")
    return n


def write_parquet(
    samples: Iterable[Sample], path: str | Path, embed_images: bool = True, batch_size: int = 256
) -> int:
    """Write samples as canonical Parquet (see :data:`PARQUET_SCHEMA`), batch by batch.

    Args:
        samples: Samples to write.
        path: Output ``.parquet`` file (parent folders are created).
        embed_images: Store image bytes in the file (self-contained). When ``False``,
            path images are stored as paths only (relative to the output folder when
            inside it); in-memory images are always embedded.
        batch_size: Rows per written batch (a batch is also flushed at 64 MiB of images).

    Returns:
        The number of samples written.

    Raises:
        DataError: A sample cannot be written (row = 0-based sample index).
    """
    path = Path(path)
    n = 0
    with _atomic(path) as tmp, pq.ParquetWriter(tmp, PARQUET_SCHEMA) as writer:
        for rows in _parquet_batches(samples, path, embed_images, batch_size):
            writer.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA))
            n += len(rows)
    return n


def _parquet_batches(
    samples: Iterable[Sample], path: Path, embed_images: bool, batch_size: int
) -> Iterator[list[dict]]:
    rows: list[dict] = []
    size = 0
    for i, sample in enumerate(samples):
        with _sample_errors(path, i):
            images = [_image_struct(img, path.parent, embed_images) for img in sample.images]
            rows.append({"messages": dumps(sample.messages), "images": images, "meta": dumps(sample.meta)})
        size += sum(len(img["bytes"] or b"") for img in images)
        if len(rows) >= batch_size or size >= _FLUSH_BYTES:
            yield rows
            rows, size = [], 0
    if rows:
        yield rows


def _image_as_file(img: ImageLike, image_dir: Path, out_dir: Path) -> str:
    path = image_path(img)
    if path is None:
        data = encode_image(img)
        path = image_dir / content_name(data)
        if not path.exists():
            image_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    return relative_path(path, out_dir)


def _image_struct(img: ImageLike, out_dir: Path, embed: bool) -> dict:
    path = image_path(img)
    if path is not None:
        data = encode_image(img) if embed else None
        return {"bytes": data, "path": relative_path(path, out_dir)}
    name = img.get("path") if image_kind(img) == "dict" else None
    return {"bytes": encode_image(img), "path": name if isinstance(name, str) else None}


@contextmanager
def _sample_errors(path: Path, index: int) -> Iterator[None]:
    try:
        yield
    except BadSample as e:
        raise DataError(path, index, e.reason, e.detail) from None
    except (TypeError, ValueError) as e:  # e.g. meta that is not JSON-serialisable
        raise DataError(path, index, "bad_schema", str(e)) from None


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
