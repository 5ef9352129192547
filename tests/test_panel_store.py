"""Universe-mode cross-section store: one compressed file per date holding every ticker's image."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from datetime import date
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

import finnex_ml
from finnex_ml.encoding import EncodedImage, LayoutSpec, NormConfig, build_layout, encode, store
from finnex_ml.encoding import panel_store as ps
from finnex_ml.errors import ConfigError, DataInputError

FEATURES = [
    "macro__vix",
    "macro__rate_10y",
    "news__mean",
    "social__mean",
    "sentiment__hist_z_63",
    "price__rsi_14",
    "price__ret_5d",
    "fundamental__revenue_yoy",
    "peer__avg_ret_1d",
]
CFG = NormConfig()
D1, D2, D3 = date(2024, 4, 2), date(2024, 4, 3), date(2024, 5, 6)
TICKERS = ["AAPL", "IBM", "MSFT", "XOM"]


@pytest.fixture(scope="module")
def spec() -> LayoutSpec:
    return build_layout(FEATURES)


def _item(spec: LayoutSpec, d: date, seed: int) -> EncodedImage:
    rng = np.random.default_rng(seed)
    w = rng.random((spec.sessions, spec.n_features), dtype=np.float32)
    missing = rng.random(w.shape) < 0.05
    return EncodedImage(
        date=d,
        image=encode(w, spec),
        missing_summary={},
        missing=missing,
        window=w,
        center=rng.normal(size=spec.n_features),
        scale=rng.random(spec.n_features) + 0.5,
        params_hash=f"hash-{seed}",
    )


def _section(spec: LayoutSpec, d: date, tickers=TICKERS, base: int = 0) -> list[tuple[str, EncodedImage]]:
    return [(t, _item(spec, d, base + i)) for i, t in enumerate(tickers)]


@pytest.fixture(scope="module")
def stored(tmp_path_factory, spec: LayoutSpec):
    """Three dates, different cross-sections (a ticker missing on one date), default compression."""
    root = tmp_path_factory.mktemp("panel")
    content = {
        D1: _section(spec, D1, TICKERS, 0),
        D2: _section(spec, D2, ["AAPL", "MSFT", "XOM"], 10),
        D3: _section(spec, D3, ["IBM", "MSFT"], 20),
    }
    for d, items in content.items():
        ps.write_cross_section(root, d, iter(items), spec=spec, norm_config=CFG)
    return root, content


@pytest.mark.parametrize("compression", ps.PANEL_COMPRESSIONS)
def test_round_trip_is_bit_exact_for_every_compression(tmp_path: Path, spec: LayoutSpec, compression: str) -> None:
    items = _section(spec, D1)
    path = ps.write_cross_section(
        tmp_path, D1, iter(items), spec=spec, norm_config=CFG, compression=compression, attrs={"universe": "demo"}
    )
    assert path == tmp_path.resolve() / "2024" / "04" / "2024-04-02.h5" == ps.panel_path(tmp_path, D1)
    tickers, images = ps.read_cross_section(tmp_path, D1)
    assert tickers == TICKERS
    assert images.dtype == np.float32 and images.shape == (len(TICKERS), 512, 512, 3)
    for (t, it), img in zip(items, images):
        assert img.tobytes() == it.image.tobytes()
        rec = ps.read_panel_record(tmp_path, D1, t)
        assert rec["image"].tobytes() == it.image.tobytes()
        assert np.array_equal(rec["missing"], it.missing) and rec["missing"].dtype == bool
        assert rec["missing_cells"] == int(it.missing.sum())
        assert rec["norm_center"].tobytes() == it.center.tobytes()
        assert rec["norm_scale"].tobytes() == it.scale.tobytes()
        assert rec["normalization_params_hash"] == it.params_hash
        assert rec["ticker"] == t and rec["row"] == TICKERS.index(t)
    rec = ps.read_panel_record(tmp_path, D1, "IBM")
    assert rec["date"] == "2024-04-02" and rec["n_tickers"] == len(TICKERS)
    assert rec["spec_hash"] == spec.spec_hash() and rec["normalization_hash"] == CFG.config_hash()
    assert rec["compression"] == compression and rec["format_version"] == ps.PANEL_FORMAT_VERSION
    assert rec["code_version"] == finnex_ml.__version__ and rec["universe"] == "demo"
    assert rec["feature_count"] == spec.n_features and rec["sessions"] == spec.sessions
    with h5py.File(path, "r") as f:
        ds = f["images"]
        assert ds.chunks == ps.PANEL_CHUNKS
        assert (ds.compression is None and not ds._filters) == (compression == "none")
        assert f["missing"].dtype == np.uint8 and f["missing"].shape == (len(TICKERS), spec.sessions, spec.n_features)
        assert f["norm_center"].shape == (len(TICKERS), spec.n_features)


def test_default_compression_is_at_least_4x_smaller_than_raw(tmp_path: Path, spec: LayoutSpec) -> None:
    assert ps.DEFAULT_PANEL_COMPRESSION in ps.PANEL_COMPRESSIONS
    path = ps.write_cross_section(tmp_path, D1, _section(spec, D1), spec=spec, norm_config=CFG)
    assert path.stat().st_size * 4 <= len(TICKERS) * 512 * 512 * 3 * 4
    with pytest.raises(ConfigError, match="compression must be one of"):
        ps.write_cross_section(tmp_path, D2, _section(spec, D2), spec=spec, norm_config=CFG, compression="bz2")


def test_ticker_order_and_subset_reads(stored) -> None:
    root, content = stored
    images = {t: it.image for t, it in content[D1]}
    tickers, arr = ps.read_cross_section(root, D1, ["XOM", "AAPL"])
    assert tickers == ["XOM", "AAPL"]
    assert np.array_equal(arr[0], images["XOM"]) and np.array_equal(arr[1], images["AAPL"])
    tickers, arr = ps.read_cross_section(root, D1, "IBM")
    assert tickers == ["IBM"] and np.array_equal(arr[0], images["IBM"])
    tickers, arr = ps.read_cross_section(root, D1, [])
    assert tickers == [] and arr.shape == (0, 512, 512, 3)


def test_lists_and_dicts_are_sorted_iterators_must_arrive_sorted(tmp_path: Path, spec: LayoutSpec) -> None:
    items = _section(spec, D1)
    shuffled = [items[2], items[0], items[3], items[1]]
    ps.write_cross_section(tmp_path, D1, shuffled, spec=spec, norm_config=CFG)
    assert ps.read_cross_section(tmp_path, D1)[0] == TICKERS
    ps.write_cross_section(tmp_path, D2, dict(_section(spec, D2)[::-1]), spec=spec, norm_config=CFG)
    assert ps.read_cross_section(tmp_path, D2)[0] == TICKERS
    with pytest.raises(ValueError, match=r"2024-05-06 must arrive in ascending order.*'AAPL' came after 'IBM'"):
        ps.write_cross_section(tmp_path, D3, iter(_section(spec, D3)[::-1][2:]), spec=spec, norm_config=CFG)
    assert not ps.panel_path(tmp_path, D3).exists()


def test_write_streams_one_item_at_a_time_and_copes_with_reused_buffers(tmp_path: Path, spec: LayoutSpec) -> None:
    # like encode_dates(reuse_buffer=True): every item shares one image / mask / stats buffer, so
    # a writer that kept references instead of writing each item at once would store the last one n times
    items = _section(spec, D1)
    image = np.empty((512, 512, 3), dtype=np.float32)
    missing = np.empty((spec.sessions, spec.n_features), dtype=np.uint8)
    center, scale = np.empty(spec.n_features), np.empty(spec.n_features)
    produced = []

    def stream():
        for t, it in items:
            image[...], missing[...], center[...], scale[...] = it.image, it.missing, it.center, it.scale
            produced.append(t)
            yield t, it._replace(image=image, missing=missing, center=center, scale=scale)

    ps.write_cross_section(tmp_path, D1, stream(), spec=spec, norm_config=CFG)
    assert produced == TICKERS
    for t, it in items:
        rec = ps.read_panel_record(tmp_path, D1, t)
        assert np.array_equal(rec["image"], it.image) and np.array_equal(rec["missing"], it.missing)
        assert np.array_equal(rec["norm_center"], it.center) and np.array_equal(rec["norm_scale"], it.scale)


def test_duplicate_empty_and_malformed_cross_sections_are_refused(tmp_path: Path, spec: LayoutSpec) -> None:
    a, b = _item(spec, D1, 1), _item(spec, D1, 2)
    for items in ([("IBM", a), ("IBM", b)], iter([("IBM", a), ("IBM", b)])):
        with pytest.raises(ValueError, match="duplicate ticker 'IBM' in the cross-section of 2024-04-02"):
            ps.write_cross_section(tmp_path, D1, items, spec=spec, norm_config=CFG)
    for empty in ([], iter([]), {}):
        with pytest.raises(ValueError, match="empty cross-section for 2024-04-02"):
            ps.write_cross_section(tmp_path, D1, empty, spec=spec, norm_config=CFG)
    with pytest.raises(ValueError, match="2024-04-03 IBM: the image is of 2024-04-02"):
        ps.write_cross_section(tmp_path, D2, [("IBM", a)], spec=spec, norm_config=CFG)
    with pytest.raises(ValueError, match="2024-04-02 IBM: image must be float32"):
        ps.write_cross_section(
            tmp_path, D1, [("IBM", a._replace(image=a.image.astype(np.float64)))], spec=spec, norm_config=CFG
        )
    with pytest.raises(ValueError, match="2024-04-02 IBM: missing mask shape"):
        ps.write_cross_section(tmp_path, D1, [("IBM", a._replace(missing=a.missing[1:]))], spec=spec, norm_config=CFG)
    with pytest.raises(ValueError, match="ticker must be a non-empty str"):
        ps.write_cross_section(tmp_path, D1, [("", a)], spec=spec, norm_config=CFG)
    with pytest.raises(ValueError, match="set by write_cross_section itself"):
        ps.write_cross_section(tmp_path, D1, [("IBM", a)], spec=spec, norm_config=CFG, attrs={"date": "x"})
    assert not any(p.is_file() for p in tmp_path.rglob("*"))


def test_unknown_ticker_and_missing_date_name_date_ticker_and_file(stored) -> None:
    root, _ = stored
    path = ps.panel_path(root, D2)
    with pytest.raises(DataInputError, match=r"ticker 'IBM' is not in the cross-section of 2024-04-03") as exc:
        ps.read_cross_section(root, D2, ["AAPL", "IBM"])
    assert exc.value.file == str(path) and exc.value.date == "2024-04-03"
    with pytest.raises(DataInputError, match="ticker 'ZZZ'.*2024-04-03"):
        ps.read_panel_record(root, D2, "ZZZ")
    with pytest.raises(DataInputError, match="no universe cross-section stored for 2024-04-04.*materialise") as exc:
        ps.read_cross_section(root, "2024-04-04")
    assert exc.value.date == "2024-04-04" and exc.value.file == str(ps.panel_path(root, "2024-04-04"))
    with pytest.raises(DataInputError, match="2024-04-04"):
        ps.read_panel_record(root, date(2024, 4, 4), "IBM")


def test_a_single_ticker_store_is_not_read_as_a_panel(tmp_path: Path, spec: LayoutSpec) -> None:
    store.write_encoded(tmp_path, _item(spec, D1, 1), spec, CFG)
    for call in (lambda: ps.read_cross_section(tmp_path, D1), lambda: ps.panel_index(tmp_path)):
        with pytest.raises(DataInputError, match="not a universe cross-section file.*date=2024-04-02"):
            call()


def test_failed_write_leaves_no_file_and_keeps_an_existing_one(tmp_path: Path, spec: LayoutSpec) -> None:
    items = _section(spec, D1)

    def crashing(n_ok: int):
        yield from items[:n_ok]
        raise OSError("feature source vanished mid-cross-section")

    with pytest.raises(OSError, match="vanished"):
        ps.write_cross_section(tmp_path, D1, crashing(2), spec=spec, norm_config=CFG)
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # no file, no temp file
    path = ps.write_cross_section(tmp_path, D1, items, spec=spec, norm_config=CFG)
    before = path.read_bytes()
    with pytest.raises(OSError, match="vanished"):
        ps.write_cross_section(tmp_path, D1, crashing(3), spec=spec, norm_config=CFG)
    with pytest.raises(ValueError, match="duplicate"):
        ps.write_cross_section(tmp_path, D1, iter([*items, items[-1]]), spec=spec, norm_config=CFG)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert ps.read_cross_section(tmp_path, D1)[0] == TICKERS


def test_panel_index(stored) -> None:
    root, content = stored
    idx = ps.panel_index(root)
    assert idx.columns == ["date", "ticker", "row"]
    expect = [(d, t, r) for d in sorted(content) for r, (t, _) in enumerate(content[d])]
    assert idx.rows() == expect
    assert idx.height == 9 and idx["date"].is_sorted()
    assert ps.panel_index(root, "2024-04-03", "2024-04-30").rows() == [r for r in expect if r[0] == D2]
    empty = ps.panel_index(root, "2030-01-01")
    assert empty.height == 0 and empty.columns == ["date", "ticker", "row"]


def test_panel_reader_matches_reads_and_survives_pickling(stored) -> None:
    torch = pytest.importorskip("torch")
    root, content = stored
    expect = [it.image for d in sorted(content) for _, it in content[d]]
    with ps.PanelReader(root, max_open=2) as reader:
        assert len(reader) == len(expect)
        for i in (0, 4, 8, 1, 7, -1):
            assert np.array_equal(reader[i], expect[i])
        assert len(reader._files) <= 2
        order = [8, 0, 5, 1, 4, 4]
        batch = reader.read_batch(order)
        assert batch.shape == (6, 512, 512, 3)
        assert all(np.array_equal(batch[k], expect[i]) for k, i in enumerate(order))
        _, d2 = ps.read_cross_section(root, D2)
        assert np.array_equal(reader.read_batch([4, 5, 6]), d2)
        with pytest.raises(IndexError):
            reader[9]
        clone = pickle.loads(pickle.dumps(reader))  # with open files: the clone opens its own
        assert clone._files == OrderedDict() and np.array_equal(clone[3], expect[3])
        clone.close()
    # a filtered index, through a DataLoader
    idx = ps.panel_index(root).filter(pl.col("ticker") == "MSFT")
    reader = pickle.loads(pickle.dumps(ps.PanelReader(root, idx)))
    loader = torch.utils.data.DataLoader(reader, batch_size=2, num_workers=0)
    got = torch.cat([b for b in loader]).numpy()
    msft = [it.image for d in sorted(content) for t, it in content[d] if t == "MSFT"]
    assert np.array_equal(got, np.stack(msft))
    reader.close()


def test_panel_reader_detects_a_rewritten_file(tmp_path: Path, spec: LayoutSpec) -> None:
    ps.write_cross_section(tmp_path, D1, _section(spec, D1), spec=spec, norm_config=CFG)
    reader = ps.PanelReader(tmp_path)
    ps.write_cross_section(tmp_path, D1, _section(spec, D1, ["AAPL", "MSFT"]), spec=spec, norm_config=CFG)
    with pytest.raises(DataInputError, match="row 1 of 2024-04-02 is not ticker 'IBM'"):
        reader[1]
    reader.close()


def test_single_ticker_cross_section_equals_the_single_ticker_store(tmp_path: Path, spec: LayoutSpec) -> None:
    it = _item(spec, D1, 42)
    store.write_encoded(tmp_path / "single", it, spec, CFG)
    ps.write_cross_section(tmp_path / "panel", D1, [("IBM", it)], spec=spec, norm_config=CFG)
    single = store.read_record(tmp_path / "single", D1)
    panel = ps.read_panel_record(tmp_path / "panel", D1, "IBM")
    assert panel["image"].tobytes() == single["image"].tobytes() == store.read_image(tmp_path / "single", D1).tobytes()
    for k in ("missing", "norm_center", "norm_scale"):
        assert np.array_equal(panel[k], single[k])
    assert panel["normalization_params_hash"] == single["normalization_params_hash"]
    assert panel["missing_cells"] == single["missing_cells"]
    for k in ("date", "spec_hash", "normalization_hash", "feature_count", "sessions", "code_version"):
        assert panel[k] == single[k]
