"""Reading a mapped file: CSV / TSV / Parquet to a String frame (encoding, delimiter and ragged
row checks), finding its columns (by mapping, by name, the date column by content), keep /
drop, and the number grammar (``$21,454``, ``(1,234)``, ``12.5%``, ``1.2M``).
"""

from __future__ import annotations

import csv
import io
import re

import polars as pl

from finnex_ml.data.files.dates import _parse_when_frame
from finnex_ml.data.files.mapping import _SUFFIXES, ROW, FileEntry, _norm
from finnex_ml.errors import ConfigError, DataInputError

_DATE_NAMES = {
    "date", "datetime", "date_time", "timestamp", "time", "period", "period_end", "periodend",
    "observation_date", "published_at", "published", "publish_date", "pubdate", "pub_date",
    "created_at", "day", "trade_date", "fiscal_date_ending", "quarter_end", "month_end",
}  # fmt: skip
_TICKER_NAMES = ("ticker", "symbol")
_MISSING = ["", ".", "-", "--", "—", "–", "na", "n/a", "nan", "null", "none", "#n/a", "nd"]


def _read(entry: FileEntry) -> pl.DataFrame:
    kind = _SUFFIXES[entry.path.suffix.lower()]
    if entry.path.stat().st_size == 0:
        raise DataInputError("file is empty (zero bytes)", file=entry.rel)
    separator = "\t" if kind == "tsv" else ","
    text = None if kind == "parquet" else _decode_text(entry)
    try:
        if kind == "parquet":
            frame = pl.read_parquet(entry.path)
        else:
            assert text is not None
            _check_delimiter(entry, text, separator)
            frame = pl.read_csv(io.BytesIO(text.encode("utf-8")), infer_schema=False, separator=separator)
    except pl.exceptions.NoDataError as exc:
        raise DataInputError("file is empty", file=entry.rel) from exc
    except pl.exceptions.ComputeError as exc:
        if text is not None and "truncate_ragged_lines" in str(exc):
            _ragged(entry, text, separator)
        raise DataInputError(f"cannot read file: {_short(exc)}", file=entry.rel) from exc
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataInputError(f"cannot read file: {_short(exc)}", file=entry.rel) from exc
    dupes = [c for c in frame.columns if "_duplicated_" in c]
    if dupes:
        original = dupes[0].split("_duplicated_")[0]
        raise DataInputError(
            f"column name {original!r} appears more than once in the header", file=entry.rel, column=original
        )
    if ROW in frame.columns:
        raise DataInputError(f"column name {ROW!r} is reserved", file=entry.rel, column=ROW)
    frame = frame.with_row_index(ROW, offset=1).with_columns(pl.col(ROW).cast(pl.Int64))
    if frame.width > 1:  # blank lines read as all-null rows
        frame = frame.filter(~pl.all_horizontal(pl.exclude(ROW).is_null()))
    if frame.height == 0:
        raise DataInputError("file has a header but no data rows", file=entry.rel)
    return frame


def _short(exc: Exception, limit: int = 400) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:limit] + (" ..." if len(text) > limit else "")


def _decode_text(entry: FileEntry) -> str:
    """The file as text: UTF-8 (a BOM is dropped), else Windows-1252 / Latin-1 with a warning
    naming the first undecodable line, never a silent replacement character. NUL bytes mean
    a binary file, an error."""
    data = entry.path.read_bytes()
    if b"\x00" in data[:65536]:
        raise DataInputError(
            f"file is binary (NUL bytes), not {entry.path.suffix} text; export it as CSV or Parquet", file=entry.rel
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n")  # 0 is the header, as rows count records
        try:
            text, codec = data.decode("cp1252"), "Windows-1252"
        except UnicodeDecodeError:
            text, codec = data.decode("latin-1"), "Latin-1"
        bad = text.splitlines()[line] if line < len(text.splitlines()) else ""
        entry.warn(
            f"file is not UTF-8 (byte {data[exc.start : exc.start + 1]!r}); decoded as {codec}, "
            f"e.g. {bad[:80]!r}; save it as UTF-8 to be sure of the text",
            row=line or None,
        )
        return text


def _check_delimiter(entry: FileEntry, text: str, separator: str) -> None:
    """A ';'-delimited export (European locale, decimal commas) read as CSV gives one column or
    ragged rows; say so with the fix instead."""
    header = text.lstrip("\ufeff").split("\n", 1)[0]
    if separator in header:
        return
    for other, name in ((";", "';'"), ("\t", "tab"), ("|", "'|'")):
        if other in header:
            fix = (
                "name the file .tsv"
                if other == "\t"
                else "re-export with ',' as the delimiter and '.' as the decimal point"
            )
            raise DataInputError(
                f"the header {header[:80]!r} is {name}-delimited; FinNeX reads comma-separated .csv and "
                f"tab-separated .tsv with '.' as the decimal point: {fix}",
                file=entry.rel,
            )


def _ragged(entry: FileEntry, text: str, separator: str) -> None:
    """Name the first record whose field count differs from the header's."""
    rows = csv.reader(io.StringIO(text), delimiter=separator)
    try:
        width = len(next(rows))
        for i, fields in enumerate(rows, start=1):
            if fields and len(fields) != width:
                hint = (
                    " (decimal commas? quote them or use '.' as the decimal point)"
                    if len(fields) > width and any(re.fullmatch(r"-?\d+", f.strip()) for f in fields)
                    else ""
                )
                raise DataInputError(
                    f"row has {len(fields)} fields, the header has {width}{hint}; check the delimiter and quoting",
                    file=entry.rel,
                    row=i,
                )
    except csv.Error as exc:
        raise DataInputError(f"cannot read file: {exc}", file=entry.rel) from exc


def _column(frame: pl.DataFrame, name: str, entry: FileEntry, what: str = "column") -> str:
    """The frame's column called ``name`` (exactly, else unique case-insensitive match)."""
    if name in frame.columns and name != ROW:
        return name
    matches = [c for c in frame.columns if c != ROW and c.strip().lower() == name.strip().lower()]
    if len(matches) == 1:
        return matches[0]
    have = ", ".join(repr(c) for c in frame.columns if c != ROW)
    raise DataInputError(
        f"{what} {name!r} named in {entry.where} is not in the file (it has {have})",
        file=entry.rel,
        column=name,
    )


def _by_name(frame: pl.DataFrame, names: tuple[str, ...] | set[str], exclude: set[str]) -> list[str]:
    return [c for c in frame.columns if c != ROW and c not in exclude and _norm(c) in names]


def _resolve_names(
    frame: pl.DataFrame, entry: FileEntry, names: tuple[str, ...], renamed: dict[str, str], key: str
) -> list[str]:
    """The file columns that ``names`` (from the entry's ``key``) refer to. A name is a column's
    name after any rename under ``columns`` (exactly, else case-insensitively, else by its
    sanitised form: ``Stock Splits``, ``stock splits``, ``stock_splits``). Unknown names are an
    error naming the file and its columns."""
    shown = {c: renamed.get(c, c) for c in frame.columns if c != ROW}
    out: list[str] = []
    for name in names:
        bare = re.sub(r"^(market|macro|fundamental|sentiment)__", "", name)
        hits = (
            [c for c, v in shown.items() if v == name]
            or [c for c, v in shown.items() if v.casefold() == name.casefold()]
            or [c for c, v in shown.items() if _norm(v) and _norm(v) == _norm(bare)]
        )
        if len(hits) != 1:
            have = ", ".join(repr(v) for v in shown.values())
            what = "is not a column of" if not hits else "matches several columns of"
            raise DataInputError(
                f"{key}: {name!r} {what} the file (its columns, after renames: {have}); see {entry.where}",
                file=entry.rel,
                column=name,
            )
        out.append(hits[0])
    return out


def _keep_drop(
    frame: pl.DataFrame,
    entry: FileEntry,
    renamed: dict[str, str],
    candidates: list[str],
) -> tuple[list[str], set[str]]:
    """(kept value columns, or [] without ``keep``; dropped columns) of the entry's keep / drop."""
    kept: list[str] = []
    if entry.keep is not None:
        kept = _resolve_names(frame, entry, entry.keep, renamed, "keep")
        odd = [c for c in kept if c not in candidates]
        if odd:
            raise DataInputError(
                f"keep: {renamed.get(odd[0], odd[0])!r} is not a value column of this {entry.modality} file (it is "
                "the date, release, ticker or a price field); rename it under columns to make it a series",
                file=entry.rel,
                column=odd[0],
            )
    dropped = set(_resolve_names(frame, entry, entry.drop, renamed, "drop"))
    both = [c for c in kept if c in dropped]
    if both:
        raise ConfigError(f"{entry.where}: column {both[0]!r} is both kept and dropped")
    return kept, dropped


def _date_column(frame: pl.DataFrame, entry: FileEntry, exclude: set[str]) -> str:
    if entry.date_column:
        return _column(frame, entry.date_column, entry, "date_column")
    pool = [c for c in frame.columns if c != ROW and c not in exclude]
    strong = [c for c in pool if _norm(c) in _DATE_NAMES]
    weak = [c for c in pool if re.search(r"date|time|period|(^|_)at$", _norm(c))]
    for stage in (strong, weak):
        if len(stage) == 1:
            return stage[0]
        if len(stage) > 1:
            _ambiguous(entry, stage)
    by_content = [c for c in pool if _looks_like_dates(frame[c])]
    if len(by_content) == 1:
        return by_content[0]
    if len(by_content) > 1:
        _ambiguous(entry, by_content)
    raise DataInputError(f"no date column found; set date_column for this file in {entry.where}", file=entry.rel)


def _ambiguous(entry: FileEntry, candidates: list[str]) -> None:
    raise DataInputError(
        f"ambiguous date column: {', '.join(repr(c) for c in candidates)} all look like dates; "
        f"set date_column for this file in {entry.where}",
        file=entry.rel,
        column=candidates[0],
    )


def _looks_like_dates(s: pl.Series) -> bool:
    if s.dtype in (pl.Date,) or isinstance(s.dtype, pl.Datetime):
        return True
    if s.dtype != pl.String:
        return False
    sample = s.drop_nulls().head(20)
    if sample.len() == 0 or sample.str.contains(r"^\s*[\d.+-]+\s*$").all():
        return False
    return _parse_when_frame(sample, 0)["wall"].null_count() == 0


def _parse_number(frame: pl.DataFrame, col: str) -> pl.DataFrame:
    """``value`` (Float64, null where missing) and ``bad`` (a non-missing cell that is not a
    number) for the String column ``col``. Step by step so no sub-expression runs twice."""
    s = pl.col("s")
    steps = frame.select(pl.col(col).str.strip_chars().alias("s")).with_columns(
        missing=s.is_null() | s.str.to_lowercase().is_in(_MISSING),
        negative=s.str.contains(r"^\(.*\)$"),
        percent=s.str.contains(r"%\)?$"),
        body=s.str.replace_all(r"[\s$€£¥,()%]", ""),
    )
    steps = steps.with_columns(
        scale=pl.col("body")
        .str.extract(r"\d([KkMmBbTt])$")
        .str.to_lowercase()
        .replace_strict({"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}, default=1.0, return_dtype=pl.Float64),
        raw=pl.col("body").str.replace(r"(\d)[KkMmBbTt]$", "${1}").cast(pl.Float64, strict=False),
    )
    steps = steps.with_columns(
        v=pl.col("raw") * pl.col("scale") * pl.when(pl.col("negative")).then(-1.0).otherwise(1.0)
    ).with_columns(v=pl.when(pl.col("percent")).then(pl.col("v") / 100.0).otherwise(pl.col("v")))
    return steps.select(
        pl.when(pl.col("missing")).then(None).otherwise(pl.col("v")).alias("value"),
        (~pl.col("missing") & (pl.col("v").is_null() | pl.col("v").is_nan() | pl.col("v").is_infinite()))
        .fill_null(False)
        .alias("bad"),
        (~pl.col("missing") & (pl.col("v").is_nan() | pl.col("v").is_infinite())).fill_null(False).alias("nonfinite"),
    )


def _numbers(
    frame: pl.DataFrame,
    cols: list[str],
    entry: FileEntry,
    *,
    strict: bool,
    days: pl.Series | None = None,
) -> tuple[pl.DataFrame, list[str]]:
    """Parse ``cols`` to Float64. Strict: raise on the first bad cell. Otherwise columns with a
    bad cell (non-numeric columns) or without any value are skipped and returned as such, with
    a warning when the column holds numbers too; an ``inf`` / ``NaN`` cell in an otherwise
    numeric column becomes missing, with a warning (one bad cell must not drop a whole column).

    Plain numeric text takes a cast; only columns where that fails go through the full
    grammar, all at once in long format (a 270-column file stays one pass)."""
    if not cols:
        return pl.DataFrame(), []
    n = frame.height
    values: dict[str, pl.Series] = {}
    bad_at: dict[str, int] = {}  # column -> first bad row index
    nonfinite_at: dict[str, pl.Series] = {}  # column -> mask of inf / NaN cells (loose mode: made missing)
    schema = frame.schema
    numeric = [c for c in cols if schema[c].is_numeric()]
    for c in numeric:
        v = frame[c].cast(pl.Float64).fill_nan(None)
        inf = v.is_infinite().fill_null(False)
        if inf.any():
            bad_at[c] = int(inf.arg_true()[0])
            nonfinite_at[c] = inf
        values[c] = v
    text = [c for c in cols if c not in values]
    if text:
        stripped = frame.select([pl.col(c).cast(pl.String).str.strip_chars() for c in text])
        fast = stripped.select([pl.col(c).cast(pl.Float64, strict=False) for c in text])
        before, after = stripped.null_count().row(0), fast.null_count().row(0)
        odd = fast.select([(pl.col(c).is_nan() | pl.col(c).is_infinite()).any() for c in text]).row(0)
        slow = []
        for c, nb, na, o in zip(text, before, after, odd):
            if nb == na and not o:
                values[c] = fast[c]
            else:
                slow.append(c)
        if slow:
            long = stripped.select(slow).unpivot(on=slow, variable_name="c", value_name="v")
            parsed = _parse_number(long, "v")
            for k, c in enumerate(slow):  # unpivot stacks column after column
                part = parsed.slice(k * n, n)
                values[c] = part["value"].alias(c)
                if part["bad"].any():
                    bad_at[c] = int(part["bad"].arg_true()[0])
                    if (part["bad"] == part["nonfinite"]).all():
                        nonfinite_at[c] = part["nonfinite"]
    if not strict:
        for c, mask in nonfinite_at.items():
            i = int(mask.arg_true()[0])
            entry.warn(
                f"{int(mask.sum())} non-finite cell(s) ({frame[c].cast(pl.String)[i]!r}) read as missing",
                column=c,
                row=int(frame[ROW][i]),
                date=None if days is None else str(days[i]),
            )
            values[c] = pl.Series(c, values[c]).set(mask, None)
            del bad_at[c]
        for c in bad_at:
            if values[c].drop_nulls().filter(values[c].drop_nulls().is_finite()).len():
                i = bad_at[c]
                entry.warn(
                    f"column skipped: {frame[c].cast(pl.String)[i]!r} is not a number, though other cells are",
                    column=c,
                    row=int(frame[ROW][i]),
                    date=None if days is None else str(days[i]),
                )
    bad_cols = [c for c in cols if c in bad_at]
    if strict and bad_cols:
        col = min(bad_cols, key=lambda c: (bad_at[c], cols.index(c)))
        i = bad_at[col]
        raise DataInputError(
            f"cannot parse {frame[col].cast(pl.String)[i]!r} as a number",
            file=entry.rel,
            column=col,
            row=int(frame[ROW][i]),
            date=None if days is None else str(days[i]),
        )
    empty = [c for c in cols if c not in bad_at and values[c].null_count() == n]
    skipped = bad_cols + ([] if strict else empty)
    return pl.DataFrame([values[c].alias(c) for c in cols if c not in skipped]), skipped
