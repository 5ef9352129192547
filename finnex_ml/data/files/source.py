""":class:`FilesSource`: the ``files`` data source over a mapping (see :mod:`finnex_ml.data.files`)."""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path
from typing import Any

import polars as pl

from finnex_ml.data.base import PRICE_SCHEMA, TEXT_SCHEMA, RawData, empty_frame
from finnex_ml.data.files.daily import _concat_peers, _parse_market, _parse_peers, _parse_prices
from finnex_ml.data.files.mapping import _TOP_KEYS, RELEASE_KINDS, FileEntry, _load_mapping_document, _parse_entry
from finnex_ml.data.files.readers import _read
from finnex_ml.data.files.releases import _concat_releases, _parse_releases, _vintage_marker, _window_releases
from finnex_ml.data.files.texts import _parse_texts, _window_texts
from finnex_ml.errors import ConfigError, DataInputError


class FilesSource:
    """A :class:`~finnex_ml.data.base.DataSource` over local files described by a mapping."""

    name = "files"

    def __init__(self, entries: list[FileEntry], mapping_path: str | Path, ticker: str | None = None):
        self.entries = list(entries)
        self.mapping_path = Path(mapping_path)
        self.ticker = ticker
        self._cache: dict[int, tuple[tuple[int, int], Any]] = {}
        self._vintage: dict[int, str] = {}  # release entries: the vintage marker of their provenance
        prices = [e for e in self.entries if e.modality == "prices"]
        if len(prices) > 1:
            raise ConfigError(
                f"{mapping_path}: more than one prices file ({', '.join(e.rel for e in prices)}); "
                "list additional daily columns as modality: market"
            )

    @property
    def warnings(self) -> list[str]:
        """Warnings of the files parsed so far (accepted input the user should look at)."""
        return [note for e in self.entries for note in e.notes]

    @classmethod
    def from_mapping(cls, path: str | Path) -> FilesSource:
        shown = str(path)
        mapping_path = Path(path)
        if not mapping_path.is_file():
            raise ConfigError(f"mapping file {shown} does not exist")
        doc = _load_mapping_document(mapping_path, shown)
        if not isinstance(doc, dict):
            raise ConfigError(f"{shown}: expected a mapping with a 'files' list at the top level")
        unknown = sorted(set(map(str, doc)) - set(_TOP_KEYS))
        if unknown:
            raise ConfigError(f"{shown}: unknown top-level key {unknown[0]!r}; known keys: ticker, files")
        files = doc.get("files")
        if not isinstance(files, list) or not files:
            raise ConfigError(f"{shown}: 'files' must be a non-empty list of entries")
        ticker = doc.get("ticker")
        if ticker is not None and not isinstance(ticker, str):
            raise ConfigError(f"{shown}: ticker must be a string, got {ticker!r}")
        root = mapping_path.resolve().parent
        entries = [_parse_entry(i, raw, root, shown) for i, raw in enumerate(files)]
        return cls(entries, mapping_path, ticker)

    # -- loading

    def load(self, start: date, end: date) -> RawData:
        if start > end:
            raise ConfigError(f"load window start {start} is after end {end}")
        provenance: dict[str, list[str]] = {}

        def note(modality: str, entry: FileEntry) -> None:
            provenance.setdefault(modality, []).append(f"file:{entry.rel}{self._vintage.get(entry.index, '')}")

        price_entry = next((e for e in self.entries if e.modality == "prices"), None)
        markets = [(e, self._parsed(e)) for e in self.entries if e.modality == "market"]
        prices: pl.DataFrame | None = None
        if price_entry is not None:
            prices = self._parsed(price_entry)
            note("prices", price_entry)
        else:
            for entry, (mprices, _features) in markets:
                if mprices is not None:
                    prices = mprices
                    note("prices", entry)
                    break
            if prices is None and markets:
                entry = markets[0][0]
                raise DataInputError(
                    "no prices file in the mapping and the market file lacks open/high/low/close/volume "
                    f"columns; add a prices entry or map them under columns in {entry.where}",
                    file=entry.rel,
                )
        if prices is None:
            price_frame = empty_frame(PRICE_SCHEMA)
        else:
            price_frame = prices.filter(pl.col("date").is_between(start, end))
            seen: dict[str, str] = {}
            for entry, (_p, features) in markets:
                note("market", entry)
                for col in features.columns:
                    if col == "date":
                        continue
                    if col in seen:
                        raise DataInputError(
                            f"market column {col} comes from both {seen[col]} and {entry.rel}; rename one "
                            f"under columns in {entry.where}",
                            file=entry.rel,
                            column=col,
                        )
                    seen[col] = entry.rel
                price_frame = price_frame.join(features, on="date", how="left")
            price_frame = price_frame.sort("date")

        peer_frames = []
        for entry in self.entries:
            if entry.modality == "peers":
                peer_frames.append(self._parsed(entry).with_columns(pl.lit(entry.rel).alias("__file__")))
                note("peers", entry)
        peers = _concat_peers(peer_frames).filter(pl.col("date").is_between(start, end))

        text_frames = []
        for entry in self.entries:
            if entry.modality == "texts":
                text_frames.append(self._parsed(entry))
                note("texts", entry)
        texts = _window_texts(pl.concat(text_frames) if text_frames else empty_frame(TEXT_SCHEMA), start, end)

        release_frames = []
        for entry in self.entries:
            if entry.modality in RELEASE_KINDS:
                release_frames.append(self._parsed(entry).with_columns(pl.lit(entry.rel).alias("__file__")))
                note(entry.modality, entry)
        releases = _window_releases(_concat_releases(release_frames), start, end)

        return RawData(
            prices=price_frame,
            peers=peers,
            texts=texts,
            releases=releases,
            provenance={k: ",".join(v) for k, v in provenance.items()},
        )

    def _parsed(self, entry: FileEntry) -> Any:
        """Parse one file (whole file, all checks), cached while its size and mtime hold."""
        try:
            st = os.stat(entry.path)
        except OSError as exc:
            raise DataInputError(f"cannot read file: {exc}", file=entry.rel) from exc
        stamp = (st.st_mtime_ns, st.st_size)
        hit = self._cache.get(entry.index)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        entry.notes.clear()
        frame = _read(entry)
        parser = {
            "prices": _parse_prices,
            "market": _parse_market,
            "peers": _parse_peers,
            "texts": _parse_texts,
        }.get(entry.modality, _parse_releases)
        result = parser(entry, frame)
        if parser is _parse_releases:
            self._vintage[entry.index] = _vintage_marker(entry, frame, result)
        self._cache[entry.index] = (stamp, result)
        return result
