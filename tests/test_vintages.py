"""Revised data: ALFRED vintage files (``realtime_start``/``realtime_end``), the as-of values of
revised series in :func:`~finnex_ml.alignment.align_releases`, and the vintage marker of
provenance. Series without revisions keep the exact output they always had."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from finnex_ml import calendar
from finnex_ml.alignment import FLOW_SERIES, align_releases
from finnex_ml.data.base import RELEASE_SCHEMA, RawData
from finnex_ml.data.files import FilesSource
from finnex_ml.data.files.releases import _window_releases
from finnex_ml.data.packaged import MACRO_PROVENANCE
from finnex_ml.data.synthetic import SyntheticSource
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.evaluation.report import _provenance_html

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "files_source" / "mapping.yaml"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def source(folder: Path, files: list[dict]) -> FilesSource:
    return FilesSource.from_mapping(write(folder, "mapping.yaml", yaml.safe_dump({"files": files}, sort_keys=False)))


def load(folder: Path, files: list[dict]) -> RawData:
    return source(folder, files).load(date(2020, 1, 1), date(2025, 12, 31))


def raises(folder: Path, files: list[dict], *parts: str, exc=DataInputError) -> None:
    with pytest.raises(exc) as info:
        load(folder, files)
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {str(info.value)!r}"


# An ALFRED "observations by real-time period" export of a GDPC1-like quarterly series: Q1 2023
# is first published at 100 (Thu 2023-04-27), Q2 at 102 (Thu 2023-07-27), then Q1 is revised
# to 101 (Thu 2023-08-24) and Q2 to 103 (Thu 2023-08-31). Q4 2022 is '.' (missing) in its
# vintage; current values end in 9999-12-31.
ALFRED = """observation_date,realtime_start,realtime_end,GDPC1
2022-10-01,2023-01-26,9999-12-31,.
2023-01-01,2023-04-27,2023-08-23,100.0
2023-01-01,2023-08-24,9999-12-31,101.0
2023-04-01,2023-07-27,2023-08-30,102.0
2023-04-01,2023-08-31,9999-12-31,103.0
"""


def gdp_table(tmp_path: Path, entry: dict | None = None, text: str = ALFRED) -> tuple[pl.DataFrame, dict]:
    write(tmp_path, "GDPC1_vintages.csv", text)
    raw = load(tmp_path, [{"path": "GDPC1_vintages.csv", "modality": "macro", **(entry or {})}])
    table = align_releases(raw.releases, calendar.sessions(date(2023, 4, 3), date(2023, 9, 29)), "macro")
    return table, raw.provenance


def at(table: pl.DataFrame, day: date) -> tuple:
    row = table.filter(pl.col("date") == day).row(0, named=True)
    return row["gdpc1"], row["gdpc1_chg"], row["gdpc1_age"]


def test_alfred_vintages_parse_and_count_from_the_next_session(tmp_path):
    write(tmp_path, "GDPC1_vintages.csv", ALFRED)
    raw = load(tmp_path, [{"path": "GDPC1_vintages.csv", "modality": "macro"}])
    # realtime_start is the release date (date-only: the next session); realtime_end is no series,
    # its 9999-12-31 does not break the date checks; the '.' row is missing and dropped
    assert raw.releases.rows() == [
        ("macro", "gdpc1", date(2023, 3, 31), date(2023, 4, 28), 100.0),
        ("macro", "gdpc1", date(2023, 3, 31), date(2023, 8, 25), 101.0),
        ("macro", "gdpc1", date(2023, 6, 30), date(2023, 7, 28), 102.0),
        ("macro", "gdpc1", date(2023, 6, 30), date(2023, 9, 1), 103.0),
    ]
    assert raw.provenance == {"macro": "file:GDPC1_vintages.csv (point-in-time vintages)"}


def test_a_revision_of_an_older_period_never_becomes_the_current_value(tmp_path):
    table, _ = gdp_table(tmp_path)
    nan = None
    # (value, change against the previous period, days since the value shown was released)
    assert at(table, date(2023, 4, 27)) == (nan, nan, nan)  # released that day, date-only: not yet
    assert at(table, date(2023, 4, 28)) == (100.0, nan, 0.0)  # no earlier period: no change
    assert at(table, date(2023, 7, 27)) == (100.0, nan, 90.0)
    assert at(table, date(2023, 7, 28)) == (102.0, 2.0, 0.0)  # Q2 against Q1 as known then (100)
    assert at(table, date(2023, 8, 24)) == (102.0, 2.0, 27.0)
    # Q1's revision (101) is public from 2023-08-25: the current value stays Q2's 102 (its age
    # runs on from Q2's release) and the change is against Q1's latest vintage known then
    assert at(table, date(2023, 8, 25)) == (102.0, 1.0, 28.0)
    assert at(table, date(2023, 8, 31)) == (102.0, 1.0, 34.0)
    assert at(table, date(2023, 9, 1)) == (103.0, 2.0, 0.0)  # a revision of the current period is its value
    assert at(table, date(2023, 9, 29)) == (103.0, 2.0, 28.0)


def test_published_time_and_explicit_vintage_column(tmp_path):
    # an 08:30 release counts from its own session
    table, _ = gdp_table(tmp_path, {"published": "08:30"})
    assert at(table, date(2023, 4, 27)) == (100.0, None, 0.0)
    assert at(table, date(2023, 8, 24)) == (102.0, 1.0, 28.0)
    # vintage_column names a differently called column; realtime_end found by name, any case
    text = ALFRED.replace("realtime_start", "Vintage").replace("realtime_end", "REALTIME_END")
    table, prov = gdp_table(tmp_path, {"vintage_column": "vintage"}, text)
    assert at(table, date(2023, 8, 25)) == (102.0, 1.0, 28.0)
    assert prov["macro"].endswith("(point-in-time vintages)")


def test_vintage_before_the_period_end_is_an_error_naming_file_and_row(tmp_path):
    bad = ALFRED.replace("2023-04-01,2023-07-27", "2023-04-01,2023-06-15")
    write(tmp_path, "GDPC1_vintages.csv", bad)
    raises(
        tmp_path,
        [{"path": "GDPC1_vintages.csv", "modality": "macro"}],
        "before the period ends (2023-06-30)",
        "file=GDPC1_vintages.csv",
        "row=4",
        "column=realtime_start",
    )


def test_vintage_and_release_column_exclude_each_other(tmp_path):
    write(tmp_path, "GDPC1_vintages.csv", ALFRED)
    raises(
        tmp_path,
        [
            {
                "path": "GDPC1_vintages.csv",
                "modality": "macro",
                "release_column": "realtime_start",
                "vintage_column": "realtime_start",
            }
        ],  # fmt: skip
        "release_column and vintage_column",
        exc=ConfigError,
    )
    raises(
        tmp_path,
        [{"path": "GDPC1_vintages.csv", "modality": "macro", "release_column": "realtime_end"}],
        "remove release_column",
        exc=ConfigError,
    )


def releases(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame([("fundamental", "revenue", p, r, v) for p, r, v in rows], schema=RELEASE_SCHEMA, orient="row")


def test_yoy_and_ttm_of_a_restated_flow_series_use_the_values_known_per_period():
    q = [date(2022, 3, 31), date(2022, 6, 30), date(2022, 9, 30), date(2022, 12, 31), date(2023, 3, 31)]
    rel = releases(
        [
            (q[0], date(2022, 5, 2), 10.0),
            (q[1], date(2022, 8, 1), 11.0),
            (q[2], date(2022, 11, 1), 12.0),
            (q[3], date(2023, 2, 1), 13.0),
            (q[4], date(2023, 5, 1), 15.0),
            (q[0], date(2023, 6, 1), 12.0),  # restates Q1 2022 a year later
        ]
    )
    t = align_releases(rel, calendar.sessions(date(2023, 4, 3), date(2023, 6, 30)), "fundamental")

    def row(day):
        r = t.filter(pl.col("date") == day).row(0, named=True)
        return r["revenue"], r["revenue_chg"], r["revenue_yoy"], r["revenue_ttm"], r["revenue_age"]

    assert row(date(2023, 5, 1)) == (15.0, 2.0, pytest.approx(0.5), 51.0, 0.0)  # 15/10-1; 11+12+13+15
    # the restatement leaves the current quarter and the ttm alone, and moves the yoy base
    assert row(date(2023, 6, 1)) == (15.0, 2.0, pytest.approx(0.25), 51.0, 31.0)


def test_window_carries_the_current_period_of_a_revised_series():
    old = date(2019, 12, 31)
    rel = pl.DataFrame(
        [
            ("macro", "x", date(2019, 9, 30), date(2019, 11, 1), 1.0),
            ("macro", "x", old, date(2020, 2, 1), 2.0),
            ("macro", "x", date(2019, 9, 30), date(2020, 3, 1), 1.5),  # the last release revises Q3
            ("macro", "x", date(2019, 6, 30), date(2019, 8, 1), 0.5),
            ("macro", "x", date(2019, 6, 30), date(2023, 1, 5), 0.7),  # a benchmark revision in the window
        ],
        schema=RELEASE_SCHEMA,
        orient="row",
    )
    start = date(2023, 1, 3)
    win = _window_releases(rel, start, date(2023, 3, 31))
    t = align_releases(win, calendar.sessions(start, date(2023, 1, 10)), "macro")
    assert t.height == 6 and t["x"].to_list() == [2.0] * t.height  # Q4's value, never an older period's revision
    assert t["x_chg"].to_list() == [0.5] * t.height  # against Q3's latest vintage (1.5)


# --------------------------------------------------------------------------- the marker


def test_provenance_marks_release_files_without_release_dates_as_current_vintages(tmp_path):
    write(tmp_path, "CPIAUCSL.csv", "DATE,CPIAUCSL\n2023-01-01,299.17\n2023-02-01,300.84\n2023-03-01,301.84\n")
    write(tmp_path, "fred_DGS10.csv", "DATE,DGS10\n2024-03-04,4.20\n2024-03-05,.\n2024-03-07,4.10\n")
    write(tmp_path, "f.csv", "period_end,filing_date,eps\n2023-03-31,2023-05-04,1\n2023-06-30,2023-08-01,2\n")
    write(tmp_path, "GDPC1_vintages.csv", ALFRED)
    files = [
        {"path": "CPIAUCSL.csv", "modality": "macro"},
        {"path": "fred_DGS10.csv", "modality": "macro"},  # daily closes: not revised, no marker
        {"path": "GDPC1_vintages.csv", "modality": "macro"},
        {"path": "f.csv", "modality": "fundamental"},  # dated filings: no marker
    ]
    prov = load(tmp_path, files).provenance
    assert prov == {
        "macro": "file:CPIAUCSL.csv (current vintage: revised data, not as first published),"
        "file:fred_DGS10.csv,file:GDPC1_vintages.csv (point-in-time vintages)",
        "fundamental": "file:f.csv",
    }
    assert "(current vintage: revised data" in MACRO_PROVENANCE  # packaged: FRED / French downloads
    doc = {"provenance": {"source": "files", "modalities": {m: {"provenance": p} for m, p in prov.items()}}}
    page = _provenance_html(doc)
    assert "Revised data (macro)" in page and "current vintage" in page
    doc["provenance"]["modalities"] = {"fundamental": {"provenance": "file:f.csv"}}
    assert "Revised data" not in _provenance_html(doc)


# --------------------------------------------------------------------------- unrevised: same output


def old_align_releases(releases: pl.DataFrame, sessions: list[date], modality: str) -> pl.DataFrame:
    """``align_releases`` as it was before revised series (commit 22878f7), verbatim."""
    grid = pl.DataFrame({"date": sessions}, schema={"date": pl.Date}).sort("date")
    rel = releases.filter(pl.col("modality") == modality)
    out = grid
    for series in sorted(rel["series"].unique().to_list()):
        s = (
            rel.filter(pl.col("series") == series)
            .sort("released", "period_end")
            .unique(subset="released", keep="last", maintain_order=True)
            .with_columns(
                (pl.col("value") - pl.col("value").shift(1)).alias("chg"),
                (pl.col("value") / pl.col("value").shift(4) - 1.0).alias("yoy"),
                (
                    pl.col("value") + pl.col("value").shift(1) + pl.col("value").shift(2) + pl.col("value").shift(3)
                ).alias("ttm"),
            )
        )
        cols = [
            pl.col("value").alias(series),
            pl.col("chg").alias(f"{series}_chg"),
            pl.col("released").alias(f"_{series}_released"),
        ]
        if modality == "fundamental" and series in FLOW_SERIES:
            cols += [pl.col("yoy").alias(f"{series}_yoy"), pl.col("ttm").alias(f"{series}_ttm")]
        joined = grid.join_asof(s.select(pl.col("released").alias("date"), *cols), on="date", strategy="backward")
        out = (
            out.join(joined, on="date", how="left")
            .with_columns(
                (pl.col("date") - pl.col(f"_{series}_released")).dt.total_days().cast(pl.Float64).alias(f"{series}_age")
            )
            .drop(f"_{series}_released")
        )
    return out


@pytest.mark.parametrize(
    "make, start, end",
    [
        (lambda: SyntheticSource(7), date(2024, 1, 2), date(2024, 6, 28)),
        (lambda: FilesSource.from_mapping(EXAMPLE), date(2023, 3, 1), date(2023, 8, 31)),
    ],
    ids=["synthetic", "example_files"],
)
def test_series_without_revisions_keep_their_exact_output(make, start, end):
    raw = make().load(start, end)
    assert not raw.releases.select(pl.struct("modality", "series", "period_end").is_duplicated().any()).item()
    sess = calendar.sessions(start, end)
    widths = 0
    for modality in ("macro", "fundamental", "sentiment"):
        new, old = align_releases(raw.releases, sess, modality), old_align_releases(raw.releases, sess, modality)
        widths += new.width - 1
        assert_frame_equal(new, old, check_exact=True)
        assert new.write_csv() == old.write_csv()  # same bytes, nulls and NaNs in place
    assert widths > 10
