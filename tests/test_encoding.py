"""Mega-image layout, normalisation, encode/decode, pixel lookup, QA and preview.

The real-feature tests share one synthetic feature table of 160 sessions. To keep the file fast
they normalise with a 63-session window (``CFG``); the default 252-session window is exercised on
plain numpy data in the normalisation tests, with the same code path.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest

from finnex_ml import calendar
from finnex_ml.data.synthetic import SyntheticSource
from finnex_ml.encoding import (
    LayoutSpec,
    NormConfig,
    SeriesQA,
    TrailingNormalizer,
    build_layout,
    channel_section_stats,
    check_feature_preservation,
    check_image,
    check_spatial_integrity,
    check_temporal_continuity,
    check_window_continuity,
    decode,
    describe_pixel,
    encode,
    encode_dates,
    feature_matrix,
    history_needed,
    normalization_summary,
    normalize_session,
    normalize_window,
    pixel_lookup,
    preview_png,
    read_png,
)
from finnex_ml.encoding.layout import TILES
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.pipeline import daily_features_from_snapshots, modality_snapshots

CFG = NormConfig(window=63, min_periods=21)
N_IMAGES = 40


@pytest.fixture(scope="module")
def table() -> pl.DataFrame:
    spec_l = 56
    rows = spec_l + CFG.window - 1 + N_IMAGES + 2  # 2 spare rows after the last image date
    sessions = calendar.sessions("2023-01-01", "2024-12-31")[:rows]
    snaps, _ = modality_snapshots(SyntheticSource(7), sessions)
    return daily_features_from_snapshots(snaps)


@pytest.fixture(scope="module")
def spec(table: pl.DataFrame) -> LayoutSpec:
    return build_layout(table.columns)


@pytest.fixture(scope="module")
def image_dates(table: pl.DataFrame, spec: LayoutSpec) -> list:
    first = history_needed(spec, CFG) - 1
    return table["date"].to_list()[first : first + N_IMAGES]


@pytest.fixture(scope="module")
def encoded(table, spec, image_dates) -> list:
    return list(encode_dates(table, image_dates, spec, CFG))


# ---- layout ---------------------------------------------------------------------------------

SMALL_FEATURES = [
    "macro__vix",
    "macro__vix_z63",
    "macro__rvol_minus_vix",
    "macro__rate_10y",
    "macro__cpi_yoy",
    "macro__ff_hml_z63",
    "news__mean",
    "social__count",
    "sentiment__hist_z_63",
    "price__rsi_14",
    "price__rvol_21d",
    "market__put_call_ratio",
    "fundamental__mgmt_tone",
    "fundamental__revenue_yoy",
    "fundamental__earnings_yield",
    "peer__amzn_corr_63",
]


def test_default_assignment_places_features_per_spec() -> None:
    spec = build_layout(SMALL_FEATURES)
    expected = {
        "macro__vix": "macro.red",
        "macro__vix_z63": "macro.red",
        "macro__rvol_minus_vix": "macro.red",
        "macro__rate_10y": "macro.green",
        "macro__cpi_yoy": "macro.blue",
        "macro__ff_hml_z63": "macro.blue",
        "news__mean": "behavioral.red.news",
        "social__count": "behavioral.red.social",
        "sentiment__hist_z_63": "behavioral.red.historical",
        "price__rsi_14": "behavioral.green",
        "price__rvol_21d": "behavioral.blue",
        "market__put_call_ratio": "behavioral.blue",
        "fundamental__mgmt_tone": "fundamental.red",
        "fundamental__revenue_yoy": "fundamental.green",
        "fundamental__earnings_yield": "fundamental.blue",
        "peer__amzn_corr_63": "fundamental.blue",
    }
    assert spec.tile_of == expected
    assert spec.features == tuple(SMALL_FEATURES)  # window columns keep the table's order
    assert [t.name for t in spec.tiles] == [t[0] for t in TILES]
    assert [(s.row0, s.row1) for s in spec.sections] == [(0, 171), (171, 342), (342, 512)]
    red_mid = [(t.col0, t.col1) for t in spec.tiles if t.section == "behavioral" and t.channel == 0]
    assert red_mid == [(0, 171), (171, 342), (342, 512)]


def test_every_real_feature_in_exactly_one_tile(table: pl.DataFrame, spec: LayoutSpec) -> None:
    cols = [c for c in table.columns if c not in ("date", "history_sessions", "warmup_complete")]
    placed = [f for t in spec.tiles for f in t.features]
    assert sorted(placed) == sorted(cols)
    assert len(placed) == len(set(placed)) == spec.n_features == len(cols) > 150
    assert not spec.unassigned
    # every default tile gets features from the synthetic source
    assert all(t.features for t in spec.tiles)


def test_row_bands_distribute_remainder_to_first_bands() -> None:
    spec = build_layout(SMALL_FEATURES)
    t = spec.tile("macro.red")  # 3 features in 171 rows: 57 each
    assert t.row_bands == ((0, 57), (57, 114), (114, 171))
    t = spec.tile("behavioral.blue")  # 2 features in 171 rows: 86 + 85
    assert t.row_bands == ((171, 257), (257, 342))
    t = spec.tile("fundamental.blue")  # 2 features in 170 rows
    assert t.row_bands == ((342, 427), (427, 512))
    assert spec.tile("macro.red").px_per_session == 9 and spec.tile("behavioral.red.news").px_per_session == 3
    assert spec.tile("behavioral.red.historical").used_col0 == 512 - 56 * 3


def test_unassigned_ambiguous_and_empty_tiles() -> None:
    with pytest.raises(ConfigError, match=r"assigned to no tile: \['other__x'\]"):
        build_layout(SMALL_FEATURES + ["other__x"])
    spec = build_layout(SMALL_FEATURES + ["other__x"], allow_unassigned=True)
    assert spec.unassigned == ("other__x",) and "other__x" not in spec.features
    with pytest.raises(ConfigError, match="ambiguous.*news__mean"):
        build_layout(["news__mean"], {"behavioral.red.news": ["news__*"], "behavioral.red.social": ["*__mean"]})
    # exact name beats a glob; an empty tile is recorded and masked
    spec = build_layout(
        ["news__mean", "news__std"], {"behavioral.red.news": ["news__*"], "behavioral.red.social": ["news__std"]}
    )
    assert spec.tile("behavioral.red.social").features == ("news__std",)
    assert spec.tile("macro.red").empty and spec.to_dict()["tiles"][0]["empty"] is True
    look = pixel_lookup(spec)
    assert (look.feature[0:171, :, 0] == -1).all()
    with pytest.raises(ConfigError, match="unknown tile"):
        build_layout(["news__mean"], {"nope": ["news__*"]})


def test_spec_json_round_trip_and_hash_stability(spec: LayoutSpec) -> None:
    again = LayoutSpec.from_json(spec.to_json())
    assert again == spec and again.spec_hash() == spec.spec_hash()
    expected = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert spec.spec_hash() == expected
    # pinned: the default layout of a fixed feature list must not drift silently
    assert build_layout(SMALL_FEATURES).spec_hash() == PINNED_SMALL_HASH
    assert build_layout(SMALL_FEATURES, sessions=28).spec_hash() != PINNED_SMALL_HASH
    doc = json.loads(spec.to_json())
    doc["tiles"][6]["row_bands"][0][1] += 1
    with pytest.raises(ConfigError, match="row bands"):
        LayoutSpec.from_dict(doc)


PINNED_SMALL_HASH = "29765a06c845a99f5fc43079f316d71c07d270d8786282216ad10cb595f50f03"


# ---- pixel lookup -------------------------------------------------------------------------


def test_pixel_lookup_matches_spec(spec: LayoutSpec) -> None:
    look = pixel_lookup(spec)
    L = spec.sessions
    assert look.feature.shape == look.lag.shape == (512, 512, 3)
    for ti, t in enumerate(spec.tiles):
        s = spec.section(t.section)
        assert (look.tile[s.row0 : s.row1, t.col0 : t.col1, t.channel] == ti).all()
        # padding columns on the left are unused
        assert (look.feature[s.row0 : s.row1, t.col0 : t.used_col0, t.channel] == -1).all()
        for f, (r0, r1) in zip(t.features, t.row_bands):
            band = look.feature[r0:r1, t.used_col0 : t.col1, t.channel]
            assert (band == spec.feature_index[f]).all()
            lags = look.lag[r0, t.used_col0 : t.col1, t.channel]
            expected = np.repeat(np.arange(L - 1, -1, -1), t.px_per_session)  # newest on the right
            assert np.array_equal(lags, expected)
    # every (feature, lag) pair appears, with band rows x px pixels
    used = look.feature >= 0
    counts = np.zeros((spec.n_features, L), dtype=np.int64)
    np.add.at(counts, (look.feature[used], look.lag[used]), 1)
    for t in spec.tiles:
        for f, (r0, r1) in zip(t.features, t.row_bands):
            assert (counts[spec.feature_index[f]] == (r1 - r0) * t.px_per_session).all()
    assert describe_pixel(spec, 171, 170, 0) == {
        "channel": "red",
        "section": "behavioral",
        "tile": "behavioral.red.news",
        "feature": spec.tile("behavioral.red.news").features[0],
        "lag": 0,
    }
    assert describe_pixel(spec, 171, 0, 0)["feature"] is None  # padding column
    assert describe_pixel(spec, 511, 8, 2)["lag"] == L - 1


# ---- encode / decode -------------------------------------------------------------------------


def test_decode_round_trip_on_real_features(table, spec, encoded) -> None:
    assert len(encoded) == N_IMAGES
    _, mat = feature_matrix(table, spec)
    dates = table["date"].to_list()
    for item in encoded[::13]:
        assert item.image.dtype == np.float32 and item.image.shape == (512, 512, 3)
        got = decode(item.image, spec)
        assert np.abs(got.astype(np.float64) - item.window).max() <= 1e-6
        # and the window is the independently normalised raw data
        i = dates.index(item.date)
        ref = normalize_window(mat[: i + 1], CFG, spec.sessions)
        assert np.abs(got - ref.values).max() <= 1e-6
        assert np.array_equal(got, ref.values)
        assert 0.0 <= item.image.min() and item.image.max() <= 1.0
        # values actually spread over [0, 1] (not all fill)
        assert got.std() > 0.1 and item.missing_summary["missing_cells"] == int(item.missing.sum())
    rng = np.random.default_rng(0)
    w = rng.random((spec.sessions, spec.n_features), dtype=np.float32)
    assert np.array_equal(decode(encode(w, spec), spec), w)
    with pytest.raises(ValueError, match="non-finite"):
        encode(np.where(w > 0.5, np.nan, w), spec)


def _reference_image(window: np.ndarray, spec: LayoutSpec) -> np.ndarray:
    """Pixel by pixel from the lookup maps: the meaning of an image, without any gather index."""
    look = pixel_lookup(spec)
    used = look.feature >= 0
    img = np.full(spec.shape, np.float32(spec.fill_value), dtype=np.float32)
    img[used] = window[spec.sessions - 1 - look.lag[used], look.feature[used]]
    return img


def test_row_run_painter_equals_full_gather_byte_for_byte(spec, encoded) -> None:
    from finnex_ml.encoding.encoder import _maps, paint

    empty_tiles = build_layout(
        ["news__mean", "news__std"], {"behavioral.red.news": ["news__*"], "behavioral.red.social": ["news__std"]}
    )
    rng = np.random.default_rng(3)
    cases = [(spec, item.window) for item in encoded[::9]]
    cases += [(sp, rng.random((sp.sessions, sp.n_features), dtype=np.float32)) for sp in (spec, empty_tiles)]
    cases += [
        (spec, np.zeros((spec.sessions, spec.n_features), np.float32)),
        (
            build_layout(SMALL_FEATURES, sessions=28, fill_value=0.125),
            rng.random((28, len(SMALL_FEATURES)), dtype=np.float32),
        ),
    ]
    for sp, w in cases:
        ext = np.append(w.ravel(), np.float32(sp.fill_value)).astype(np.float32)
        full = np.take(ext, _maps(sp).gather).reshape(sp.shape)  # the previous one-gather painter
        for img in (encode(w, sp), paint(ext, sp)):
            assert img.dtype == np.float32 and img.shape == sp.shape and img.flags.c_contiguous
            assert img.tobytes() == full.tobytes() == _reference_image(w, sp).tobytes()
    m = _maps(spec)
    assert len(m.rows) < spec.height // 2  # bands repeat rows: that is where the speed comes from
    # every image is a fresh array: a consumer may keep the previous one (the asset does)
    assert not np.shares_memory(encoded[0].image, encoded[1].image)


def test_reuse_buffer_gives_the_same_images_in_one_array(table, spec, image_dates, encoded) -> None:
    seen = set()
    for item, ref in zip(encode_dates(table, image_dates, spec, CFG, reuse_buffer=True), encoded):
        assert item.image.tobytes() == ref.image.tobytes() and item.params_hash == ref.params_hash
        seen.add(id(item.image.base if item.image.base is not None else item.image))
    assert len(seen) == 1
    with pytest.raises(ValueError, match="out must be a C-contiguous float32"):
        encode(encoded[0].window, spec, out=np.empty((512, 512, 3), dtype=np.float64))


def test_params_hash_is_the_documented_digest(table, spec, image_dates, encoded) -> None:
    from finnex_ml.encoding.normalize import params_hash

    _, mat = feature_matrix(table, spec)
    dates = table["date"].to_list()
    for item in encoded[::13]:
        ref = normalize_window(mat[: dates.index(item.date) + 1], CFG, spec.sessions)
        h = hashlib.sha256(CFG.config_hash().encode())  # definition, spelt out with copies
        for c, s in zip(ref.center, ref.scale):
            h.update(hashlib.sha256(c.astype("<f8").tobytes() + s.astype("<f8").tobytes()).digest())
        h.update(np.packbits(ref.missing).tobytes())
        assert item.params_hash == params_hash(CFG, ref) == h.hexdigest()
        assert np.array_equal(item.center, ref.center[-1]) and np.array_equal(item.scale, ref.scale[-1])
    # the mask is hashed as given; any centre changes the hash
    one = normalize_window(mat, CFG, spec.sessions)
    miss = one.missing.copy()
    miss[3, 7] = not miss[3, 7]
    center = one.center.copy()
    center[0, 0] += 1e-12
    assert (
        len(
            {
                params_hash(CFG, one),
                params_hash(CFG, one._replace(missing=miss)),
                params_hash(CFG, one._replace(center=center)),
            }
        )
        == 3
    )


def test_batched_normalisation_is_bit_identical_to_one_session_at_a_time() -> None:
    # blocks of sessions must give the bits of each session alone (determinism of a partition
    # materialised alone vs in a backfill): NaNs, infinities, -0.0, constant and step-like columns
    cfg = NormConfig(window=40, min_periods=10)
    rng = np.random.default_rng(5)
    raw = rng.standard_t(3, size=(160, 9)).cumsum(axis=0)
    raw[:, 1] = 7.0
    raw[::3, 2] = np.nan
    raw[:60, 3] = np.nan
    raw[:, 4] = np.repeat(rng.integers(0, 3, 16), 10)  # step-like
    raw[20:140, 5] = np.where(rng.random(120) < 0.9, 1.0, 5.0)  # IQR 0: mean-abs-dev fallback
    raw[50, 6] = np.inf
    raw[::5, 7], raw[::7, 7] = -0.0, 0.0
    for block in (1, 3, 8, 64):
        tn = TrailingNormalizer(raw, cfg, block=block, cache_rows=16)
        for i in range(cfg.window - 1, len(raw)):
            alone = normalize_session(raw[i - cfg.window + 1 : i + 1], cfg)
            got = tn.row(i)
            for name, a, b in zip(alone._fields, alone, got):
                assert a.tobytes() == b.tobytes(), (block, i, name)
    assert any(tn.row(i).fallback[5] for i in range(100, 140))  # the fallback path ran
    with pytest.raises(DataInputError, match="needs 40 rows of history"):
        tn.row(38)


def test_summary_without_missing_cells(encoded) -> None:
    clean = [item for item in encoded if not item.missing.any()]
    assert clean  # the synthetic table has complete dates
    for item in clean[:3]:
        assert item.missing_summary == {
            "missing_cells": 0,
            "missing_fraction": 0.0,
            "missing_short_history_cells": 0,
            "missing_raw_cells": 0,
            "missing_at_date": [],
            "missing_by_tile": {},
            "fill_value": CFG.fill_value,
            "warmup_complete": item.missing_summary["warmup_complete"],
        }
        assert isinstance(item.missing_summary["warmup_complete"], bool)


def test_sliding_window_invariant(spec, encoded) -> None:
    for prev, cur in zip(encoded, encoded[1:]):
        assert np.array_equal(decode(cur.image, spec)[:-1], decode(prev.image, spec)[1:])
        ok, details = check_temporal_continuity(prev.image, cur.image, spec)
        assert ok, details
    # images two sessions apart are not consecutive: the check must fail
    ok, details = check_temporal_continuity(encoded[0].image, encoded[2].image, spec)
    assert not ok and details["tiles"]["behavioral.green"]["mismatched_pixels"] > 0


def test_no_future_data(table, spec, image_dates, encoded) -> None:
    t_idx = 20
    t = image_dates[t_idx]
    base = encoded[t_idx].image
    feats = list(spec.features)
    after = table.with_columns(
        [pl.when(pl.col("date") > t).then(pl.col(f) * 3.0 + 1.0).otherwise(pl.col(f)).alias(f) for f in feats]
    )
    img_after = next(encode_dates(after, [t], spec, CFG)).image
    assert img_after.tobytes() == base.tobytes()
    # the table cut at t (and to the minimum history) gives the same bytes as the long run
    dates = table["date"].to_list()
    i = dates.index(t)
    need = history_needed(spec, CFG)
    cut = table.slice(i - need + 1, need)
    assert next(encode_dates(cut, [t], spec, CFG)).image.tobytes() == base.tobytes()
    with pytest.raises(DataInputError, match=f"not enough history for {t}"):
        next(encode_dates(table.slice(i - need + 2, need - 1), [t], spec, CFG))
    # perturbing a row before t (inside the normalisation window) changes image t
    prev_day = dates[i - 3]
    before = table.with_columns(
        pl.when(pl.col("date") == prev_day)
        .then(pl.col("price__rsi_14") + 50.0)
        .otherwise(pl.col("price__rsi_14"))
        .alias("price__rsi_14")
    )
    img_before = next(encode_dates(before, [t], spec, CFG)).image
    assert img_before.tobytes() != base.tobytes()
    changed = np.argwhere(img_before != base)
    look = pixel_lookup(spec)
    assert {spec.features[k] for k in look.feature[tuple(changed.T)]} == {"price__rsi_14"}


def test_missing_values_are_masked_and_filled(table, spec, image_dates) -> None:
    t = image_dates[5]
    dates = table["date"].to_list()
    gap_day = dates[dates.index(t) - 1]
    holed = table.with_columns(
        pl.when(pl.col("date") == gap_day).then(None).otherwise(pl.col("news__mean")).alias("news__mean")
    )
    item = next(encode_dates(holed, [t], spec, CFG))
    j = spec.feature_index["news__mean"]
    assert item.missing.sum() == 1 and item.missing[-2, j]
    assert decode(item.image, spec)[-2, j] == np.float32(CFG.fill_value)
    assert item.missing_summary["missing_cells"] == 1
    assert item.missing_summary["missing_by_tile"] == {"behavioral.red.news": 1}
    assert item.missing_summary["missing_raw_cells"] == 1
    summary = normalization_summary(holed, spec, CFG, dates=[gap_day, t])
    assert summary["news__mean"]["missing_fraction"] == 0.5 and summary["news__mean"]["sessions"] == 2
    assert summary["price__rsi_14"]["missing_fraction"] == 0.0
    assert 0.0 < summary["price__rsi_14"]["value_mean"] < 1.0
    with pytest.raises(DataInputError, match="not in the feature table"):
        next(encode_dates(table, ["2020-01-02"], spec, CFG))
    # a session missing from the table inside the history is an error, not a silent shift
    with pytest.raises(DataInputError, match=f"session {gap_day} is missing"):
        next(encode_dates(table.filter(pl.col("date") != gap_day), [t], spec, CFG))


# ---- normalisation -----------------------------------------------------------------------


def test_normalisation_uses_trailing_window_only_default_config() -> None:
    cfg = NormConfig()  # window 252
    rng = np.random.default_rng(1)
    raw = rng.standard_t(3, size=(400, 6)).cumsum(axis=0)
    raw[:, 5] = 7.0  # constant: degenerate, exactly 0.5, not missing
    raw[100:300:7, 2] = np.nan
    long_run = normalize_window(raw, cfg, 100)  # sessions 300..399
    for k in (0, 57, 99):
        s = 300 + k
        alone = normalize_session(raw[s - 251 : s + 1], cfg)
        assert alone.values.tobytes() == long_run.values[k].tobytes()
        # reference: robust z from numpy's own quantiles
        w = raw[s - 251 : s + 1, 0]
        q1, med, q3 = np.quantile(w, [0.25, 0.5, 0.75])
        z = (w[-1] - med) / ((q3 - q1) / 1.349)
        assert alone.values[0] == pytest.approx(1 / (1 + np.exp(-z)), abs=1e-6)
        assert alone.values[5] == 0.5 and not alone.missing[5] and alone.degenerate[5]
    # future rows never matter
    bumped = raw.copy()
    bumped[360:] *= 10
    assert normalize_window(bumped[:360], cfg, 60).values.tobytes() == long_run.values[:60].tobytes()
    assert np.all((long_run.values >= 0) & (long_run.values <= 1))
    with pytest.raises(ValueError, match="need at least 351 rows"):
        normalize_window(raw[:350], cfg, 100)


def test_normalisation_missing_rules() -> None:
    cfg = NormConfig(window=10, min_periods=5, fill_value=0.25)
    h = np.arange(10.0)[:, None].repeat(3, axis=1)
    h[-1, 0] = np.nan  # today's raw value missing
    h[:7, 1] = np.nan  # only 3 finite values: short history
    h[:, 2] = [1, 1, 1, 1, 1, 1, 1, 1, 1, 5]  # IQR 0: mean-abs-dev fallback, still finite z
    out = normalize_session(h, cfg)
    assert out.missing.tolist() == [True, True, False]
    assert out.values[:2].tolist() == [0.25, 0.25]
    assert out.short_history.tolist() == [False, True, False]
    assert out.fallback[2] and 0.99 < out.values[2] <= 1.0


# ---- QA and preview ---------------------------------------------------------------------------


def test_qa_checks_pass_and_fail(spec, encoded) -> None:
    item = encoded[3]
    assert check_image(item.image, spec)[0]
    assert check_spatial_integrity(item.image, spec, item.window)[0]
    assert check_feature_preservation(item.image, spec, item.window)[0]
    bad = item.image.copy()
    t = spec.tile("behavioral.green")
    r0, _ = t.row_bands[4]
    bad[r0 + 1, t.col1 - 1, 1] = 0.123  # one pixel inside a band, not the read-out pixel
    ok, d = check_spatial_integrity(bad, spec, item.window)
    assert not ok and d["mismatched"] == {"behavioral.green": [t.features[4]]}
    assert check_feature_preservation(bad, spec, item.window)[0]  # decode reads the first pixel only
    bad[r0, t.col1 - t.px_per_session, 1] += 0.01  # the read-out pixel of lag 0
    ok, d = check_feature_preservation(bad, spec, item.window)
    assert not ok and d["worst_feature"] == t.features[4]
    bad[0, 0, 0] = 1.5
    ok, d = check_image(bad, spec)
    assert not ok and d["above_1"] == 1 and d["unused_not_fill"] == 1
    assert not check_image(item.image.astype(np.float64), spec)[0]


def _check_image_reference(img: np.ndarray, spec: LayoutSpec) -> dict:
    """check_image's details computed the slow, obvious way (boolean masks, per-call tile loop)."""
    finite = np.isfinite(img)
    unused = np.ones(spec.shape, dtype=bool)
    for t in spec.tiles:
        if t.features:
            s = spec.section(t.section)
            unused[s.row0 : s.row1, t.used_col0 : t.col1, t.channel] = False
    return {
        "dtype": "float32",
        "shape": [512, 512, 3],
        "non_finite": int((~finite).sum()),
        "min": float(img[finite].min()) if finite.any() else None,
        "max": float(img[finite].max()) if finite.any() else None,
        "below_0": int((img < 0).sum()),
        "above_1": int((img > 1).sum()),
        "unused_pixels": int(unused.sum()),
        "unused_not_fill": int((img[unused] != np.float32(spec.fill_value)).sum()),
    }


def test_fast_qa_and_stats_equal_the_obvious_computation(spec, encoded) -> None:
    from finnex_ml.encoding import used_mask

    img = encoded[2].image
    variants = [img, img.copy(), img.copy(), img.copy(), np.full(spec.shape, np.nan, dtype=np.float32)]
    variants[1][0, 0, 0] = np.nan
    variants[1][300, 500, 1] = -np.inf
    variants[2][0, 0, 0] = 0.75  # an unused (padding) pixel
    variants[3][200, 200, 2] = 1.5
    for v in variants:
        passed, details = check_image(v, spec)
        assert details == _check_image_reference(v, spec)
        assert passed == (v is img)
    win = encoded[2].window
    in_band = img.copy()
    green = spec.tile("fundamental.green")
    in_band[green.row_bands[2][0] + 1, green.col1 - 1, green.channel] = 0.3  # inside a band, newest session
    for v in variants[:4] + [in_band]:
        bad, worst = {}, 0.0  # the per-feature loop of the original check
        for t in spec.tiles:
            for f, (r0, r1) in zip(t.features, t.row_bands):
                block = v[r0:r1, t.used_col0 : t.col1, t.channel].reshape(r1 - r0, spec.sessions, t.px_per_session)
                err = float(np.abs(block - win[:, spec.feature_index[f]][None, :, None]).max())
                worst = max(worst, err)
                if err != 0.0:
                    bad.setdefault(t.name, []).append(f)
        ok, details = check_spatial_integrity(v, spec, win)
        assert details == {
            "tiles_checked": len(spec.tiles),
            "features_checked": spec.n_features,
            "max_abs_error": worst,
            "mismatched": bad,
        }
        assert ok == (not bad)
    assert check_spatial_integrity(in_band, spec, win)[1]["mismatched"] == {"fundamental.green": [green.features[2]]}
    assert check_spatial_integrity(variants[1], spec, win)[1]["max_abs_error"] == np.inf
    for used_only in (True, False):
        mask = used_mask(spec) if used_only else np.ones(spec.shape, dtype=bool)
        got = channel_section_stats(img, spec, used_only=used_only)
        for c, cname in enumerate(spec.channel_names):
            for s in spec.sections:
                vals = img[s.row0 : s.row1, :, c][mask[s.row0 : s.row1, :, c]].astype(np.float64)
                assert got[cname][s.name] == {
                    "mean": float(vals.mean()),
                    "std": float(vals.std()),
                    "min": float(vals.min()),
                    "max": float(vals.max()),
                    "pixels": int(vals.size),
                }


def test_series_qa_answers_what_the_four_checks_answer_on_the_images(spec, encoded) -> None:
    """SeriesQA keeps a passing image as its window, yet every verdict and detail equals the four
    checks' on the images themselves, the continuity check against the previous image included."""
    images = [e.image.copy() for e in encoded[:8]]
    windows = [e.window.copy() for e in encoded[:8]]
    t = spec.tile("behavioral.green")
    r0, _ = t.row_bands[4]
    images[2][r0 + 1, t.col1 - t.px_per_session - 1, t.channel] = 0.123  # a band pixel of lag 1, not read out
    j = spec.feature_index[t.features[1]]
    windows[5][-3, j] = 0.25 if windows[5][-3, j] != 0.25 else 0.75  # a changed value, encoded faithfully
    images[5] = encode(windows[5], spec)
    qa = SeriesQA(spec)
    failed = []
    for i, (img, win) in enumerate(zip(images, windows)):
        got = qa.check("X", img, win, lambda: None)
        want = {
            "dtype_shape_range": check_image(img, spec),
            "spatial_integrity": check_spatial_integrity(img, spec, win),
            "feature_preservation": check_feature_preservation(img, spec, win),
        }
        if i:
            want["temporal_continuity"] = check_temporal_continuity(images[i - 1], img, spec)
        assert got == want, i
        failed += [(i, name) for name, (ok, _) in got.items() if not ok]
    # the tampered pixel breaks image 2 and its continuity both ways; the changed cell (lag 2 of
    # image 5) breaks the continuity with images 4 and 6 only
    assert failed == [
        (2, "spatial_integrity"),
        (2, "temporal_continuity"),
        (3, "temporal_continuity"),
        (5, "temporal_continuity"),
        (6, "temporal_continuity"),
    ]
    h = t.row_bands[1][1] - t.row_bands[1][0]
    tiles = check_window_continuity(windows[4], windows[5], spec)[1]["tiles"]
    assert tiles[t.name]["mismatched_pixels"] == h * t.px_per_session  # one cell: its band x its columns
    assert sum(v["mismatched_pixels"] for v in tiles.values()) == h * t.px_per_session
    # a series' first image is compared with previous(); one not kept since is compared with nothing
    first = qa.check("Y", images[1], windows[1], lambda: images[0])
    assert first["temporal_continuity"] == check_temporal_continuity(images[0], images[1], spec)
    qa.keep_only(["X"])
    assert "temporal_continuity" not in qa.check("Y", images[2], windows[2], lambda: None)


def test_png_round_trip_and_an_independent_decoder() -> None:
    from finnex_ml.encoding import png_bytes

    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)  # Up-filter deltas wrap mod 256
    rgb[10:20] = rgb[9]  # vertical runs, as in previews
    data = png_bytes(rgb)
    assert np.array_equal(read_png(data), rgb)
    image = pytest.importorskip("PIL.Image", reason="Pillow (an independent PNG decoder) not installed")
    import io

    assert np.array_equal(np.asarray(image.open(io.BytesIO(data)).convert("RGB")), rgb)


def test_preview_png_and_stats(spec, encoded) -> None:
    img = encoded[0].image
    png = preview_png(img, spec, title=str(encoded[0].date))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = read_png(png)
    assert rgb.shape[0] > 512 and rgb.shape[1] > 4 * 512
    top, margin = 36, 88
    # section lines at rows 171 and 342 of the composite panel, in yellow
    assert (rgb[top + 171, margin : margin + 512] == (255, 220, 0)).all()
    assert (rgb[top + 342, margin : margin + 512] == (255, 220, 0)).all()
    # the composite otherwise shows the image itself
    assert np.array_equal(rgb[top + 10, margin : margin + 512], np.round(img[10] * 255).astype(np.uint8))
    stats = channel_section_stats(img, spec)
    assert set(stats) == {"red", "green", "blue"}
    assert set(stats["green"]) == {"macro", "behavioral", "fundamental"}
    g = stats["green"]["behavioral"]
    block = img[171:342, spec.tile("behavioral.green").used_col0 :, 1]
    assert g["mean"] == pytest.approx(float(block.mean()), abs=1e-6) and g["pixels"] == block.size
    assert 0.0 <= g["min"] <= g["mean"] <= g["max"] <= 1.0
