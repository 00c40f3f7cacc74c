"""Convert the data shapes research projects used into canonical Parquet.

``vlmtune convert --from FORMAT INPUT OUTPUT.parquet`` or, from Python::

    from vlmtune.data.converters import convert
    result = convert("robo2vlm", "robo2vlm/data", "train.parquet", split="train")
    result.converted, result.skipped, result.errors_path

Every format is a small module with ``COLUMNS`` (logical key -> default column name, which
``columns=`` renames), ``REQUIRED`` and a generator ``samples(ctx)``, registered in
:data:`CONVERTERS`; a format of your own is a :class:`Converter` object in a file or module,
named as ``path/to/my_format.py:NAME`` or ``module:NAME`` (``--from my_format.py:FORMAT``;
docs/extending.md). The pipeline streams:
input files are read record batch by record batch (Parquet), row by row (CSV, JSONL) or one
file at a time (JSON trajectories); each sample is validated like the canonical reader does
(structure, placeholders, images opened and verified) and handed to
:func:`vlmtune.data.writers.write_parquet`, which writes in batches. Nothing is dropped
without being counted: every skipped row is in ``OUTPUT.errors.jsonl`` as
``{"file", "row", "reason", "detail"}`` (see :mod:`~vlmtune.data.converters.base` for row
numbering and reason codes). A problem with a whole file (a missing column, unreadable
Parquet) raises :class:`ConvertError` before any of its rows is read. A run that keeps no
row writes no output and raises :class:`NothingConverted` (its message says why).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from vlmtune.data.converters import (
    abl,
    alpaca,
    aqua,
    arlarena,
    carepilot,
    llamafactory,
    robo2vlm,
    sharegpt,
    swift,
    trl,
)
from vlmtune.data.converters.base import ConvertError, Context
from vlmtune.data.report import BadRows
from vlmtune.data.sample import BadSample, Sample, dumps, validate_sample
from vlmtune.data.writers import write_parquet

__all__ = ["CONVERTERS", "ConvertError", "ConvertResult", "Converter", "NothingConverted", "add_convert_args",
           "cmd_convert", "convert", "split_list"]


class NothingConverted(ConvertError):
    """Every row was skipped (or the input held none): no output file is written."""


@dataclass(frozen=True)
class Converter:
    """One source format.

    Attributes:
        name: The ``--from`` name.
        samples: ``samples(ctx) -> Iterator[Sample]``.
        columns: Logical key -> default column name.
        required: Keys whose columns must exist.
        droppable: Prompt sections ``drop=`` may remove.
        help: One line for ``--help``.
    """

    name: str
    samples: Callable[[Context], Iterator[Sample]]
    columns: dict[str, str]
    required: tuple[str, ...]
    droppable: tuple[str, ...] = ()
    help: str = ""


def _register(name: str, module: ModuleType) -> Converter:
    doc = " ".join((module.__doc__ or "").split())
    doc = re.split(r"(?<=[.:])\s", doc)[0].rstrip(".:")
    return Converter(name, module.samples, dict(module.COLUMNS), tuple(module.REQUIRED),
                     tuple(getattr(module, "DROPPABLE", ())), doc)


CONVERTERS: dict[str, Converter] = {
    name: _register(name, module)
    for name, module in [
        ("robo2vlm", robo2vlm), ("carepilot", carepilot), ("arlarena", arlarena), ("abl", abl),
        ("aqua", aqua), ("trl", trl), ("sharegpt", sharegpt), ("swift", swift), ("alpaca", alpaca),
        ("llamafactory", llamafactory),
    ]
}
"""Format name -> :class:`Converter`."""


@dataclass
class ConvertResult:
    """Outcome of one conversion.

    Attributes:
        converted: Rows written to the output.
        skipped: Rows skipped (each recorded in ``errors_path``).
        errors_path: ``OUTPUT.errors.jsonl`` when rows were skipped, else ``None``.
        output: The Parquet file written.
        bad_rows: The skipped rows themselves.
    """

    converted: int
    skipped: int
    errors_path: Path | None
    output: Path | None = None
    bad_rows: BadRows = field(default_factory=BadRows, repr=False)

    def counts(self) -> dict[str, int]:
        """Skipped rows per reason."""
        return self.bad_rows.counts()


def errors_path_for(output: str | Path) -> Path:
    """``OUTPUT.parquet`` -> ``OUTPUT.errors.jsonl``."""
    output = Path(output)
    return output.with_name(output.stem + ".errors.jsonl")


def convert(
    fmt: str,
    input: str | Path,
    output: str | Path,
    *,
    split: str | None = None,
    min_score: float | None = None,
    per_turn: bool = False,
    columns: dict[str, str] | None = None,
    drop: Iterable[str] = (),
    image_dir: str | Path | None = None,
    actions: Iterable[str] | None = None,
    embed_images: bool = True,
    progress: bool = True,
    batch_size: int = 64,
) -> ConvertResult:
    """Convert ``input`` (a file or folder in format ``fmt``) to canonical Parquet.

    Args:
        fmt: A key of :data:`CONVERTERS`.
        input: Input file or folder.
        output: Output ``.parquet`` file (written atomically).
        split: robo2vlm: keep only ``train``/``test`` shards; abl: keep only the
            ``train``/``test`` files (``ambig``/``unambig``: the type of files whose name
            does not say).
        min_score: arlarena: keep trajectories with ``task_score > min_score``.
        per_turn: arlarena: one sample per turn (its user message and answer, as the policy
            saw that turn), not one conversation per trajectory.
        columns: Logical key -> the column name in your files, e.g. ``{"question":
            "prompt", "choices": "options", "answer": "label", "image": "img"}``.
        drop: carepilot: prompt sections to leave out (``grounding``, ``short_term``,
            ``long_term``).
        image_dir: Folder relative image paths/ids are resolved against (default: each data
            file's folder; abl: its ``*_raw_images`` sibling folder).
        actions: carepilot: the actions the prompt offers (default: the gold actions found
            in the data, sorted).
        embed_images: Store image bytes in the output (else path images stay paths).
        progress: Show a progress bar on stderr.
        batch_size: Rows per written batch / output row group (a batch is also flushed at
            64 MiB of images); smaller bounds memory for large images.

    Returns:
        Counts of converted and skipped rows and where the skipped rows are listed.

    Raises:
        ValueError: Unknown format, column key or drop section.
        ConvertError: The input is missing or a whole file cannot be converted (e.g. a
            missing column: the message lists the expected and the found columns).
        NothingConverted: No row was kept; no output is written, the skipped rows are in
            ``OUTPUT.errors.jsonl``.
    """
    conv = _converter(fmt)
    ctx = Context(
        input=Path(input).absolute(),
        columns=_columns(conv, columns),
        split=split,
        min_score=min_score,
        per_turn=per_turn,
        drop=_drop(conv, drop),
        image_dir=Path(image_dir).absolute() if image_dir is not None else None,
        actions=None if actions is None else carepilot.normalize_actions(actions),
        output=Path(output).absolute(),
    )
    if not ctx.input.exists():
        raise ConvertError(ctx.input, detail="no such file or folder")
    output = Path(output)
    errors = errors_path_for(output)
    stream = _validated(conv.samples(ctx), ctx)
    if progress:
        stream = _progress(stream, ctx, conv.name)
    first = next(stream, None)  # nothing to write: no file at all, rather than an empty one
    converted = 0 if first is None else write_parquet(chain([first], stream), output, embed_images=embed_images,
                                                      batch_size=batch_size)
    if ctx.bad_rows.total:
        ctx.bad_rows.write_jsonl(errors)
    else:
        errors.unlink(missing_ok=True)  # a stale report from an earlier run would mislead
    if first is None:
        raise NothingConverted(ctx.input, reason="no_rows", detail=_why_empty(ctx.bad_rows, errors))
    return ConvertResult(converted, ctx.bad_rows.total, errors if ctx.bad_rows.total else None, output, ctx.bad_rows)


def _why_empty(bad_rows: BadRows, errors: Path) -> str:
    """One line: how many rows were skipped, for which reasons, the first one, where the rest are."""
    if not bad_rows.total:
        return "no rows converted: the input holds no records"
    counts = ", ".join(f"{reason} {n}" for reason, n in bad_rows.counts().items())
    first = bad_rows.rows[0]
    return (f"no rows converted, {bad_rows.total} skipped ({counts}); first: {Path(first.file).name}, row {first.row}: "
            f"{first.reason}: {first.detail}; all listed in {errors}")


def _converter(fmt: str) -> Converter:
    """A built-in format by name, or a user's :class:`Converter` named by ``file.py:NAME`` /
    ``module:NAME``."""
    from vlmtune.registry import RegistryError, is_plugin_spec, load_object

    if fmt in CONVERTERS:
        return CONVERTERS[fmt]
    if not is_plugin_spec(fmt):
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(CONVERTERS)}, or path/to/file.py:NAME / "
                         "module:NAME naming a Converter")
    try:
        conv = load_object(fmt, f"format {fmt!r}")
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(conv, Converter):
        raise ValueError(f"format {fmt!r} is a {type(conv).__name__}, not a vlmtune.data.converters.Converter")
    return conv


def _columns(conv: Converter, columns: dict[str, str] | None) -> dict[str, str]:
    columns = dict(columns or {})
    unknown = set(columns) - set(conv.columns)
    if unknown:
        raise ValueError(f"{conv.name} has no column key(s) {sorted(unknown)}; keys: {sorted(conv.columns)}")
    return {**conv.columns, **columns}


def _drop(conv: Converter, drop: Iterable[str]) -> frozenset[str]:
    drop = frozenset(drop)
    unknown = drop - set(conv.droppable)
    if unknown:
        can = f"can drop {list(conv.droppable)}" if conv.droppable else "has no droppable sections"
        raise ValueError(f"{conv.name} {can}, not {sorted(unknown)}")
    return drop


def _validated(samples: Iterator[Sample], ctx: Context) -> Iterator[Sample]:
    """Check each sample as the canonical reader will (so the output reads back with zero
    bad rows); failures are recorded at the sample's source row."""
    for sample in samples:
        try:
            validate_sample(sample, require_assistant=True, check_images=True)
            dumps(sample.meta)  # the writer would fail on it mid-file
        except (TypeError, ValueError) as e:
            reason, detail = (e.reason, e.detail) if isinstance(e, BadSample) else ("bad_schema", f"meta: {e}")
            file, row = sample.source or (str(ctx.input), -1)
            ctx.bad(file, row, reason, detail)
            continue
        yield sample


def _progress(samples: Iterator[Sample], ctx: Context, name: str) -> Iterator[Sample]:
    from tqdm import tqdm

    with tqdm(desc=f"convert {name}", unit=" rows", file=sys.stderr, mininterval=1.0) as bar:
        for sample in samples:
            yield sample
            bar.update(1)
            bar.set_postfix(skipped=ctx.bad_rows.total, refresh=False)


# ---------------------------------------------------------------------------- CLI


def add_convert_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``vlmtune convert``."""
    formats = "".join(f"\n  {c.name:<10} {c.help}" for c in CONVERTERS.values())
    p.add_argument("--from", dest="fmt", required=True, metavar="FORMAT",
                   help=f"source format ({', '.join(CONVERTERS)}), or path/to/file.py:NAME / module:NAME "
                        "naming a Converter of your own")
    p.add_argument("input", help="input file or folder")
    p.add_argument("output", help="output .parquet file (skipped rows go to OUTPUT.errors.jsonl)")
    p.add_argument("--split", help="robo2vlm, abl: train|test files only; abl: ambig|unambig for files "
                                   "whose name does not say; llamafactory: dataset_info.json entry name(s), "
                                   "comma-separated")
    p.add_argument("--min-score", type=float, help="arlarena: keep trajectories with task_score > X (seed: 0.9)")
    p.add_argument("--per-turn", action="store_true",
                   help="arlarena: one sample per turn (the prompt the policy saw and its answer), "
                        "not one conversation per trajectory")
    p.add_argument("--column", action="append", default=[], metavar="KEY=NAME",
                   help="rename a column, e.g. --column question=prompt --column answer=label")
    p.add_argument("--drop", action="append", default=[], metavar="SECTION",
                   help=f"carepilot: prompt section(s) to leave out, repeatable or comma-separated "
                        f"({', '.join(carepilot.DROPPABLE)})")
    p.add_argument("--image-dir", help="folder relative image paths/ids are resolved against "
                                       "(default: the data file's folder; abl: its *_raw_images sibling)")
    p.add_argument("--actions", metavar="A,B,...",
                   help="carepilot: the actions the prompt offers (default: the gold actions in the data); "
                        "pass the same list to `vlmtune agent --actions`")
    p.add_argument("--no-embed-images", action="store_true", help="store path images as paths, not bytes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.epilog = "formats:" + formats
    p.formatter_class = argparse.RawDescriptionHelpFormatter


def split_list(items: Iterable[str]) -> list[str]:
    """Repeatable, comma-separated option values: ``["a,b", "c"]`` -> ``["a", "b", "c"]``."""
    return [x.strip() for item in items for x in item.split(",") if x.strip()]


def parse_columns(items: Iterable[str]) -> dict[str, str]:
    """``["question=prompt", ...]`` -> ``{"question": "prompt", ...}``."""
    out = {}
    for item in items:
        key, sep, name = item.partition("=")
        if not sep or not key.strip() or not name.strip():
            raise ValueError(f"--column expects KEY=NAME, got {item!r}")
        out[key.strip()] = name.strip()
    return out


def cmd_convert(args: argparse.Namespace) -> int:
    """Run ``vlmtune convert``; exit 0 when at least one row was converted, else 2 with
    one ``vlmtune convert: error: ...`` line on stderr.

    The last line printed is ``converted N rows, skipped M rows``.
    """
    drop = split_list(args.drop)
    try:
        result = convert(
            args.fmt, args.input, args.output, split=args.split, min_score=args.min_score,
            per_turn=args.per_turn,
            columns=parse_columns(args.column), drop=drop, image_dir=args.image_dir,
            actions=split_list([args.actions]) if args.actions else None,
            embed_images=not args.no_embed_images, progress=not args.no_progress,
        )
    except ValueError as e:  # bad options, and ConvertError (a DataError, itself a ValueError)
        print(f"vlmtune convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.output}")
    if result.skipped:
        print(result.bad_rows.summary())
        print(f"skipped rows listed in {result.errors_path}")
    print(f"converted {result.converted} rows, skipped {result.skipped} rows")
    return 0
