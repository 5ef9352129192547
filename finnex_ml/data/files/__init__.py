"""The ``files`` data source: the user's own CSV / Parquet exports, tied together by a mapping.

A mapping file (YAML, or TOML when it ends in ``.toml``) lists the files and what each holds.
Paths are relative to the mapping file's folder and may not leave it.

.. code-block:: yaml

    ticker: ACME                  # optional, informational
    files:
      - path: prices.csv
        modality: prices          # prices | market | peers | texts | macro | fundamental | sentiment
        date_column: Date         # optional, see date_column below
        columns: {Open: open, High: high, Low: low, Close: close, Volume: volume}
      - path: market_wide.csv
        modality: market          # every other numeric column becomes prices.market__<name>
      - path: fred_DGS10.csv
        modality: macro           # FRED style DATE,<SERIES_ID>: nothing else needed
      - path: cpi_monthly.csv
        modality: macro
        frequency: monthly        # optional, inferred from the median spacing of the dates
        release_lag_days: 14      # optional, default by frequency (table below)
      - path: fundamentals.csv
        modality: fundamental
        date_column: period_end
        release_column: filing_date
        columns: {revenue: revenue, eps: eps}
      - path: tweets.csv
        modality: texts
        source: social            # texts: news | social (required)
        text_column: Text         # optional: Text/text/tweet/title/headline/content/body
      - path: peers.csv
        modality: peers           # long (date,ticker,close,volume) or wide ({AMZN_Close: AMZN.close})

Keys of an entry (anything else is a ``ConfigError``, and so is a key that does not apply to
the entry's modality):

``path``, ``modality``
    Required. ``.csv``, ``.tsv``, ``.parquet`` / ``.pq``.
``date_column``
    Optional everywhere. Without it the column is found by name (``date``, ``Date``, ``DATE``,
    ``Datetime``, ``timestamp``, ``period_end``, ``observation_date``, ``published_at`` ...,
    then any name containing ``date``/``time``/``period``), and failing that by content. Two
    equally good candidates are an error: name one.
``columns``
    ``{source column: target name}``. Source names match exactly, else case-insensitively.

    * prices: targets are ``open high low close volume``; fields not listed are found by
      name, case-insensitively (``Open``, ``CLOSE`` ...). ``Adj Close`` is ignored unless
      mapped. All five are required.
    * market: targets ``open``...``volume`` give price fields (used only when there is no
      prices file); any other target becomes ``market__<target>``. Numeric columns not listed
      are taken too, as ``market__<sanitised column name>`` (lower case, runs of anything
      but ``[a-z0-9]`` become ``_``: ``Gold ($/oz)`` -> ``market__gold_oz``); non-numeric
      ones are skipped, and so are columns named open/high/low/close/volume/adj close.
    * peers: long format (a ``ticker_column``, or a column named ``ticker``/``symbol``):
      targets ``close``/``volume``. Wide format: ``{AMZN_Close: AMZN.close, AMZN_Volume:
      AMZN.volume}``; without ``columns`` wide columns named ``<TICKER>_Close`` /
      ``<TICKER> Volume`` are found.
    * macro / fundamental / sentiment: when given, only the listed columns are series,
      named by their targets; otherwise every numeric column is a series named by its
      sanitised column name (``Gold ($/oz)`` -> ``gold_oz``), or for macro by its role when
      the name is a known FRED ID / Yahoo ticker (FRED ``DGS10`` -> ``rate_10y``).
``frequency``
    ``daily | weekly | monthly | quarterly | annual``; releases only (prices, market and
    peers accept only ``daily``). Inferred from the median spacing of the dates when absent.
``release_lag_days``
    Calendar days from period end to publication for series without a release column.
    Defaults: daily 0, weekly 5, monthly 14, quarterly 45, annual 90. With a release column
    it defaults to 0 and is added to the release date.
``release_column``
    A column with each row's publication date (fundamentals: the filing date). Found by
    name when absent (``filing_date``, ``filed``, ``release_date``, ``released``,
    ``publication_date``).
``vintage_column`` (macro, fundamental, sentiment)
    The column with each row's vintage date in an ALFRED vintage file (long format:
    ``observation_date``/``date``, ``realtime_start``, ``realtime_end``, a value column named
    by the series ID such as ``GDPC1``). Found by name when absent: a column called
    ``realtime_start`` (any case) makes the file a vintage file. Each row is the value of its
    observation published on that date: its release date, so revisions of old periods enter
    on the day they were published, and the feature tables show each series as known at each
    session (see :func:`finnex_ml.alignment.align_releases`). The date is date-only, so it
    follows ``published``, whose default for vintage files is ``next_session`` whatever the
    modality (``"08:30"`` counts an 8:30 release from its own session). ``realtime_end`` is
    never a series (its ``9999-12-31`` marks current values). A vintage before the
    observation's period end is an error naming the row. Excludes ``release_column``.
``ticker_column``
    peers, long format.
``source``, ``text_column``
    texts.
``date_order``
    ``mdy`` (US) or ``dmy``, for ``d/d/yyyy`` dates. Without it the file must settle the order
    itself (a first part over 12 means day first, a second part over 12 month first);
    otherwise ``03/04/2024`` is an error, never a guess.
``keep`` / ``drop`` (market, macro, fundamental, sentiment)
    Lists of value columns to keep (only these become features / series) or to leave out,
    named after any rename under ``columns`` (exactly, else case-insensitively, else by the
    sanitised form: ``Stock Splits`` = ``stock_splits``). ``columns: [a, b]`` (a list) is
    ``keep: [a, b]``. A name that is not a column of the file is a ``DataInputError`` listing
    the file's columns; a kept column that is not a value column (the date, a price field of a
    market file) or holds text is an error too.
``ticker`` (peers)
    The file holds one peer without a ticker column (a Yahoo OHLCV export): its ``Close`` and
    ``Volume`` (found by name, or mapped under ``columns``) are that ticker's.
``role`` / ``roles`` (macro)
    The semantic role of a series, one of :data:`ROLES`; the role becomes the series name, which
    places it in its image tile and feeds the cross-features (VIX: ``rvol_minus_vix``; ``rate_2y``
    + ``rate_10y``: ``term_spread``; ``aaa_yield`` + ``baa_yield``: ``credit_spread``;
    ``market_index`` / ``sector_etf``: beta, return and relative strength). ``role`` makes the
    whole file one series: its only value column, else its ``Close`` column. ``roles`` maps
    columns (after renames) to roles. Without either, :data:`KNOWN_SERIES` (common FRED IDs and
    Yahoo tickers) gives the role of a column named like ``VIXCLS`` / ``^VIX`` that is not
    renamed, or of a whole file named like ``XLK.csv`` / ``VIXCLS.csv``.
``published`` (texts, macro, fundamental, sentiment)
    When a *date-only* timestamp (no time of day) became public: ``next_session`` (from the
    first session after that date; the default for texts, fundamental, sentiment and daily
    macro series, whose value for d is d's close or fixing, published after the equity close),
    ``same_session`` (at that date: texts at 12:00 New York time, releases on the date; the
    default for weekly and lower-frequency macro, whose ``release_lag_days`` already covers
    publication), or a New York time of day ``"16:30"`` (quoted in YAML), which counts from the
    first session whose close comes after it (``"09:00"`` keeps the same session). For
    releases it applies to the release date (release column, or period end plus
    ``release_lag_days``); timestamps with a time are read by their time.

What ``load(start, end)`` returns (canonical schemas of :mod:`finnex_ml.data.base`):

* ``prices``: one row per session with Float64 OHLCV and ``market__*`` columns from market
  files, left-joined on date. Rows with ``start <= date <= end``.
* ``peers``: long ``date, ticker, close, volume``; rows with an empty close are dropped
  (wide files before a listing), volume may be null or absent. Rows with
  ``start <= date <= end``.
* ``texts``: ``published_at`` (UTC), ``source``, ``text``; rows whose session under
  :func:`finnex_ml.calendar.assign_session` lies in ``[start, end]``. Empty texts are dropped.
* ``releases``: ``modality, series, period_end, released, value``; rows released by ``end``
  whose period ends at most two years before ``start`` (history for changes, year-over-year
  and trailing sums), plus, per series, the latest release before ``start`` however old (the
  value in force on ``start``). Empty / ``.`` cells are missing and their rows are dropped.
* ``provenance``: ``{modality: "file:<path>[,file:<path>]"}``. A release file whose rows carry
  no release date and that is not daily (a FRED download: every period at its latest
  revision) is marked ``file:<path> (current vintage: revised data, not as first published)``;
  a vintage file ``file:<path> (point-in-time vintages)``. The evaluation report shows the
  marker and a note on revised data.

Parsing rules:

* Dates: ``2015-04-01``, ``2015/04/01``, ``20150401``, ``4/13/2015`` (see ``date_order``),
  ``Mar 5, 2024``, ``05 Mar 2024``, each optionally followed by a time (``16:00``,
  ``4:00:00 PM``, fractional seconds) and an offset (``Z``, ``UTC``, ``GMT``, ``+00:00``,
  ``-0500``). A time without an offset is New York time. For daily files the session is the
  New York date. A text or release dated without a time follows the entry's ``published``
  (by default news and filings count from the next session).
* Monthly / quarterly / annual series dated on the first day of the period (the FRED
  convention: ``2023-01-01`` is January) are moved to the last day of the period, so
  ``released = period_end + lag`` never predates the period's end.
* Numbers: ``$21,454`` -> 21454.0; ``(1,234)`` -> -1234.0; ``12.5%`` -> 0.125 (the percent
  sign divides by 100; FRED-style percent series without a ``%`` sign stay as written);
  ``1.2M`` -> 1.2e6 (suffixes K, M, B, T). Empty, ``.``, ``-``, ``NA``, ``N/A``, ``NaN``,
  ``null``, ``#N/A`` are missing. Thousands separators are commas (no European decimals).

Checks, on the whole file whatever the window (each raises
:class:`~finnex_ml.errors.DataInputError` naming the file, column, row -- 1 is the first record
after the header -- and/or date): missing required columns, empty
files, unparsable dates or numbers in used columns, duplicate dates in daily prices / market
/ peers files (both rows named), daily rows on dates that are not NYSE sessions (checked
within the calendar's range, 1995 on), prices
``<= 0``, negative volumes, high below low or open / close outside [low, high], partially
empty price rows (fully empty ones such as Yahoo's ``null`` rows are dropped), missing or
pre-period release dates, duplicate releases, dates after today, ambiguous day/month order,
two dates in one period of a monthly / quarterly series, midnight-UTC timestamps in dated
files, texts over ``MAX_TEXT_CHARS``, binary files, and ``;`` / tab / ``|`` delimited ``.csv``.
Accepted input worth a look (non-UTF-8 text, ``inf`` cells in optional columns, skipped
columns, day-first dates, naive tweet times, market columns with one value in every row) is logged as a warning and listed in
:attr:`FilesSource.warnings`, which the ingestion asset logs to the run.
Bad mappings raise :class:`~finnex_ml.errors.ConfigError` naming the mapping file and entry.

The code: :mod:`~finnex_ml.data.files.mapping` (the mapping schema, :class:`FileEntry`),
:mod:`~finnex_ml.data.files.readers` (reading a file, finding its columns, numbers),
:mod:`~finnex_ml.data.files.dates` (the date grammar, ``date_order``, ``published``),
:mod:`~finnex_ml.data.files.daily` (prices, market, peers), :mod:`~finnex_ml.data.files.texts`,
:mod:`~finnex_ml.data.files.releases` and :mod:`~finnex_ml.data.files.source` (:class:`FilesSource`).
"""

from finnex_ml.data.files.mapping import (
    DEFAULT_PUBLISHED,
    DEFAULT_RELEASE_LAG_DAYS,
    FREQUENCIES,
    KNOWN_SERIES,
    MODALITIES,
    ROLES,
    FileEntry,
)
from finnex_ml.data.files.source import FilesSource

__all__ = [
    "FilesSource",
    "FileEntry",
    "MODALITIES",
    "FREQUENCIES",
    "DEFAULT_RELEASE_LAG_DAYS",
    "ROLES",
    "KNOWN_SERIES",
    "DEFAULT_PUBLISHED",
]
