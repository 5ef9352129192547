"""Model shapes, attention outputs, section embeddings and config round trips (CPU, small)."""

from __future__ import annotations

import pytest
import torch

from finnex_ml import models as M
from finnex_ml.models import (
    CNN_SIZES,
    VIT_SIZES,
    FinNeXViT,
    MultiScaleCNN,
    MultiTaskCNN,
    MultiTaskViT,
    create_model,
    grid_row_sections,
    grid_sections,
    model_from_spec,
    model_spec,
    patch_pos_sections,
)

pytestmark = pytest.mark.usefixtures("one_thread")


EXPECTED_ROW_SECTIONS = (0,) * 5 + (1,) * 6 + (2,) * 5  # patch rows 0-4 macro, 5-10 behavioural, 11-15 fundamental


def _shapes(out: dict) -> dict:
    return {k: (tuple(v.shape) if torch.is_tensor(v) else [tuple(t.shape) for t in v]) for k, v in out.items()}


@pytest.mark.parametrize("name", ["cnn", "vit"])
def test_multitask_output_shapes_512_and_32(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, "small").eval()
    with torch.no_grad():
        big = model(torch.rand(2, 3, 512, 512), return_attention=True)
        small = model(torch.rand(2, 3, 32, 32), return_attention=True)
        with_pos = model(torch.rand(2, 3, 32, 32), patch_pos=torch.tensor([0, 255]))
    dim = model.backbone.feature_dim
    for out in (big, small, with_pos):
        assert out["classification"].shape == (2, 3)
        assert out["regression"].shape == (2, 1)
        assert out["classification_by_horizon"].shape == (2, 1, 3)
        assert out["regression_by_horizon"].shape == (2, 1)
        assert out["features"].shape == (2, dim)
        assert torch.isfinite(out["classification"]).all() and torch.isfinite(out["regression"]).all()
    if name == "vit":
        cfg = model.config
        assert len(big["attention_weights"]) == cfg.depth
        assert big["attention_weights"][0].shape == (2, cfg.heads, 257, 257)  # CLS + 16×16 patches
        assert small["attention_weights"][0].shape == (2, cfg.heads, 2, 2)  # CLS + one patch
        torch.testing.assert_close(big["attention_weights"][-1].sum(-1), torch.ones(2, cfg.heads, 257))
        assert with_pos["attention_weights"] == []  # not asked for: the fused kernel runs
    else:
        cfg = model.config
        assert big["attention_weights"].shape == (2, cfg.attn_heads, 9, 9)  # 3 branches × 3 section tokens
        torch.testing.assert_close(big["attention_weights"].sum(-1), torch.ones(2, cfg.attn_heads, 9))


@pytest.mark.parametrize("cls", [MultiScaleCNN, FinNeXViT])
def test_single_task_backbones_return_logits(cls) -> None:
    model = cls().eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 512, 512)).shape == (2, 3)
        assert model(torch.rand(3, 3, 32, 32)).shape == (3, 3)


def test_multiple_horizons_get_their_own_heads() -> None:
    model = MultiTaskCNN(M.CNNConfig(widths=(4, 8, 8, 8), token_dim=8, attn_heads=2, fusion_dim=16), horizons=(1, 5))
    out = model.eval()(torch.rand(4, 3, 64, 64))
    assert out["classification_by_horizon"].shape == (4, 2, 3)
    assert out["regression_by_horizon"].shape == (4, 2)
    torch.testing.assert_close(out["classification"], out["classification_by_horizon"][:, 0])
    assert set(model.heads.cls) == {"h1", "h5"}
    assert not torch.equal(out["classification_by_horizon"][:, 0], out["classification_by_horizon"][:, 1])


def test_section_constants_match_the_layout() -> None:
    from finnex_ml.encoding.layout import HEIGHT, SECTIONS

    assert HEIGHT == M.IMAGE_SIZE
    assert tuple(name for name, *_ in SECTIONS) == M.SECTION_NAMES
    assert tuple((r0, r1) for _, r0, r1, _ in SECTIONS) == M.SECTION_ROWS


def test_class_ids_match_the_labels_module() -> None:
    from finnex_ml import labels

    assert (M.SELL, M.HOLD, M.BUY) == (labels.SELL, labels.HOLD, labels.BUY) == (0, 1, 2)
    assert M.CLASS_NAMES == tuple(labels.CLASS_NAMES)


def test_patch_row_sections_by_pixel_majority() -> None:
    from finnex_ml.encoding.layout import SECTIONS

    # independent count: for each 32-pixel patch row, which section holds most of its pixel rows
    expected = []
    for r in range(16):
        counts = [len(set(range(32 * r, 32 * r + 32)) & set(range(a, b))) for _, a, b, _ in SECTIONS]
        expected.append(max(range(3), key=counts.__getitem__))
    assert tuple(expected) == EXPECTED_ROW_SECTIONS
    assert grid_row_sections(16) == EXPECTED_ROW_SECTIONS
    # the spec's "patch ranges" (patches 0-79 / 81-159 / 161-255) would be wrong here:
    assert grid_row_sections(16)[5] == 1 and grid_row_sections(16)[10] == 1  # rows 160-191, 320-351
    # a 2×2 grid of a resized image: top half mostly macro, bottom half mostly fundamental
    assert grid_row_sections(2) == (0, 2)
    assert grid_row_sections(3) == (0, 1, 2)


def test_section_ids_of_the_16x16_grid_and_of_positions() -> None:
    ids = grid_sections(16, 16).view(16, 16)
    for r in range(16):
        assert ids[r].tolist() == [EXPECTED_ROW_SECTIONS[r]] * 16
    assert torch.bincount(ids.flatten()).tolist() == [80, 96, 80]
    pos = torch.tensor([0, 79, 80, 175, 176, 255])
    assert patch_pos_sections(pos).tolist() == [0, 0, 1, 1, 2, 2]


def test_vit_adds_each_patch_its_section_embedding() -> None:
    torch.manual_seed(0)
    vit = FinNeXViT(M.ViTConfig(dim=16, depth=1, heads=2))
    with torch.no_grad():
        vit.section_embed.weight.copy_(torch.tensor([[1.0], [2.0], [3.0], [4.0]]).expand(4, 16))
        added = vit._positions(16, 16, 1, None, torch.device("cpu"))[0]  # [256, 16]
        pos = vit.pos_embed.flatten(2).transpose(1, 2)[0]
        section_part = (added - pos)[:, 0].view(16, 16)
        for r in range(16):
            assert torch.allclose(section_part[r], torch.full((16,), EXPECTED_ROW_SECTIONS[r] + 1.0))
        # a lone patch: its own position row and section; without a position: "unknown" (id 3)
        lone = vit._positions(1, 1, 2, torch.tensor([80, 200]), torch.device("cpu"))[:, 0]
        torch.testing.assert_close(lone - pos[[80, 200]], torch.tensor([[2.0], [3.0]]).expand(2, 16))
        unknown = vit._positions(1, 1, 2, None, torch.device("cpu"))[:, 0]
        torch.testing.assert_close(unknown - vit.pos_unknown[0], torch.full((2, 16), 4.0))
    assert vit.token_sections(16, 16).tolist() == grid_sections(16, 16).tolist()


def test_attention_path_matches_the_fused_encoder() -> None:
    torch.manual_seed(0)
    vit = FinNeXViT(M.ViTConfig(dim=32, depth=2, heads=4)).eval()
    x = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        fast, none = vit.forward_features(x, return_attention=False)
        manual, weights = vit.forward_features(x, return_attention=True)
    assert none == [] and len(weights) == 2 and weights[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(manual, fast, atol=1e-5, rtol=1e-5)


def test_size_presets() -> None:
    full = VIT_SIZES["full"]
    assert (full.dim, full.heads, full.depth, full.patch_size, full.image_size) == (768, 12, 12, 32, 512)
    assert CNN_SIZES["full"].token_dim == 256 and CNN_SIZES["full"].fusion_dim == 512
    assert M.count_parameters(create_model("vit", "small")) < 2_000_000
    with pytest.raises(ValueError):
        create_model("resnet")
    with pytest.raises(ValueError):
        create_model("vit", "huge")


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("cnn", {"widths": (4, 8, 8, 8), "token_dim": 8, "attn_heads": 2, "fusion_dim": 16}),
        ("vit", {"dim": 16, "depth": 1, "heads": 2}),
    ],
)
def test_model_spec_round_trip(name: str, overrides: dict) -> None:
    torch.manual_seed(0)
    model = create_model(name, horizons=(1, 5), **overrides).eval()
    spec = model_spec(model)
    assert spec["name"] == name and spec["horizons"] == [1, 5]
    again = model_from_spec(spec).eval()
    again.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x)["classification_by_horizon"], model(x)["classification_by_horizon"])


def test_bad_inputs_are_refused() -> None:
    cnn, vit = MultiTaskCNN(), MultiTaskViT()
    with pytest.raises(ValueError, match="NCHW"):
        cnn(torch.rand(2, 32, 32, 3))  # the stores' HWC layout, not permuted
    with pytest.raises(ValueError, match="multiples of 32"):
        vit(torch.rand(1, 3, 48, 48))
    with pytest.raises(ValueError, match="single 32×32 patch"):
        vit(torch.rand(1, 3, 512, 512), patch_pos=torch.tensor([3]))


def _small_layout():
    from finnex_ml.encoding.layout import build_layout

    feats = ["macro__vix", "macro__rate_10y", "price__ret_1d", "price__rvol_21d", "fundamental__pe"]
    return build_layout(feats, allow_unassigned=True)


def test_sparse_cell_readout_prox_is_soft_thresholding() -> None:
    sp = M.SparseCellReadout(4, 1, 3, penalty=0.5, lr=1e-2)
    with torch.no_grad():
        sp.weight.copy_(torch.tensor([[0.3, -0.3, 0.04, -0.06]] * 3))
    sp.prox_(0.1)  # threshold 0.5 * 0.1 = 0.05
    want = torch.tensor([[0.25, -0.25, 0.0, -0.01]] * 3)
    torch.testing.assert_close(sp.weight.detach(), want)
    assert sp.active_cells() == 3
    out = sp(torch.ones(2, 2, 2))
    assert out.shape == (2, 1, 3)


def test_layout_cnn_sparse_readout_starts_silent_and_has_its_own_group() -> None:
    from finnex_ml.losses import MultiTaskLoss
    from finnex_ml.training.trainer import _param_groups

    spec = _small_layout()
    torch.manual_seed(0)
    with_sparse = M.create_model("cnn", layout=spec).eval()
    torch.manual_seed(0)
    without = M.create_model("cnn", layout=spec, sparse_readout=0.0).eval()
    assert with_sparse.sparse is not None and without.sparse is None
    n_cells = with_sparse.backbone.cells.n_features * with_sparse.backbone.cells.sessions
    assert with_sparse.sparse.weight.shape == (3, n_cells)
    x = torch.rand(2, 3, 512, 512)
    a, b = with_sparse(x), without(x)
    torch.testing.assert_close(a["classification"], b["classification"])  # zero-initialised
    assert a["attention_weights"].shape == (2, 4, 9, 9)
    groups = _param_groups(with_sparse, MultiTaskLoss(1, None), 1e-4, 5e-4)
    sparse_groups = [g for g in groups if g.get("sparse")]
    assert len(sparse_groups) == 1 and sparse_groups[0]["lr"] == pytest.approx(1e-2)
    others = {id(p) for g in groups if not g.get("sparse") for p in g["params"]}
    assert id(with_sparse.sparse.weight) not in others
    assert M.model_from_spec(M.model_spec(with_sparse)).sparse is not None


def test_layout_vit_learns_a_date_t_level_rule_from_cells() -> None:
    """The guard for the layout-aware ViT's tokens: the class is the tercile of ONE feature's
    date-t cell among 40 noise rows. With ViT-style tiny feature embeddings (std 0.02) and the
    date-t cell only inside the shared history map, this stayed near chance (2026-12-03); with
    unit-scale feature embeddings and the date-t direction it is learned in a few epochs."""
    from finnex_ml.encoding.layout import build_layout

    feats = [f"macro__m{i}" for i in range(10)] + [f"price__p{i}" for i in range(20)]
    feats += [f"fundamental__f{i}" for i in range(10)]
    spec = build_layout(feats, allow_unassigned=True)
    torch.manual_seed(0)
    vit = FinNeXViT(M.ViTConfig(layout=M.layout_json(spec), depth=2))
    n_f, n_l = vit.cells.n_features, vit.cells.sessions
    g = torch.Generator().manual_seed(1)
    cells = torch.rand(600, n_f, n_l, generator=g)
    key = spec.features.index("price__p7")
    y = torch.bucketize(cells[:, key, -1].contiguous(), torch.tensor([1 / 3, 2 / 3]))
    opt = torch.optim.AdamW(vit.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(8):
        for i in range(0, 400, 32):
            logits = vit.classifier(vit.features_from_cells(cells[i : i + 32])[0])
            loss = torch.nn.functional.cross_entropy(logits, y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    vit.eval()
    with torch.no_grad():
        acc = (vit.classifier(vit.features_from_cells(cells[400:])[0]).argmax(1) == y[400:]).float().mean().item()
    assert acc > 0.7, acc  # chance is 1/3


def test_layout_vit_loads_a_checkpoint_without_the_date_direction() -> None:
    """Checkpoints written before ``date_embed`` existed load with a zero direction (their maths)."""
    spec = _small_layout()
    vit = create_model("vit", layout=spec).eval()
    old = {k: v for k, v in vit.state_dict().items() if not k.endswith("date_embed")}
    fresh = create_model("vit", layout=spec).eval()
    fresh.load_state_dict(old)
    assert torch.count_nonzero(fresh.backbone.date_embed) == 0
    with pytest.raises(RuntimeError, match="Unexpected key"):
        fresh.load_state_dict({**old, "backbone.bogus": torch.zeros(1)})
