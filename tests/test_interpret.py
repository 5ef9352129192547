"""Interpretability maps: exactness against brute force and hand computations (CPU, tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from finnex_ml.encoding import build_layout
from finnex_ml.encoding.preview import SECTION_LINE, read_png
from finnex_ml.evaluation import interpret as ip
from finnex_ml.evaluation.predict import LoadedModel, forward_image
from finnex_ml.models import create_model
from finnex_ml.patches import extract_patches, patch_bounds

NAMES = [
    "macro__vix",
    "macro__rate_2y",
    "macro__cpi",
    "news__mood",
    "social__mood",
    "sentiment__avg",
    "price__ret_1d",
    "price__rsi_14",
    "market__implied_vol",
    "fundamental__analyst_rating",
    "fundamental__revenue_yoy",
    "fundamental__earnings_yield",
    "peer__ret",
]
TINY_CNN = {"widths": (4, 8, 8, 8), "token_dim": 8, "attn_heads": 2, "fusion_dim": 16}
TINY_VIT = {"dim": 16, "depth": 1, "heads": 2}
FILL = np.array([0.5, 0.45, 0.55], dtype=np.float32)
HOT = 37  # grid row 2, column 5: pixel rows 64-95, columns 160-191 (all macro, all used)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def spec():
    return build_layout(NAMES)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).random((512, 512, 3), dtype=np.float32)


class OnePatchModel(nn.Module):
    """Output dict of a 1-horizon model whose logits are ``(z, 0, -z)``, ``z = gain * (m - 0.5)``
    with ``m`` the mean of patch ``HOT``'s pixels: read from the whole image in image mode, from
    the bag's patch at ``patch_pos == HOT`` in patch mode (all the bag's attention on that patch),
    so both modes give the same numbers."""

    gain = 6.0

    def forward(self, x: torch.Tensor, patch_pos: torch.Tensor | None = None, return_attention: bool = False) -> dict:
        if x.shape[-1] == 512:
            r0, r1, c0, c1 = patch_bounds(HOT)
            m = x[:, :, r0:r1, c0:c1].mean(dim=(1, 2, 3))
        else:
            assert patch_pos is not None and x.ndim == 5 and x.shape[-1] == 32  # a bag [B, 256, 3, 32, 32]
            m = (x.mean(dim=(2, 3, 4)) * (patch_pos == HOT).to(x.dtype)).sum(1)
        z = self.gain * (m - 0.5)
        logits = torch.stack([z, torch.zeros_like(z), -z], dim=1)
        return {
            "classification": logits,
            "regression": z[:, None],
            "classification_by_horizon": logits[:, None],
            "regression_by_horizon": z[:, None],
            "features": z[:, None],
            "attention_weights": [],
        }


def _softmax_z(z: float) -> np.ndarray:
    e = np.exp([z, 0.0, -z])
    return e / e.sum()


def _hot_mask() -> np.ndarray:
    mask = np.zeros((512, 512), dtype=bool)
    r0, r1, c0, c1 = patch_bounds(HOT)
    mask[r0:r1, c0:c1] = True
    return mask


# ---- the one-patch model: all importance on patch 37 ----------------------------------------


@pytest.mark.parametrize("mode", ["image", "patch"])
def test_one_patch_model_occlusion_is_exact(image: np.ndarray, mode: str) -> None:
    model = OnePatchModel()
    r0, r1, c0, c1 = patch_bounds(HOT)
    z = OnePatchModel.gain * (float(image[r0:r1, c0:c1].astype(np.float64).mean()) - 0.5)
    z_fill = OnePatchModel.gain * (float(FILL.astype(np.float64).mean()) - 0.5)
    target = 0 if z > 0 else 2
    occ = ip.occlusion_importance(model, image, mode, target, fill=FILL)
    assert occ.shape == (16, 16)
    expected = _softmax_z(z)[target] - _softmax_z(z_fill)[target]
    assert abs(expected) > 1e-3
    # float32 softmax: each probability is good to ~1e-7, the difference to that absolutely
    assert occ[2, 5] == pytest.approx(expected, abs=3e-7)
    others = np.delete(occ.ravel(), HOT)
    np.testing.assert_array_equal(others, 0.0)
    # the image probability itself agrees with the hand computation
    p = ip.image_probabilities(model, image, mode)
    np.testing.assert_allclose(p, _softmax_z(z), rtol=1e-5)


@pytest.mark.parametrize("mode", ["image", "patch"])
def test_one_patch_model_saliency_and_attribution(image: np.ndarray, spec, mode: str) -> None:
    model = OnePatchModel()
    sal = ip.gradient_saliency(model, image, mode, 0)
    assert sal.shape == (512, 512, 3)
    hot = _hot_mask()
    assert (sal[~hot] == 0).all()
    # d log p0 / dx = (1 - p0 + p2) * gain / 3072 on every pixel of the patch, in both modes
    r0, r1, c0, c1 = patch_bounds(HOT)
    z = OnePatchModel.gain * (float(image[r0:r1, c0:c1].astype(np.float64).mean()) - 0.5)
    p = _softmax_z(z)
    expected = (1 - p[0] + p[2]) * OnePatchModel.gain / 3072
    np.testing.assert_allclose(sal[hot], expected, rtol=1e-4)

    # patch 37 holds one band of each macro tile, all used columns: a third per macro feature
    for m in (sal, ip.patch_map_to_pixels(np.abs(ip.occlusion_importance(model, image, mode, 0, fill=FILL)))):
        agg = ip.aggregate_importance(m, spec)
        nonzero = {f: s for f, s in agg["feature"].items() if s > 0}
        assert set(nonzero) == {"macro__vix", "macro__rate_2y", "macro__cpi"}
        for s in nonzero.values():
            assert s == pytest.approx(1 / 3, rel=1e-9)
        assert agg["section"] == pytest.approx({"macro": 1.0, "behavioral": 0.0, "fundamental": 0.0})
        assert {t: s for t, s in agg["tile"].items() if s > 0} == pytest.approx(
            {"macro.red": 1 / 3, "macro.green": 1 / 3, "macro.blue": 1 / 3}
        )
        assert agg["channel"] == pytest.approx({"red": 1 / 3, "green": 1 / 3, "blue": 1 / 3})
        assert agg["unused"] == 0.0
        # lags: columns 160-191 of a full-width tile (9 px per session) -> the sessions those columns show
        tile = spec.tile("macro.red")
        expected_lags = np.zeros(spec.sessions)
        for lag in range(spec.sessions):
            x0, x1 = tile.session_cols(lag)
            expected_lags[lag] = max(0, min(x1, c1) - max(x0, c0)) / (c1 - c0)
        np.testing.assert_allclose(agg["lag"], expected_lags, atol=1e-12)
        assert sum(expected_lags > 0) == 5
        assert [f for f, _ in agg["top_features"][:3]] == ["macro__vix", "macro__rate_2y", "macro__cpi"]


# ---- real models: patch-mode decomposition against brute force -------------------------------


def _brute_patch_mode_prob(model: nn.Module, image: np.ndarray, target: int) -> float:
    """p(target) of an image read as the bag of its 256 patches, computed directly."""
    bag = torch.from_numpy(extract_patches(image)).permute(0, 3, 1, 2)[None]
    with torch.no_grad():
        out = model(bag, patch_pos=torch.arange(256)[None])
    return float(torch.softmax(out["classification_by_horizon"][:, 0].double(), -1)[0, target])


# (weight scale, smallest drop, tolerance): one patch of 256 moves a tiny CNN's probabilities
# by ~1e-6, a tiny ViT's (head and attention scores scaled up) by ~1e-5 .. 1e-4
@pytest.mark.parametrize(("name", "scale", "min_drop", "tol"), [("cnn", 1.0, 5e-7, 1e-7), ("vit", 4.0, 1e-5, 1e-6)])
def test_patch_mode_occlusion_equals_brute_force(
    image: np.ndarray, name: str, scale: float, min_drop: float, tol: float
) -> None:
    torch.manual_seed(1)
    tiny = TINY_CNN if name == "cnn" else TINY_VIT
    model = create_model(name, horizons=(1, 5), mil_dim=16, **tiny).eval()
    with torch.no_grad():  # larger weights make the probabilities depend clearly on the input
        model.heads.cls["h1"][1].weight.mul_(scale)
        model.backbone.mil_pool.score.weight.mul_(scale)
    target = 2
    occ = ip.occlusion_importance(model, image, "patch", target, fill=FILL, batch_size=100)
    base = _brute_patch_mode_prob(model, image, target)
    assert base == pytest.approx(float(ip.image_probabilities(model, image, "patch")[target]), abs=1e-6)
    for k in (0, 37, 85, 255):
        r0, r1, c0, c1 = patch_bounds(k)
        occluded = image.copy()
        occluded[r0:r1, c0:c1] = FILL
        drop = base - _brute_patch_mode_prob(model, occluded, target)
        assert abs(drop) > min_drop
        assert occ.ravel()[k] == pytest.approx(drop, abs=tol)


def test_image_mode_occlusion_equals_brute_force(image: np.ndarray) -> None:
    torch.manual_seed(2)
    model = create_model("vit", **TINY_VIT).eval()
    target = 1
    occ = ip.occlusion_importance(model, image, "image", target, fill=0.5, image_batch=16)
    base = ip.image_probabilities(model, image, "image")[target]
    for k in (3, 37, 200):
        r0, r1, c0, c1 = patch_bounds(k)
        occluded = image.copy()
        occluded[r0:r1, c0:c1] = 0.5
        drop = base - ip.image_probabilities(model, occluded, "image")[target]
        assert abs(drop) > 1e-6
        assert occ.ravel()[k] == pytest.approx(drop, abs=1e-6)


def test_layout_cnn_occlusion_runs_channels_last_like_its_predictions(image: np.ndarray, spec) -> None:
    """The whole-image maps feed the model the channels-last view the trainer and image_outputs
    use (issue 18: the layout stem's column pooling ran ~2.7x slower on an NCHW copy): the
    occlusion drop of patch k is p(image) - p(image with patch k filled) as predicted."""
    assert ip._image_tensor(image, torch.device("cpu")).is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(4)
    model = create_model("cnn", horizons=(1, 5), layout=spec, **TINY_CNN).eval()
    target = 2
    occ = ip.occlusion_importance(model, image, "image", target, fill=FILL, image_batch=3)
    base = ip.image_probabilities(model, image, "image")[target]
    for k in (0, 37, 255):
        r0, r1, c0, c1 = patch_bounds(k)
        occluded = image.copy()
        occluded[r0:r1, c0:c1] = FILL
        drop = base - ip.image_probabilities(model, occluded, "image")[target]
        assert abs(drop) > 1e-6
        assert occ.ravel()[k] == pytest.approx(drop, abs=1e-6)  # float32 softmax, other batch sizes


def test_patch_mode_saliency_equals_full_graph_gradient(image: np.ndarray) -> None:
    torch.manual_seed(3)
    model = create_model("cnn", mil_dim=16, **TINY_CNN).eval()
    sal = ip.gradient_saliency(model, image, "patch", 1)
    assert all(p.grad is None for p in model.parameters())  # no gradient leaks into the model
    # reference: one graph through the bag of 256 patches and the attention pooling
    x = torch.from_numpy(image.copy()).requires_grad_(True)
    bag = x.reshape(16, 32, 16, 32, 3).permute(0, 2, 4, 1, 3).reshape(1, 256, 3, 32, 32)
    probs = torch.softmax(model(bag, patch_pos=torch.arange(256)[None])["classification_by_horizon"][:, 0], -1)
    torch.log(probs[0, 1]).backward()
    ref = x.grad.abs().double().numpy()
    assert ref.max() > 0
    np.testing.assert_allclose(sal, ref, rtol=1e-4, atol=1e-6 * ref.max())


def test_image_outputs_match_predict_and_batches(image: np.ndarray) -> None:
    torch.manual_seed(4)
    model = create_model("cnn", horizons=(1, 5), mil_dim=16, **TINY_CNN)
    model.train()  # the functions must switch dropout off and give the training mode back
    other = np.random.default_rng(5).random((512, 512, 3), dtype=np.float32)
    probs, reg = ip.image_outputs(model, image, "patch", batch_size=96)
    assert model.training
    assert probs.shape == (2, 3) and reg.shape == (2,)
    lm = LoadedModel(model.eval(), "patch", [1, 5], np.zeros(2), np.ones(2), {})
    ref_p, ref_r = forward_image(lm, image)
    np.testing.assert_allclose(probs, ref_p, atol=1e-6)
    np.testing.assert_allclose(reg, ref_r, atol=1e-6)
    for mode in ("patch", "image"):
        bp, br = ip.image_outputs(model, np.stack([image, other]), mode)
        assert bp.shape == (2, 2, 3) and br.shape == (2, 2)
        for i, img in enumerate((image, other)):
            p, r = ip.image_outputs(model, img, mode)
            np.testing.assert_allclose(bp[i], p, atol=1e-6)
            np.testing.assert_allclose(br[i], r, atol=1e-6)
            np.testing.assert_allclose(ip.image_probabilities(model, img, mode, horizon_index=1), p[1])
        np.testing.assert_allclose(bp.sum(-1), 1.0, atol=1e-9)
    with pytest.raises(ValueError, match="horizon_index"):
        ip.image_probabilities(model, image, "image", horizon_index=2)
    with pytest.raises(ValueError, match="input_mode"):
        ip.image_outputs(model, image, "pixels")


# ---- attention rollout -----------------------------------------------------------------------


def _hand_rollout(weights: list[torch.Tensor]) -> np.ndarray:
    r = np.eye(257)
    for w in weights:
        a = w[0].double().numpy().mean(axis=0) + np.eye(257)
        a /= a.sum(axis=1, keepdims=True)
        r = a @ r
    row = r[0, 1:]
    return (row / row.sum()).reshape(16, 16)


@pytest.mark.parametrize("depth", [1, 2])
def test_rollout_equals_hand_computation(image: np.ndarray, depth: int) -> None:
    torch.manual_seed(6)
    model = create_model("vit", **{**TINY_VIT, "depth": depth}).eval()
    roll = ip.attention_rollout(model, image)
    assert roll.shape == (16, 16) and (roll >= 0).all() and roll.sum() == pytest.approx(1.0, abs=1e-12)
    x = torch.from_numpy(image).permute(2, 0, 1)[None]
    with torch.no_grad():
        weights = model(x, return_attention=True)["attention_weights"]
    assert len(weights) == depth and weights[0].shape == (1, 2, 257, 257)
    # the rollout and the hand computation multiply float32 attention maps in their own orders, and
    # BLAS kernels differ by CPU: they agree to float32 precision, not bit for bit (3.5e-7 measured)
    np.testing.assert_allclose(roll, _hand_rollout(weights), rtol=1e-5, atol=1e-12)
    if depth == 2:  # the product order matters: A1 @ A2 would be a different map
        wrong = _hand_rollout(weights[::-1])
        assert np.abs(wrong - roll).max() > 1e-6


def test_rollout_refuses_cnn_and_patch_mode(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="ViT"):
        ip.attention_rollout(create_model("cnn", **TINY_CNN), image)
    with pytest.raises(ValueError, match="patch mode"):
        ip.attention_rollout(create_model("vit", **TINY_VIT), image, input_mode="patch")


# ---- aggregation and PNG ---------------------------------------------------------------------


def test_aggregate_splits_a_straddling_patch_exactly(spec) -> None:
    # patch 85 = rows 160-191 (11 macro + 21 behavioural rows), columns 160-191 (red: 11 news
    # columns, then the social tile whose columns 171-173 are left padding)
    map16 = np.zeros((16, 16))
    map16[5, 5] = 2.0
    pixels = ip.patch_map_to_pixels(map16)
    assert pixels.shape == (512, 512) and pixels.sum() == pytest.approx(2.0)
    agg = ip.aggregate_importance(pixels, spec)
    assert agg["total"] == pytest.approx(2.0)
    n = 3072
    expected = {
        "macro__vix": 352 / n,
        "macro__rate_2y": 352 / n,
        "macro__cpi": 352 / n,
        "news__mood": 231 / n,
        "social__mood": 378 / n,
        "price__ret_1d": 672 / n,
        "market__implied_vol": 672 / n,
    }
    assert {f: s for f, s in agg["feature"].items() if s > 0} == pytest.approx(expected)
    assert agg["unused"] == pytest.approx(63 / n)
    assert sum(agg["feature"].values()) + agg["unused"] == pytest.approx(1.0, abs=1e-12)
    assert sum(agg["lag"]) + agg["unused"] == pytest.approx(1.0, abs=1e-12)
    assert agg["section"] == pytest.approx({"macro": 11 / 32, "behavioral": 21 / 32, "fundamental": 0.0})
    assert agg["tile"]["behavioral.red.social"] == pytest.approx((378 + 63) / n)
    assert agg["tile"]["behavioral.red.news"] == pytest.approx(231 / n)
    assert sum(agg["tile"].values()) == pytest.approx(1.0)
    assert agg["top_features"][:2] == [
        ("price__ret_1d", pytest.approx(672 / n)),
        ("market__implied_vol", pytest.approx(672 / n)),
    ]
    # a channel-resolved map puts it where the channels say: all mass on the red channel
    red = np.zeros((512, 512, 3))
    red[160:192, 160:192, 0] = 1.0
    agg_red = ip.aggregate_importance(red, spec)
    assert agg_red["channel"] == pytest.approx({"red": 1.0, "green": 0.0, "blue": 0.0})
    assert agg_red["unused"] == pytest.approx(63 / 1024)
    assert agg_red["feature"]["social__mood"] == pytest.approx(378 / 1024)
    with pytest.raises(ValueError, match="negative"):
        ip.aggregate_importance(-pixels, spec)


def test_aggregate_random_map_sums_to_one(spec) -> None:
    m = np.random.default_rng(7).random((512, 512, 3))
    agg = ip.aggregate_importance(m, spec)
    assert sum(agg["feature"].values()) + agg["unused"] == pytest.approx(1.0, abs=1e-12)
    for key in ("channel", "section", "tile"):
        assert sum(agg[key].values()) == pytest.approx(1.0, abs=1e-12)
    assert agg["unused"] > 0  # the padding columns and the empty tiles of this small layout
    assert len(agg["top_features"]) == len(NAMES)  # fewer features than TOP_FEATURES
    shares = [s for _, s in agg["top_features"]]
    assert shares == sorted(shares, reverse=True)
    zero = ip.aggregate_importance(np.zeros((512, 512)), spec)
    assert zero["total"] == 0.0 and zero["unused"] == 0.0


def test_importance_png_round_trips(spec) -> None:
    map16 = np.zeros((16, 16))
    map16[2, 5] = 3.0
    map16[12, 1] = 1.5
    rgb = ip.importance_rgb(map16, spec, title="cnn occlusion")
    data = ip.importance_png(map16, spec, title="cnn occlusion")
    back = read_png(data)
    assert back.shape == ip.HEATMAP_CANVAS + (3,)
    np.testing.assert_array_equal(back, rgb)
    top, left = 36, 96  # title strip and section-name margin
    assert tuple(back[top + 64 + 5, left + 160 + 5]) == (255, 255, 220)  # the peak: top of the ramp
    assert tuple(back[top + 10, left + 10]) == (0, 0, 0)  # zero importance
    mid = back[top + 384 + 5, left + 32 + 5]
    assert mid[0] > mid[2] and tuple(mid) not in ((0, 0, 0), (255, 255, 220))
    assert tuple(back[top + 171, left + 300]) == SECTION_LINE
    # a signed map uses the diverging ramp; a [512, 512, 3] pixel map is accepted as well
    signed = read_png(ip.importance_png(-map16, spec))
    assert tuple(signed[top + 64 + 5, left + 160 + 5]) == (90, 170, 255)
    pix = read_png(ip.importance_png(np.repeat(ip.patch_map_to_pixels(map16)[..., None], 3, 2), spec))
    np.testing.assert_array_equal(pix[top : top + 512, left : left + 512], back[top : top + 512, left : left + 512])
