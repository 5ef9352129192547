"""Per-date HDF5 image store: layout, attributes, atomic writes, VDS range views, spec files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import date
from pathlib import Path

import h5py
import numpy as np
import pytest

import finnex_ml
from finnex_ml import calendar
from finnex_ml.encoding import (
    LayoutSpec,
    NormConfig,
    build_layout,
    decode,
    encode,
    image_path,
    list_dates,
    open_range,
    read_image,
    read_record,
    read_spec,
    store,
    write_image,
    write_spec,
)
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.paths import sweep_stale_temps

FEATURES = [
    "macro__vix",
    "macro__rate_10y",
    "macro__cpi_yoy",
    "news__mean",
    "social__mean",
    "sentiment__hist_z_63",
    "price__rsi_14",
    "price__ret_5d",
    "price__rvol_21d",
    "fundamental__mgmt_tone",
    "fundamental__revenue_yoy",
    "fundamental__earnings_yield",
    "peer__avg_ret_1d",
]
CFG = NormConfig()
DATES = calendar.sessions("2024-03-25", "2024-05-31")[:40]


@pytest.fixture(scope="module")
def spec() -> LayoutSpec:
    return build_layout(FEATURES)


def _window(spec: LayoutSpec, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((spec.sessions, spec.n_features), dtype=np.float32)


def _write(root: Path, spec: LayoutSpec, d: date, seed: int, **kw) -> tuple[Path, np.ndarray]:
    w = _window(spec, seed)
    missing = np.zeros(w.shape, dtype=bool)
    missing[-1, 0] = True
    img = encode(w, spec)
    path = write_image(
        root,
        d,
        img,
        spec=spec,
        norm_config=CFG,
        missing=missing,
        center=np.arange(spec.n_features, dtype=float),
        scale=np.ones(spec.n_features),
        params_hash=f"p{seed}",
        **kw,
    )
    return path, img


def test_low_level_writes_store_what_the_high_level_api_stores(tmp_path: Path, spec: LayoutSpec) -> None:
    # write_image creates datasets and attributes through h5py's low-level API for speed; the
    # file must be the very bytes h5py's high-level calls write (types, layout, no timestamps)
    d = date(2024, 4, 2)
    path, img = _write(tmp_path / "ours", spec, d, 1)
    rec = read_record(tmp_path / "ours", d)
    ref = tmp_path / "ref.h5"
    with h5py.File(ref, "w", track_order=True) as f:
        f.create_dataset("image", data=img, track_times=False)
        f.create_dataset("missing", data=rec["missing"].astype(np.uint8), track_times=False)
        f.create_dataset("norm_center", data=rec["norm_center"], track_times=False)
        f.create_dataset("norm_scale", data=rec["norm_scale"], track_times=False)
        with h5py.File(path, "r") as src:
            for k, v in src.attrs.items():
                f.attrs[k] = v
    assert path.read_bytes() == ref.read_bytes()
    with pytest.raises(TypeError, match="attribute 'x': only str and int"):
        with h5py.File(tmp_path / "bad.h5", "w") as f:
            store._create_attrs(f, {"x": 1.5})


def test_write_read_layout_and_attributes(tmp_path: Path, spec: LayoutSpec) -> None:
    d = date(2024, 4, 2)
    path, img = _write(tmp_path, spec, d, 1)
    assert path == tmp_path.resolve() / "2024" / "04" / "2024-04-02.h5"
    assert np.array_equal(read_image(tmp_path, d), img)
    rec = read_record(tmp_path, "2024-04-02")
    assert rec["date"] == "2024-04-02"
    assert rec["spec_hash"] == spec.spec_hash()
    assert rec["normalization_hash"] == CFG.config_hash()
    assert rec["normalization_params_hash"] == "p1"
    assert rec["feature_count"] == len(FEATURES) and rec["sessions"] == spec.sessions
    assert rec["code_version"] == finnex_ml.__version__
    assert rec["missing"].shape == (spec.sessions, len(FEATURES)) and rec["missing"].sum() == 1
    assert rec["missing_cells"] == 1
    assert np.array_equal(rec["norm_center"], np.arange(len(FEATURES)))
    with h5py.File(path, "r") as f:
        ds = f["image"]
        assert ds.dtype == np.float32 and ds.shape == (512, 512, 3)
        # default: uncompressed and contiguous, the fast path (see store.DEFAULT_COMPRESSION)
        assert ds.chunks is None and ds.compression is None and f["missing"].compression is None
    assert list_dates(tmp_path) == [d]
    with pytest.raises(DataInputError, match="no mega-image stored for 2024-04-03"):
        read_image(tmp_path, "2024-04-03")
    with pytest.raises(ConfigError):
        image_path(tmp_path, "../../etc")
    with pytest.raises(ValueError, match="float32"):
        write_image(tmp_path, d, img.astype(np.float64), spec=spec, norm_config=CFG)


def test_failed_write_leaves_previous_file_intact(tmp_path: Path, spec: LayoutSpec, monkeypatch) -> None:
    d = date(2024, 4, 3)
    path, old = _write(tmp_path, spec, d, 1)
    before = path.read_bytes()
    seen: dict[str, object] = {}

    def crash(f, *args, **kwargs):  # the image data is already in the temp file at this point
        seen["tmp"] = Path(f.filename)
        seen["partial"] = f["image"][0, :4, 0].copy()
        raise OSError("disk vanished mid-write")

    monkeypatch.setattr(store, "_write_metadata", crash)
    with pytest.raises(OSError, match="disk vanished"):
        _write(tmp_path, spec, d, 2)
    tmp = seen["tmp"]
    assert tmp.parent == path.parent and tmp.name != path.name  # the write really went to a temp file
    assert seen["partial"].tolist() == encode(_window(spec, 2), spec)[0, :4, 0].tolist()
    assert path.read_bytes() == before  # the earlier file is untouched ...
    assert np.array_equal(read_image(tmp_path, d), old)  # ... and readable
    assert not tmp.exists() and sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_killed_writer_leaves_previous_file_intact(tmp_path: Path, spec: LayoutSpec) -> None:
    d = date(2024, 4, 4)
    path, old = _write(tmp_path, spec, d, 1)
    before = path.read_bytes()
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    child = textwrap.dedent(f"""
        import os, pathlib, numpy as np
        from finnex_ml.encoding import LayoutSpec, encode, NormConfig, write_image, store
        spec = LayoutSpec.from_json(pathlib.Path({str(spec_file)!r}).read_text())
        def die(f, *a, **k):
            f.flush()
            os._exit(137)  # like SIGKILL: no cleanup, no exception handlers
        store._write_metadata = die
        w = np.full((spec.sessions, spec.n_features), 0.75, dtype=np.float32)
        write_image({str(tmp_path)!r}, "{d.isoformat()}", encode(w, spec), spec=spec, norm_config=NormConfig())
    """)
    proc = subprocess.run(
        [sys.executable, "-c", child],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.returncode == 137, proc.stderr
    assert path.read_bytes() == before
    assert np.array_equal(read_image(tmp_path, d), old)
    strays = [p for p in path.parent.iterdir() if p != path]
    assert len(strays) == 1 and strays[0].name.startswith(f".{path.name}.") and strays[0].suffix == ".tmp"
    assert list_dates(tmp_path) == [d]  # the stray temp file is never listed
    # the writers' sweep removes it once it is old enough to have no live owner, and nothing else
    assert sweep_stale_temps(tmp_path) == []
    unrelated = path.parent / ".notes.tmp"
    unrelated.write_text("not ours")
    for p in (strays[0], unrelated):
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    assert sweep_stale_temps(tmp_path) == strays
    assert sorted(p.name for p in path.parent.iterdir()) == [".notes.tmp", path.name]


def test_range_view_is_lazy_and_matches_per_date_reads(tmp_path: Path, spec: LayoutSpec) -> None:
    images = {d: _write(tmp_path, spec, d, i)[1] for i, d in enumerate(DATES)}
    with open_range(tmp_path, DATES) as view:
        assert view.shape == (len(DATES), 512, 512, 3) and view.dtype == np.float32
        assert len(view) == len(DATES)
        for k in (0, 17, len(DATES) - 1):
            assert np.array_equal(view[k], read_image(tmp_path, DATES[k]))
        assert np.array_equal(view[5:8, 171:342, :, 0], np.stack([images[d][171:342, :, 0] for d in DATES[5:8]]))
        assert np.array_equal(decode(view[3], spec), _window(spec, 3))
        vds_size = os.path.getsize(view.path)
        assert vds_size < 64 * 1024 < len(DATES) * images[DATES[0]].nbytes / 100  # mapping only
        with h5py.File(view.path, "r") as f:
            assert f["images"].is_virtual and len(f["images"].virtual_sources()) == len(DATES)
    assert list_dates(tmp_path, DATES[5], DATES[9].isoformat()) == DATES[5:10]
    # a view, not a copy: rewriting a source file shows through a fresh read of the same VDS
    _, new_img = _write(tmp_path, spec, DATES[2], 999)
    with h5py.File(view.path, "r") as f:
        assert np.array_equal(f["images"][2], new_img)


def test_range_view_errors(tmp_path: Path, spec: LayoutSpec) -> None:
    for i, d in enumerate(DATES[:3]):
        _write(tmp_path, spec, d, i)
    with pytest.raises(DataInputError, match=f"first {DATES[3]}"):
        open_range(tmp_path, DATES[:4])
    other = build_layout(FEATURES, sessions=28)
    write_image(
        tmp_path, DATES[3], encode(np.zeros((28, len(FEATURES)), np.float32), other), spec=other, norm_config=CFG
    )
    with pytest.raises(DataInputError, match="mixes 2 layouts"):
        open_range(tmp_path, DATES[:4])


def test_write_spec_files(tmp_path: Path, spec: LayoutSpec) -> None:
    spec_path, norm_path = write_spec(tmp_path, spec, CFG, {"price__rsi_14": {"missing_fraction": 0.0}})
    assert spec_path == tmp_path.resolve() / "metadata" / "channel_encoding_spec.json"
    assert read_spec(tmp_path) == spec
    doc = json.loads(spec_path.read_text())
    assert doc["spec_hash"] == spec.spec_hash() and doc["sessions"] == 56
    params = json.loads(norm_path.read_text())
    assert params["window"] == 252 and params["squash"] == "logistic" and params["fill_value"] == 0.5
    assert params["epsilon"] == CFG.epsilon and params["config_hash"] == CFG.config_hash()
    assert params["features"]["price__rsi_14"] == {"index": FEATURES.index("price__rsi_14"), "missing_fraction": 0.0}
    assert len(params["features"]) == len(FEATURES)
    assert NormConfig.from_dict(params) == CFG
    assert [p.name for p in spec_path.parent.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(ConfigError, match="different layout"):
        write_spec(tmp_path, build_layout(FEATURES, sessions=28), CFG)
    write_spec(tmp_path, build_layout(FEATURES, sessions=28), CFG, overwrite=True)
    assert read_spec(tmp_path).sessions == 28


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compressed_images_are_chunked_smaller_and_exact(tmp_path: Path, spec: LayoutSpec, compression: str) -> None:
    d = date(2024, 4, 2)
    path, img = _write(tmp_path, spec, d, 1, compression=compression)
    raw_path, _ = _write(tmp_path / "raw", spec, d, 1, compression=None)
    with h5py.File(path, "r") as f:
        ds = f["image"]
        assert ds.chunks == (32, 512, 3) and ds.compression == compression
        assert ds.compression_opts == (1 if compression == "gzip" else None)
        assert f["missing"].compression == "gzip"
    assert os.path.getsize(path) < 0.5 * img.nbytes < os.path.getsize(raw_path)  # piecewise constant
    assert read_image(tmp_path, d).tobytes() == read_image(tmp_path / "raw", d).tobytes() == img.tobytes()
    assert read_record(tmp_path, d)["missing"].sum() == 1


def test_unknown_compression_writes_nothing(tmp_path: Path, spec: LayoutSpec) -> None:
    with pytest.raises(ConfigError, match="compression must be"):
        _write(tmp_path, spec, date(2024, 4, 2), 1, compression="zstd")
    assert not list(tmp_path.rglob("*.h5*"))


def test_shard_path_of_a_relative_root_follows_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    # the resolved root is cached per absolute path, never per relative string
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        monkeypatch.chdir(tmp_path / sub)
        assert image_path("imgs", "2024-04-02") == (tmp_path / sub).resolve() / "imgs/2024/04/2024-04-02.h5"
    with pytest.raises(ConfigError, match="plain file extension"):
        store.date_shard_path(tmp_path, "2024-04-02", suffix="/../x")
