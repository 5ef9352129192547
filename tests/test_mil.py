"""Patch mode as multiple-instance learning: gated-attention pooling of an image's bag of patches
(finnex_ml.models.GatedAttentionPool), bag datasets, and the 256-patch-token ViT variant."""

import numpy as np
import pytest
import torch

from finnex_ml.encoding.layout import build_layout
from finnex_ml.errors import ConfigError, DataInputError
from finnex_ml.evaluation import interpret as ip
from finnex_ml.models import (
    GatedAttentionPool,
    SeedEnsemble,
    create_model,
    image_to_bag,
    model_entry,
    model_from_spec,
    model_spec,
)
from finnex_ml.patches import extract_patches
from finnex_ml.training import ArrayDataset, BagDataset

TINY = {
    "cnn": {"widths": (4, 8, 8, 8), "token_dim": 8, "attn_heads": 2, "fusion_dim": 16},
    "vit": {"dim": 16, "depth": 1, "heads": 2},
}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gated_attention_weights_sum_to_one_and_ignore_order() -> None:
    torch.manual_seed(0)
    pool = GatedAttentionPool(8, 4)
    h = torch.randn(3, 10, 8)
    pooled, w = pool(h)
    assert pooled.shape == (3, 8) and w.shape == (3, 10)
    torch.testing.assert_close(w.sum(1), torch.ones(3))
    assert (w > 0).all() and w.std() > 1e-3  # a real weighting, not the uniform mean
    torch.testing.assert_close(pooled, torch.einsum("bn,bnd->bd", w, h))
    perm = torch.randperm(10)
    pooled_p, w_p = pool(h[:, perm])
    torch.testing.assert_close(pooled_p, pooled, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w_p, w[:, perm])
    with pytest.raises(ValueError, match=r"\[B, N, D\]"):
        pool(h[0])


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_bag_prediction_is_invariant_to_patch_order(name: str) -> None:
    torch.manual_seed(1)
    model = create_model(name, horizons=(1, 5), mil_dim=16, **TINY[name]).eval()
    x = torch.rand(2, 256, 3, 32, 32)
    pos = torch.arange(256).expand(2, -1)
    with torch.no_grad():
        out = model(x, patch_pos=pos)
        perm = torch.randperm(256)
        shuffled = model(x[:, perm], patch_pos=pos[:, perm])  # patches moved together with their positions
        # the same 8 patches at other places: positions and sections matter
        here, there = model(x[:, :8], patch_pos=pos[:, :8]), model(x[:, :8], patch_pos=pos[:, :8] + 200)
    w = out["patch_attention"]
    assert w.shape == (2, 256) and out["classification_by_horizon"].shape == (2, 2, 3)
    torch.testing.assert_close(w.sum(1), torch.ones(2))
    torch.testing.assert_close(
        shuffled["classification_by_horizon"], out["classification_by_horizon"], atol=1e-5, rtol=0
    )
    torch.testing.assert_close(shuffled["regression_by_horizon"], out["regression_by_horizon"], atol=1e-5, rtol=0)
    torch.testing.assert_close(shuffled["patch_attention"], w[:, perm], atol=1e-6, rtol=0)
    assert (here["features"] - there["features"]).abs().max() > 1e-3
    # a whole image is its bag with positions 0..255
    img = torch.rand(1, 3, 512, 512)
    with torch.no_grad():
        a = model(img)["classification"]
        b = model(image_to_bag(img), patch_pos=torch.arange(256)[None])["classification"]
    torch.testing.assert_close(a, b)
    hwc = img[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(image_to_bag(img)[0].permute(0, 2, 3, 1).numpy(), extract_patches(hwc))
    # the pooling is part of the spec a checkpoint rebuilds
    again = model_from_spec(model_spec(model)).eval()
    again.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(again(x, patch_pos=pos)["classification"], out["classification"])


def test_bag_errors_name_the_problem() -> None:
    plain = create_model("cnn", **TINY["cnn"])
    with pytest.raises(ValueError, match="mil_dim"):
        plain(torch.rand(1, 4, 3, 32, 32), patch_pos=torch.arange(4)[None])
    bag_model = create_model("cnn", mil_dim=8, **TINY["cnn"])
    with pytest.raises(ValueError, match=r"patch_pos must be \[B, N\]"):
        bag_model(torch.rand(1, 4, 3, 32, 32), patch_pos=torch.arange(4))


def test_ensemble_averages_the_members_attention() -> None:
    torch.manual_seed(2)
    members = [create_model("vit", mil_dim=8, **TINY["vit"]).eval() for _ in range(2)]
    ens = SeedEnsemble(members).eval()
    x, pos = torch.rand(1, 8, 3, 32, 32), torch.arange(8)[None]
    with torch.no_grad():
        w = ens(x, patch_pos=pos)["patch_attention"]
        ref = (members[0](x, patch_pos=pos)["patch_attention"] + members[1](x, patch_pos=pos)["patch_attention"]) / 2
    torch.testing.assert_close(w, ref)
    torch.testing.assert_close(w.sum(1), torch.ones(1))


def test_bag_attention_map_is_the_models_pooling() -> None:
    torch.manual_seed(3)
    model = create_model("cnn", mil_dim=8, **TINY["cnn"])
    image = np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)
    m = ip.bag_attention_map(model, image)
    assert m.shape == (16, 16) and m.min() >= 0 and m.sum() == pytest.approx(1.0, abs=1e-6)
    bag = torch.from_numpy(extract_patches(image)).permute(0, 3, 1, 2)[None]
    with torch.no_grad():
        ref = model.eval()(bag, patch_pos=torch.arange(256)[None])["patch_attention"][0].numpy()
    np.testing.assert_allclose(m.ravel(), ref, atol=1e-7)
    with pytest.raises(ValueError, match="mil_dim"):
        ip.bag_attention_map(create_model("vit", **TINY["vit"]), image)  # no bag pooling: no such map


def test_bag_dataset_reads_whole_images() -> None:
    ppi, n = 4, 5
    x = np.arange(n * ppi, dtype=np.float32)[:, None, None, None] * np.ones((1, 32, 32, 3), np.float32)
    labels = np.repeat(np.array([0, 2, 1, 1, 0]), ppi)
    rets = np.repeat(np.linspace(-0.01, 0.01, n), ppi).astype(np.float32)
    patches = ArrayDataset(
        x, {"label_h1": labels, "return_h1": rets}, indices=range(ppi, n * ppi), patches_per_image=ppi
    )
    bags = BagDataset(patches)
    assert len(bags) == 4 and bags.sample_shape == (ppi, 32, 32, 3)
    batch = bags.__getitems__([2, 0])
    assert batch["x"].shape == (2, ppi, 32, 32, 3)
    assert batch["x"][:, :, 0, 0, 0].tolist() == [[12, 13, 14, 15], [4, 5, 6, 7]]  # images 3 and 1
    assert batch["label_h1"].tolist() == [1, 2] and batch["row"].tolist() == [3, 1]
    assert batch["patch_pos"].tolist() == [[0, 1, 2, 3]] * 2
    np.testing.assert_array_equal(bags.target_array("label_h1"), [2, 1, 1, 0])
    with pytest.raises(ConfigError, match="whole images"):
        BagDataset(ArrayDataset(x, {"label_h1": labels}, indices=range(2, 10), patches_per_image=ppi))
    with pytest.raises(ConfigError, match="patches_per_image"):
        BagDataset(ArrayDataset(x, {"label_h1": labels}))
    mixed = labels.copy()
    mixed[5] = 0  # one patch of image 1 (label 2) disagrees
    with pytest.raises(DataInputError, match="image 1"):
        BagDataset(ArrayDataset(x, {"label_h1": mixed}, patches_per_image=ppi)).__getitems__([1])


def test_vit_patches_variant_reads_pixels_not_the_layout() -> None:
    entry = model_entry("vit_patches")
    assert entry.title.startswith("FinNeXViT") and not entry.layout_aware
    assert model_entry("vit").layout_aware and model_entry("cnn").layout_aware
    model = create_model("vit_patches", **TINY["vit"]).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 512, 512), return_attention=True)
    assert out["attention_weights"][0].shape == (1, 2, 257, 257)  # CLS + 16 x 16 patch tokens
    # its checkpoint spec names the variant, not the "vit" entry it shares FinNeXViT with
    spec = model_spec(SeedEnsemble([model]))
    assert spec["members"][0]["name"] == "vit_patches"
    assert model_spec(model_from_spec(spec["members"][0]))["name"] == "vit_patches"
    assert model_spec(create_model("vit", **TINY["vit"]))["name"] == "vit"


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_layout_bags_embed_each_patch_by_its_cells(name: str) -> None:
    spec = build_layout(["macro__control_a", "macro__rate_1", "price__close", "fundamental__eps_growth"])
    torch.manual_seed(4)
    size = {"cnn": {"fusion_dim": 16}, "vit": {"dim": 16, "depth": 1, "heads": 2}}[name]
    model = create_model(name, horizons=(1,), mil_dim=8, layout=spec, **size).eval()
    unused = {"cnn": ("branches", "cells", "fusion"), "vit": ("patch_embed", "cells", "cls_token")}[name]
    assert not any(hasattr(model.backbone, a) for a in unused)  # no pixel or whole-image stem
    image = torch.rand(2, 3, 512, 512)
    bag, pos = image_to_bag(image), torch.arange(256).expand(2, -1)
    with torch.no_grad():
        model.backbone.cell_embed.weight.normal_()  # (zero at the start)
        out = model(bag, patch_pos=pos)
        torch.testing.assert_close(model(image)["classification"], out["classification"])  # a whole image is its bag
        perm = torch.randperm(256)
        torch.testing.assert_close(model(bag[:, perm], patch_pos=pos[:, perm])["classification"], out["classification"])
        # the date-t cell of control_a (patch 15) moves the prediction; an unused pixel does not
        lit = image.clone()
        lit[:, 0, 0:20, 505:512] += 0.3
        assert not torch.allclose(model(lit)["classification"], out["classification"])
        pad = image.clone()
        pad[:, 0, 0:20, 0:4] += 0.3  # the unused columns left of the first session
        torch.testing.assert_close(model(pad)["classification"], out["classification"])
        again = model_from_spec(model_spec(model))
        again.load_state_dict(model.state_dict())
        torch.testing.assert_close(again.eval()(bag, patch_pos=pos)["classification"], out["classification"])
    assert out["patch_attention"].shape == (2, 256)
    with torch.no_grad():  # a whole bag without positions is in grid order (what extract_patches gives)
        torch.testing.assert_close(model(bag)["classification"], out["classification"])
    with pytest.raises(ValueError, match="needs patch_pos"):
        model(bag[:, :8])
    with pytest.raises(ValueError, match="reads bags"):
        model(torch.rand(1, 3, 32, 32))
