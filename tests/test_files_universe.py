"""The ``files`` universe: members and listing spans, a per-ticker round trip against the
single-stock ``files`` source, every bad input's error or warning, and the example mapping
through ``panel_features``."""

from __future__ import annotations

import csv
import shutil
from datetime import date
from pathlib import Path

import polars as pl
import pytest
import yaml

from finnex_ml import calendar, panel
from finnex_ml.data.files import FilesSource
from finnex_ml.data.files_universe import FilesUniverse
from finnex_ml.data.universe import DEFAULT_UNIVERSE_RANGE, MEMBER_SCHEMA, UNIVERSE_KINDS, universe_source
from finnex_ml.errors import ConfigError, DataInputError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_DIR = REPO / "examples" / "files_universe"
EXAMPLE = EXAMPLE_DIR / "mapping.yaml"
MARCH = calendar.sessions(date(2024, 3, 1), date(2024, 3, 28))  # 20 sessions; Good Friday is 2024-03-29


@pytest.fixture(scope="module")
def example() -> FilesUniverse:
    uni = universe_source("files", mapping_path=EXAMPLE)
    assert isinstance(uni, FilesUniverse)
    return uni


# --------------------------------------------------------------------------- helpers


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def price_rows(days: list[date], base: float = 10.0, ticker: str | None = None) -> list[str]:
    lead = f"{ticker}," if ticker else ""
    return [
        f"{lead}{d.isoformat()},{base + i * 0.1:.2f},{base + i * 0.1 + 1:.2f},{base + i * 0.1 - 1:.2f},"
        f"{base + i * 0.1 + 0.5:.2f},{1000 + i}"
        for i, d in enumerate(days)
    ]


def per_ticker(folder: Path, ticker: str, days: list[date], base: float = 10.0) -> None:
    write(
        folder, f"prices/{ticker}.csv", "\n".join(["Date,Open,High,Low,Close,Volume", *price_rows(days, base)]) + "\n"
    )


def long_prices(folder: Path, name: str, tickers: dict[str, list[date]], extra: list[str] = ()) -> None:
    rows = [r for tk, days in tickers.items() for r in price_rows(days, 20.0, tk)]
    write(folder, name, "\n".join(["Symbol,Date,Open,High,Low,Close,Volume", *rows, *extra]) + "\n")


def mapping(folder: Path, files: list[dict], **universe) -> Path:
    doc = {"universe": universe, "files": files} if universe else {"files": files}
    return write(folder, "mapping.yaml", yaml.safe_dump(doc, sort_keys=False))


GLOB = {"path": "prices/*.csv", "modality": "prices"}
LONG = {"path": "panel.csv", "modality": "prices", "ticker_column": "Symbol"}


def error(path: Path, *parts: str, exc: type[Exception] = DataInputError, ticker: str | None = None) -> str:
    with pytest.raises(exc) as info:
        uni = FilesUniverse.from_mapping(path)
        uni.members()
        if ticker:
            uni.load_ticker(ticker, MARCH[0], MARCH[-1])
    message = str(info.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# --------------------------------------------------------------------------- the example


def test_registered_kind_and_range():
    assert "files" in UNIVERSE_KINDS and set(DEFAULT_UNIVERSE_RANGE) == set(UNIVERSE_KINDS)
    lo, hi = (date.fromisoformat(d) for d in DEFAULT_UNIVERSE_RANGE["files"])
    members = FilesUniverse.from_mapping(EXAMPLE).members()
    # the demo computes features from LOOKBACK (307) sessions before the range: the example's first price
    assert (calendar.sessions_back(lo, 307), hi) == (members["first"].min(), members["last"].max())
    with pytest.raises(ConfigError, match="mapping_path"):
        universe_source("files")
    with pytest.raises(ConfigError, match="files"):
        universe_source("crypto")


def test_example_members_spans_sectors_and_gap(example):
    m = example.members()
    assert m.schema == pl.Schema(MEMBER_SCHEMA)
    assert m["ticker"].to_list() == ["ALFA", "BRVO", "CHRL", "DLTA", "ECHO", "FXTR"]
    spans = {r["ticker"]: (r["first"], r["last"]) for r in m.iter_rows(named=True)}
    assert spans["FXTR"] == (date(2023, 5, 26), date(2024, 9, 4))  # listed mid-range: no error
    assert all(spans[t] == (date(2023, 1, 3), date(2024, 9, 4)) for t in ("ALFA", "BRVO", "CHRL", "DLTA", "ECHO"))
    assert dict(zip(m["ticker"], m["sector"]))["CHRL"] == "Energy"
    gap = [w for w in example.warnings if "ticker DLTA" in w]
    assert len(gap) == 1 and "3 NYSE session(s)" in gap[0] and "first gap: 2023-02-01" in gap[0]
    assert "file=prices/DLTA.csv" in gap[0]
    dlta = example.load_ticker("DLTA", date(2023, 1, 30), date(2023, 2, 10)).prices["date"].to_list()
    assert not {date(2023, 2, 1), date(2023, 2, 2), date(2023, 2, 3)} & set(dlta)
    assert len(dlta) == 10 - 3  # absent on the halt, nothing imputed
    fxtr = example.load_ticker("FXTR", date(2023, 5, 1), date(2023, 6, 15)).prices
    assert fxtr["date"].min() == date(2023, 5, 26)
    with pytest.raises(DataInputError, match=r"'NOPE'.*ALFA"):
        example.load_ticker("NOPE", date(2024, 1, 2), date(2024, 1, 5))
    with pytest.raises(ValueError, match="planted"):
        example.oracle_scores(date(2024, 1, 2), date(2024, 1, 5), (1,))


def _subset(src: Path, dst: Path, ticker: str) -> None:
    with open(src, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    col = rows[0].index("ticker")
    with open(dst, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh, lineterminator="\n").writerows([rows[0], *[r for r in rows[1:] if r[col] == ticker]])


@pytest.mark.parametrize("ticker", ["ALFA", "FXTR"])
def test_load_ticker_equals_single_stock_files_source(example, tmp_path, ticker):
    """Round trip: the universe's ticker == a single-stock mapping of that ticker's rows."""
    shutil.copy(EXAMPLE_DIR / "prices" / f"{ticker}.csv", tmp_path / "prices.csv")
    for name in ("fred_DGS10.csv", "fred_VIXCLS.csv"):
        shutil.copy(EXAMPLE_DIR / name, tmp_path / name)
    _subset(EXAMPLE_DIR / "news.csv", tmp_path / "news.csv", ticker)
    _subset(EXAMPLE_DIR / "fundamentals.csv", tmp_path / "fundamentals.csv", ticker)
    doc = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    files = []
    for entry in doc["files"]:
        entry = {k: v for k, v in entry.items() if k not in ("ticker_column", "ticker_from")}
        if entry["modality"] == "prices":
            entry["path"] = "prices.csv"
        files.append(entry)
    single = FilesSource.from_mapping(write(tmp_path, "single.yaml", yaml.safe_dump({"files": files})))
    for start, end in ((date(2023, 6, 1), date(2024, 9, 4)), (date(2024, 2, 1), date(2024, 2, 29))):
        a, b = example.load_ticker(ticker, start, end), single.load(start, end)
        for name in ("prices", "peers", "texts", "releases"):
            assert getattr(a, name).equals(getattr(b, name)), (ticker, name, start)
        assert a.texts.height and a.releases.filter(pl.col("modality") == "fundamental").height
        assert {k: v for k, v in a.provenance.items() if k != "peers"} == {
            k: v.replace("prices.csv", f"prices/{ticker}.csv") for k, v in b.provenance.items()
        }


def test_example_through_panel_features(example):
    asof = calendar.sessions(date(2024, 8, 28), date(2024, 9, 4))
    assert len(asof) == 5
    prices, features = panel.panel_features(example, asof)
    assert prices.height == features.height == 5 * 6
    assert features.select("date", "ticker").equals(prices.select("date", "ticker"))
    assert "peer__xs_sector_rel_ret_1d" in features.columns
    assert features["price__logret_1d"].null_count() == 0 and features["macro__vix"].null_count() == 0
    # listing and gap: only tickers with a price that day get a row
    days = [date(2023, 2, 1), date(2023, 2, 3), date(2023, 2, 6), date(2023, 5, 25), date(2023, 5, 26)]
    prices, features = panel.panel_features(example, days)
    have = {d: set(features.filter(pl.col("date") == d)["ticker"]) for d in days}
    assert have == {
        date(2023, 2, 1): {"ALFA", "BRVO", "CHRL", "ECHO"},  # DLTA halted, FXTR not listed yet
        date(2023, 2, 3): {"ALFA", "BRVO", "CHRL", "ECHO"},
        date(2023, 2, 6): {"ALFA", "BRVO", "CHRL", "DLTA", "ECHO"},
        date(2023, 5, 25): {"ALFA", "BRVO", "CHRL", "DLTA", "ECHO"},
        date(2023, 5, 26): {"ALFA", "BRVO", "CHRL", "DLTA", "ECHO", "FXTR"},  # its first price
    }
    assert set(prices.select("date", "ticker").iter_rows()) == set(features.select("date", "ticker").iter_rows())


# --------------------------------------------------------------------------- bad input


def test_duplicate_ticker_date_names_file_ticker_date_rows(tmp_path):
    long_prices(tmp_path, "panel.csv", {"AAA": MARCH, "BBB": MARCH}, extra=price_rows([MARCH[3]], 30.0, "BBB"))
    error(
        mapping(tmp_path, [LONG]),
        "ticker BBB",
        "duplicate date 2024-03-06",
        "rows 24 and 41",
        "file=panel.csv",
        "date=2024-03-06",
    )


def test_duplicate_in_one_ticker_file(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    per_ticker(tmp_path, "BBB", [*MARCH[:5], MARCH[4], *MARCH[5:]])
    error(mapping(tmp_path, [GLOB]), "ticker BBB", "duplicate date 2024-03-07", "file=prices/BBB.csv", "row=6")


def test_gap_is_allowed_and_warned(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    per_ticker(tmp_path, "BBB", MARCH[:4] + MARCH[6:10] + MARCH[11:])
    uni = FilesUniverse.from_mapping(mapping(tmp_path, [GLOB]))
    m = uni.members()
    assert m.row(1) == ("BBB", "", MARCH[0], MARCH[-1])
    (note,) = [w for w in uni.warnings if "ticker BBB" in w]
    assert "3 NYSE session(s)" in note and f"first gap: {MARCH[4]}" in note and "nothing is imputed" in note
    got = uni.load_ticker("BBB", MARCH[0], MARCH[-1]).prices["date"].to_list()
    assert got == MARCH[:4] + MARCH[6:10] + MARCH[11:]
    assert panel.ticker_sessions(uni, "BBB", MARCH[0], MARCH[-1]) == got


def test_listed_mid_range(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    per_ticker(tmp_path, "NEW", MARCH[8:])
    uni = FilesUniverse.from_mapping(mapping(tmp_path, [GLOB]))
    assert uni.members().filter(pl.col("ticker") == "NEW")["first"].item() == MARCH[8]
    assert not uni.warnings
    assert uni.load_ticker("NEW", MARCH[0], MARCH[-1]).prices["date"].min() == MARCH[8]


def test_a_file_replaced_on_disk_is_read_again(tmp_path):
    # the Dagster resource keeps one instance for a whole run (and the UI's for longer)
    per_ticker(tmp_path, "AAA", MARCH)
    per_ticker(tmp_path, "BBB", MARCH)
    uni = FilesUniverse.from_mapping(mapping(tmp_path, [GLOB]))
    assert uni.members()["last"].to_list() == [MARCH[-1], MARCH[-1]]
    assert uni.members() is uni.members()  # unchanged files: parsed once
    per_ticker(tmp_path, "BBB", MARCH[:12], base=30.0)  # a shorter export replaces the file
    assert uni.members()["last"].to_list() == [MARCH[-1], MARCH[11]]
    closes = uni.load_ticker("BBB", MARCH[0], MARCH[-1]).prices["close"]
    assert closes.len() == 12 and closes[0] == pytest.approx(30.5)


@pytest.mark.parametrize(
    ("odd", "what"), [(date(2024, 3, 29), "Friday"), (date(2024, 3, 9), "Saturday"), (date(2024, 1, 15), "Monday")]
)
def test_non_session_dates_are_errors_with_a_hint(tmp_path, odd, what):
    per_ticker(tmp_path, "AAA", MARCH)
    per_ticker(tmp_path, "BBB", sorted([*MARCH, odd]))
    error(
        mapping(tmp_path, [GLOB]),
        "ticker BBB",
        f"{odd} ({what}) is not an NYSE trading session",
        "NYSE calendar",
        "file=prices/BBB.csv",
        f"date={odd}",
    )


def test_non_session_in_a_long_file(tmp_path):
    long_prices(tmp_path, "panel.csv", {"AAA": MARCH, "BBB": [*MARCH, date(2024, 3, 29)]})
    error(mapping(tmp_path, [LONG]), "ticker BBB", "2024-03-29 (Friday)", "file=panel.csv", "row=41", "date=2024-03-29")


NEWS = "published_at,ticker,headline\n2024-03-05T15:00:00Z,AAA,AAA up\n2024-03-06T15:00:00Z,ZZZ,who\n"
NEWS_ENTRY = {"path": "news.csv", "modality": "texts", "source": "news", "ticker_column": "ticker"}


def test_unknown_ticker_in_texts_is_an_error(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    per_ticker(tmp_path, "BBB", MARCH)
    write(tmp_path, "news.csv", NEWS)
    error(
        mapping(tmp_path, [GLOB, NEWS_ENTRY]),
        "ticker ZZZ has no prices",
        "first at row 2",
        "known tickers: AAA, BBB",
        "unknown_tickers: ignore",
        "file=news.csv",
        "row=2",
        "date=2024-03-06T15:00:00Z",
    )


def test_unknown_ticker_ignored_on_request(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    write(tmp_path, "news.csv", NEWS)
    uni = FilesUniverse.from_mapping(mapping(tmp_path, [GLOB, NEWS_ENTRY], unknown_tickers="ignore"))
    assert uni.members()["ticker"].to_list() == ["AAA"]
    assert any("ticker ZZZ" in w and "1 row(s) are dropped" in w and "file=news.csv" in w for w in uni.warnings)
    assert uni.load_ticker("AAA", MARCH[0], MARCH[-1]).texts["text"].to_list() == ["AAA up"]


def test_unknown_ticker_in_fundamentals_suggests_the_case(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    write(
        tmp_path,
        "fund.csv",
        "ticker,period_end,filing_date,eps\nAAA,2023-12-31,2024-02-01,1.0\naaa,2023-09-30,2023-11-01,2\n",
    )
    entry = {"path": "fund.csv", "modality": "fundamental", "ticker_column": "ticker"}
    error(
        mapping(tmp_path, [GLOB, entry]), "ticker aaa", "did you mean AAA?", "file=fund.csv", "row=2", "date=2023-09-30"
    )


def test_glob_matching_no_file(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    entry = {"path": "news/*.csv", "modality": "texts", "source": "news"}
    error(mapping(tmp_path, [GLOB, entry]), "files[1]", "glob 'news/*.csv' matches no file", exc=ConfigError)


def test_two_price_files_for_one_ticker(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    long_prices(tmp_path, "panel.csv", {"AAA": MARCH, "BBB": MARCH})
    error(mapping(tmp_path, [GLOB, LONG]), "ticker AAA has prices in both prices/AAA.csv and panel.csv")


def test_missing_ticker_column(tmp_path):
    long_prices(tmp_path, "panel.csv", {"AAA": MARCH})
    error(
        mapping(tmp_path, [{**LONG, "ticker_column": "Ticker"}]), "ticker_column 'Ticker'", "'Symbol'", "file=panel.csv"
    )
    write(tmp_path, "news.csv", "published_at,headline\n2024-03-05T15:00:00Z,up\n")
    per_ticker(tmp_path, "AAA", MARCH)
    entry = {"path": "news.csv", "modality": "texts", "source": "news"}
    error(mapping(tmp_path, [GLOB, entry]), "no ticker column found", "set ticker_column", "file=news.csv")


def test_empty_ticker_cell(tmp_path):
    long_prices(tmp_path, "panel.csv", {"AAA": MARCH}, extra=[",2024-03-28,1,2,0.5,1,5"])
    error(mapping(tmp_path, [LONG]), "missing ticker", "file=panel.csv", "row=21")


def test_bad_cell_inside_a_long_file_names_the_ticker_and_file_row(tmp_path):
    long_prices(tmp_path, "panel.csv", {"AAA": MARCH, "BBB": MARCH}, extra=["CCC,2024-03-28,10,9,11,10,5"])
    error(mapping(tmp_path, [LONG]), "ticker CCC", "high 9.0 is below low 11.0", "row=41", "date=2024-03-28")


def test_auto_ticker_column_ticker_key_regex_and_inline_sectors(tmp_path):
    per_ticker(tmp_path, "AAA_daily", MARCH)
    write(
        tmp_path,
        "other.csv",
        "\n".join(["Date,Open,High,Low,Close,Volume", *price_rows(MARCH, 50.0)]) + "\n",
    )
    write(tmp_path, "news.csv", "published_at,Symbol,headline\n2024-03-05T15:00:00Z,BBB,b up\n")
    files = [
        {"path": "prices/*_daily.csv", "modality": "prices", "ticker_from": "^(?P<ticker>[A-Z]+)_daily$"},
        {"path": "other.csv", "modality": "prices", "ticker": "BBB"},
        {"path": "news.csv", "modality": "texts", "source": "news"},  # column 'Symbol' found by name
    ]
    uni = FilesUniverse.from_mapping(mapping(tmp_path, files, sectors={"AAA": "Tech", "CCC": "Energy"}))
    m = uni.members()
    assert m["ticker"].to_list() == ["AAA", "BBB"] and m["sector"].to_list() == ["Tech", ""]
    assert any("no sector" in w and "BBB" in w for w in uni.warnings)
    assert any("have no prices and are ignored: CCC" in w for w in uni.warnings)
    assert uni.load_ticker("BBB", MARCH[0], MARCH[-1]).texts["text"].to_list() == ["b up"]
    assert uni.load_ticker("AAA", MARCH[0], MARCH[-1]).texts.height == 0


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"path": "macro.csv", "modality": "macro", "ticker_column": "ticker"}, "shared by every ticker"),
        ({"path": "macro.csv", "modality": "peers"}, "peers files do not apply"),
        ({"path": "macro.csv", "modality": "texts", "source": "news", "ticker_from": "stem"}, "ticker_from"),
        ({"path": "prices/*.csv", "modality": "prices", "ticker": "X"}, "excludes ticker_column and a glob"),
        ({"path": "prices/*.csv", "modality": "prices", "ticker_from": "^x$"}, "needs a group"),
        ({"path": "prices/*.csv", "modality": "prices", "ticker_from": "^(Q)$"}, "does not match file"),
        ({"path": "../*.csv", "modality": "prices"}, "inside the mapping folder"),
    ],
)
def test_mapping_errors(tmp_path, entry, message):
    per_ticker(tmp_path, "AAA", MARCH)
    write(tmp_path, "macro.csv", "DATE,DGS10\n2024-03-01,4.1\n")
    error(mapping(tmp_path, [GLOB, entry]), message, exc=ConfigError)


def test_universe_section_errors(tmp_path):
    per_ticker(tmp_path, "AAA", MARCH)
    error(mapping(tmp_path, [GLOB], unknown_tickers="drop"), "unknown_tickers 'drop'", exc=ConfigError)
    error(mapping(tmp_path, [GLOB], colour="red"), "universe.colour", exc=ConfigError)
    error(mapping(tmp_path, [GLOB], sectors="nope.csv"), "sectors file 'nope.csv' does not exist", exc=ConfigError)
    write(tmp_path, "macro.csv", "DATE,DGS10\n2024-03-01,4.1\n")
    error(mapping(tmp_path, [{"path": "macro.csv", "modality": "macro"}]), "needs at least one prices", exc=ConfigError)
    write(tmp_path, "sectors.csv", "ticker,sector\nAAA,Tech\nAAA,Energy\n")
    error(mapping(tmp_path, [GLOB], sectors="sectors.csv"), "ticker AAA appears twice (rows 1 and 2)", "sectors.csv")


def test_day_first_long_file_is_settled_by_the_whole_file(tmp_path):
    """AAA alone (1-12 March) is ambiguous; BBB's 13/03/2024 settles the order for every ticker."""
    early, late = MARCH[:8], MARCH[8:]
    rows = [
        r.replace(d.isoformat(), f"{d.day:02d}/{d.month:02d}/{d.year}")
        for tk, days in (("AAA", early), ("BBB", late))
        for d, r in zip(days, price_rows(days, 20.0, tk))
    ]
    write(tmp_path, "panel.csv", "\n".join(["Symbol,Date,Open,High,Low,Close,Volume", *rows]) + "\n")
    uni = FilesUniverse.from_mapping(mapping(tmp_path, [LONG]))
    assert uni.load_ticker("AAA", MARCH[0], MARCH[-1]).prices["date"].to_list() == early
    assert [w for w in uni.warnings if "day/month/year" in w and "file=panel.csv" in w]
