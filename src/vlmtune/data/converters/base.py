"""What every converter shares: the run context, streaming record readers, column checks and
small parsing helpers.

A converter is a generator ``fn(ctx) -> Iterator[Sample]``. It yields canonical samples with
``source=(file, row)`` set and records every row it cannot turn into a sample with
:meth:`Context.bad` (file, row, reason, detail); it never drops a row silently.
:func:`vlmtune.data.converters.convert` validates what it yields and writes it.

Row numbering (the ``row`` of a skipped row), by input type:

* Parquet: 0-based row index in the file.
* JSONL: 1-based line number (blank lines count).
* JSON array (``.json`` starting with ``[``): 0-based element index.
* CSV: the spreadsheet row, i.e. the header is row 1 and the first record row 2 (a record
  with newlines inside a quoted cell is still one row).

Reason codes added by converters (besides :data:`vlmtune.data.sample.REASONS`):
``bad_choices`` (choices not a list), ``bad_answer`` (answer index/letter not among the
choices), ``bad_level`` (level not 0–3, or not ``ambig``/``unambig`` for ABL),
``missing_value`` (an empty required cell), ``below_min_score`` (filtered by ``min_score``),
``missing_action`` (a CarePilot ``Output`` with no action at any depth), ``unknown_action``
(a gold action the prompt's action list does not offer).
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlmtune.data.readers import first_char
from vlmtune.data.report import BadRows, DataError
from vlmtune.data.sample import BadSample, ImageLike, Sample, image_kind

RECORD_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
IMAGE_MARKER = "<image>"

Record = tuple[int, Any]  # (row number, dict or the BadSample explaining why not)


class ConvertError(DataError):
    """A whole input (file or folder) cannot be converted: nothing was read from it."""


@dataclass
class Context:
    """Options and bookkeeping of one conversion run.

    Attributes:
        input: The input file or folder (absolute).
        columns: Logical key -> column name in the user's files (defaults merged with
            the user's ``columns``).
        bad_rows: Where skipped rows are recorded.
        split: Format-specific split selector (robo2vlm and abl ``train``/``test``; abl
            also ``ambig``/``unambig`` for files whose name does not say).
        min_score: Keep only trajectories with ``task_score > min_score`` (arlarena).
        per_turn: One sample per turn instead of one conversation per trajectory (arlarena).
        drop: Prompt sections to leave out (carepilot).
        image_dir: Folder relative image paths are resolved against (default: the data
            file's folder).
        actions: The actions the prompt offers (carepilot; default: those in the data).
        output: The file being written, never read as an input.
    """

    input: Path
    columns: dict[str, str]
    bad_rows: BadRows = field(default_factory=BadRows)
    split: str | None = None
    min_score: float | None = None
    per_turn: bool = False
    drop: frozenset[str] = frozenset()
    image_dir: Path | None = None
    actions: tuple[str, ...] | None = None
    output: Path | None = None

    def col(self, key: str) -> str:
        """The user's column name for logical ``key``."""
        return self.columns[key]

    def bad(self, file: str | Path, row: int, reason: str, detail: str) -> None:
        """Record a skipped row."""
        self.bad_rows.add(file, row, reason, detail)

    def image_base(self, data_file: Path) -> Path:
        """Folder relative image paths in ``data_file`` are relative to."""
        return self.image_dir if self.image_dir is not None else data_file.parent

    def files(self, suffixes: Iterable[str] = RECORD_SUFFIXES) -> list[Path]:
        """:func:`input_files` of the input, without the output (which may sit in the input
        folder, e.g. from an earlier run)."""
        files = input_files(self.input, suffixes)
        kept = [f for f in files if self.output is None or f.absolute() != self.output.absolute()]
        if not kept:
            raise ConvertError(self.input, detail="holds no input file but the output itself")
        return kept


# ---------------------------------------------------------------------------- input files


def input_files(path: Path, suffixes: Iterable[str] = RECORD_SUFFIXES, recursive: bool = True) -> list[Path]:
    """The data files of an input: the file itself, or the folder's files with a matching
    suffix (sorted, hidden files and ``*.errors.jsonl`` reports skipped).

    Raises:
        ConvertError: The path does not exist or the folder holds no such file.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ConvertError(path, detail="no such file or folder")
    walk = path.rglob("*") if recursive else path.glob("*")
    files = sorted(
        p for p in walk
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.endswith(".errors.jsonl")
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise ConvertError(path, detail=f"folder holds no {'/'.join(suffixes)} file")
    return files


def check_columns(file: Path, found: Iterable[str], ctx: Context, required: Iterable[str]) -> dict[str, str]:
    """Map logical keys to the file's real column names, or fail listing expected vs found.

    An exact name wins; otherwise a case-insensitive match is accepted (``Long_Term_Memory``
    for ``Long_term_Memory``).

    Returns:
        Logical key -> column name: the file's spelling where the column exists, else the
        configured name (optional fields may still appear in later JSON records).

    Raises:
        ConvertError: A required column is missing.
    """
    found = list(found)
    lower = {name.lower(): name for name in found}
    actual: dict[str, str] = {}
    for key, name in ctx.columns.items():
        if name in found:
            actual[key] = name
        elif name.lower() in lower:
            actual[key] = lower[name.lower()]
    missing = [ctx.columns[k] for k in required if k not in actual]
    if missing:
        expected = [ctx.columns[k] for k in required]
        raise ConvertError(
            file, reason="missing_column",
            detail=f"missing column(s) {missing}; expected {expected}, found {found} "
                   f"(rename with --column KEY=NAME)",
        )
    return {**ctx.columns, **actual}


# ---------------------------------------------------------------------------- records


def record_columns(path: Path) -> list[str]:
    """Column names of a data file without reading its rows (first record for JSON)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return parquet_file(path).schema_arrow.names
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    for _, rec in iter_records(path):
        return list(rec) if isinstance(rec, dict) else []
    return []


def iter_records(path: Path, columns: list[str] | None = None, batch_size: int = 64) -> Iterator[Record]:
    """Stream the records of a ``.jsonl``/``.json``/``.parquet``/``.csv`` file as dicts.

    A record that cannot be parsed comes back as a :class:`BadSample` in place of the dict.

    Args:
        path: The data file.
        columns: Parquet columns to read (others are not loaded).
        batch_size: Parquet rows per record batch.
    """
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parquet_records(path, columns, batch_size)
    if suffix == ".csv":
        return _csv_records(path)
    if suffix == ".json" and first_char(path) == "[":
        return _json_array_records(path)
    if suffix in (".json", ".jsonl"):
        return _jsonl_records(path)
    raise ConvertError(path, detail=f"unsupported file type {path.suffix!r}; supported: {RECORD_SUFFIXES}")


def present(actual: dict[str, str], file: Path) -> list[str] | None:
    """The Parquet columns to read (those of ``actual`` the file has); ``None`` for other files."""
    if file.suffix.lower() != ".parquet":
        return None
    names = set(parquet_file(file).schema_arrow.names)
    return sorted({c for c in actual.values() if c in names})


def parquet_file(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ConvertError(path, detail=f"not a readable Parquet file: {e}") from None


def _parquet_records(path: Path, columns: list[str] | None, batch_size: int) -> Iterator[Record]:
    pf = parquet_file(path)
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
        for record in batch.to_pylist():
            yield row, record
            row += 1


def _csv_records(path: Path) -> Iterator[Record]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # JSON cells can be long
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        for i, cells in enumerate(reader):
            row = i + 2  # header is spreadsheet row 1
            if not any(c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                yield row, BadSample("bad_schema", f"{len(cells)} cells for {len(header)} columns")
                continue
            yield row, dict(zip(header, cells))


def _jsonl_records(path: Path) -> Iterator[Record]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                yield number, BadSample("malformed_json", str(e))


def _json_array_records(path: Path) -> Iterator[Record]:
    # JSON arrays have no streaming parser in the standard library: one file at a time.
    try:
        rows = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(path, reason="malformed_json", detail=f"file is not valid JSON: {e}") from None
    yield from enumerate(rows)


# ---------------------------------------------------------------------------- helpers


def require(record: Any, actual: dict[str, str], key: str, allow_empty: bool = False) -> Any:
    """The value of logical ``key`` in ``record``; ``BadSample`` when absent or empty."""
    if not isinstance(record, dict):
        raise BadSample("bad_schema", f"record is a {type(record).__name__}, expected an object")
    name = actual.get(key, key)
    if name not in record:
        raise BadSample("bad_schema", f"missing field {name!r}")
    value = record[name]
    if not allow_empty and (value is None or (isinstance(value, str) and not value.strip())):
        raise BadSample("missing_value", f"empty {name!r}")
    return value


_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```\s*$", re.S)


def strip_fence(text: str) -> str:
    """Remove one surrounding Markdown code fence (```json ... ```), if any."""
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text.strip()


def json_cell(value: Any, name: str) -> Any:
    """Parse a JSON-string cell (a surrounding ```json fence is allowed); non-strings pass.

    Raises:
        BadSample: ``malformed_json`` naming the column.
    """
    if not isinstance(value, str):
        return value
    try:
        return json.loads(strip_fence(value))
    except json.JSONDecodeError as e:
        raise BadSample("malformed_json", f"column {name!r}: {e.msg} at line {e.lineno} column {e.colno}") from None


def looks_json(value: Any) -> bool:
    """Whether a text cell is meant to hold JSON: it starts with ``{``, ``[`` or a ``` fence."""
    return isinstance(value, str) and value.lstrip().startswith(("[", "{", "```"))


def text_with_images(text: str) -> list[dict]:
    """Split text at ``<image>`` markers into text and image content parts."""
    parts: list[dict] = []
    pieces = text.split(IMAGE_MARKER)
    for i, piece in enumerate(pieces):
        if piece:
            parts.append({"type": "text", "text": piece})
        if i < len(pieces) - 1:
            parts.append({"type": "image"})
    return parts or [{"type": "text", "text": ""}]


def image_entry(value: Any, base: Path) -> ImageLike:
    """Turn an image cell into a canonical image entry without decoding it.

    Accepts a ``{bytes, path}`` struct (bytes win), raw bytes, a base64 string / data URI,
    or a path (relative paths are resolved against ``base``).

    Raises:
        BadSample: ``missing_image`` for an empty cell or a path that does not exist.
    """
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, (bytes, bytearray)) and data:
            return {"bytes": bytes(data), "path": path if isinstance(path, str) else None}
        if isinstance(data, str) and data:
            return data
        value = path
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise BadSample("missing_image", "empty image bytes")
        return bytes(value)
    if not isinstance(value, str) or not value.strip():
        raise BadSample("missing_image", "no image in the row")
    if image_kind(value) != "path":
        return value
    p = Path(value).expanduser()
    if not p.is_absolute():
        p = base / p
    if not p.is_file():
        raise BadSample("missing_image", f"no such file: {p}")
    return p


def find_image(name: str, base: Path, extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp")) -> Path:
    """Resolve an image id/filename under ``base``, trying common extensions for bare ids.

    Raises:
        BadSample: ``missing_image`` naming the paths tried.
    """
    p = Path(name.strip()).expanduser()
    if not p.is_absolute():
        p = base / p
    candidates = [p] + ([p.with_name(p.name + ext) for ext in extensions] if not p.suffix else [])
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates[:3]) + (" ..." if len(candidates) > 3 else "")
    raise BadSample("missing_image", f"no image for {name!r} (tried {tried})")


def convert_records(
    ctx: Context,
    required: Iterable[str],
    build: Callable[[dict, dict[str, str], Path], Sample],
    suffixes: Iterable[str] = RECORD_SUFFIXES,
    batch_size: int = 64,
) -> Iterator[Sample]:
    """The common converter loop: for each input file check its columns, then turn each
    record into a sample with ``build(record, actual_columns, image_base)``, recording the
    rows that raise :class:`BadSample`."""
    required = tuple(required)
    for file in ctx.files(suffixes):
        actual = check_columns(file, record_columns(file), ctx, required)
        base = ctx.image_base(file).absolute()
        columns = present(actual, file)
        for row, record in iter_records(file, columns=columns, batch_size=batch_size):
            try:
                if isinstance(record, BadSample):
                    raise record
                sample = build(record, actual, base)
            except BadSample as e:
                ctx.bad(file, row, e.reason, e.detail)
                continue
            sample.source = (str(file), row)
            yield sample
