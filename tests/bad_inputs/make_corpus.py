"""Regenerate the bad-input corpus: one folder per case with its files and mapping, and the
manifest ``cases.yaml`` that ``tests/test_bad_inputs.py`` runs through the Dagster layer.

    python tests/bad_inputs/make_corpus.py            # files and cases.yaml
    python tests/bad_inputs/make_corpus.py --table    # the README's table

Every case is a small realistic export with one thing wrong (or one thing unusual that is
accepted with a warning). The manifest says per case what must happen: ``error`` (the run
fails, the message holds every ``expect`` substring -- file, column, row or date and a hint --
and no partition file is written), ``warning`` (the run succeeds and a logged warning holds the
substrings) or ``accepted``. Cases marked ``generate`` are built by the test in its temp copy
(a symlink leaving the folder, a text too long to commit).
"""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import polars as pl
import yaml

from finnex_ml import calendar

HERE = Path(__file__).resolve().parent
SESSIONS = calendar.sessions(date(2024, 1, 2), date(2024, 3, 8))
PRICES_ENTRY = {"path": "prices.csv", "modality": "prices"}
ASSET_OF = {
    "prices": "market_data",
    "market": "market_data",
    "peers": "peer_data",
    "texts": "sentiment_data",
    "macro": "macro_data",
    "fundamental": "fundamental_data",
}  # what a case's run materialises


def price_rows() -> list[list[str]]:
    rows = []
    for i, d in enumerate(SESSIONS):
        base = 50.0 + 0.25 * i
        rows.append(
            [d.isoformat(), f"{base:.2f}", f"{base + 1:.2f}", f"{base - 1:.2f}", f"{base + 0.5:.2f}", str(1000 + i)]
        )
    return rows


HEADER = ["Date", "Open", "High", "Low", "Close", "Volume"]


def csv_text(rows: list[list[str]], header: list[str] = HEADER, sep: str = ",") -> str:
    return "\n".join(sep.join(r) for r in [header, *rows]) + "\n"


def prices(**edits: dict[int, list[str]]) -> str:
    rows = price_rows()
    for i, row in edits.get("rows", {}).items():
        rows[i] = row
    return csv_text(rows)


def edit(i: int, col: int, value: str) -> str:
    rows = price_rows()
    rows[i][col] = value
    return csv_text(rows)


def market(extra: dict[int, str] | None = None, col: str = "Short Interest ($M)") -> str:
    lines = [f"Date,VIX Close,{col}"]
    for i, d in enumerate(SESSIONS):
        value = (extra or {}).get(i, f"{1500 + i}")
        lines.append(f"{d.isoformat()},{14 + 0.1 * i:.1f},{value}")
    return "\n".join(lines) + "\n"


def monthly(dates: list[str], header: str = "DATE,CPI") -> str:
    return "\n".join([header, *[f"{d},{300 + i * 0.5:.1f}" for i, d in enumerate(dates)]]) + "\n"


CASES: list[dict] = []


def case(
    name: str,
    what: str,
    expect: str,
    contains: list[str],
    files: dict[str, str | bytes] | None = None,
    entries: list[dict] | None = None,
    mapping_text: str | bytes | None = None,
    mapping_name: str = "mapping.yaml",
    generate: str | None = None,
    base_prices: bool = True,
) -> None:
    """One case: ``files`` are written into ``<name>/``; the mapping lists ``entries`` (the
    base prices file first unless the case is about prices) or is ``mapping_text`` verbatim."""
    folder = HERE / name
    folder.mkdir()
    files = dict(files or {})
    if base_prices and "prices.csv" not in files:
        files["prices.csv"] = prices()
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", newline="")
    if mapping_text is None:
        listed = entries if entries is not None else []
        if base_prices and not any(e.get("path") == "prices.csv" for e in listed):
            listed = [PRICES_ENTRY, *listed]
        mapping_text = yaml.safe_dump({"files": listed}, sort_keys=False)
    target = folder / mapping_name
    target.write_bytes(mapping_text if isinstance(mapping_text, bytes) else mapping_text.encode("utf-8"))
    modalities = {e.get("modality") for e in entries or [PRICES_ENTRY]}
    assets = sorted({ASSET_OF[m] for m in modalities if m in ASSET_OF} | {"market_data"})
    CASES.append(
        {
            "name": name,
            "what": what,
            "mapping": f"{name}/{mapping_name}",
            "files": sorted(files),
            "assets": assets,
            "expect": expect,
            "contains": contains,
            **({"generate": generate} if generate else {}),
        }
    )


def parquet_bytes(frame: pl.DataFrame, tmp: Path) -> bytes:
    frame.write_parquet(tmp)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def build() -> None:
    for old in HERE.iterdir():
        if old.is_dir() and not old.name.startswith("__"):
            shutil.rmtree(old)
    tmp = HERE / "_tmp.parquet"
    p = [PRICES_ENTRY]

    # ---- classics: emptiness, shape, duplicates, order
    case("empty_file", "zero-byte prices file", "error", ["file is empty", "file=prices.csv"], {"prices.csv": ""}, p)
    case(
        "header_only",
        "header, no rows",
        "error",
        ["header but no data rows", "file=prices.csv"],
        {"prices.csv": csv_text([])},
        p,
    )
    case(
        "blank_lines_only",
        "header and blank lines",
        "error",
        ["header but no data rows", "file=prices.csv"],
        {"prices.csv": csv_text([]) + "\n\n,,,,,\n"},
        p,
    )
    rows = price_rows()
    rows[5][0] = rows[4][0]
    case(
        "duplicate_dates",
        "the same session twice",
        "error",
        ["duplicate date 2024-01-08", "rows 5 and 6", "file=prices.csv", "date=2024-01-08"],
        {"prices.csv": csv_text(rows)},
        p,
    )
    case(
        "unsorted_dates",
        "rows in reverse order (sorted on read)",
        "accepted",
        [],
        {"prices.csv": csv_text(price_rows()[::-1])},
        p,
    )
    case(
        "duplicate_header",
        "two Close columns",
        "error",
        ["'Close' appears more than once", "file=prices.csv"],
        {"prices.csv": csv_text(price_rows(), ["Date", "Open", "High", "Low", "Close", "Close"])},
        p,
    )
    case(
        "missing_column",
        "no Volume column",
        "error",
        ["missing required column 'volume'", "file=prices.csv"],
        {"prices.csv": csv_text([r[:5] for r in price_rows()], HEADER[:5])},
        p,
    )
    case(
        "ragged_row",
        "one row with an extra field",
        "error",
        ["row has 7 fields, the header has 6", "row=3", "file=prices.csv"],
        {"prices.csv": prices(rows={2: [*price_rows()[2], "99"]})},
        p,
    )

    # ---- values
    case(
        "nan_price",
        "NaN close (read as missing)",
        "error",
        ["missing value in a price row", "column=Close", "row=4", "date=2024-01-05"],
        {"prices.csv": edit(3, 4, "NaN")},
        p,
    )
    case(
        "inf_price",
        "inf in a price column",
        "error",
        ["cannot parse 'inf' as a number", "column=High", "row=4"],
        {"prices.csv": edit(3, 2, "inf")},
        p,
    )
    case(
        "negative_price",
        "negative low",
        "error",
        ["non-positive price -49.25", "column=Low", "date=2024-01-03"],
        {"prices.csv": edit(1, 3, "-49.25")},
        p,
    )
    case(
        "negative_volume",
        "negative volume",
        "error",
        ["negative volume", "column=Volume", "row=2"],
        {"prices.csv": edit(1, 5, "-5")},
        p,
    )
    case(
        "high_below_low",
        "high under low (the issue's example)",
        "error",
        ["high 48.0 is below low 49.5", "column=High", "row=3", "date=2024-01-04"],
        {"prices.csv": edit(2, 2, "48.0")},
        p,
    )
    case(
        "open_above_high",
        "open over high",
        "error",
        ["open 60.0 is outside [low", "column=Open", "row=3"],
        {"prices.csv": edit(2, 1, "60.0")},
        p,
    )
    case(
        "close_below_low",
        "close under low",
        "error",
        ["close 40.0 is outside [low", "column=Close", "date=2024-01-04"],
        {"prices.csv": edit(2, 4, "40.0")},
        p,
    )
    case(
        "unparsable_number",
        "text in a price cell",
        "error",
        ["cannot parse 'abc' as a number", "column=Close", "row=6"],
        {"prices.csv": edit(5, 4, "abc")},
        p,
    )
    case(
        "yahoo_null_row",
        "a Yahoo 'null' row (dropped)",
        "accepted",
        [],
        {"prices.csv": prices(rows={7: [price_rows()[7][0], *["null"] * 5]})},
        p,
    )
    case(
        "inf_market_cell",
        "one inf cell in a market column: read as missing, column kept",
        "warning",
        ["non-finite cell(s) ('inf') read as missing", "column=Short Interest ($M)", "row=11", "date=2024-01-17"],
        {"market.csv": market({10: "inf"})},
        [{"path": "market.csv", "modality": "market"}],
    )
    case(
        "partly_text_market_column",
        "a number column with one text cell is skipped, with a warning",
        "warning",
        ["column skipped: 'n.a.' is not a number", "column=Short Interest ($M)", "row=4"],
        {"market.csv": market({3: "n.a."})},
        [{"path": "market.csv", "modality": "market"}],
    )

    # ---- encodings, delimiters, binary
    case("utf8_bom", "UTF-8 with a byte-order mark", "accepted", [], {"prices.csv": "\ufeff" + prices()}, p)
    heads = (
        "title,date\n"
        + "\n".join(
            f"Soci\u00e9t\u00e9 G\u00e9n\u00e9rale note {i},{d.isoformat()}" for i, d in enumerate(SESSIONS[40:46])
        )
        + "\n"
    )
    case(
        "latin1_text",
        "Latin-1 headlines decoded with a warning, not replaced by U+FFFD",
        "warning",
        ["file is not UTF-8", "decoded as Windows-1252", "Soci\u00e9t\u00e9", "file=news.csv"],
        {"news.csv": heads.encode("latin-1")},
        [{"path": "news.csv", "modality": "texts", "source": "news"}],
    )
    semi = csv_text([[r[0], *[v.replace(".", ",") for v in r[1:]]] for r in price_rows()], sep=";")
    case(
        "semicolon_decimal_comma",
        "European export: ';' and decimal commas",
        "error",
        ["';'-delimited", "re-export with ',' as the delimiter", "file=prices.csv"],
        {"prices.csv": semi},
        p,
    )
    case(
        "tab_in_csv",
        "tab-separated data named .csv",
        "error",
        ["tab-delimited", "name the file .tsv", "file=prices.csv"],
        {"prices.csv": csv_text(price_rows(), sep="\t")},
        p,
    )
    comma = csv_text([[*r[:4], r[4].replace(".", ","), r[5]] if i == 6 else r for i, r in enumerate(price_rows())])
    case(
        "decimal_comma_unquoted",
        "one unquoted decimal comma makes a ragged row",
        "error",
        ["row has 7 fields, the header has 6", "decimal commas", "row=7", "file=prices.csv"],
        {"prices.csv": comma},
        p,
    )
    case(
        "binary_csv",
        "a binary file named .csv",
        "error",
        ["file is binary", "file=prices.csv"],
        {"prices.csv": b"PK\x03\x04\x00\x00\x08\x00" + bytes(range(256))},
        p,
    )

    # ---- dates
    case(
        "unparsable_date",
        "month 13",
        "error",
        ["cannot parse '2024-13-05' as a date", "column=Date", "row=4"],
        {"prices.csv": edit(3, 0, "2024-13-05")},
        p,
    )
    case(
        "missing_date",
        "empty date cell",
        "error",
        ["missing date", "column=Date", "row=4"],
        {"prices.csv": edit(3, 0, "")},
        p,
    )
    case(
        "weekend_date",
        "a Saturday in a daily file",
        "error",
        ["2024-01-06 (Saturday) is not an NYSE trading session", "row=4"],
        {"prices.csv": edit(3, 0, "2024-01-06")},
        p,
    )
    case(
        "future_date_2099",
        "a typo year far in the future",
        "error",
        ["2099-01-05 is in the future", "row=4", "date=2099-01-05"],
        {"prices.csv": edit(3, 0, "2099-01-05")},
        p,
    )
    case(
        "future_saturday_after_calendar",
        "a Saturday after the calendar's end",
        "error",
        ["2099-06-06 is in the future", "date=2099-06-06"],
        {"prices.csv": prices(rows={})[:-1] + "\n2099-06-06,60,61,59,60,1\n"},
        p,
    )
    case(
        "future_macro_period",
        "a monthly macro value for a month that has not ended",
        "error",
        ["2099-01-01 is in the future", "file=cpi.csv", "column=DATE"],
        {"cpi.csv": monthly(["2023-10-01", "2023-11-01", "2023-12-01", "2099-01-01"])},
        [{"path": "cpi.csv", "modality": "macro", "frequency": "monthly"}],
    )
    cpi_dmy = monthly([f"01/{m:02d}/2023" for m in range(1, 13)])
    case(
        "ambiguous_day_month",
        "monthly CPI in DD/MM/YYYY, every part <= 12",
        "error",
        ["ambiguous date '01/02/2023'", "set date_order", "file=cpi.csv", "column=DATE", "row=2"],
        {"cpi.csv": cpi_dmy},
        [{"path": "cpi.csv", "modality": "macro", "frequency": "monthly"}],
    )
    case(
        "ambiguous_day_month_settled",
        "the same file with date_order: dmy",
        "accepted",
        [],
        {"cpi.csv": cpi_dmy},
        [{"path": "cpi.csv", "modality": "macro", "frequency": "monthly", "date_order": "dmy"}],
    )
    dmy = price_rows()
    for r in dmy:
        y, m, d = r[0].split("-")
        r[0] = f"{d}/{m}/{y}"
    case(
        "day_first_daily",
        "DD/MM/YYYY prices: a day over 12 settles the order",
        "warning",
        ["dates read as day/month/year", "'16/01/2024'", "set date_order: dmy", "file=prices.csv"],
        {"prices.csv": csv_text(dmy)},
        p,
    )
    mixed = price_rows()
    mixed[0][0] = "01/02/2024"  # ambiguous alone
    mixed[10][0] = "17/01/2024"  # day first
    mixed[20][0] = "01/31/2024"  # month first
    case(
        "mixed_date_orders",
        "day-first and month-first dates in one column",
        "error",
        ["mixed date orders", "'17/01/2024'", "'01/31/2024'", "file=prices.csv"],
        {"prices.csv": csv_text(mixed)},
        p,
    )
    case(
        "monthly_not_one_per_month",
        "a monthly series with two dates in January",
        "error",
        ["monthly series with two dates in one period", "2023-01-15", "2023-01-31", "file=cpi.csv"],
        {"cpi.csv": monthly(["2022-12-31", "2023-01-15", "2023-01-31", "2023-02-28", "2023-03-31"])},
        [{"path": "cpi.csv", "modality": "macro", "frequency": "monthly"}],
    )
    tweets = (
        "Datetime,Text\n"
        + "\n".join(f"{d.isoformat()} 10:15:00,$ACME note {i}" for i, d in enumerate(SESSIONS[40:]))
        + "\n"
    )
    case(
        "tweets_without_timezone",
        "tweet times without an offset: New York, logged",
        "warning",
        ["timestamp(s) without a timezone", "read as New York time", "column=Datetime", "file=tweets.csv"],
        {"tweets.csv": tweets},
        [{"path": "tweets.csv", "modality": "texts", "source": "social"}],
    )
    case(
        "oversized_text",
        "one 150,000-character text cell",
        "error",
        ["text of 150,000 characters", "limit is 100,000", "column=Text", "row=2", "file=tweets.csv"],
        {"tweets.csv": "Datetime,Text\n2024-03-01T15:00:00Z,short\n"},
        [{"path": "tweets.csv", "modality": "texts", "source": "social"}],
        generate="oversized_text",
    )

    # ---- parquet
    typed = pl.DataFrame(
        {
            "Date": SESSIONS,
            "Open": [50.0] * len(SESSIONS),
            "High": [51.0] * len(SESSIONS),
            "Low": [49.0] * len(SESSIONS),
            "Close": [50.5] * len(SESSIONS),
            "Volume": [1000] * len(SESSIONS),
        }
    )
    midnight = typed.with_columns(pl.col("Date").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"))
    case(
        "parquet_utc_midnight",
        "Parquet dates stored as midnight-UTC timestamps",
        "error",
        ["midnight UTC", "the evening before in New York", "store plain dates", "file=prices.parquet", "column=Date"],
        {"prices.parquet": parquet_bytes(midnight, tmp)},
        [{"path": "prices.parquet", "modality": "prices"}],
        base_prices=False,
    )
    wrong = typed.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.lit("n/a?"))
        .otherwise(pl.col("Close").cast(pl.String))
        .alias("Close")
    )
    case(
        "parquet_string_prices",
        "a Parquet Close column of strings with a bad cell",
        "error",
        ["cannot parse 'n/a?' as a number", "column=Close", "row=4", "file=prices.parquet"],
        {"prices.parquet": parquet_bytes(wrong, tmp)},
        [{"path": "prices.parquet", "modality": "prices"}],
        base_prices=False,
    )
    boolean = typed.with_columns(pl.Series("Volume", [True] * typed.height))
    case(
        "parquet_bool_volume",
        "a boolean Volume column",
        "error",
        ["cannot parse 'true' as a number", "column=Volume", "file=prices.parquet"],
        {"prices.parquet": parquet_bytes(boolean, tmp)},
        [{"path": "prices.parquet", "modality": "prices"}],
        base_prices=False,
    )
    case(
        "parquet_typed_ok",
        "typed Parquet (Date, Float64, Int64)",
        "accepted",
        [],
        {"prices.parquet": parquet_bytes(typed, tmp)},
        [{"path": "prices.parquet", "modality": "prices"}],
        base_prices=False,
    )

    # ---- peers, releases
    peers = (
        "date,close,volume\n"
        + "\n".join(f"{d.isoformat()},{20 + i * 0.1:.2f},500" for i, d in enumerate(SESSIONS))
        + "\n"
    )
    case(
        "peers_without_ticker",
        "a long peers file without its ticker column",
        "error",
        ["missing ticker column", "'close'", "file=peers.csv", "column=ticker"],
        {"peers.csv": peers},
        [{"path": "peers.csv", "modality": "peers"}],
    )
    case(
        "peers_ticker_column_absent",
        "ticker_column names a column the file lacks",
        "error",
        ["ticker_column 'ticker'", "is not in the file", "file=peers.csv"],
        {"peers.csv": peers},
        [{"path": "peers.csv", "modality": "peers", "ticker_column": "ticker"}],
    )
    case(
        "release_before_period",
        "filing date before the quarter ends",
        "error",
        ["released 2023-06-01 before the period ends", "row=2", "column=filing_date"],
        {"f.csv": "period_end,filing_date,eps\n2023-03-31,2023-05-04,1\n2023-06-30,2023-06-01,2\n"},
        [{"path": "f.csv", "modality": "fundamental"}],
    )

    # ---- mappings: traversal, symlinks, YAML, keys
    case(
        "path_traversal",
        "a mapping path leaving its folder",
        "error",
        ["escapes the mapping folder", "../"],
        entries=[PRICES_ENTRY, {"path": "../empty_file/prices.csv", "modality": "market"}],
    )
    case(
        "absolute_path",
        "an absolute mapping path",
        "error",
        ["escapes the mapping folder", "/etc/hostname"],
        entries=[PRICES_ENTRY, {"path": "/etc/hostname", "modality": "market"}],
    )
    case(
        "symlink_escape",
        "a symlink pointing out of the folder",
        "error",
        ["escapes the mapping folder", "link.csv"],
        entries=[PRICES_ENTRY, {"path": "link.csv", "modality": "market"}],
        generate="symlink_escape",
    )
    bomb = (
        "a: &a [x, x, x, x, x, x, x, x, x]\n"
        + "".join(
            f"{c}: &{c} [*{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}, *{p_}]\n"
            for p_, c in zip("abcdefgh", "bcdefghi")
        )
        + "files: *i\n"
    )
    case(
        "yaml_alias_bomb",
        "billion-laughs YAML (nine levels of nine aliases)",
        "error",
        ["YAML aliases (*name) are not supported", "mapping.yaml"],
        mapping_text=bomb,
    )
    case(
        "yaml_invalid",
        "broken YAML indentation",
        "error",
        ["is not valid YAML", "mapping.yaml"],
        mapping_text="files:\n  - path: prices.csv\n   modality: prices\n",
    )
    case(
        "binary_mapping",
        "a binary file as the mapping",
        "error",
        ["is binary", "mapping.yaml"],
        mapping_text=b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(200)),
    )
    case(
        "latin1_mapping",
        "a mapping saved as Latin-1",
        "error",
        ["is not UTF-8 text", "mapping.yaml"],
        mapping_text="# Soci\u00e9t\u00e9\nfiles:\n  - path: prices.csv\n    modality: prices\n".encode("latin-1"),
    )
    case(
        "unknown_top_key",
        "a misspelt top-level key",
        "error",
        ["unknown top-level key 'file'", "mapping.yaml"],
        mapping_text="file:\n  - path: prices.csv\n    modality: prices\n",
    )
    case(
        "unknown_entry_key",
        "a misspelt entry key",
        "error",
        ["unknown key 'colums'", "files[0] (prices.csv)"],
        entries=[{**PRICES_ENTRY, "colums": {"Close": "close"}}],
    )
    case(
        "key_not_for_modality",
        "source: on a prices entry",
        "error",
        ["key 'source' does not apply to modality 'prices'"],
        entries=[{**PRICES_ENTRY, "source": "news"}],
    )
    case(
        "unknown_modality",
        "modality: price",
        "error",
        ["unknown modality 'price'", "files[0]"],
        entries=[{"path": "prices.csv", "modality": "price"}],
    )
    case(
        "missing_file",
        "the mapping lists a file that is not there",
        "error",
        ["file 'gone.csv' does not exist"],
        entries=[PRICES_ENTRY, {"path": "gone.csv", "modality": "market"}],
    )
    case(
        "unsupported_suffix",
        "an Excel file",
        "error",
        ["unsupported file type '.xlsx'"],
        {"book.xlsx": b"PK\x03\x04"},
        [PRICES_ENTRY, {"path": "book.xlsx", "modality": "market"}],
    )
    case(
        "toml_mapping",
        "a TOML mapping",
        "accepted",
        [],
        mapping_text='[[files]]\npath = "prices.csv"\nmodality = "prices"\n',
        mapping_name="mapping.toml",
    )
    tmp.unlink(missing_ok=True)
    header = (
        "# The bad-input corpus: one case per folder (files + mapping). Regenerate with\n"
        "# python tests/bad_inputs/make_corpus.py; tests/test_bad_inputs.py runs every case.\n"
    )
    (HERE / "cases.yaml").write_text(
        header + yaml.safe_dump({"cases": CASES}, sort_keys=False, allow_unicode=True, width=120), encoding="utf-8"
    )
    print(f"{len(CASES)} cases")


def readme_table(cases: list[dict]) -> str:
    """The README's corpus table, from the manifest (``python make_corpus.py --table``)."""
    lines = ["| case | input | outcome | the message holds |", "|---|---|---|---|"]
    for c in cases:
        holds = "; ".join(f"`{p}`" for p in c["contains"]).replace("|", "\\|") or "–"
        lines.append(f"| `{c['name']}` | {c['what']} | {c['expect']} | {holds} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    if "--table" in sys.argv:
        print(readme_table(yaml.safe_load((HERE / "cases.yaml").read_text(encoding="utf-8"))["cases"]), end="")
    else:
        build()
