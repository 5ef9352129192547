"""The ``files`` data source: mapping, parsing of real-looking exports, and clear errors."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from finnex_ml.calendar import assign_session, sessions
from finnex_ml.data.base import PEER_SCHEMA, PRICE_SCHEMA, RELEASE_SCHEMA, TEXT_SCHEMA, DataSource, RawData
from finnex_ml.data.files import FilesSource
from finnex_ml.errors import ConfigError, DataInputError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "files_source" / "mapping.yaml"
UTC = UTC

PRICES = """Date,Open,High,Low,Close,Adj Close,Volume
2024-03-04,10.0,11.0,9.5,10.5,10.1,"1,000"
2024-03-05,10.5,11.5,10.0,"$11.25",11.0,2000
2024-03-06,11.0,12.0,10.5,11.5,11.2,3000
2024-03-07,11.5,12.5,11.0,12.0,11.7,4000
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def mapping(folder: Path, files: list[dict], name: str = "mapping.yaml", **top) -> Path:
    return write(folder, name, yaml.safe_dump({**top, "files": files}, sort_keys=False))


def load(folder: Path, files: list[dict], start=date(2020, 1, 1), end=date(2025, 12, 31)) -> RawData:
    return FilesSource.from_mapping(mapping(folder, files)).load(start, end)


def raises(
    folder: Path, files: list[dict], *parts: str, exc=DataInputError, start=date(2020, 1, 1), end=date(2025, 12, 31)
):
    with pytest.raises(exc) as info:
        FilesSource.from_mapping(mapping(folder, files)).load(start, end)
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return info.value


# --------------------------------------------------------------------------- happy paths


def test_prices_auto_detected_currency_strings_and_window(tmp_path):
    write(tmp_path, "prices.csv", PRICES)
    src = FilesSource.from_mapping(mapping(tmp_path, [{"path": "prices.csv", "modality": "prices"}], ticker="ACME"))
    source: DataSource = src
    assert source.name == "files"
    assert src.ticker == "ACME"
    raw = src.load(date(2024, 3, 5), date(2024, 3, 6))
    assert raw.prices.schema == pl.Schema(PRICE_SCHEMA)  # 'Adj Close' is not carried
    assert raw.prices["date"].to_list() == [date(2024, 3, 5), date(2024, 3, 6)]
    assert raw.prices["close"].to_list() == [11.25, 11.5]
    assert raw.prices["volume"].to_list() == [2000.0, 3000.0]
    assert raw.provenance == {"prices": "file:prices.csv"}
    assert raw.peers.is_empty() and raw.texts.is_empty() and raw.releases.is_empty()


def test_prices_mapped_columns_and_dates_with_times_and_offsets(tmp_path):
    write(
        tmp_path,
        "data/px.csv",
        "when,o,h,l,c,v\n"
        "3/1/2024 16:00:00,10,11,9,10,5\n"
        "2024-03-04T21:00:00+00:00,10,11,9,10.5,5\n"  # 16:00 New York
        "2024-03-06T02:00:00+00:00,10,11,9,11,5\n"  # 21:00 New York on the 5th
        "2024-03-06 09:31:00-05:00,10,12,9,11.5,5\n",
    )
    files = [{"path": "data/px.csv", "modality": "prices", "date_column": "when", "date_order": "mdy",
              "columns": {"o": "open", "h": "high", "l": "low", "c": "close", "v": "volume"}}]  # fmt: skip
    raw = load(tmp_path, files)
    assert raw.prices["date"].to_list() == [date(2024, 3, 1), date(2024, 3, 4), date(2024, 3, 5), date(2024, 3, 6)]
    assert raw.prices["close"].to_list() == [10.0, 10.5, 11.0, 11.5]
    assert raw.provenance["prices"] == "file:data/px.csv"


def test_yahoo_null_rows_are_dropped_and_blank_lines_ignored(tmp_path):
    write(
        tmp_path,
        "p.csv",
        PRICES.replace("2024-03-06,11.0,12.0,10.5,11.5,11.2,3000", "2024-03-06,null,null,null,null,null,null") + "\n",
    )
    raw = load(tmp_path, [{"path": "p.csv", "modality": "prices"}])
    assert raw.prices["date"].to_list() == [date(2024, 3, 4), date(2024, 3, 5), date(2024, 3, 7)]


def test_parquet_with_typed_columns(tmp_path):
    pl.DataFrame(
        {
            "date": [date(2024, 3, 4), date(2024, 3, 5)],
            "open": [1.0, 2.0],
            "high": [1.5, 2.5],
            "low": [0.5, 1.5],
            "close": [1.2, float("nan")],
            "volume": [10, 20],
        }
    ).write_parquet(tmp_path / "p.parquet")
    with pytest.raises(DataInputError, match="missing value"):
        load(tmp_path, [{"path": "p.parquet", "modality": "prices"}])
    pl.DataFrame(
        {"date": [date(2024, 3, 4)], "open": [1.0], "high": [1.5], "low": [0.5], "close": [1.2], "volume": [10]}
    ).write_parquet(tmp_path / "q.parquet")
    raw = load(tmp_path, [{"path": "q.parquet", "modality": "prices"}])
    assert raw.prices.row(0) == (date(2024, 3, 4), 1.0, 1.5, 0.5, 1.2, 10.0)


def test_market_wide_columns_join_prices(tmp_path):
    write(tmp_path, "prices.csv", PRICES)
    write(
        tmp_path,
        "market.csv",
        "Date,VIX Close,Gold ($/oz),Net Flows ($M),Implied Vol,Rating,Open\n"
        '3/4/2024,14.5,"$2,100.50","(1,234)",12.5%,Buy,99\n'
        '3/5/2024,15.0,"$2,110.00","$1,234",,Hold,99\n'
        '3/7/2024,15.5,"$2,120.00",.,13%,Buy,99\n',
    )
    files = [
        {"path": "prices.csv", "modality": "prices"},
        {"path": "market.csv", "modality": "market", "columns": {"VIX Close": "vix"}, "date_order": "mdy"},
    ]
    raw = load(tmp_path, files)
    p = raw.prices
    assert p.columns == [*PRICE_SCHEMA, "market__vix", "market__gold_oz", "market__net_flows_m", "market__implied_vol"]
    assert all(p.schema[c] == pl.Float64 for c in p.columns if c.startswith("market__"))
    assert p["market__vix"].to_list() == [14.5, 15.0, None, 15.5]  # 03-06 absent from the market file
    assert p["market__gold_oz"].to_list() == [2100.5, 2110.0, None, 2120.0]
    assert p["market__net_flows_m"].to_list() == [-1234.0, 1234.0, None, None]
    assert p["market__implied_vol"].to_list() == [0.125, None, None, 0.13]
    assert p["open"].to_list() == [10.0, 10.5, 11.0, 11.5]  # the prices file wins over market 'Open'
    assert raw.provenance == {"prices": "file:prices.csv", "market": "file:market.csv"}


def test_market_file_alone_supplies_prices(tmp_path):
    write(
        tmp_path,
        "m.csv",
        "Date,Open,High,Low,Close,Volume,SPX\n2024-03-04,1,2,0.5,1.5,100,5000\n2024-03-05,1,2,0.5,1.6,100,5010\n",
    )
    raw = load(tmp_path, [{"path": "m.csv", "modality": "market"}])
    assert raw.prices["close"].to_list() == [1.5, 1.6]
    assert raw.prices["market__spx"].to_list() == [5000.0, 5010.0]
    assert raw.provenance == {"prices": "file:m.csv", "market": "file:m.csv"}


def test_wide_market_csv_with_currency_columns(tmp_path):
    days = sessions(date(2014, 1, 2), date(2024, 12, 31))[:2500]
    rng = np.random.default_rng(0)
    data: dict[str, list] = {"Date": [d.isoformat() for d in days]}
    for c, lo, hi in (("Open", 14, 15), ("High", 20, 21), ("Low", 9, 10), ("Close", 14, 15), ("Volume", 10, 20)):
        data[c] = [f"{v:.4f}" for v in rng.uniform(lo, hi, len(days))]  # coherent OHLC
    vals = rng.normal(1000, 100, len(days))
    dollars, plain = [f"${v:,.2f}" for v in vals], [f"{v:.5f}" for v in vals]
    for k in range(265):  # rotated copies: formatting 660k cells would dominate the test
        base = dollars if k % 3 == 0 else plain
        data[f"Feature {k}"] = base[k:] + base[:k]
    pl.DataFrame(data).write_csv(tmp_path / "wide.csv")
    src = FilesSource.from_mapping(mapping(tmp_path, [{"path": "wide.csv", "modality": "market"}]))
    raw = src.load(days[0], days[-1])
    assert raw.prices.shape == (2500, 6 + 265)
    assert raw.prices["market__feature_0"][0] == pytest.approx(float(data["Feature 0"][0].strip("$").replace(",", "")))


def test_fred_dot_rows_dropped_and_daily_released_the_next_session(tmp_path):
    """A daily FRED value dated d is d's close or fixing, published after the equity close: it
    counts from the next session unless ``published`` says otherwise."""
    write(tmp_path, "fred_DGS10.csv", "DATE,DGS10\n2024-03-04,4.20\n2024-03-05,.\n2024-03-06,\n2024-03-07,4.10\n")
    raw = load(tmp_path, [{"path": "fred_DGS10.csv", "modality": "macro"}])
    r = raw.releases
    assert r.schema == pl.Schema(RELEASE_SCHEMA)
    assert r.rows() == [
        ("macro", "rate_10y", date(2024, 3, 4), date(2024, 3, 5), 4.20),  # DGS10 is the 10-year rate role
        ("macro", "rate_10y", date(2024, 3, 7), date(2024, 3, 8), 4.10),
    ]
    assert raw.provenance == {"macro": "file:fred_DGS10.csv"}
    same = load(tmp_path, [{"path": "fred_DGS10.csv", "modality": "macro", "published": "same_session"}])
    assert same.releases["released"].to_list() == [date(2024, 3, 4), date(2024, 3, 7)]


def test_monthly_release_lag_and_fred_period_start(tmp_path):
    write(tmp_path, "ends.csv", "date,unemployment\n2023-01-31,3.4\n2023-02-28,3.6\n2023-03-31,3.5\n")
    write(tmp_path, "CPIAUCSL.csv", "DATE,CPIAUCSL\n2023-01-01,299.17\n2023-02-01,300.84\n2023-03-01,301.84\n")
    files = [
        {"path": "ends.csv", "modality": "macro"},
        {"path": "CPIAUCSL.csv", "modality": "macro", "release_lag_days": 12},
    ]
    r = load(tmp_path, files).releases
    unemp = r.filter(pl.col("series") == "unemployment")
    assert unemp["released"].to_list() == [date(2023, 2, 14), date(2023, 3, 14), date(2023, 4, 14)]  # +14 default
    cpi = r.filter(pl.col("series") == "cpi")  # CPIAUCSL: the cpi role
    assert cpi["period_end"].to_list() == [date(2023, 1, 31), date(2023, 2, 28), date(2023, 3, 31)]
    assert cpi["released"].to_list() == [date(2023, 2, 12), date(2023, 3, 12), date(2023, 4, 12)]
    assert cpi["value"].to_list() == [299.17, 300.84, 301.84]


def test_weekly_and_quarterly_defaults(tmp_path):
    write(tmp_path, "ICSA.csv", "DATE,ICSA\n2024-01-06,202000\n2024-01-13,187000\n2024-01-20,214000\n")
    write(tmp_path, "GDP.csv", "DATE,GDP\n2023-01-01,26813.6\n2023-04-01,27063.0\n2023-07-01,27610.1\n")
    r = load(tmp_path, [{"path": "ICSA.csv", "modality": "macro"}, {"path": "GDP.csv", "modality": "macro"}]).releases
    assert r.filter(pl.col("series") == "icsa")["released"].to_list() == [
        date(2024, 1, 11),
        date(2024, 1, 18),
        date(2024, 1, 25),
    ]
    gdp = r.filter(pl.col("series") == "gdp")
    assert gdp["period_end"].to_list() == [date(2023, 3, 31), date(2023, 6, 30), date(2023, 9, 30)]
    assert gdp["released"].to_list() == [date(2023, 5, 15), date(2023, 8, 14), date(2023, 11, 14)]


def test_quarterly_fundamentals_use_filing_date_and_window(tmp_path):
    write(
        tmp_path,
        "fundamentals.csv",
        "ticker,period_end,filing_date,fiscal_period,revenue,eps\n"
        'ACME,2023-03-31,2023-05-04,Q1 FY2023,"$21,454",1.23\n'
        'ACME,2023-06-30,2023-08-02,Q2 FY2023,"$22,010",(0.12)\n'
        'ACME,2023-09-30,2023-11-01,Q3 FY2023,"$23,500.50",0.98\n'
        'ACME,2023-12-31,2024-02-07,Q4 FY2023,"$24,000",1.01\n',
    )
    files = [{"path": "fundamentals.csv", "modality": "fundamental"}]
    # auto: release column filing_date, date column period_end, numeric series only
    r = load(tmp_path, files, start=date(2023, 9, 1), end=date(2023, 12, 29)).releases
    assert sorted(set(r["series"])) == ["eps", "revenue"]
    rev = r.filter(pl.col("series") == "revenue")
    # earlier filings are history (two years back); Q4 is filed after the window's end
    # date-only filing dates count from the next session (published: next_session, the default)
    assert rev.rows() == [
        ("fundamental", "revenue", date(2023, 3, 31), date(2023, 5, 5), 21454.0),
        ("fundamental", "revenue", date(2023, 6, 30), date(2023, 8, 3), 22010.0),
        ("fundamental", "revenue", date(2023, 9, 30), date(2023, 11, 2), 23500.5),
    ]
    eps = r.filter(pl.col("series") == "eps")
    assert eps["value"].to_list() == [1.23, -0.12, 0.98]
    # explicit mapping with renamed series and a lag on top of the filing date
    files = [{"path": "fundamentals.csv", "modality": "fundamental", "date_column": "period_end",
              "release_column": "filing_date", "release_lag_days": 1, "columns": {"revenue": "Revenue (USD m)"}}]  # fmt: skip
    r = load(tmp_path, files).releases
    assert r["series"].unique().to_list() == ["revenue_usd_m"]
    assert r["released"].to_list()[0] == date(2023, 5, 8)  # filed 5/4 + 1 day = Fri 5/5, counts from Mon 5/8


def test_texts_tweets_and_headlines(tmp_path):
    write(
        tmp_path,
        "tweets.csv",
        "Datetime,Tweet Id,Text\n"
        "2024-03-05T21:30:00+00:00,1,after the close\n"
        "2024-03-05 09:31:00,2,naive is New York time\n"
        '2024-03-05 09:31:00-05:00,3,"with, a comma"\n'
        "2024-03-06T10:00:00Z,4,   \n",
    )
    write(tmp_path, "headlines.csv", "title,date\nACME beats estimates,2024-03-05\nACME misses,Mar 6 2024\n")
    files = [
        {"path": "tweets.csv", "modality": "texts", "source": "social"},
        {"path": "headlines.csv", "modality": "texts", "source": "news"},
    ]
    raw = load(tmp_path, files, start=date(2024, 3, 5), end=date(2024, 3, 8))
    t = raw.texts
    assert t.schema == pl.Schema(TEXT_SCHEMA)
    assert t.rows() == [
        (datetime(2024, 3, 5, 14, 31, tzinfo=UTC), "social", "naive is New York time"),
        (datetime(2024, 3, 5, 14, 31, tzinfo=UTC), "social", "with, a comma"),
        (datetime(2024, 3, 5, 21, 30, tzinfo=UTC), "social", "after the close"),
        # date-only headlines count from the next session (end of the day, 23:59:59 EST)
        (datetime(2024, 3, 6, 4, 59, 59, tzinfo=UTC), "news", "ACME beats estimates"),
        (datetime(2024, 3, 7, 4, 59, 59, tzinfo=UTC), "news", "ACME misses"),
    ]
    after_close = t.filter(pl.col("text") == "after the close")
    assert after_close.select(assign_session(pl.col("published_at")))["published_at"][0] == date(2024, 3, 6)
    assert raw.provenance == {"texts": "file:tweets.csv,file:headlines.csv"}
    # the tweet after the 5th's close counts for the 6th, so a window ending on the 5th drops it
    raw = load(tmp_path, files, start=date(2024, 3, 5), end=date(2024, 3, 5))
    assert "after the close" not in raw.texts["text"].to_list()
    assert "ACME beats estimates" not in raw.texts["text"].to_list()


def test_peers_long_and_wide(tmp_path):
    write(
        tmp_path,
        "long.csv",
        "date,ticker,close,volume\n2024-03-04,AMZN,175.1,100\n2024-03-04,MSFT,$415.5,200\n2024-03-05,AMZN,,\n",
    )
    write(
        tmp_path,
        "wide.csv",
        'Date,GOOG_Close,GOOG_Volume,META Close\n2024-03-04,133.3,"1,000",500.1\n2024-03-05,134.0,2000,\n',
    )
    raw = load(tmp_path, [{"path": "long.csv", "modality": "peers"}, {"path": "wide.csv", "modality": "peers"}])
    assert raw.peers.schema == pl.Schema(PEER_SCHEMA)
    assert raw.peers.rows() == [
        (date(2024, 3, 4), "AMZN", 175.1, 100.0),
        (date(2024, 3, 4), "GOOG", 133.3, 1000.0),
        (date(2024, 3, 4), "META", 500.1, None),
        (date(2024, 3, 4), "MSFT", 415.5, 200.0),
        (date(2024, 3, 5), "GOOG", 134.0, 2000.0),
    ]
    files = [{"path": "wide.csv", "modality": "peers", "columns": {"GOOG_Close": "GOOGL.close"}}]
    assert load(tmp_path, files).peers["ticker"].unique().to_list() == ["GOOGL"]


def test_toml_mapping(tmp_path):
    write(tmp_path, "prices.csv", PRICES)
    write(
        tmp_path,
        "map.toml",
        'ticker = "ACME"\n[[files]]\npath = "prices.csv"\nmodality = "prices"\ncolumns = { Close = "close" }\n',
    )
    raw = FilesSource.from_mapping(tmp_path / "map.toml").load(date(2024, 3, 4), date(2024, 3, 4))
    assert raw.prices["close"].to_list() == [10.5]


def test_example_data_set_loads():
    raw = FilesSource.from_mapping(EXAMPLE).load(date(2023, 3, 1), date(2023, 12, 29))
    assert isinstance(raw, RawData)  # construction validated the canonical schemas
    for frame in (raw.prices, raw.peers, raw.texts, raw.releases):
        assert frame.height > 0
    assert raw.prices["date"].min() >= date(2023, 3, 1) and raw.prices["date"].max() <= date(2023, 12, 29)
    # three of the ~21 daily columns are read as macro roles instead (vix, rate_2y, market_index)
    assert len([c for c in raw.prices.columns if c.startswith("market__")]) >= 17
    assert {"vix", "rate_2y", "rate_10y", "market_index", "cpi"} <= set(raw.releases["series"])
    assert set(raw.releases["modality"]) == {"macro", "fundamental", "sentiment"}
    assert set(raw.texts["source"]) == {"news", "social"}
    assert set(raw.provenance) == {"prices", "market", "peers", "texts", "macro", "fundamental", "sentiment"}


# --------------------------------------------------------------------------- bad input


def test_missing_required_column(tmp_path):
    write(tmp_path, "p.csv", "Date,Open,High,Low,Volume\n2024-03-04,1,2,0.5,10\n")
    err = raises(
        tmp_path,
        [{"path": "p.csv", "modality": "prices"}],
        "missing required column 'close'",
        "file=p.csv",
        "mapping.yaml files[0]",
    )
    assert err.column == "close"


def test_mapping_names_a_column_that_is_not_there(tmp_path):
    write(tmp_path, "prices.csv", PRICES)
    files = [{"path": "prices.csv", "modality": "prices", "columns": {"Last": "close"}}]
    err = raises(tmp_path, files, "'Last'", "mapping.yaml files[0] (prices.csv)", "file=prices.csv", "column=Last")
    assert err.file == "prices.csv"


def test_unparsable_date(tmp_path):
    write(tmp_path, "p.csv", PRICES.replace("2024-03-06,", "2024-13-06,"))
    err = raises(
        tmp_path, [{"path": "p.csv", "modality": "prices"}], "'2024-13-06'", "file=p.csv", "column=Date", "row=3"
    )
    assert (err.file, err.column, err.row) == ("p.csv", "Date", 3)


def test_unparsable_number(tmp_path):
    write(tmp_path, "p.csv", PRICES.replace("10.5,11.5,10.0", "10.5,n/a?,10.0"))
    err = raises(
        tmp_path, [{"path": "p.csv", "modality": "prices"}], "'n/a?'", "column=High", "row=2", "date=2024-03-05"
    )
    assert err.row == 2


def test_duplicate_date(tmp_path):
    write(tmp_path, "p.csv", PRICES.replace("2024-03-06,", "2024-03-05,"))
    err = raises(
        tmp_path, [{"path": "p.csv", "modality": "prices"}], "duplicate date 2024-03-05", "rows 2 and 3", "file=p.csv"
    )
    assert err.date == "2024-03-05"


def test_duplicate_date_in_market_file(tmp_path):
    write(tmp_path, "prices.csv", PRICES)
    write(tmp_path, "m.csv", "Date,VIX\n2024-03-04,1\n2024-03-05,2\n2024-03-05,3\n")
    files = [{"path": "prices.csv", "modality": "prices"}, {"path": "m.csv", "modality": "market"}]
    raises(tmp_path, files, "duplicate date 2024-03-05", "rows 2 and 3", "file=m.csv")


@pytest.mark.parametrize("bad_day, weekday", [("2024-07-04", "Thursday"), ("2024-03-09", "Saturday")])
def test_non_session_date(tmp_path, bad_day, weekday):
    write(tmp_path, "p.csv", PRICES.replace("2024-03-06,", f"{bad_day},"))
    err = raises(
        tmp_path,
        [{"path": "p.csv", "modality": "prices"}],
        f"{bad_day} ({weekday}) is not an NYSE trading session",
        "row=3",
        "file=p.csv",
    )
    assert err.date == bad_day


@pytest.mark.parametrize(
    "old, new, column, what",
    [
        ("10.5,11.5,10.0,", "10.5,11.5,-1.0,", "Low", "non-positive price -1.0"),
        ("10.5,11.5,10.0,", "0,11.5,10.0,", "Open", "non-positive price 0.0"),
        (",11.0,2000", ",11.0,-2000", "Volume", "negative volume -2000.0"),
    ],
)
def test_non_positive_price_or_negative_volume(tmp_path, old, new, column, what):
    write(tmp_path, "p.csv", PRICES.replace(old, new))
    raises(
        tmp_path,
        [{"path": "p.csv", "modality": "prices"}],
        what,
        f"column={column}",
        "row=2",
        "date=2024-03-05",
        "file=p.csv",
    )


@pytest.mark.parametrize(
    "old, new, column, what",
    [
        ("10.5,11.5,10.0,", "10.5,9.5,10.0,", "High", "high 9.5 is below low 10.0"),
        ("10.5,11.5,10.0,", "12.0,11.5,10.0,", "Open", "open 12.0 is outside [low 10.0, high 11.5]"),
        ('10.0,"$11.25"', '10.0,"$9.25"', "Close", "close 9.25 is outside [low 10.0, high 11.5]"),
    ],
)
def test_incoherent_ohlc_row(tmp_path, old, new, column, what):
    write(tmp_path, "p.csv", PRICES.replace(old, new))
    raises(
        tmp_path,
        [{"path": "p.csv", "modality": "prices"}],
        what,
        f"column={column}",
        "row=2",
        "date=2024-03-05",
        "file=p.csv",
    )


def test_negative_peer_price(tmp_path):
    write(tmp_path, "peers.csv", "date,ticker,close,volume\n2024-03-04,AMZN,175.1,100\n2024-03-05,AMZN,-1,100\n")
    raises(
        tmp_path,
        [{"path": "peers.csv", "modality": "peers"}],
        "non-positive price -1.0 for peer AMZN",
        "column=close",
        "row=2",
        "date=2024-03-05",
    )


@pytest.mark.parametrize(
    "content, what", [("", "empty (zero bytes)"), ("Date,Open,High,Low,Close,Volume\n", "header but no data rows")]
)
def test_empty_file(tmp_path, content, what):
    write(tmp_path, "p.csv", content)
    raises(tmp_path, [{"path": "p.csv", "modality": "prices"}], what, "file=p.csv")


def test_missing_partial_price_value(tmp_path):
    write(tmp_path, "p.csv", PRICES.replace("10.5,11.5,10.0,", "10.5,,10.0,"))
    raises(tmp_path, [{"path": "p.csv", "modality": "prices"}], "missing value", "column=High", "row=2")


def test_release_before_period_end(tmp_path):
    write(tmp_path, "f.csv", "period_end,filing_date,eps\n2023-03-31,2023-05-04,1\n2023-06-30,2023-06-01,2\n")
    raises(
        tmp_path,
        [{"path": "f.csv", "modality": "fundamental"}],
        "released 2023-06-01 before the period ends",
        "row=2",
        "column=filing_date",
    )


@pytest.mark.parametrize(
    "entry, parts",
    [
        ({"path": "prices.csv", "modality": "quotes"}, ["unknown modality 'quotes'", "files[0] (prices.csv)"]),
        ({"path": "nope.csv", "modality": "prices"}, ["files[0] (nope.csv)", "does not exist"]),
        ({"path": "prices.csv", "modality": "prices", "colums": {}}, ["files[0] (prices.csv)", "unknown key 'colums'"]),
        (
            {"path": "prices.csv", "modality": "prices", "source": "news"},
            ["key 'source' does not apply to modality 'prices'"],
        ),
        ({"path": "../prices.csv", "modality": "prices"}, ["files[0]", "escapes the mapping folder"]),
        ({"path": "/etc/hosts", "modality": "prices"}, ["files[0]", "escapes the mapping folder"]),
        ({"path": "tweets.csv", "modality": "texts"}, ["files[0] (tweets.csv)", "texts need source"]),
        ({"path": "prices.csv", "modality": "macro", "frequency": "hourly"}, ["frequency 'hourly'"]),
        ({"path": "prices.csv", "modality": "prices", "columns": {"Close": "last"}}, ["prices targets are"]),
        ({"modality": "prices"}, ["files[0]", "missing required key 'path'"]),
    ],
)
def test_wrong_mapping(tmp_path, entry, parts):
    (tmp_path / "sub").mkdir()
    write(tmp_path, "prices.csv", PRICES)
    write(tmp_path / "sub", "prices.csv", PRICES)
    write(tmp_path / "sub", "tweets.csv", "Datetime,Text\n2024-03-05,x\n")
    with pytest.raises(ConfigError) as info:
        FilesSource.from_mapping(mapping(tmp_path / "sub", [entry]))
    for part in ["mapping.yaml", *parts]:
        assert part in str(info.value), f"{part!r} not in {info.value}"


def test_wrong_mapping_top_level(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level key 'file'"):
        FilesSource.from_mapping(write(tmp_path, "m.yaml", "file: []\n"))
    with pytest.raises(ConfigError, match="non-empty list"):
        FilesSource.from_mapping(write(tmp_path, "m.yaml", "files: []\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        FilesSource.from_mapping(write(tmp_path, "m.yaml", "files: [\n"))


def test_ambiguous_date_column(tmp_path):
    write(tmp_path, "t.csv", "Date,Datetime,Text\n2024-03-05,2024-03-05 10:00,x\n")
    raises(
        tmp_path,
        [{"path": "t.csv", "modality": "texts", "source": "news"}],
        "ambiguous date column",
        "'Date', 'Datetime'",
        "set date_column",
        "mapping.yaml files[0] (t.csv)",
        "file=t.csv",
    )
    files = [{"path": "t.csv", "modality": "texts", "source": "news", "date_column": "Datetime"}]
    assert load(tmp_path, files).texts["published_at"].to_list() == [datetime(2024, 3, 5, 15, 0, tzinfo=UTC)]


def test_timed_filing_after_the_close_counts_from_the_next_session(tmp_path):
    write(
        tmp_path,
        "f.csv",
        "period_end,filing_date,eps\n"
        "2023-03-31,2023-05-04 16:05:00,1.0\n"  # after Thursday's close -> Friday
        "2023-06-30,2023-08-04T20:30:00Z,2.0\n"  # Friday 16:30 New York -> Monday
        "2023-09-30,2023-11-01 09:00:00,3.0\n",  # before the open -> same day
    )
    r = load(tmp_path, [{"path": "f.csv", "modality": "fundamental"}]).releases
    assert r["released"].to_list() == [date(2023, 5, 5), date(2023, 8, 7), date(2023, 11, 1)]


def test_release_window_keeps_history_and_the_value_in_force(tmp_path):
    write(tmp_path, "a.csv", "DATE,RATIO\n2018-01-01,1\n2019-01-01,2\n2020-01-01,3\n")  # annual
    write(tmp_path, "m.csv", "date,x\n2021-01-31,1\n2022-12-31,2\n2023-11-30,3\n2023-12-31,4\n")
    files = [{"path": "a.csv", "modality": "macro"}, {"path": "m.csv", "modality": "macro", "release_lag_days": 0}]
    r = load(tmp_path, files, start=date(2023, 6, 1), end=date(2023, 12, 15)).releases
    # annual: only the latest release before the window (2020, released 2021-03-31 after +90)
    assert r.filter(pl.col("series") == "ratio").select("period_end", "released", "value").rows() == [
        (date(2020, 12, 31), date(2021, 3, 31), 3.0)
    ]
    # monthly: two years of history, not 2021, and nothing released after the end
    assert r.filter(pl.col("series") == "x")["period_end"].to_list() == [date(2022, 12, 31), date(2023, 11, 30)]


# --------------------------------------------------------------------------- issue 17: real exports

# yfinance ETF export: OHLCV plus Dividends / Stock Splits / Capital Gains (mostly zeros)
ETF = """Date,Open,High,Low,Close,Volume,Dividends,Stock Splits,Capital Gains
2024-03-04 00:00:00-05:00,{o},{h},{lo},{c},1000,0.0,0.0,0.0
2024-03-05 00:00:00-05:00,{o},{h},{lo},{c},2000,0.15,0.0,0.0
2024-03-06 00:00:00-05:00,{o},{h},{lo},{c},3000,0.0,0.0,0.0
2024-03-07 00:00:00-05:00,{o},{h},{lo},{c},4000,0.0,0.0,0.0
"""


def etf(folder: Path, name: str, base: float) -> None:
    write(folder, name, ETF.format(o=base, h=base + 1, lo=base - 1, c=base + 0.5))


def test_two_yfinance_etf_market_files_drop_the_shared_extra_columns(tmp_path):
    write(tmp_path, "prices.csv", PRICES)
    etf(tmp_path, "XLK.csv", 200.0)
    etf(tmp_path, "XLF.csv", 40.0)
    plain = [
        {"path": "prices.csv", "modality": "prices"},
        {"path": "XLK.csv", "modality": "market", "columns": {"Close": "xlk"}},
        {"path": "XLF.csv", "modality": "market", "columns": {"Close": "xlf"}},
    ]
    raises(tmp_path, plain, "market column market__dividends comes from both XLK.csv and XLF.csv")
    junk = ["Dividends", "stock splits", "capital_gains"]  # names match case-insensitively or sanitised
    files = [plain[0], {**plain[1], "drop": junk}, {**plain[2], "drop": list(junk)}]
    src = FilesSource.from_mapping(mapping(tmp_path, plain[:2]))
    src.load(date(2024, 3, 4), date(2024, 3, 7))
    assert [w for w in src.warnings if "'Stock Splits' holds 0.0 in every row" in w and "drop: [Stock Splits]" in w]
    assert not [w for w in src.warnings if "'Dividends'" in w]
    raw = load(tmp_path, files)
    assert raw.prices.columns == ["date", *("open", "high", "low", "close", "volume"), "market__xlk", "market__xlf"]
    assert raw.prices["market__xlk"].to_list() == [200.5] * 4
    # keep: names after the rename; only the kept columns become features
    files = [plain[0], {**plain[1], "keep": ["xlk"]}, {**plain[2], "keep": ["XLF"]}]
    assert load(tmp_path, files).prices.columns[-2:] == ["market__xlk", "market__xlf"]
    # columns as a list is keep
    write(
        tmp_path, "wide.csv", "Date,SPX Close,Put/Call Ratio,Constant\n2024-03-04,5100,0.8,1\n2024-03-05,5110,0.9,1\n"
    )
    files = [plain[0], {"path": "wide.csv", "modality": "market", "columns": ["Put/Call Ratio"]}]
    assert load(tmp_path, files).prices.columns[-1:] == ["market__put_call_ratio"]


def test_keep_drop_unknown_column_is_an_error_naming_file_and_columns(tmp_path):
    write(tmp_path, "prices.csv", PRICES)
    etf(tmp_path, "XLK.csv", 200.0)
    base = {"path": "XLK.csv", "modality": "market", "columns": {"Close": "xlk"}}
    err = raises(
        tmp_path,
        [{"path": "prices.csv", "modality": "prices"}, {**base, "drop": ["Dividend"]}],
        "drop: 'Dividend' is not a column of the file",
        "'Dividends'",
        "'Stock Splits'",
        "'xlk'",
        "XLK.csv",
    )
    assert err.file == "XLK.csv"
    # a source name that was renamed is not the name after the rename
    raises(
        tmp_path,
        [{"path": "prices.csv", "modality": "prices"}, {**base, "keep": ["Close"]}],
        "keep: 'Close' is not a column of the file",
    )
    write(tmp_path, "DGS.csv", "DATE,DGS2,DGS10\n2024-03-04,4.5,4.2\n2024-03-05,4.6,4.3\n")
    raises(
        tmp_path, [{"path": "DGS.csv", "modality": "macro", "keep": ["DGS30"]}], "keep: 'DGS30'", "'DGS2'", "DGS.csv"
    )
    raises(
        tmp_path,
        [{"path": "DGS.csv", "modality": "macro", "keep": ["DGS2"], "drop": ["DGS2"]}],
        "both kept and dropped",
        exc=ConfigError,
    )
    raises(
        tmp_path,
        [{"path": "DGS.csv", "modality": "macro", "columns": ["DGS2"], "keep": ["DGS10"]}],
        "give the columns to keep once",
        exc=ConfigError,
    )
    r = load(tmp_path, [{"path": "DGS.csv", "modality": "macro", "drop": ["dgs2"]}]).releases
    assert set(r["series"]) == {"rate_10y"}


def test_one_peer_per_file_with_ticker_key(tmp_path):
    for name, base in (("AMZN.csv", 175.0), ("MSFT.csv", 415.0)):  # Yahoo OHLCV, no ticker column
        write(
            tmp_path,
            name,
            "Date,Open,High,Low,Close,Adj Close,Volume\n"
            f"2024-03-04,{base},{base + 2},{base - 2},{base + 1},{base},100\n"
            "2024-03-05,null,null,null,null,null,null\n"
            f"2024-03-06,{base},{base + 2},{base - 2},{base - 1},{base},200\n",
        )
    files = [
        {"path": "AMZN.csv", "modality": "peers", "ticker": "AMZN"},
        {"path": "MSFT.csv", "modality": "peers", "ticker": "MSFT"},
    ]
    assert load(tmp_path, files).peers.rows() == [
        (date(2024, 3, 4), "AMZN", 176.0, 100.0),
        (date(2024, 3, 4), "MSFT", 416.0, 100.0),
        (date(2024, 3, 6), "AMZN", 174.0, 200.0),
        (date(2024, 3, 6), "MSFT", 414.0, 200.0),
    ]
    # Adj Close when mapped; the same ticker twice is named
    files[1] = {"path": "MSFT.csv", "modality": "peers", "ticker": "MSFT", "columns": {"Adj Close": "close"}}
    assert load(tmp_path, files).peers.filter(pl.col("ticker") == "MSFT")["close"].to_list() == [415.0, 415.0]
    files[1] = {"path": "MSFT.csv", "modality": "peers", "ticker": "AMZN"}
    raises(tmp_path, files, "peer AMZN on 2024-03-04 appears in AMZN.csv and MSFT.csv")
    raises(
        tmp_path,
        [{"path": "AMZN.csv", "modality": "peers", "ticker": "AMZN", "ticker_column": "t"}],
        "exclude each other",
        exc=ConfigError,
    )
    raises(
        tmp_path,
        [{"path": "AMZN.csv", "modality": "prices", "ticker": "AMZN"}],
        "key 'ticker' does not apply to modality 'prices'",
        exc=ConfigError,
    )


def test_fred_ids_and_yahoo_names_get_their_roles(tmp_path):
    fred = {"VIXCLS": "14.1", "DGS2": "4.55", "DGS10": "4.20", "T10Y2Y": "-0.35", "BAA": "5.9", "AAA": "5.1"}
    for sid, v in fred.items():
        write(tmp_path, f"fred_{sid}.csv", f"DATE,{sid}\n2024-03-04,{v}\n2024-03-05,.\n2024-03-06,{v}\n")
    etf(tmp_path, "XLK.csv", 200.0)  # yfinance, by file name: the sector ETF, its Close
    write(
        tmp_path,
        "spx.csv",
        "Date,Open,High,Low,Close,Volume\n2024-03-04,5100,5120,5090,5110,1\n2024-03-05,5100,5120,5090,5110,1\n",
    )
    write(tmp_path, "wide.csv", "Date,VIX Close,US2Y,Copper\n2024-03-04,14.1,4.55,3.9\n2024-03-05,14.2,4.56,3.8\n")
    files = [{"path": f"fred_{sid}.csv", "modality": "macro"} for sid in fred]
    files += [
        {"path": "XLK.csv", "modality": "macro"},
        {"path": "spx.csv", "modality": "macro", "role": "market_index"},
    ]
    r = load(tmp_path, files).releases
    assert sorted(set(r["series"])) == [
        "aaa_yield",
        "baa_yield",
        "market_index",
        "rate_10y",
        "rate_2y",
        "sector_etf",
        "term_spread",
        "vix",
    ]
    assert r.filter(pl.col("series") == "sector_etf")["value"].to_list() == [200.5] * 4
    assert r.filter(pl.col("series") == "market_index")["value"].to_list() == [5110.0] * 2
    etf(tmp_path, "^GSPC.csv", 5100.0)  # a yfinance file named by its ticker
    r = load(tmp_path, [{"path": "^GSPC.csv", "modality": "macro", "drop": ["Dividends"]}]).releases
    assert set(r["series"]) == {"market_index"} and r["value"].to_list() == [5100.5] * 4
    # per-column roles (names after renames); other columns keep their sanitised names
    r = load(
        tmp_path, [{"path": "wide.csv", "modality": "macro", "roles": {"VIX Close": "vix", "us2y": "rate_2y"}}]
    ).releases
    assert sorted(set(r["series"])) == ["copper", "rate_2y", "vix"]
    # an explicit rename wins over the table
    r = load(tmp_path, [{"path": "fred_VIXCLS.csv", "modality": "macro", "columns": {"VIXCLS": "cboe_vix"}}]).releases
    assert set(r["series"]) == {"cboe_vix"}
    raises(tmp_path, [{"path": "wide.csv", "modality": "macro", "role": "vix"}], "role 'vix' makes the file one series")
    raises(
        tmp_path,
        [{"path": "wide.csv", "modality": "macro", "role": "fear"}],
        "role 'fear' is not one of",
        exc=ConfigError,
    )
    raises(
        tmp_path, [{"path": "wide.csv", "modality": "macro", "roles": {"Gold": "vix"}}], "roles: 'Gold' is not a column"
    )
    raises(
        tmp_path,
        [
            {"path": "fred_VIXCLS.csv", "modality": "macro"},
            {"path": "wide.csv", "modality": "macro", "roles": {"VIX Close": "vix"}},
        ],
        "macro series 'vix' comes from both",
    )


def test_roles_land_in_their_tiles_and_feed_the_cross_features():
    from finnex_ml.encoding.layout import DEFAULT_ASSIGNMENT, resolve_assignment
    from finnex_ml.features import _cross_features

    macro = {"vix", "rate_2y", "rate_10y", "term_spread", "aaa_yield", "baa_yield", "market_index", "sector_etf"}
    crossed = {e.meta.output_name() for e in _cross_features(macro, set())}
    assert {
        "macro__rvol_minus_vix",
        "macro__credit_spread",
        "macro__beta_sector_etf_63",
        "macro__beta_market_index_63",
    } <= crossed
    assert "macro__term_spread" not in crossed  # the T10Y2Y series is the term spread itself
    names = [
        "macro__vix",
        "macro__vix_z63",
        "macro__term_spread",
        "macro__term_spread_chg5",
        "macro__rate_10y",
        "macro__sector_etf",
        "macro__market_index_chg21",
        "macro__cpi",
        "macro__baa_yield",
    ]
    per_tile, _ = resolve_assignment(names, DEFAULT_ASSIGNMENT)
    tile = {f: t for t, fs in per_tile.items() for f in fs}
    assert tile["macro__vix"] == tile["macro__vix_z63"] == "macro.red"
    assert {tile[n] for n in names[2:7]} == {"macro.green"}
    assert tile["macro__cpi"] == tile["macro__baa_yield"] == "macro.blue"


def test_date_only_filing_and_headline_count_from_the_next_session(tmp_path):
    # a 10-Q filed after the close on Tue 2024-03-05, the export keeps only the date
    write(tmp_path, "fund.csv", 'period_end,filing_date,revenue\n2023-12-31,2024-03-05,"$21,454"\n')
    write(tmp_path, "news.csv", "title,date\nACME 10-Q shows a loss,2024-03-05\n")
    files = [
        {"path": "fund.csv", "modality": "fundamental"},
        {"path": "news.csv", "modality": "texts", "source": "news"},
    ]
    on_the_day = load(tmp_path, files, start=date(2024, 3, 5), end=date(2024, 3, 5))
    assert on_the_day.releases.height == 0 and on_the_day.texts.height == 0
    nxt = load(tmp_path, files, start=date(2024, 3, 6), end=date(2024, 3, 6))
    assert nxt.releases["released"].to_list() == [date(2024, 3, 6)]
    assert nxt.texts.select(assign_session(pl.col("published_at")))["published_at"].to_list() == [date(2024, 3, 6)]
    # the features of 3/5 never see them: the point-in-time join is on released / session
    # published: same_session restores the old reading (the filing date, the headline at noon)
    same = [{**f, "published": "same_session"} for f in files]
    old = load(tmp_path, same, start=date(2024, 3, 5), end=date(2024, 3, 5))
    assert old.releases["released"].to_list() == [date(2024, 3, 5)]
    assert old.texts["published_at"].to_list() == [datetime(2024, 3, 5, 17, 0, tzinfo=UTC)]
    # a time of day in New York: before the close the same session, after it the next
    morning = [{**f, "published": "09:00"} for f in files]
    r = load(tmp_path, morning, start=date(2024, 3, 5), end=date(2024, 3, 5))
    assert r.releases["released"].to_list() == [date(2024, 3, 5)] and r.texts.height == 1
    evening = [{**f, "published": "16:30"} for f in files]
    assert load(tmp_path, evening, start=date(2024, 3, 5), end=date(2024, 3, 5)).releases.height == 0
    # a filing with a time is read by its time whatever the policy
    write(tmp_path, "fund.csv", 'period_end,filing_date,revenue\n2023-12-31,2024-03-05 08:00,"$21,454"\n')
    assert load(tmp_path, files[:1], start=date(2024, 3, 5), end=date(2024, 3, 5)).releases.height == 1


def test_daily_macro_published_after_the_close_counts_next_session(tmp_path):
    write(tmp_path, "VIXCLS.csv", "DATE,VIXCLS\n2024-03-07,14.4\n2024-03-08,14.7\n")
    r = load(tmp_path, [{"path": "VIXCLS.csv", "modality": "macro"}]).releases  # default for daily: next session
    assert r["released"].to_list() == [date(2024, 3, 8), date(2024, 3, 11)]
    r = load(tmp_path, [{"path": "VIXCLS.csv", "modality": "macro", "published": "same_session"}]).releases
    assert r["released"].to_list() == [date(2024, 3, 7), date(2024, 3, 8)]
    r = load(tmp_path, [{"path": "VIXCLS.csv", "modality": "macro", "published": "16:15"}]).releases
    assert r.select("period_end", "released").rows() == [
        (date(2024, 3, 7), date(2024, 3, 8)),
        (date(2024, 3, 8), date(2024, 3, 11)),
    ]  # Fri -> Mon
    # weekly survey and monthly macro dates are date-only too: sentiment defaults to next session
    write(tmp_path, "aaii.csv", "Reported Date,Bullish\n2024-03-07,45.0%\n2024-03-14,47.0%\n")
    r = load(tmp_path, [{"path": "aaii.csv", "modality": "sentiment", "release_lag_days": 0}]).releases
    assert r["released"].to_list() == [date(2024, 3, 8), date(2024, 3, 15)]


@pytest.mark.parametrize(
    "value, part",
    [(990, "quote a time of day"), ("tomorrow", "'tomorrow' is not one of"), ("25:00", "'25:00' is not one of")],
)
def test_published_bad_values(tmp_path, value, part):
    write(tmp_path, "news.csv", "title,date\nx,2024-03-05\n")
    raises(
        tmp_path,
        [{"path": "news.csv", "modality": "texts", "source": "news", "published": value}],
        part,
        exc=ConfigError,
    )


def test_published_time_in_the_spring_forward_gap_and_weekend_dates(tmp_path):
    write(tmp_path, "news.csv", "title,date\ngap,2024-03-10\nsaturday,2024-03-09\n")
    files = [{"path": "news.csv", "modality": "texts", "source": "news", "published": "02:30"}]
    t = load(tmp_path, files, start=date(2024, 3, 11), end=date(2024, 3, 11)).texts
    assert t["published_at"].to_list() == [
        datetime(2024, 3, 9, 7, 30, tzinfo=UTC),
        datetime(2024, 3, 10, 7, 30, tzinfo=UTC),
    ]
    files[0]["published"] = "next_session"  # a weekend date counts from Monday either way
    assert load(tmp_path, files, start=date(2024, 3, 11), end=date(2024, 3, 11)).texts.height == 2


def test_blank_market_cells_carry_the_last_value_for_a_few_sessions(tmp_path):
    """A blank cell in a market-wide export carries the last value known at t forward for up to
    MARKET_FILL_SESSIONS sessions (never a later value); a longer gap leaves the feature null."""
    from finnex_ml import calendar, pipeline
    from finnex_ml.features import MARKET_FILL_SESSIONS

    days = calendar.sessions(date(2024, 1, 2), date(2024, 3, 28))
    rows = ["Date,Open,High,Low,Close,Volume"] + [f"{d},100,101,99,100.5,1000" for d in days]
    write(tmp_path, "prices.csv", "\n".join(rows) + "\n")
    breadth = {d: float(i) for i, d in enumerate(days)}
    blank_short = set(days[20:22])  # 2 sessions: carried
    blank_long = set(days[40 : 40 + MARKET_FILL_SESSIONS + 2])  # longer than the limit
    cells = ["Date,Breadth"] + [f"{d},{'' if d in blank_short | blank_long else breadth[d]}" for d in days]
    write(tmp_path, "market.csv", "\n".join(cells) + "\n")
    src = FilesSource.from_mapping(
        mapping(tmp_path, [{"path": "prices.csv", "modality": "prices"}, {"path": "market.csv", "modality": "market"}])
    )
    table = pipeline.daily_features_from_snapshots(pipeline.modality_snapshots(src, days[10:])[0])
    got = dict(zip(table["date"].to_list(), table["market__breadth"].to_list()))
    assert got[days[20]] == got[days[21]] == breadth[days[19]]  # the last value before the gap
    assert got[days[22]] == breadth[days[22]]
    gap = sorted(blank_long)
    assert [got[d] for d in gap[:MARKET_FILL_SESSIONS]] == [breadth[days[39]]] * MARKET_FILL_SESSIONS
    assert all(got[d] is None for d in gap[MARKET_FILL_SESSIONS:])
