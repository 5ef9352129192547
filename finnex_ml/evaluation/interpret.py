"""Interpretability of trained FinNeX models on single mega-images.

Two ways a model sees an image (``input_mode``, the trainer's setting):

* ``"image"``: one forward of the whole ``[1, 3, 512, 512]`` image;
* ``"patch"``: the image is the bag of its 256 32×32 patches (row-major grid positions
  ``patch_pos`` 0..255); the model embeds each patch with one shared encoder, pools the bag with
  gated attention and predicts once per image (``finnex_ml.models.GatedAttentionPool``), as in
  training and :mod:`finnex_ml.evaluation.predict`.

Maps:

* :func:`occlusion_importance` [16, 16]: drop in the target-class probability when a patch is
  replaced by a fill (e.g. the training channel means). In patch mode each patch is embedded on
  its own, so the 256 patch embeddings and the fill's embedding at each position are computed
  once (512 patch forwards) and only the attention pooling and the head run per occluded patch.
* :func:`gradient_saliency` [512, 512, 3]: ``|d log p(target) / d pixel|``, through the pooling
  in patch mode.
* :func:`attention_rollout` [16, 16]: Abnar & Zuidema (2020) rollout for a ViT on whole images.
* :func:`bag_attention_map` [16, 16]: the attention pooling's weight of each patch (patch mode),
  non-negative, summing to 1.

Attribution to the layout (:func:`aggregate_importance`) goes pixel by pixel through
:func:`finnex_ml.encoding.encoder.pixel_lookup`, so a patch straddling sections, tiles or padding
is split exactly. Patch maps are turned into pixel maps by :func:`patch_map_to_pixels`, which
spreads each patch's value evenly over its pixels so that totals are preserved.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from finnex_ml.encoding.encoders import encoder_of
from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.encoding.preview import _ADVANCE, BACKGROUND, SECTION_LINE, _draw_text, png_bytes
from finnex_ml.geometry import GRID, HEIGHT, N_PATCHES, PATCH
from finnex_ml.models import FinNeXViT, MultiTaskModel, SeedEnsemble

IMAGE_SIZE = HEIGHT
INPUT_MODES = ("image", "patch")
TOP_FEATURES = 20


# ---- helpers ---------------------------------------------------------------------------------


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the duration (dropout off, BatchNorm running stats), then the caller's mode back."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _check_mode(input_mode: str) -> None:
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")


def _as_batch(images: np.ndarray) -> tuple[np.ndarray, bool]:
    """float32 C-contiguous ``[B, 512, 512, 3]`` and whether the input was a single image."""
    arr = np.asarray(images)
    single = arr.ndim == 3
    if single:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        shape = f"{IMAGE_SIZE}, {IMAGE_SIZE}, 3"
        raise ValueError(f"expected an HWC image [{shape}] or a batch [B, {shape}], got {np.shape(images)}")
    return np.ascontiguousarray(arr, dtype=np.float32), single


def _one_image(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """One HWC image (or a batch of one) as a ``[1, 512, 512, 3]`` tensor."""
    batch, single = _as_batch(image)
    if not single and batch.shape[0] != 1:
        raise ValueError(f"expected one image, got a batch of {batch.shape[0]}")
    return torch.from_numpy(batch).to(device)


def _image_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """One HWC image as an NCHW ``[1, 3, 512, 512]`` tensor in channels-last memory (a view of
    the HWC array), as the trainer and ``image_outputs`` feed the models: the layout-aware stem's
    column pooling costs ~2.7x the CPU on a contiguous NCHW copy (benchmarks/bench_interpret.py)."""
    return _one_image(image, device).permute(0, 3, 1, 2)


def _to_patches(x: torch.Tensor) -> torch.Tensor:
    """``[B, 512, 512, 3]`` (HWC) -> ``[B*256, 3, 32, 32]``, patch p = row-major grid index, as
    :func:`finnex_ml.patches.extract_patches` orders them."""
    b = x.shape[0]
    return x.reshape(b, GRID, PATCH, GRID, PATCH, 3).permute(0, 1, 3, 5, 2, 4).reshape(b * N_PATCHES, 3, PATCH, PATCH)


def _logits(model: nn.Module, x: torch.Tensor, pos: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, H, 3] logits, [B, H] regression)`` from the model's output dict."""
    out = model(x, patch_pos=pos) if pos is not None else model(x)
    return out["classification_by_horizon"].float(), out["regression_by_horizon"].float()


def _check_horizon(n_horizons: int, horizon_index: int) -> None:
    if not 0 <= horizon_index < n_horizons:
        raise ValueError(f"horizon_index {horizon_index} outside 0..{n_horizons - 1}")


def _bags(x: torch.Tensor, use_positions: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[B, 512, 512, 3]`` (HWC) -> bags ``[B, 256, 3, 32, 32]`` and positions ``[B, 256]``
    (None when the model was trained without them). Differentiable in ``x``."""
    b = x.shape[0]
    bags = _to_patches(x).reshape(b, N_PATCHES, 3, PATCH, PATCH)
    pos = torch.arange(N_PATCHES, device=x.device).expand(b, -1) if use_positions else None
    return bags, pos


def _bag_forward(
    model: nn.Module, x: torch.Tensor, bags_per_forward: int, use_positions: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``[B, H, 3]`` and regression ``[B, H]`` of B images read as bags."""
    probs, regs = [], []
    for i in range(0, x.shape[0], bags_per_forward):
        bags, pos = _bags(x[i : i + bags_per_forward], use_positions)
        logits, reg = _logits(model, bags, pos)
        probs.append(torch.softmax(logits, dim=-1))
        regs.append(reg)
    return torch.cat(probs), torch.cat(regs)


def _bag_members(model: nn.Module) -> list[MultiTaskModel] | None:
    """The multi-task bag models whose probabilities ``model`` averages (itself, or an ensemble's
    members); None when ``model`` is not built of them (any other model taking bags)."""
    members = list(model.members) if isinstance(model, SeedEnsemble) else [model]
    ok = all(isinstance(m, MultiTaskModel) and getattr(m.backbone, "mil_pool", None) is not None for m in members)
    return members if ok else None


def _fill_patch(fill: np.ndarray | float) -> np.ndarray:
    """The replacement patch, HWC ``[32, 32, 3]``: a scalar, per-channel ``[3]`` values or a full patch."""
    f = np.asarray(fill, dtype=np.float32)
    try:
        return np.ascontiguousarray(np.broadcast_to(f, (PATCH, PATCH, 3)))
    except ValueError:
        raise ValueError(f"fill must be a scalar, per-channel [3] or a [32, 32, 3] patch, got {f.shape}") from None


# ---- predictions -----------------------------------------------------------------------------


def image_outputs(
    model: nn.Module,
    images: np.ndarray,
    input_mode: str,
    *,
    batch_size: int = 256,
    image_batch: int = 4,
    patch_positions: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Image-level class probabilities and raw (still standardised) regression outputs.

    ``images``: one HWC image ``[512, 512, 3]`` -> ``(probs [H, 3], regression [H])``, or a batch
    ``[B, 512, 512, 3]`` -> ``([B, H, 3], [B, H])``, float64. In patch mode each image is one bag
    of 256 patches, ``max(1, batch_size // 256)`` bags per forward; image mode runs
    ``image_batch`` whole images per forward. ``patch_positions=False`` is for a model trained
    without ``patch_pos`` (``TrainConfig.use_patch_positions``).
    """
    _check_mode(input_mode)
    batch, single = _as_batch(images)
    device = _device(model)
    b = batch.shape[0]
    with _eval_mode(model), torch.no_grad():
        x = torch.from_numpy(batch).to(device)
        if input_mode == "patch":
            p, r = _bag_forward(model, x, max(1, batch_size // N_PATCHES), patch_positions)
            probs, regs = p.double(), r.double()
        else:
            ps, rs = [], []
            for i in range(0, b, image_batch):
                logits, reg = _logits(model, x[i : i + image_batch].permute(0, 3, 1, 2), None)
                ps.append(torch.softmax(logits, dim=-1).double())
                rs.append(reg.double())
            probs, regs = torch.cat(ps), torch.cat(rs)
    probs_np, regs_np = probs.cpu().numpy(), regs.cpu().numpy()
    return (probs_np[0], regs_np[0]) if single else (probs_np, regs_np)


def image_probabilities(
    model: nn.Module,
    image: np.ndarray,
    input_mode: str,
    *,
    horizon_index: int = 0,
    batch_size: int = 256,
    patch_positions: bool = True,
) -> np.ndarray:
    """Softmax probabilities ``[3]`` (sell, hold, buy) of one image for one horizon (``[B, 3]`` for a batch)."""
    probs, _ = image_outputs(model, image, input_mode, batch_size=batch_size, patch_positions=patch_positions)
    _check_horizon(probs.shape[-2], horizon_index)
    return probs[..., horizon_index, :]


# ---- occlusion -------------------------------------------------------------------------------


def occlusion_importance(
    model: nn.Module,
    image: np.ndarray,
    input_mode: str,
    target_class: int,
    *,
    fill: np.ndarray | float,
    horizon_index: int = 0,
    batch_size: int = 256,
    image_batch: int = 4,
    patch_positions: bool = True,
) -> np.ndarray:
    """``[16, 16]`` float64: p(target) of the image minus p(target) with that patch replaced by ``fill``.

    Positive = the patch supports the target class. ``fill`` is a scalar, per-channel values
    (e.g. the training pixel mean per channel) or a whole ``[32, 32, 3]`` patch, in the image's
    [0, 1] pixel units. Patch mode: 2 × 256 patch embeddings, then the pooling and head once per
    occluded patch (see the module docstring); image mode: 257 whole-image forwards,
    ``image_batch`` at a time.
    """
    _check_mode(input_mode)
    fill_hwc = _fill_patch(fill)
    device = _device(model)
    with _eval_mode(model), torch.no_grad():
        if input_mode == "patch":
            drop = _bag_occlusion(
                model, _one_image(image, device), fill_hwc, target_class, horizon_index, batch_size, patch_positions
            )
        else:
            x = _image_tensor(image, device)
            fill_t = torch.from_numpy(fill_hwc).to(device).permute(2, 0, 1)
            logits, _ = _logits(model, x, None)
            _check_horizon(logits.shape[1], horizon_index)
            base = torch.softmax(logits[:, horizon_index], dim=-1)[0, target_class].double()
            occluded = []
            for k0 in range(0, N_PATCHES, image_batch):
                ks = range(k0, min(k0 + image_batch, N_PATCHES))
                # built per chunk (256 copies would be 800 MB), channels-last like the image itself
                xb = x.expand(len(ks), -1, -1, -1).clone(memory_format=torch.channels_last)
                for j, k in enumerate(ks):
                    r, c = divmod(k, GRID)
                    xb[j, :, r * PATCH : (r + 1) * PATCH, c * PATCH : (c + 1) * PATCH] = fill_t
                lg, _ = _logits(model, xb, None)
                occluded.append(torch.softmax(lg[:, horizon_index], dim=-1)[:, target_class].double())
            drop = base - torch.cat(occluded)
    return drop.cpu().numpy().reshape(GRID, GRID)


def _bag_occlusion(
    model: nn.Module,
    x: torch.Tensor,
    fill_hwc: np.ndarray,
    target_class: int,
    horizon_index: int,
    batch_size: int,
    use_positions: bool,
) -> torch.Tensor:
    """Occlusion drops ``[256]`` of a bag model: a patch's embedding depends on that patch (and
    its position) alone, so occluding patch k swaps row k of the cached embeddings for the fill's
    embedding at position k; the pooling and the head then run on each occluded bag."""
    device = x.device
    patches = _to_patches(x)
    pos = torch.arange(N_PATCHES, device=device) if use_positions else None
    fills = torch.from_numpy(fill_hwc).to(device).permute(2, 0, 1).expand(N_PATCHES, 3, PATCH, PATCH).contiguous()
    base, occluded = torch.zeros((), dtype=torch.float64, device=device), torch.zeros(N_PATCHES, dtype=torch.float64)
    members = _bag_members(model)
    chunk = max(1, batch_size // 4)
    if members is None:  # a model we cannot look inside: one occluded bag per forward
        bag_pos = None if pos is None else pos[None]
        lg, _ = _logits(model, patches[None], bag_pos)
        _check_horizon(lg.shape[1], horizon_index)
        base = torch.softmax(lg[:, horizon_index], -1)[0, target_class].double().cpu()
        for k in range(N_PATCHES):
            bag = patches.clone()
            bag[k] = fills[k]
            lg, _ = _logits(model, bag[None], bag_pos)
            occluded[k] = torch.softmax(lg[:, horizon_index], -1)[0, target_class].double().cpu()
        return base - occluded
    for m in members:
        emb = m.backbone.forward_features(patches, pos)[0]  # [256, D]
        femb = m.backbone.forward_features(fills, pos)[0]
        feats, _ = m.backbone.mil_pool(emb[None])
        logits, _ = m.heads(feats)
        _check_horizon(logits.shape[1], horizon_index)
        base += torch.softmax(logits[:, horizon_index].float(), -1)[0, target_class].double() / len(members)
        for k0 in range(0, N_PATCHES, chunk):
            ks = torch.arange(k0, min(k0 + chunk, N_PATCHES), device=device)
            bag = emb.expand(len(ks), -1, -1).clone()
            bag[torch.arange(len(ks), device=device), ks] = femb[ks]
            lg, _ = m.heads(m.backbone.mil_pool(bag)[0])
            p = torch.softmax(lg[:, horizon_index].float(), -1)[:, target_class].double()
            occluded[k0 : k0 + len(ks)] += p.cpu() / len(members)
    return base.cpu() - occluded


def bag_attention_map(model: nn.Module, image: np.ndarray, *, patch_positions: bool = True) -> np.ndarray:
    """``[16, 16]`` float64: the attention pooling's weight of each patch of one image (patch-mode
    bag models; an ensemble's members averaged). Non-negative and summing to 1: where the model
    looked, not whether the patch argued for or against the predicted class."""
    device = _device(model)
    with _eval_mode(model), torch.no_grad():
        bags, pos = _bags(_one_image(image, device), patch_positions)
        out = model(bags, patch_pos=pos)
        if "patch_attention" not in out:
            raise ValueError(f"{type(model).__name__} returned no patch_attention: not a bag model (mil_dim > 0)")
        w = out["patch_attention"][0].double()
    return w.cpu().numpy().reshape(GRID, GRID)


# ---- gradients -------------------------------------------------------------------------------


def gradient_saliency(
    model: nn.Module,
    image: np.ndarray,
    input_mode: str,
    target_class: int,
    *,
    horizon_index: int = 0,
    batch_size: int = 256,
    patch_positions: bool = True,
) -> np.ndarray:
    """``[512, 512, 3]`` float64 HWC map of ``|d log p(target) / d pixel|``.

    In patch mode the gradient flows through the bag's attention pooling to every patch (one
    graph over the 256 patches; ``batch_size`` is unused there). Gradients are taken with ``torch.autograd.grad`` so the model's parameter ``.grad`` stay untouched.
    """
    _check_mode(input_mode)
    device = _device(model)
    with _eval_mode(model), torch.enable_grad():
        if input_mode == "patch":
            x = _one_image(image, device).requires_grad_(True)
            bags, pos = _bags(x, patch_positions)
            logits, _ = _logits(model, bags, pos)
            _check_horizon(logits.shape[1], horizon_index)
            logp = torch.log_softmax(logits[:, horizon_index], dim=-1)[0, target_class]
            (g,) = torch.autograd.grad(logp, x)
            sal = g[0].double()
        else:
            x = _image_tensor(image, device).requires_grad_(True)
            logits, _ = _logits(model, x, None)
            _check_horizon(logits.shape[1], horizon_index)
            logp = torch.log_softmax(logits[:, horizon_index], dim=-1)[0, target_class]
            (g,) = torch.autograd.grad(logp, x)
            sal = g[0].permute(1, 2, 0).double()
    return sal.abs().cpu().numpy()


# ---- attention rollout -----------------------------------------------------------------------


def attention_rollout(model: nn.Module, image: np.ndarray, *, input_mode: str = "image") -> np.ndarray:
    """``[16, 16]`` float64 attention rollout of a ViT on a whole image, non-negative, summing to 1.

    Per layer: heads averaged, identity added (the residual path), rows renormalised; the layers'
    matrices are multiplied in order (``R = A_L ... A_2 A_1``, so R maps output tokens to input
    tokens), and the map is the CLS row of R over the 256 patch tokens, normalised to sum 1. A ViT
    that pools the mean of its patch tokens (``pool="mean"``) is read through the mean of the
    patch tokens' rows instead, since that is what its head sees.

    Raises ValueError for a non-ViT model (the CNN attends over 9 branch × section tokens, not
    over patches) and for ``input_mode="patch"`` (the patches are encoded one at a time, so there
    is no attention between patches to roll out; :func:`bag_attention_map` shows the pooling's).
    """
    _check_mode(input_mode)
    backbone = model.backbone if isinstance(model, MultiTaskModel) else model
    if not isinstance(backbone, FinNeXViT):
        raise ValueError(
            f"attention rollout needs a FinNeX ViT, got {type(backbone).__name__}: the CNN's attention "
            "mixes 9 branch x section tokens, not image patches"
        )
    if input_mode == "patch":
        raise ValueError(
            "attention rollout needs a model run on whole images: in patch mode each patch is encoded on "
            "its own (one token plus CLS), so there is no attention between patches to roll out; "
            "bag_attention_map gives the attention pooling's weights instead"
        )
    device = _device(model)
    with _eval_mode(model), torch.no_grad():
        x = _image_tensor(image, device)
        if isinstance(model, MultiTaskModel):
            weights = model(x, return_attention=True)["attention_weights"]
        else:
            weights = model.forward_features(x, return_attention=True)[1]
        if not weights:
            raise ValueError("the model returned no attention weights")
        t = weights[0].shape[-1]
        if t != 1 + N_PATCHES:
            raise ValueError(f"expected {1 + N_PATCHES} tokens (CLS + 16x16 patches), got {t}")
        eye = torch.eye(t, dtype=torch.float64, device=device)
        rollout = eye
        for w in weights:
            a = w[0].double().mean(dim=0) + eye
            a = a / a.sum(dim=-1, keepdim=True)
            rollout = a @ rollout
        if backbone.config.pool == "cls":
            row = rollout[0, 1:]
        else:
            row = rollout[1:, 1:].mean(dim=0)
        row = row / row.sum()
    return row.cpu().numpy().reshape(GRID, GRID)


# ---- attribution to the layout ---------------------------------------------------------------


def patch_map_to_pixels(map16: np.ndarray) -> np.ndarray:
    """``[16, 16]`` patch values -> ``[512, 512]`` pixel map with each patch's value divided evenly
    over its 32 × 32 pixels (value / 1024 per pixel). The pixel map sums to the patch map's total,
    and :func:`aggregate_importance` divides a 2-D map by 3 over the channels, so the value of a
    patch is split over its 32 × 32 × 3 pixel-channels and no mass is created or lost."""
    m = np.asarray(map16, dtype=np.float64)
    if m.shape != (GRID, GRID):
        raise ValueError(f"expected a [{GRID}, {GRID}] patch map, got {m.shape}")
    return np.repeat(np.repeat(m / (PATCH * PATCH), PATCH, axis=0), PATCH, axis=1)


def _pixel_map3(pixel_importance: np.ndarray) -> np.ndarray:
    m = np.asarray(pixel_importance, dtype=np.float64)
    if m.shape == (IMAGE_SIZE, IMAGE_SIZE):
        # the map does not tell channels apart: each channel gets a third, totals are kept
        m = np.repeat(m[..., None] / 3.0, 3, axis=2)
    if m.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        side = f"{IMAGE_SIZE}, {IMAGE_SIZE}"
        raise ValueError(f"expected a pixel map [{side}, 3] or [{side}], got {m.shape}")
    return m


def aggregate_importance(pixel_importance: np.ndarray, spec: LayoutSpec) -> dict[str, Any]:
    """Shares of a non-negative importance map by channel, section, tile, feature and lag.

    ``pixel_importance``: HWC ``[512, 512, 3]``, or ``[512, 512]`` spread evenly over the 3 channels
    (use :func:`patch_map_to_pixels` for a patch map). Signed maps (raw occlusion drops) must be
    made non-negative first (``np.abs`` or clipping), since a share of signed mass means nothing.

    Returns (every share is a fraction of the map's total mass, plain Python floats, JSON-ready):

    * ``total``: the map's total mass;
    * ``channel`` {name: share}, ``section`` {name: share} (by the sections' pixel rows) and
      ``tile`` {name: share}: each covers every pixel, padding included, so each sums to 1;
    * ``feature`` {name: share, summed over lags} and ``lag`` (list, index = sessions before the
      image date) cover used pixels only; ``unused`` is the share on padding columns and empty
      tiles, so ``sum(feature) + unused == 1`` and ``sum(lag) + unused == 1``;
    * ``top_features``: the ``TOP_FEATURES`` largest ``(feature, share)``, largest first.

    A map with no mass (e.g. a constant model) gives all shares 0.
    """
    m = _pixel_map3(pixel_importance)
    if not np.isfinite(m).all():
        raise ValueError("importance map has non-finite values")
    if (m < 0).any():
        raise ValueError("importance map has negative values; pass np.abs(map) or np.clip(map, 0, None)")
    look = encoder_of(spec).pixel_lookup(spec)  # the encoder that built the spec maps its pixels
    flat = m.ravel()
    total = float(flat.sum())
    scale = 1.0 / total if total > 0 else 0.0
    feature_mass = np.bincount(look.feature.ravel() + 1, weights=flat, minlength=spec.n_features + 1)
    lag_mass = np.bincount(look.lag.ravel() + 1, weights=flat, minlength=spec.sessions + 1)
    tile_mass = np.bincount(look.tile.ravel().astype(np.int64) + 1, weights=flat, minlength=len(spec.tiles) + 1)
    row_mass = m.sum(axis=(1, 2))
    channel_mass = m.sum(axis=(0, 1))
    features = {f: float(feature_mass[i + 1] * scale) for i, f in enumerate(spec.features)}
    ranked = sorted(range(spec.n_features), key=lambda i: (-feature_mass[i + 1], i))[:TOP_FEATURES]
    return {
        "total": total,
        "channel": {n: float(channel_mass[c] * scale) for c, n in enumerate(spec.channel_names)},
        "section": {s.name: float(row_mass[s.row0 : s.row1].sum() * scale) for s in spec.sections},
        "tile": {t.name: float(tile_mass[i + 1] * scale) for i, t in enumerate(spec.tiles)},
        "feature": features,
        "lag": [float(v * scale) for v in lag_mass[1:]],
        "unused": float(feature_mass[0] * scale),
        "top_features": [(spec.features[i], features[spec.features[i]]) for i in ranked],
    }


# ---- heatmap PNG -----------------------------------------------------------------------------

# canvas: title strip, section names in the left margin, the 512×512 map, a colour bar with its range
_TOP, _MARGIN, _RIGHT, _BAR_GAP, _BAR, _BOTTOM = 36, 96, 8, 6, 10, 20
HEATMAP_CANVAS = (_TOP + IMAGE_SIZE + _BAR_GAP + _BAR + _BOTTOM, _MARGIN + IMAGE_SIZE + _RIGHT)
# sequential ramp for non-negative maps: black -> red -> orange -> pale yellow
_SEQ_STOPS = (0.0, 0.35, 0.7, 1.0)
_SEQ_COLORS = ((0, 0, 0), (180, 20, 0), (255, 160, 0), (255, 255, 220))
# diverging ramp for signed maps: blue (negative) -> black (0) -> red/yellow (positive)
_DIV_STOPS = (-1.0, -0.5, 0.0, 0.5, 1.0)
_DIV_COLORS = ((90, 170, 255), (20, 60, 200), (0, 0, 0), (200, 30, 0), (255, 230, 80))


def _ramp(t: np.ndarray, stops: tuple[float, ...], colors: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    out = np.empty(t.shape + (3,), dtype=np.uint8)
    for c in range(3):
        out[..., c] = np.round(np.interp(t, stops, [col[c] for col in colors])).astype(np.uint8)
    return out


def _display_map(values: np.ndarray) -> np.ndarray:
    """Any accepted map as ``[512, 512]`` for display (patch maps repeated, channels summed)."""
    v = np.asarray(values, dtype=np.float64)
    if v.shape == (GRID, GRID):
        return np.repeat(np.repeat(v, PATCH, axis=0), PATCH, axis=1)
    if v.shape == (IMAGE_SIZE, IMAGE_SIZE, 3):
        return v.sum(axis=2)
    if v.shape == (IMAGE_SIZE, IMAGE_SIZE):
        return v
    raise ValueError(f"expected a [16, 16], [512, 512] or [512, 512, 3] map, got {v.shape}")


def importance_rgb(map16_or_pixels: np.ndarray, spec: LayoutSpec, *, title: str = "") -> np.ndarray:
    """The heatmap as uint8 RGB ``HEATMAP_CANVAS + (3,)``: the map scaled to its largest magnitude
    (sequential ramp for a non-negative map, diverging blue/red for a signed one), yellow lines at
    the section boundaries, section names on the left, the title on top and a colour bar below
    labelled with the value range."""
    v = np.nan_to_num(_display_map(map16_or_pixels), nan=0.0, posinf=0.0, neginf=0.0)
    signed = bool((v < 0).any())
    peak = float(np.abs(v).max())
    t = v / peak if peak > 0 else np.zeros_like(v)
    stops, colors = (_DIV_STOPS, _DIV_COLORS) if signed else (_SEQ_STOPS, _SEQ_COLORS)
    heat = _ramp(t, stops, colors)
    for s in spec.sections[1:]:
        heat[s.row0, :] = SECTION_LINE
    canvas = np.empty(HEATMAP_CANVAS + (3,), dtype=np.uint8)
    canvas[...] = BACKGROUND
    canvas[_TOP : _TOP + IMAGE_SIZE, _MARGIN : _MARGIN + IMAGE_SIZE] = heat
    if title:
        _draw_text(canvas, 4, 2, title[: (HEATMAP_CANVAS[1] - 8) // _ADVANCE])
    for s in spec.sections:
        _draw_text(canvas, 4, _TOP + (s.row0 + s.row1) // 2 - 5, s.name[: (_MARGIN - 8) // _ADVANCE])
        canvas[_TOP + s.row0, _MARGIN - 6 : _MARGIN] = SECTION_LINE
    y0 = _TOP + IMAGE_SIZE + _BAR_GAP
    lo = -1.0 if signed else 0.0
    canvas[y0 : y0 + _BAR, _MARGIN : _MARGIN + IMAGE_SIZE] = _ramp(np.linspace(lo, 1.0, IMAGE_SIZE), stops, colors)[
        None
    ]
    lo_label, hi_label = (f"{-peak:.3g}" if signed else "0"), f"{peak:.3g}"
    _draw_text(canvas, _MARGIN, y0 + _BAR + 4, lo_label)
    _draw_text(canvas, _MARGIN + IMAGE_SIZE - len(hi_label) * _ADVANCE, y0 + _BAR + 4, hi_label)
    return canvas


def importance_png(map16_or_pixels: np.ndarray, spec: LayoutSpec, *, title: str = "") -> bytes:
    """:func:`importance_rgb` encoded as PNG bytes."""
    return png_bytes(importance_rgb(map16_or_pixels, spec, title=title))


__all__ = [
    "HEATMAP_CANVAS",
    "INPUT_MODES",
    "aggregate_importance",
    "bag_attention_map",
    "attention_rollout",
    "gradient_saliency",
    "image_outputs",
    "image_probabilities",
    "importance_png",
    "importance_rgb",
    "occlusion_importance",
    "patch_map_to_pixels",
]
