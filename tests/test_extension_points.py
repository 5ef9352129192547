"""The three extension points, each used from this file alone: a toy image encoder
(``register_encoder``), a toy model (``register_model``) and a toy modality
(``register_modality``), and the pipeline materialises with them.

The modality reaches ``daily_features`` (and, through its ``tile``, the tile layout); the encoder
writes images of its own geometry with its spec and name in the store, and its QA gates the asset;
the model trains one tiny epoch through its generated training asset and its checkpoint loads
back by name."""

import hashlib
import json
import warnings
from dataclasses import dataclass
from functools import cached_property

import dagster as dg
import numpy as np
import polars as pl
import pytest
import torch
from conftest import pipeline_resources
from torch import nn

from finnex_assets.assets.datasets import dataset_splits, labels, patch_dataset
from finnex_assets.assets.features import daily_features_asset
from finnex_assets.assets.images import LOOKBACK, mega_images
from finnex_assets.assets.ingestion import modalities_asset
from finnex_assets.assets.training import training_asset
from finnex_assets.resources import MlflowTracking
from finnex_ml import calendar
from finnex_ml import modalities as md
from finnex_ml.encoding import (
    ImageEncoder,
    PixelLookup,
    read_encoder,
    read_record,
    register_encoder,
    unregister_encoder,
)
from finnex_ml.encoding.store import read_spec
from finnex_ml.features import META_COLUMNS
from finnex_ml.models import CLASS_NAMES, MultiTaskModel, model_spec, register_model, unregister_model
from finnex_ml.training import load_checkpoint_model

warnings.filterwarnings("ignore", category=dg.BetaWarning)
pytestmark = pytest.mark.usefixtures("one_thread")

FIRST, LAST = "2024-03-04", "2024-03-13"  # 8 image dates, as in test_structure_hashes
TOY_SESSIONS = 20


# ---- a toy modality: the target's log volume, as known at each close ------------------------


def _toy_load(source, raw, sessions):
    return raw.prices.select("date", pl.col("volume").log1p().alias("log_volume"))


def _toy_features(snapshots: pl.DataFrame) -> pl.DataFrame:
    # per snapshot (asof): the last value and its 5-session change, from rows <= asof only
    return (
        snapshots.sort("asof", "date")
        .group_by("asof", maintain_order=True)
        .agg(
            pl.col("log_volume").last().alias("toy__log_volume"),
            (pl.col("log_volume").last() - pl.col("log_volume").tail(6).first()).alias("toy__log_volume_chg5"),
        )
        .rename({"asof": "date"})
    )


TOY_MODALITY = md.Modality(
    name="toy",
    asset="toy_data",
    prefixes=("toy",),
    provenance="toy",
    description="Log volume of the target (a toy modality).",
    load=_toy_load,
    staleness_limit=10,
    features=_toy_features,
    tile="behavioral.blue",
)


# ---- a toy encoder: one row per feature, one column per session, the value in every channel ---


@dataclass(frozen=True)
class RowsSpec:
    sessions: int
    features: tuple[str, ...]
    unassigned: tuple[str, ...] = ()
    fill_value: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.features), self.sessions, 3)

    @property
    def n_features(self) -> int:
        return len(self.features)

    @cached_property
    def feature_index(self) -> dict[str, int]:
        return {f: i for i, f in enumerate(self.features)}

    def to_dict(self) -> dict:
        return {"kind": "rows", "sessions": self.sessions, "features": list(self.features)}

    def spec_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


class RowsEncoder(ImageEncoder):
    name = "toy_rows"
    spec_type = RowsSpec

    def build_spec(self, feature_names):
        return RowsSpec(TOY_SESSIONS, tuple(f for f in feature_names if f not in META_COLUMNS))

    def spec_from_dict(self, doc):
        return RowsSpec(int(doc["sessions"]), tuple(doc["features"]))

    def encode(self, window, spec, out=None):
        img = np.repeat(np.asarray(window, dtype=np.float32).T[:, :, None], 3, axis=2)
        if out is None:
            return np.ascontiguousarray(img)
        out[...] = img
        return out

    def decode(self, image, spec):
        return np.ascontiguousarray(np.asarray(image, dtype=np.float32)[:, :, 0].T)

    def pixel_lookup(self, spec):
        f, L = spec.n_features, spec.sessions
        feature = np.broadcast_to(np.arange(f, dtype=np.int32)[:, None, None], spec.shape).copy()
        lag = np.broadcast_to((L - 1 - np.arange(L, dtype=np.int32))[None, :, None], spec.shape).copy()
        return PixelLookup(feature, lag, np.zeros(spec.shape, dtype=np.int16))


# ---- a toy model: channel means -> a small linear layer ---------------------------------------


@dataclass(frozen=True)
class TinyConfig:
    width: int = 8
    num_classes: int = len(CLASS_NAMES)
    dropout: float = 0.0
    layout: str = ""  # the training asset passes the stored tile layout; this model ignores it


class TinyNet(nn.Module):
    def __init__(self, config: TinyConfig | None = None) -> None:
        super().__init__()
        self.config = config or TinyConfig()
        self.proj = nn.Linear(3, self.config.width)
        self.classifier = nn.Linear(self.config.width, self.config.num_classes)

    @property
    def feature_dim(self) -> int:
        return self.config.width

    def forward_features(self, x, patch_pos=None, return_attention=False):
        return torch.relu(self.proj(x.mean(dim=(2, 3)))), None

    def forward(self, x, patch_pos=None):
        return self.classifier(self.forward_features(x)[0])


class TinyMultiTask(MultiTaskModel):
    def __init__(self, config: TinyConfig | None = None, horizons=(1,)) -> None:
        super().__init__(TinyNet(config), horizons)


# ---- the pipeline ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registered():
    md.register_modality(TOY_MODALITY)
    register_encoder("toy_rows", RowsEncoder)
    register_model("tiny", "TinyNet", TinyNet, TinyMultiTask, {"small": TinyConfig()})
    try:
        yield
    finally:  # the other test files must see the built-in registries only
        md.unregister_modality("toy")
        unregister_encoder("toy_rows")
        unregister_model("tiny")


def _run(assets, res, selection, a=None, b=None, run_config=None):
    tags = {"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b} if a else None
    return dg.materialize(
        assets,
        resources=res,
        instance=dg.DagsterInstance.ephemeral(),
        selection=selection,
        tags=tags,
        run_config=run_config,
    )


@pytest.fixture(scope="module")
def built(registered, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extension")
    res = pipeline_resources(tmp)
    res["mlflow_tracking"] = MlflowTracking(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="toy")
    ingestion, features, tiny_model = modalities_asset(), daily_features_asset(), training_asset("tiny")
    assets = [ingestion, features, mega_images, labels, patch_dataset, dataset_splits, tiny_model]
    days = calendar.sessions(FIRST, LAST)
    start = calendar.sessions_back(days[0], LOOKBACK).isoformat()
    nxt = calendar.sessions_forward(days[-1], 1).isoformat()
    _run(assets, res, [ingestion, features], start, nxt)
    # the toy encoder's images in a store of their own
    toy_res = {**pipeline_resources(tmp / "toy", tables_from=tmp), "mlflow_tracking": res["mlflow_tracking"]}
    toy_images = _run(
        assets, toy_res, [mega_images], FIRST, LAST, {"ops": {"mega_images": {"config": {"encoder": "toy_rows"}}}}
    )
    # the default tile images through labels, patches and splits to the toy model
    _run(assets, res, [mega_images], FIRST, LAST)
    _run(assets, res, [labels], FIRST, LAST, {"ops": {"labels": {"config": {"horizons": [1]}}}})
    _run(assets, res, [patch_dataset], FIRST, LAST)
    split_cfg = {"train_fraction": 0.5, "val_fraction": 0.25, "folds": 1}
    _run(assets, res, [dataset_splits], run_config={"ops": {"dataset_splits": {"config": split_cfg}}})
    train_cfg = {"epochs": 1, "batch_size": 4, "seeds": [0], "horizons": [1], "num_threads": 1, "patience": 1}
    trained = _run(assets, res, [tiny_model], run_config={"ops": {"tiny_model": {"config": train_cfg}}})
    return tmp, toy_images, trained


def test_toy_modality_reaches_daily_features_and_the_tile_layout(built):
    tmp, _, _ = built
    files = sorted((tmp / "tables" / "daily_features").rglob("*.parquet"))
    table = pl.concat([pl.read_parquet(p) for p in files]).sort("date")
    toy_cols = [c for c in table.columns if c.startswith("toy__")]
    assert toy_cols == ["toy__log_volume", "toy__log_volume_chg5"]
    # the feature is the target's log volume at t, from its own ingestion snapshot of t
    d = calendar.sessions(FIRST, LAST)[-1]
    snap = pl.read_parquet(tmp / "tables" / "toy_data" / f"{d.year}" / f"{d.isoformat()}.parquet")
    assert snap["asof"].unique().to_list() == [d]
    at_d = snap.filter(pl.col("date") == d)["log_volume"].item()
    assert table.filter(pl.col("date") == d)["toy__log_volume"].item() == at_d
    market = pl.read_parquet(tmp / "tables" / "market_data" / f"{d.year}" / f"{d.isoformat()}.parquet")
    assert at_d == pytest.approx(np.log1p(market.filter(pl.col("date") == d)["volume"].item()))
    warm = table.filter(pl.col("warmup_complete"))
    assert warm.height > 0 and warm.select(pl.col(toy_cols).is_finite().all()).row(0) == (True, True)
    # the entry's tile places its columns in the default tile layout
    spec = read_spec(tmp / "mega_images")
    assert spec.tile_of["toy__log_volume"] == "behavioral.blue"


def test_toy_encoder_images_have_its_geometry_in_the_store(built):
    tmp, toy_images, _ = built
    assert toy_images.success
    evals = {e.check_name: e.passed for e in toy_images.get_asset_check_evaluations()}
    assert evals == {
        "dtype_shape_range": True,
        "spatial_integrity": True,
        "temporal_continuity": True,
        "feature_preservation": True,
    }
    doc = json.loads((tmp / "toy" / "mega_images" / "metadata" / "channel_encoding_spec.json").read_text())
    assert doc["encoder"] == "toy_rows" and doc["sessions"] == TOY_SESSIONS
    encoder, spec = read_encoder(tmp / "toy" / "mega_images")
    assert isinstance(encoder, RowsEncoder) and isinstance(spec, RowsSpec)
    assert "toy__log_volume" in spec.features
    days = calendar.sessions(FIRST, LAST)
    rec = read_record(tmp / "toy" / "mega_images", days[3])
    assert rec["image"].shape == (spec.n_features, TOY_SESSIONS, 3) == spec.shape
    assert rec["spec_hash"] == spec.spec_hash() and rec["sessions"] == TOY_SESSIONS
    window = encoder.decode(rec["image"], spec)
    assert window.shape == (TOY_SESSIONS, spec.n_features) and ((window >= 0) & (window <= 1)).all()
    # consecutive images share their sessions, shifted by one (the same trailing normalisation)
    prev = encoder.decode(read_record(tmp / "toy" / "mega_images", days[2])["image"], spec)
    np.testing.assert_array_equal(prev[1:], window[:-1])
    # the tile store beside it is untouched by the toy encoder
    tile_encoder, tile_spec = read_encoder(tmp / "mega_images")
    assert tile_encoder.name == "tiles" and tile_spec.shape == (512, 512, 3)


def test_toy_model_trains_and_its_checkpoint_loads_back_by_name(built):
    tmp, _, trained = built
    assert trained.success
    ckpt = tmp / "datasets" / "models" / "tiny_model" / "best.pt"
    model, meta = load_checkpoint_model(ckpt)
    members = getattr(model, "members", [model])
    assert all(isinstance(m, TinyMultiTask) for m in members)
    assert model_spec(members[0])["name"] == "tiny"
    out = model(torch.full((2, 3, 512, 512), 0.5))
    assert out["classification"].shape == (2, len(CLASS_NAMES))
    metadata = trained.asset_materializations_for_node("tiny_model")[0].metadata
    assert metadata["epochs_run"].value == [1]


# ---- the registries' contracts, without the pipeline -------------------------------------------


def _window(spec, seed=0):
    return np.random.default_rng(seed).random((spec.sessions, spec.n_features), dtype=np.float32)


def test_tiles_is_the_default_encoder_and_its_qa_answers_every_check():
    from finnex_ml.encoding import QA_CHECKS, TileEncoder, build_layout, create_encoder, decode, encode

    enc = create_encoder()
    assert isinstance(enc, TileEncoder) and enc.name == "tiles"
    spec = enc.build_spec(["date", "price__a", "price__b", "macro__vix", "news__mean"])
    assert spec == build_layout(["price__a", "price__b", "macro__vix", "news__mean"])
    w0, w1 = _window(spec, 0), _window(spec, 1)
    w1[:-1] = w0[1:]  # consecutive sessions: the window slides by one
    img0, img1 = enc.encode(w0, spec), enc.encode(w1, spec)
    np.testing.assert_array_equal(img1, encode(w1, spec))
    np.testing.assert_array_equal(enc.decode(img1, spec), decode(img1, spec))
    result = enc.qa(img1, spec, w1, img0)
    assert set(result) == set(QA_CHECKS) and all(ok for ok, _ in result.values())
    assert enc.qa(img1, spec, w0, img0)["spatial_integrity"][0] is False  # the wrong window
    # code handed a spec alone finds its encoder (interpretability's pixel lookup)
    from finnex_ml.encoding import encoder_of
    from finnex_ml.errors import ConfigError

    assert isinstance(encoder_of(spec), TileEncoder)
    with pytest.raises(ConfigError, match="no registered image encoder builds dict specs"):
        encoder_of({"sessions": 5})


def test_base_qa_catches_an_encoder_that_loses_a_feature():
    class LossyRows(RowsEncoder):
        name = "lossy_rows"

        def decode(self, image, spec):
            out = super().decode(image, spec)
            out[:, -1] = 0.5  # the last feature never comes back
            return out

    spec = RowsSpec(5, ("a__x", "a__y"))
    w = _window(spec)
    ok = RowsEncoder().qa(RowsEncoder().encode(w, spec), spec, w)
    assert ok["feature_preservation"][0] and ok["spatial_integrity"][0] and ok["dtype_shape_range"][0]
    bad = LossyRows().qa(LossyRows().encode(w, spec), spec, w)
    assert bad["feature_preservation"][0] is False and bad["feature_preservation"][1]["max_abs_error"] > 1e-6
    wrong_shape = RowsEncoder().qa(np.zeros((2, 4, 3), np.float32), spec)
    assert wrong_shape["dtype_shape_range"] == (
        False,
        {"dtype": "float32", "shape": [2, 4, 3], "expected_shape": [2, 5, 3]},
    )


def test_encoder_registry_errors_name_the_registered_encoders():
    from finnex_ml.encoding import create_encoder, encoder_names
    from finnex_ml.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown image encoder 'gaf'; registered: \['tiles'"):
        create_encoder("gaf")
    with pytest.raises(ConfigError, match="already registered"):
        register_encoder("tiles", RowsEncoder)
    register_encoder("misnamed", RowsEncoder)
    try:
        with pytest.raises(ConfigError, match="registered as 'misnamed' calls itself 'toy_rows'"):
            create_encoder("misnamed")
    finally:
        unregister_encoder("misnamed")
    assert "misnamed" not in encoder_names()


def test_a_store_refuses_a_second_encoder(tmp_path):
    from finnex_ml.encoding import write_spec
    from finnex_ml.errors import ConfigError

    spec = RowsSpec(5, ("a__x",))
    write_spec(tmp_path, spec, encoder="rows_a")
    with pytest.raises(ConfigError, match="encoder 'rows_a'.*vs encoder 'rows_b'"):
        write_spec(tmp_path, spec, encoder="rows_b")


def test_modality_table_refuses_clashes_and_entries_without_features():
    from finnex_ml.errors import ConfigError

    base = dict(provenance="x", description="x", load=_toy_load, features=_toy_features)
    with pytest.raises(ConfigError, match="prefix 'price' already belongs to 'market'"):
        md.register_modality(md.Modality(name="x", asset="x_data", prefixes=("price",), **base))
    with pytest.raises(ConfigError, match="asset name 'macro_data' is taken"):
        md.register_modality(md.Modality(name="x", asset="macro_data", prefixes=("xx",), **base))
    with pytest.raises(ConfigError, match="needs a features hook"):
        md.register_modality(md.Modality(name="x", asset="x_data", prefixes=("xx",), **{**base, "features": None}))
    assert "x" not in md.MODALITIES
    assert md.staleness_limits()["macro"] == 100 and md.staleness_limits()["fundamental"] == 140


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_store_round_trips_another_encoders_geometry(tmp_path, compression):
    from finnex_ml.encoding import NormConfig, open_range, read_image, write_image

    spec, enc = RowsSpec(5, ("a__x", "a__y")), RowsEncoder()
    days = calendar.sessions("2024-01-02", "2024-01-04")
    images = [enc.encode(_window(spec, i), spec) for i in range(len(days))]
    for d, img in zip(days, images):
        write_image(tmp_path, d, img, spec=spec, norm_config=NormConfig(), compression=compression)
    for d, img in zip(days, images):
        np.testing.assert_array_equal(read_image(tmp_path, d), img)
    with open_range(tmp_path, days) as view:
        assert view.shape == (3, 2, 5, 3)
        np.testing.assert_array_equal(view[1], images[1])
    with pytest.raises(ValueError, match=r"2024-01-02: image must be float32 \(2, 5, 3\)"):
        write_image(tmp_path, days[0], np.zeros((512, 512, 3), np.float32), spec=spec, norm_config=NormConfig())
