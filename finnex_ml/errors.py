"""Errors that name the file, column, row or date at fault."""

from __future__ import annotations


class DataInputError(ValueError):
    """Bad user or source data. The message always says where the problem is."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        row: int | None = None,
        date: str | None = None,
    ) -> None:
        self.file, self.column, self.row, self.date = file, column, row, date
        where = [
            f"{k}={v}" for k, v in (("file", file), ("column", column), ("row", row), ("date", date)) if v is not None
        ]
        super().__init__(f"{message}" + (f" [{', '.join(where)}]" if where else ""))


class ConfigError(ValueError):
    """Invalid configuration (paths, partition keys, mappings)."""
