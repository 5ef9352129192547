"""Regenerate the example data set for the ``files`` universe (seeded, deterministic).

    python examples/files_universe/make_example.py

Writes, next to this script, exports for six fictional tickers over 420 NYSE sessions from
2023-01-03 (to 2024-09-04): one Yahoo-style price file per ticker under ``prices/`` (read by a
glob), a long ``news.csv`` and a long ``fundamentals.csv`` with a ticker column, FRED-style shared
macro files and ``sectors.csv``. ``mapping.yaml`` (kept by hand) ties them together.

Two tickers show the universe rules: FXTR lists mid-range (its first price is session 100,
2023-05-26) and DLTA has a three-session trading halt (2023-02-01 to 2023-02-03: no rows, so it
is absent on those dates and the loader warns). The default universe range
(``DEFAULT_UNIVERSE_RANGE["files"]``, 2024-03-22 .. 2024-09-04) starts 306 sessions after the
first price, so the images' 307-session lookback fits; a ticker gets images once it has 307
contiguous sessions of features: DLTA from 2024-04-25 (after its halt), FXTR from 2024-08-15.
There are no social posts (and few days with two headlines), so the feature table's warm-up flag
stays false, as with the packaged panel: it counts every raw input, social ones included.
"""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from finnex_ml.calendar import sessions

HERE = Path(__file__).resolve().parent
NY = ZoneInfo("America/New_York")
N_SESSIONS = 420
LISTING = {"FXTR": 100}  # ticker -> index of its first session
HALT = {"DLTA": (20, 23)}  # ticker -> [from, to) session indices without a row
SECTORS = {
    "ALFA": "Information Technology",
    "BRVO": "Information Technology",
    "CHRL": "Energy",
    "DLTA": "Energy",
    "ECHO": "Health Care",
    "FXTR": "Health Care",
}
rng = np.random.default_rng(20240904)


def write(name: str, header: list[str], rows: list[list[object]]) -> None:
    path = HERE / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(header)
        out.writerows(rows)


days = sessions(date(2023, 1, 3), date(2024, 12, 31))[:N_SESSIONS]
n = len(days)
market = rng.normal(0.0004, 0.010, n)
sector_ret = {s: rng.normal(0.0, 0.007, n) for s in sorted(set(SECTORS.values()))}

# prices/<TICKER>.csv: Yahoo-style exports, one per ticker ----------------------------------
for k, (ticker, sector) in enumerate(SECTORS.items()):
    beta = rng.uniform(0.7, 1.3)
    ret = beta * market + sector_ret[sector] + rng.normal(0.0002, 0.012, n)
    close = rng.uniform(20, 300) * np.exp(np.cumsum(ret))
    open_ = close * np.exp(rng.normal(0, 0.005, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.007, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.007, n)))
    volume = rng.lognormal(14.5 + k * 0.3, 0.35, n).round()
    lo = LISTING.get(ticker, 0)
    halt = HALT.get(ticker, (0, 0))
    rows = [
        [d.isoformat(), f"{o:.4f}", f"{h:.4f}", f"{lw:.4f}", f"{c:.4f}", f"{c * 0.99:.4f}", int(v)]
        for i, (d, o, h, lw, c, v) in enumerate(zip(days, open_, high, low, close, volume))
        if i >= lo and not halt[0] <= i < halt[1]
    ]
    write(f"prices/{ticker}.csv", ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"], rows)

# news.csv: long, one row per headline, a ticker column, UTC timestamps ----------------------
events = [
    "beats quarterly revenue estimates",
    "announces new product line",
    "faces supply chain delays",
    "raises full-year guidance",
    "upgraded to outperform by analysts",
    "downgraded on valuation concerns",
    "expands into European markets",
    "settles patent dispute",
]
news = []
for i, d in enumerate(days):
    for ticker in SECTORS:
        if i < LISTING.get(ticker, 0) or rng.random() > 0.3:
            continue
        local = datetime.combine(d, time(int(rng.integers(6, 20)), int(rng.integers(0, 60))), NY)
        stamp = local.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        news.append([stamp, ticker, f"{ticker} {rng.choice(events)}"])
write("news.csv", ["published_at", "ticker", "headline"], news)

# fundamentals.csv: long, quarterly filings 25-45 days after the quarter ---------------------
fund = []
for ticker in SECTORS:
    revenue = rng.uniform(500, 5000)
    for q in range(11):  # 2022Q1 .. 2024Q3 (filed by the end of the range)
        year, quarter = 2022 + q // 4, q % 4 + 1
        period_end = date(year, 3 * quarter, 31 if quarter in (1, 4) else 30)
        filed = period_end + timedelta(days=int(rng.integers(25, 46)))
        while filed.weekday() >= 5:
            filed += timedelta(days=1)
        revenue *= 1 + rng.normal(0.02, 0.03)
        if filed > days[-1] or (ticker in LISTING and filed < days[LISTING[ticker]]):
            continue
        eps = rng.normal(1.1, 0.6)
        fund.append([ticker, period_end.isoformat(), filed.isoformat(), f"{revenue:.1f}", f"{eps:.2f}"])
write("fundamentals.csv", ["ticker", "period_end", "filing_date", "revenue", "eps"], fund)

# fred_DGS10.csv / fred_VIXCLS.csv: every weekday, '.' on holidays (shared macro) ----------
open_days = set(days)
rate, vix, rate_rows, vix_rows = 3.8, 20.0, [], []
d = date(2022, 12, 1)
while d <= days[-1]:
    if d.weekday() < 5:
        rate += rng.normal(0, 0.05)
        vix = float(np.clip(vix + rng.normal(0, 0.9), 11, 40))
        shut = d >= days[0] and d not in open_days
        rate_rows.append([d.isoformat(), "." if shut else f"{rate:.2f}"])
        vix_rows.append([d.isoformat(), "." if shut else f"{vix:.2f}"])
    d += timedelta(days=1)
write("fred_DGS10.csv", ["DATE", "DGS10"], rate_rows)
write("fred_VIXCLS.csv", ["DATE", "VIXCLS"], vix_rows)

# sectors.csv -------------------------------------------------------------------------------
write("sectors.csv", ["ticker", "sector"], [[t, s] for t, s in SECTORS.items()])
