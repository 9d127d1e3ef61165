"""Collect data problems while reading, and report them together, capped.

A table (Parquet rows, manifest rows, folder files) is read in chunks; each bad
cell adds an issue under (column, problem) instead of stopping at the first.
``DataIssues`` carries the grouped list, so the API can show it as a list
(``failed`` datasets) as well as one message (``DataValidationError``).
"""

from collections.abc import Sequence
from typing import Any

from app.ml.data.errors import DataValidationError, plain


class DataIssues(DataValidationError):
    """Several problems; ``entries`` lists (field, message) per problem kind and
    ``total`` counts every bad cell found, listed or not."""

    def __init__(self, entries: list[tuple[str, str]], total: int) -> None:
        first = entries[0][0]
        super().__init__(first, "; ".join(t if f == first else f"{f}: {t}" for f, t in entries))
        self.entries = entries
        self.total = total


def issue_list(exc: DataValidationError) -> tuple[list[tuple[str, str]], int]:
    """(field, message) pairs of any data error, and how many problems it stands for."""
    if isinstance(exc, DataIssues):
        return exc.entries, exc.total
    return [(exc.field, exc.reason)], 1


class Issues:
    """Problems per (column, problem): the rows (first ``cap`` of them), a count, a detail."""

    def __init__(self, cap: int, row_name: str = "row", row_base: int = 0,
                 row_names: list[str] | None = None) -> None:
        self.cap, self.row_name, self.row_base = cap, row_name, row_base
        self.row_names = row_names
        self._items: dict[tuple[str, str], list[Any]] = {}
        self.total = 0

    def add(self, field: str, problem: str, row: int, detail: str = "") -> None:
        self.add_rows(field, problem, (row,), detail)

    def add_rows(self, field: str, problem: str, rows: Sequence[int], detail: str = "") -> None:
        """The problem at each of ``rows`` (in order; a vectorised check's bad rows)."""
        if len(rows) == 0:
            return
        entry = self._items.setdefault((field, problem), [[], 0, plain(detail)])
        room = max(self.cap - len(entry[0]), 0)
        entry[0].extend(self.name(int(r)) for r in rows[:room])
        entry[1] += len(rows)
        self.total += len(rows)

    def name(self, row: int) -> str | int:
        return self.row_names[row] if self.row_names else row + self.row_base

    def full(self) -> bool:
        return self.total >= self.cap

    def entries(self) -> list[tuple[str, str]]:
        parts = []
        for (field, problem), (rows, count, detail) in self._items.items():
            if count == 1:
                text = f"{problem} at {self.row_name} {rows[0]}"
            else:
                more = ", …" if count > len(rows) else ""
                plural = "rows" if self.row_name == "row" else f"{self.row_name}s"
                text = (f"{problem} in {count} {plural}: "
                        + ", ".join(map(str, rows)) + more)
            if detail:
                text += f" ({'first: ' if count > 1 else ''}{detail})"
            parts.append((field, text))
        return parts

    def raise_if_any(self) -> None:
        if self._items:
            raise DataIssues(self.entries(), self.total)
