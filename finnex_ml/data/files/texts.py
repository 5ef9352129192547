"""Text files (``texts``: news or social posts): the text column, publication instants, the
load window by session.
"""

from __future__ import annotations

from datetime import date, timedelta

import polars as pl

from finnex_ml.calendar import assign_session
from finnex_ml.data.base import TEXT_SCHEMA, empty_frame
from finnex_ml.data.files.dates import _date_only_instant, _naive_times, _published, _when
from finnex_ml.data.files.mapping import ROW, FileEntry, _norm
from finnex_ml.data.files.readers import _column, _date_column
from finnex_ml.errors import DataInputError

MAX_TEXT_CHARS = 100_000  # one text cell (a long article is ~50k characters)
_TEXT_NAMES = ("text", "tweet", "title", "headline", "content", "body")


def _parse_texts(entry: FileEntry, frame: pl.DataFrame) -> pl.DataFrame:
    if entry.text_column:
        text_col = _column(frame, entry.text_column, entry, "text_column")
    else:
        text_col = next((c for name in _TEXT_NAMES for c in frame.columns if c != ROW and _norm(c) == name), None)
        if text_col is None:
            raise DataInputError(
                f"no text column found (looked for {', '.join(_TEXT_NAMES)}); set text_column in {entry.where}",
                file=entry.rel,
                column="text",
            )
    date_col = _date_column(frame, entry, {text_col})
    lengths = frame[text_col].cast(pl.String).str.len_chars().fill_null(0)
    if lengths.max() > MAX_TEXT_CHARS:
        i = int(lengths.arg_max())
        raise DataInputError(
            f"text of {lengths[i]:,} characters; the limit is {MAX_TEXT_CHARS:,} per text (a headline, post or "
            "article); is a delimiter or quote missing so that several records ran together?",
            file=entry.rel,
            column=text_col,
            row=int(frame[ROW][i]),
        )
    when = _when(frame, date_col, entry)
    when = when.with_columns(
        utc=pl.when(pl.col("has_time"))
        .then(pl.col("utc"))
        .otherwise(_date_only_instant(pl.col("day"), _published(entry), noon=True))
    )
    naive = _naive_times(frame[date_col])
    if naive.any():
        i = int(naive.arg_true()[0])
        entry.warn(
            f"{int(naive.sum())} timestamp(s) without a timezone (e.g. {frame[date_col].cast(pl.String)[i]!r}) "
            "read as New York time; add an offset (Z, +00:00) if they are UTC",
            column=date_col,
            row=int(frame[ROW][i]),
        )
    out = pl.DataFrame(
        {
            "published_at": when["utc"],
            "source": pl.Series([entry.source] * frame.height, dtype=pl.String),
            "text": frame[text_col].cast(pl.String).str.strip_chars(),
        }
    )
    return out.filter(pl.col("text").is_not_null() & (pl.col("text") != "")).cast(TEXT_SCHEMA)


def _window_texts(texts: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    lo, hi = start - timedelta(days=10), end + timedelta(days=2)
    near = texts.filter(pl.col("published_at").dt.date().is_between(lo, hi))
    if near.height == 0:
        return empty_frame(TEXT_SCHEMA)
    sess = near.select(assign_session(pl.col("published_at")).alias("s"))["s"]
    return near.filter(sess.is_between(start, end)).sort("published_at", maintain_order=True)
