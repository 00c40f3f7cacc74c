"""Bad-row accounting: every skipped row is recorded with its file, row and reason.

Row numbering follows what a person opens the file with:

* JSONL / JSON-lines files: ``row`` is the **1-based line number** (blank lines count).
* Parquet files and JSON arrays: ``row`` is the **0-based row index** in the file.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Iterator


class DataError(ValueError):
    """Data that cannot be read; the message names the file (and row and reason if any).

    ``DataError("any message")`` works too; the structured form is
    ``DataError(file, row, reason, detail)`` -> ``"file, row 3: reason: detail"``.

    Attributes:
        file: The data file (or the whole message when built from a message only).
        row: The row (see the module docstring for numbering) or ``None`` for the file.
        reason: A reason code (see :data:`vlmtune.data.sample.REASONS`) or ``None``.
        detail: What is wrong.
    """

    def __init__(
        self, file: str | Path, row: int | None = None, reason: str | None = None, detail: str = ""
    ) -> None:
        where = f"{file}" if row is None else f"{file}, row {row}"
        what = f"{reason}: {detail}" if reason else detail
        super().__init__(f"{where}: {what}" if what else where)
        self.file, self.row, self.reason, self.detail = str(file), row, reason, detail


@dataclass(frozen=True)
class BadRow:
    """One skipped row."""

    file: str
    row: int
    reason: str
    detail: str


class BadRows:
    """Collects bad rows across one or more files and summarises them."""

    def __init__(self) -> None:
        self.rows: list[BadRow] = []

    def add(self, file: str | Path, row: int, reason: str, detail: str) -> None:
        """Record one bad row.

        Args:
            file: The data file.
            row: 1-based line (JSONL) or 0-based row index (Parquet, JSON array).
            reason: Reason code.
            detail: Human explanation.
        """
        self.rows.append(BadRow(str(file), row, reason, detail))

    def extend(self, other: BadRows) -> None:
        """Append every row of another report."""
        self.rows.extend(other.rows)

    @property
    def total(self) -> int:
        """Number of bad rows recorded."""
        return len(self.rows)

    def counts(self) -> dict[str, int]:
        """Bad rows per reason, most frequent first."""
        return dict(Counter(r.reason for r in self.rows).most_common())

    def write_jsonl(self, path: str | Path) -> Path:
        """Write one ``{"file", "row", "reason", "detail"}`` object per line.

        Args:
            path: Output file (parent folders are created).

        Returns:
            The path written.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for r in self.rows:
                f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
        return path

    def summary(self, examples: int = 3) -> str:
        """A short human summary, e.g. ``"2 bad rows skipped: missing_image 1, ..."``.

        Args:
            examples: How many individual rows to list after the counts.
        """
        if not self.rows:
            return "0 bad rows"
        counts = ", ".join(f"{reason} {n}" for reason, n in self.counts().items())
        lines = [f"{self.total} bad row{'s' if self.total != 1 else ''} skipped: {counts}"]
        lines += [f"  {r.file}, row {r.row}: {r.reason}: {r.detail}" for r in self.rows[:examples]]
        if self.total > examples:
            lines.append(f"  ... and {self.total - examples} more")
        return "\n".join(lines)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[BadRow]:
        return iter(self.rows)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"BadRows(total={self.total}, counts={self.counts()})"
