"""Regenerate the example data set for the ``files`` source (seeded, deterministic).

    python examples/files_source/make_example.py
    python examples/files_source/make_example.py --start 2022-01-03 --sessions 750 --out data/acme_long

Writes exports shaped like what real tools produce for a fictional stock ACME: by default 300
NYSE sessions from 2023-01-03 next to this script (the committed example), plus macro,
fundamental, sentiment, text and peer files covering the same span. ``mapping.yaml`` (kept by
hand) ties them together and is copied to ``--out``. A longer history (``--sessions 750``) is
enough for every stage: ``FINNEX_FILES_MAPPING=data/acme_long/mapping.yaml finnex demo --source files``.
"""

from __future__ import annotations

import argparse
import csv
import shutil
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from finnex_ml.calendar import sessions

HERE = Path(__file__).resolve().parent
NY = ZoneInfo("America/New_York")
cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
cli.add_argument("--start", type=date.fromisoformat, default=date(2023, 1, 3), help="first session")
cli.add_argument("--sessions", type=int, default=300, help="number of NYSE sessions of prices")
cli.add_argument("--out", type=Path, default=HERE, help="folder to write (default: next to this script)")
args = cli.parse_args()
OUT, N_SESSIONS = args.out, args.sessions
OUT.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(20230103)


def write(name: str, header: list[str], rows: list[list[object]]) -> None:
    with open(OUT / name, "w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(header)
        out.writerows(rows)


def money(x: float, decimals: int = 0) -> str:
    """'$1,234' style, with accounting parentheses for negatives."""
    body = f"${abs(x):,.{decimals}f}"
    return f"({body})" if x < 0 else body


def gbm(n: int, start: float, drift: float, vol: float) -> np.ndarray:
    return start * np.exp(np.cumsum(rng.normal(drift, vol, n)))


days = sessions(args.start, args.start + timedelta(days=2 * N_SESSIONS))[:N_SESSIONS]
n = len(days)
if days[-1] + timedelta(days=16) >= date.today():
    raise SystemExit(f"{N_SESSIONS} sessions from {args.start} run into the future: start earlier")
first_year, last = days[0].year - 1, days[-1]  # releases from a year before the first session

# prices.csv: a Yahoo-style export -----------------------------------------------------------
close = gbm(n, 100.0, 0.0004, 0.018)
open_ = close * np.exp(rng.normal(0, 0.006, n))
high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.008, n)))
low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.008, n)))
volume = rng.lognormal(15.5, 0.35, n).round()
write(
    "prices.csv",
    ["Date", "Open", "High", "Low", "Close", "Adj Close", "Volume"],
    [
        [d.isoformat(), f"{o:.6f}", f"{h:.6f}", f"{lo:.6f}", f"{c:.6f}", f"{c * 0.985:.6f}", int(v)]
        for d, o, h, lo, c, v in zip(days, open_, high, low, close, volume)
    ],
)

# market_wide.csv: a spreadsheet of daily market features (US dates, some '$1,234' cells) ----
spx = gbm(n, 3850.0, 0.0003, 0.011)
ndx = gbm(n, 11000.0, 0.0005, 0.014)
vix = np.clip(20 + np.cumsum(rng.normal(0, 0.8, n)) * 0.3, 11, 40)
dxy = gbm(n, 104.0, 0.0, 0.004)
us2y = 4.4 + np.cumsum(rng.normal(0, 0.04, n))
us10y = 3.8 + np.cumsum(rng.normal(0, 0.035, n))
hy_oas = np.clip(4.5 + np.cumsum(rng.normal(0, 0.03, n)), 3.0, 6.5)
wti = gbm(n, 78.0, 0.0, 0.02)
gold = gbm(n, 1850.0, 0.0002, 0.008)
copper = gbm(n, 3.8, 0.0, 0.012)
market_rows = []
for i, d in enumerate(days):
    row = [
        f"{d.month}/{d.day}/{d.year}",
        f"{spx[i]:.2f}",
        f"{ndx[i]:.2f}",
        f"{vix[i]:.2f}",
        f"{dxy[i]:.3f}",
        f"{us2y[i]:.3f}",
        f"{us10y[i]:.3f}",
        f"{us10y[i] - us2y[i]:.3f}",
        f"{hy_oas[i]:.2f}",
        money(wti[i], 2),
        money(gold[i], 2),
        f"{copper[i]:.4f}",
        f"{rng.uniform(0.6, 1.3):.2f}",  # put/call
        f"{int(rng.normal(0, 600)):,}",  # advance-decline
        int(rng.poisson(90)),  # new highs
        int(rng.poisson(60)),  # new lows
        money(rng.normal(1500, 250)),  # short interest $M
        money(rng.normal(20, 400)),  # ETF net flows $M, negatives in parentheses
        f"{vix[i] * rng.uniform(1.05, 1.3):.1f}%",  # implied vol
        f"{rng.uniform(12, 35):.1f}%",  # realised vol
        f"{rng.normal(0, 1):.3f}",  # sector relative strength
        f"{int(rng.normal(2_400_000, 150_000)):,}",  # futures open interest
        rng.choice(["Buy", "Buy", "Hold", "Sell"]),  # text: skipped by the loader
    ]
    if rng.random() < 0.03:  # the odd empty cell
        row[int(rng.integers(12, 22))] = ""
    market_rows.append(row)
write(
    "market_wide.csv",
    [
        "Date", "SPX Close", "NDX Close", "VIX Close", "DXY", "US2Y", "US10Y", "2s10s Spread",
        "HY OAS", "WTI ($/bbl)", "Gold ($/oz)", "Copper", "Put/Call Ratio", "Advance-Decline",
        "NYSE New Highs", "NYSE New Lows", "Short Interest ($M)", "ETF Net Flows ($M)",
        "Implied Vol 30d", "Realized Vol 20d", "Sector RS", "ES Open Interest", "Analyst Rating",
    ],
    market_rows,
)  # fmt: skip

# fred_DGS10.csv: every weekday, '.' on holidays and an occasional gap ---------------------
fred_from, fred_to = days[0] - timedelta(days=33), last + timedelta(days=16)
open_days = set(sessions(fred_from, fred_to))
fred_rows, y, d = [], 3.60, fred_from
while d <= fred_to:
    if d.weekday() < 5:
        y += rng.normal(0, 0.05)
        missing = d not in open_days or rng.random() < 0.01
        fred_rows.append([d.isoformat(), "." if missing else f"{y:.2f}"])
    d += timedelta(days=1)
write("fred_DGS10.csv", ["DATE", "DGS10"], fred_rows)

# cpi_monthly.csv: FRED monthly, dated the first of the month --------------------------------
cpi, cpi_rows = 281.1, []
for k in range((last.year - first_year) * 12 + last.month - 1):  # through the month before the last
    month = date(first_year + k // 12, k % 12 + 1, 1)
    cpi *= 1 + rng.normal(0.003, 0.002)
    cpi_rows.append([month.isoformat(), f"{cpi:.3f}"])
write("cpi_monthly.csv", ["DATE", "CPIAUCSL"], cpi_rows)

# fundamentals.csv: quarterly, filed 25-45 days after the quarter ----------------------------
fund_rows, revenue = [], 19_800.0
for q in range((last.year - first_year) * 4 + (last.month - 1) // 3 + 1):  # through the last's quarter
    year, quarter = first_year + q // 4, q % 4 + 1
    period_end = date(year, 3 * quarter, 31 if quarter in (1, 4) else 30)
    filed = period_end + timedelta(days=int(rng.integers(25, 46)))
    while filed.weekday() >= 5:
        filed += timedelta(days=1)
    revenue *= 1 + rng.normal(0.02, 0.03)
    eps = rng.normal(1.1, 0.6)
    fund_rows.append(
        [
            period_end.isoformat(),
            filed.isoformat(),
            f"Q{quarter} FY{year}",
            money(revenue),
            f"({abs(eps):.2f})" if eps < 0 else f"{eps:.2f}",
            money(revenue * rng.uniform(0.08, 0.16)),
        ]
    )
write("fundamentals.csv", ["period_end", "filing_date", "fiscal_period", "revenue", "eps", "net_income"], fund_rows)

# sentiment_weekly.csv: AAII-style survey, reported on Thursdays, percentages ---------------
sent_rows, d = [], days[0] - timedelta(days=33)
while d <= last + timedelta(days=1):
    bull = rng.uniform(20, 50)
    bear = rng.uniform(20, 50)
    sent_rows.append([f"{d.month}/{d.day}/{d.year}", f"{bull:.1f}%", f"{100 - bull - bear:.1f}%", f"{bear:.1f}%"])
    d += timedelta(days=7)
write("sentiment_weekly.csv", ["Reported Date", "Bullish", "Neutral", "Bearish"], sent_rows)

# tweets.csv: snscrape-style, UTC offsets --------------------------------------------------
moods = ["bullish", "bearish", "not sure about", "loading up on", "trimming", "watching"]
notes = ["ahead of earnings", "after that guidance", "into the close", "on this dip", "", "#stocks"]
tweets = []
for d in days:
    for _ in range(int(rng.poisson(1.8))):
        local = datetime.combine(
            d, time(int(rng.integers(6, 23)), int(rng.integers(0, 60)), int(rng.integers(0, 60))), NY
        )
        stamp = local.astimezone(UTC).isoformat(sep=" ")
        text = f"$ACME {rng.choice(moods)} {rng.choice(notes)}".strip()
        if rng.random() < 0.2:
            text += ', "the chart says it all"'
        tweets.append([stamp, text])
write("tweets.csv", ["Datetime", "Text"], tweets)

# headlines.csv: date only (published during the day) ---------------------------------------
subjects = ["ACME Corp", "ACME", "Acme's CEO", "ACME shares"]
events = [
    "beats quarterly revenue estimates",
    "announces new product line",
    "faces supply chain delays",
    "raises full-year guidance",
    "upgraded to outperform by analysts",
    "downgraded on valuation concerns",
    "expands into European markets",
    "settles patent dispute, shares react",
]
headlines = []
for d in days:
    if rng.random() < 0.45:
        headlines.append([f"{rng.choice(subjects)} {rng.choice(events)}", d.isoformat()])
write("headlines.csv", ["title", "date"], headlines)

# peers.csv: long format --------------------------------------------------------------------
peer_rows = []
for ticker, start in (("BRVO", 54.0), ("CHRL", 212.0), ("DLTA", 18.5)):
    px = gbm(n, start, 0.0003, 0.02)
    vol = rng.lognormal(14.5, 0.4, n).round()
    peer_rows += [[d.isoformat(), ticker, f"{p:.4f}", int(v)] for d, p, v in zip(days, px, vol)]
peer_rows.sort(key=lambda r: (r[0], r[1]))
write("peers.csv", ["date", "ticker", "close", "volume"], peer_rows)

if OUT.resolve() != HERE:
    shutil.copy(HERE / "mapping.yaml", OUT / "mapping.yaml")
print(f"wrote {n} sessions {days[0]}..{days[-1]} to {OUT}")
