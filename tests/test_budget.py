"""Compute budgets: each preset is valid run config for the assets it drives, ``standard`` is
their defaults, and the printed cost is arithmetic on a measured rate."""

import math

import dagster as dg
import pytest

from finnex_assets.assets.evaluation import EvaluationConfig
from finnex_assets.assets.training import TrainingConfig
from finnex_assets.assets.universe import UniverseEvaluationConfig, UniverseModelConfig, UniverseWalkForwardConfig
from finnex_ml import budget


@pytest.mark.parametrize("name", budget.BUDGET_NAMES)
@pytest.mark.parametrize("mode", ["single", "universe"])
def test_every_budget_is_valid_run_config_for_its_assets(name, mode):
    from finnex_assets.definitions import defs

    ops = budget.run_config(budget.budget(name, mode), mode)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(k) for k in ops})
    result = dg.validate_run_config(job, {"ops": ops})
    assert set(result["ops"]) == set(ops)


def test_standard_is_every_assets_default_config():
    single, universe = budget.budget("standard", "single"), budget.budget("standard", "universe")
    train, ev = TrainingConfig(), EvaluationConfig()
    assert (single.epochs, single.seeds) == (train.epochs, tuple(train.seeds))
    assert (single.n_boot, single.n_permutations) == (ev.n_boot, ev.n_permutations)
    assert (single.walk_forward_epochs, single.permuted_label_epochs) == (
        ev.walk_forward_epochs,
        ev.permuted_label_epochs,
    )
    assert (single.refit_permutations, single.leak_permutations) == (ev.refit_permutations, ev.leak_permutations)
    # the walk-forward retrains the network per fold on the full budget
    assert (single.walk_forward_epochs, single.seeds) == (ev.walk_forward_epochs, tuple(ev.walk_forward_seeds))
    assert single.permuted_label_runs == ev.permuted_label_runs
    for name in budget.BUDGET_NAMES:
        b = budget.budget(name, "single")
        ops = budget.run_config(b, "single")["model_evaluation"]["config"]
        assert (ops["walk_forward_epochs"], ops["walk_forward_seeds"]) == (b.epochs, list(b.seeds))
    model, uev = UniverseModelConfig(), UniverseEvaluationConfig()
    assert (universe.epochs, universe.seeds) == (model.epochs, tuple(model.seeds))
    assert (universe.n_boot, universe.n_permutations) == (uev.n_boot, uev.n_perm)
    walk = UniverseWalkForwardConfig()
    assert walk.walk_forward and universe.walk_forward_epochs == walk.epochs
    quick, thorough = budget.budget("quick", "single"), budget.budget("thorough", "single")
    assert quick.epochs * len(quick.seeds) < single.epochs * len(single.seeds) < thorough.epochs * len(thorough.seeds)
    with pytest.raises(ValueError, match="unknown budget 'fast'"):
        budget.budget("fast", "single")


def test_training_cost_is_passes_times_the_measured_rate(synthetic_2024):
    from finnex_ml.encoding.layout import build_layout

    b = budget.budget("standard", "universe")  # 5 epochs x 1 seed
    pixels = budget.StepCost(0.02)  # a model that reads pixels every step
    cost = budget.training_cost(b, n_train=600, n_val=300, step=pixels)
    assert cost.passes == 5 * 1 * 900
    assert cost.seconds == pytest.approx(5 * (600 + 100) * 0.02)
    text = cost.describe(600, 300, b)
    assert "up to 5 epochs x 1 seed(s) over 600 training and 300 validation images = 4,500 image passes" in text
    assert "20.0 ms of compute per training image and 0.0 ms to read an image, every pass" in text
    assert "~1.2 min of compute and reading if every epoch runs" in text
    # every pass (training or validation) also reads its image: 4,500 reads at 4 ms add 18 s
    read = budget.training_cost(b, n_train=600, n_val=300, step=pixels, read_per_image=0.004)
    assert read.seconds == pytest.approx(5 * (600 + 100) * 0.02 + 4500 * 0.004)
    assert "4.0 ms to read an image" in read.describe(600, 300, b) and "~1.5 min" in read.describe(600, 300, b)
    assert "permuted-label" not in text  # single-stock evaluation work, not universe mode's
    single = budget.budget("standard", "single")
    assert "permuted-label control trains 2 network(s) for 4 epoch(s)" in cost.describe(600, 300, single)
    # a layout-aware model trains from cells: each image read and its cells computed once
    cells = budget.StepCost(0.02, from_cells_per_image=0.008, cells_per_image=0.003, cell_bytes=46_000)
    once = budget.training_cost(b, n_train=600, n_val=300, step=cells, read_per_image=0.004)
    assert once.seconds == pytest.approx(5 * (600 + 100) * 0.008 + 900 * (0.004 + 0.003))
    assert "3.0 ms for its cells, once per image" in once.describe(600, 300, b)
    # cells beyond TrainConfig.cell_cache_mb (1,024 MB): the trainer reads pixels, and so does the cost
    many = 30_000
    assert budget.training_cost(b, many, 0, cells, 0.004).seconds == pytest.approx(
        budget.training_cost(b, many, 0, pixels, 0.004).seconds
    )
    spec = build_layout([c for c in synthetic_2024.features.columns if c != "date"])
    step = budget.seconds_per_image(spec, batch_size=2, steps=1)  # real forward/backward passes on the layout
    assert math.isfinite(step.per_image) and step.per_image > 0
    assert 0 < step.from_cells_per_image and 0 < step.cells_per_image
    assert step.cell_bytes == 4 * len(spec.features) * spec.sessions


def test_walk_forward_cost_is_passes_times_the_measured_rate():
    b = budget.budget("quick", "universe")  # 1 epoch per fold x 1 seed
    folds = [(1000, 300, 5000), (1000, 300, 5000)]
    cost = budget.walk_forward_cost(b, folds, budget.StepCost(0.01))
    assert (cost.folds, cost.fit_images, cost.val_images, cost.test_images) == (2, 2000, 600, 10000)
    # the test blocks are predicted once; the inner validation block only when validating
    assert cost.seconds == pytest.approx((1 * (2000 + 600 / 2) + 10000 / 2) * 0.01)
    assert "2 yearly folds" in cost.describe(b) and "~1.2 min" in cost.describe(b)
    read = budget.walk_forward_cost(b, folds, budget.StepCost(0.01), read_per_image=0.002)
    # reads: 1 epoch x (2000 fitted + 600 validation) + one pass over the test blocks
    assert read.seconds == pytest.approx(cost.seconds + (2600 + 10000) * 0.002)
    # from cells: fitted and validation images read and reduced once per fold; test blocks from pixels
    cells = budget.StepCost(0.01, from_cells_per_image=0.004, cells_per_image=0.001, cell_bytes=46_000)
    once = budget.walk_forward_cost(b, folds, cells, read_per_image=0.002)
    assert once.seconds == pytest.approx((2000 + 300) * 0.004 + 2600 * 0.003 + 10000 * (0.005 + 0.002))


def test_read_cost_is_measured_on_the_stored_image_arrays_only(tmp_path):
    import h5py
    import numpy as np

    assert budget.read_seconds_per_image(tmp_path) == 0.0  # nothing stored yet
    folder = tmp_path / "2024" / "01"
    folder.mkdir(parents=True)
    with h5py.File(folder / "2024-01-02.h5", "w") as f:
        f.create_dataset("missing", data=np.zeros((64, 3), bool))  # not an image
        f.create_dataset("norm_center", data=np.zeros((64, 64, 3), np.int32))  # not float pixels
    with h5py.File(folder / ".2024-01-03.h5.x.tmp.h5", "w") as f:  # a temp file: skipped
        f.create_dataset("image", data=np.zeros((64, 64, 3), np.float32))
    assert budget.read_seconds_per_image(tmp_path) == 0.0  # no image array read, none counted
    for name, shape in (("2024-01-04.h5", (64, 64, 3)), ("2024-01-05.h5", (3, 64, 64, 3))):
        with h5py.File(folder / name, "w") as f:  # a per-date image, a cross-section of 3 images
            f.create_dataset("image", data=np.zeros(shape, np.float32))
    per_image = budget.read_seconds_per_image(tmp_path)
    assert math.isfinite(per_image) and per_image > 0


def test_the_training_assets_train_with_the_positive_controls_recipe():
    """One recipe: the training assets' defaults are ``IMAGE_RECIPE`` (what the positive control
    trains with), the lr left to each model's recipe (FinNeXViT's own 2e-3)."""
    from finnex_ml.training import IMAGE_RECIPE, image_recipe

    cfg = TrainingConfig()
    shared = {k: v for k, v in IMAGE_RECIPE.items() if k in TrainingConfig.model_fields and k != "lr"}
    assert len(shared) >= 8 and {k: getattr(cfg, k) for k in shared} == shared
    assert cfg.lr is None and image_recipe("cnn") == dict(IMAGE_RECIPE)
    assert image_recipe("vit") == {**IMAGE_RECIPE, "lr": 2e-3}
