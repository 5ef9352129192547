"""cnn_model / vit_model through Dagster: cnn_ready sets in, MLflow run out, resume works."""

import json
import warnings

import dagster as dg
import h5py
import mlflow
import numpy as np
import pytest

from finnex_assets.assets.training import TRAINING_ASSETS
from finnex_assets.resources import MlflowTracking
from finnex_assets.storage import FinnexStorage
from finnex_ml import calendar
from finnex_ml.datasets_io import write_set_file
from finnex_ml.encoding.layout import build_layout
from finnex_ml.encoding.store import image_path
from finnex_ml.patches import shard_path

warnings.filterwarnings("ignore", category=dg.BetaWarning)
HORIZONS = (1, 5)
ASSETS = {a.key.path[-1]: a for a in TRAINING_ASSETS}
cnn_model, vit_model = ASSETS["cnn_model"], ASSETS["vit_model"]


def _fake_sets(tmp):
    """Tiny cnn_ready sets whose pixels reveal the class (the point here is the wiring)."""
    images, shards, ready = tmp / "mega_images", tmp / "datasets" / "patch_datasets", tmp / "datasets" / "cnn_ready"
    rng = np.random.default_rng(0)
    dates = calendar.sessions("2024-01-02", "2024-01-31")
    classes = np.array([[i % 3, (i + 1) % 3] for i in range(len(dates))], dtype=np.int8)
    for d, c in zip(dates, classes):
        img = (rng.random((512, 512, 3), dtype=np.float32) * 0.2 + 0.3 * c[0]).astype(np.float32)
        for path, key, arr in (
            (image_path(images, d), "image", img),
            (
                shard_path(shards, d),
                "patches",
                img.reshape(16, 32, 16, 32, 3).transpose(0, 2, 1, 3, 4).reshape(256, 32, 32, 3),
            ),
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as f:
                f.create_dataset(key, data=arr)
    returns = (classes.astype(np.float32) - 1) * 0.01
    for name, sl in (("train", slice(0, 6)), ("val", slice(8, 11))):
        write_set_file(
            ready / f"{name}.h5",
            name,
            dates[sl],
            images,
            shards,
            classes[sl],
            returns[sl],
            HORIZONS,
            spec_hash="test",
            split_hash="test",
        )
    (ready / "statistics.json").write_text(json.dumps({"train": {"n_dates": 6}}))
    # the layout spec mega_images stores: layout-aware models read it in patch mode too (the cell stem)
    (images / "metadata").mkdir(parents=True)
    spec = build_layout(["price__ret_1d", "macro__vix", "fundamental__eps_ttm"])
    (images / "metadata" / "channel_encoding_spec.json").write_text(spec.to_json(), encoding="utf-8")
    return ready


@pytest.fixture()
def setup(tmp_path):
    _fake_sets(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    resources = {
        "storage": FinnexStorage(root=str(tmp_path)),
        "mlflow_tracking": MlflowTracking(tracking_uri=uri, experiment="test"),
    }
    return tmp_path, resources, uri


def _train(asset, resources, **config):
    cfg = {
        "epochs": 2,
        "batch_size": 4,  # images (patch mode: bags of 256 patches)
        "patience": 5,
        "lr": 2e-3,
        "input_mode": "patch",
        "seeds": [0],
        "num_threads": 1,
        **config,
    }
    return dg.materialize(
        [asset],
        resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"ops": {asset.key.path[-1]: {"config": cfg}}},
        selection=[asset],
    )


@pytest.mark.parametrize("asset", [cnn_model, vit_model])
def test_training_asset_logs_a_complete_mlflow_run(setup, asset):
    tmp, resources, uri = setup
    result = _train(asset, resources)
    assert result.success
    meta = result.asset_materializations_for_node(asset.key.path[-1])[0].metadata
    run_id = meta["mlflow_run_id"].value
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.params["input_mode"] == "patch" and run.data.params["epochs"] == "2"
    assert run.data.params["train_rows"] == str(6 * 256)
    history = client.get_metric_history(run_id, "seed0_val_loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"confusion_matrix.json", "checkpoint", "dataset"} <= artifacts
    cm = json.loads(open(client.download_artifacts(run_id, "confusion_matrix.json", str(tmp))).read())
    assert np.array(cm["ensemble"]).sum() == 3  # one count per validation image (its bag), not per patch
    assert meta["degenerate"].value == (max(meta["val_class_shares"].value.values()) > 0.9)
    model = mlflow.pytorch.load_model(meta["mlflow_model_uri"].value)
    # the logged model names what loading it needs, pinned to the installed versions
    reqs = open(mlflow.pyfunc.get_model_dependencies(meta["mlflow_model_uri"].value)).read()
    from importlib.metadata import version

    assert f"torch=={version('torch').split('+')[0]}" in reqs.split() and "finnex==" in reqs
    torch = __import__("torch")
    assert model.members[0].backbone.patch_cells is not None  # patch mode hands the layout over too: the cell stem
    out = model(torch.zeros(2, 5, 3, 32, 32), patch_pos=torch.arange(5).expand(2, -1))  # two bags of 5 patches
    assert tuple(out["classification"].shape) == (2, 3) and tuple(out["patch_attention"].shape) == (2, 5)
    assert 0.0 <= meta["val_accuracy"].value <= 1.0


def test_training_resumes_from_its_checkpoint(setup):
    _, resources, uri = setup
    first = _train(cnn_model, resources)
    assert first.success
    # Same config, resume on: the finished checkpoint is picked up, no epoch is trained again.
    again = _train(cnn_model, resources, resume=True)
    meta = again.asset_materializations_for_node("cnn_model")[0].metadata
    first_meta = first.asset_materializations_for_node("cnn_model")[0].metadata
    assert meta["epochs_run"].value == [2] and meta["best_epochs"].value == first_meta["best_epochs"].value
    assert mlflow.MlflowClient(tracking_uri=uri).get_metric_history(meta["mlflow_run_id"].value, "seed0_val_loss") == []
    # A changed schedule cannot silently continue an old run.
    with pytest.raises(Exception, match="cannot resume, config differs"):
        _train(cnn_model, resources, epochs=3, resume=True)
    fresh = _train(cnn_model, resources, epochs=3, resume=False)
    history = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(
        fresh.asset_materializations_for_node("cnn_model")[0].metadata["mlflow_run_id"].value, "seed0_val_loss"
    )
    assert [m.step for m in history] == [1, 2, 3]


def test_training_without_dataset_splits_is_a_clear_error(tmp_path):
    resources = {
        "storage": FinnexStorage(root=str(tmp_path)),
        "mlflow_tracking": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'm.db'}"),
    }
    with pytest.raises(Exception, match="materialise dataset_splits first"):
        _train(cnn_model, resources)


def test_image_mode_trains_a_layout_aware_seed_ensemble(setup):
    """Default recipe: whole images through the stem read from the stored layout spec, one member
    per seed, averaged into best.pt that the evaluation's loader rebuilds."""
    import torch

    from finnex_ml.evaluation.predict import load_model
    from finnex_ml.models import SeedEnsemble

    tmp, resources, _ = setup
    meta_dir = tmp / "mega_images" / "metadata"
    meta_dir.mkdir(parents=True, exist_ok=True)
    spec = build_layout(["price__ret_1d", "price__rsi_14", "macro__vix", "news__mean", "fundamental__eps_ttm"])
    (meta_dir / "channel_encoding_spec.json").write_text(spec.to_json(), encoding="utf-8")
    result = _train(cnn_model, resources, input_mode="image", batch_size=4, seeds=[0, 1])
    meta = result.asset_materializations_for_node("cnn_model")[0].metadata
    assert meta["seeds"].value == [0, 1] and len(meta["epochs_run"].value) == 2
    loaded = load_model(meta["checkpoint"].value)
    assert isinstance(loaded.model, SeedEnsemble) and len(loaded.model.members) == 2
    assert loaded.model.config.layout == spec.canonical_json()
    x = torch.rand(2, 3, 512, 512)
    with torch.no_grad():
        out = loaded.model(x)["classification"].softmax(-1)
        members = torch.stack([m(x)["classification"].softmax(-1) for m in loaded.model.members]).mean(0)
    assert torch.allclose(out, members, atol=1e-6)


def test_vit_patches_trains_on_pixels_without_the_layout(setup):
    """The 256-patch-token ViT variant is not handed the layout spec in image mode."""
    from finnex_ml.evaluation.predict import load_model

    tmp, resources, _ = setup
    meta_dir = tmp / "mega_images" / "metadata"
    meta_dir.mkdir(parents=True, exist_ok=True)
    spec = build_layout(["price__ret_1d", "macro__vix", "fundamental__eps_ttm"])
    (meta_dir / "channel_encoding_spec.json").write_text(spec.to_json(), encoding="utf-8")
    result = _train(ASSETS["vit_patches_model"], resources, input_mode="image", batch_size=4, epochs=1)
    meta = result.asset_materializations_for_node("vit_patches_model")[0].metadata
    loaded = load_model(meta["checkpoint"].value)
    assert loaded.model.config.layout == "" and loaded.input_mode == "image"
