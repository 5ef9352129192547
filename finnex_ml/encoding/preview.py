"""PNG previews of mega-images and per channel x section statistics (numpy + zlib only).

The preview shows, left to right, the RGB composite and the RED, GREEN and BLUE channels as grey
levels, with a title strip above each panel, section names in the left margin, yellow lines at the
section boundaries (rows 171 and 342) and, in the behavioural section of the composite and the RED
panel, cyan lines at the news | social | historical column boundaries (columns 171 and 342).
Labels use a built-in 3x5 bitmap font drawn at 2x.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from finnex_ml.encoding.encoder import used_mask
from finnex_ml.encoding.layout import LayoutSpec
from finnex_ml.paths import atomic_path

_GLYPHS: dict[str, tuple[str, ...]] = {
    "A": (".#.", "#.#", "###", "#.#", "#.#"),
    "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"),
    "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"),
    "F": ("###", "#..", "##.", "#..", "#.."),
    "G": (".##", "#..", "#.#", "#.#", ".##"),
    "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"),
    "J": ("..#", "..#", "..#", "#.#", ".#."),
    "K": ("#.#", "#.#", "##.", "#.#", "#.#"),
    "L": ("#..", "#..", "#..", "#..", "###"),
    "M": ("#.#", "###", "###", "#.#", "#.#"),
    "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."),
    "P": ("##.", "#.#", "##.", "#..", "#.."),
    "Q": (".#.", "#.#", "#.#", "##.", ".##"),
    "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."),
    "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"),
    "V": ("#.#", "#.#", "#.#", "#.#", ".#."),
    "W": ("#.#", "#.#", "###", "###", "#.#"),
    "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "Y": ("#.#", "#.#", ".#.", ".#.", ".#."),
    "Z": ("###", "..#", ".#.", "#..", "###"),
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("##.", "..#", ".#.", "#..", "###"),
    "3": ("##.", "..#", ".#.", "..#", "##."),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "##.", "..#", "##."),
    "6": (".##", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "##."),
    " ": ("...",) * 5,
    "+": ("...", ".#.", "###", ".#.", "..."),
    "/": ("..#", "..#", ".#.", "#..", "#.."),
    "-": ("...", "...", "###", "...", "..."),
    ".": ("...", "...", "...", "...", ".#."),
    ":": ("...", ".#.", "...", ".#.", "..."),
}
_FONT_SCALE = 2
_ADVANCE = 4 * _FONT_SCALE
SECTION_LINE = (255, 220, 0)
TILE_LINE = (0, 220, 255)
TEXT = (230, 230, 230)
BACKGROUND = (24, 24, 24)


def _draw_text(canvas: np.ndarray, x: int, y: int, text: str, color: tuple[int, int, int] = TEXT) -> None:
    for i, ch in enumerate(text.upper()):
        glyph = _GLYPHS.get(ch, _GLYPHS[" "])
        for gy, line in enumerate(glyph):
            for gx, bit in enumerate(line):
                if bit == "#":
                    y0, x0 = y + gy * _FONT_SCALE, x + i * _ADVANCE + gx * _FONT_SCALE
                    canvas[y0 : y0 + _FONT_SCALE, x0 : x0 + _FONT_SCALE] = color


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an 8-bit RGB array [H, W, 3] as PNG: filter "Up" on every row, zlib level 1.

    The previews are mostly vertical runs (row bands repeat rows), which "Up" turns into zeros:
    smaller than unfiltered level 6 and about 3x faster to compress."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"need uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    h, w, _ = arr.shape
    rows = arr.reshape(h, -1)
    raw = np.empty((h, 1 + 3 * w), dtype=np.uint8)
    raw[:, 0] = 2  # filter type Up: byte minus the byte above (mod 256); row 0 has zeros above
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps mod 256

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


def read_png(data: bytes) -> np.ndarray:
    """Decode a PNG written by :func:`png_bytes` (8-bit RGB, filter None or Up) to [H, W, 3]."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        if tag == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif tag == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(h, 1 + 3 * w)
    out = raw[:, 1:].copy()
    for y in range(h):
        if raw[y, 0] == 2 and y > 0:
            out[y] += out[y - 1]  # wraps mod 256, undoing the filter
        elif raw[y, 0] not in (0, 2):
            raise ValueError(f"row {y}: only filter types None and Up are supported")
    return out.reshape(h, w, 3)


def _to_u8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


_PANELS = (("RGB COMPOSITE", None), ("R SENTIMENT", 0), ("G PRICE/TECH", 1), ("B MACRO/FUND", 2))
_MARGIN, _TOP, _GAP, _BOTTOM = 88, 36, 8, 6
_FRAMES: dict[tuple[str, int], np.ndarray] = {}


def _frame(spec: LayoutSpec, step: int) -> np.ndarray:
    """The static part of a preview (background, panel and section labels), drawn once per
    layout and step: the bitmap-font labels cost more than the rest of a preview."""
    key = (spec.spec_hash(), step)
    hit = _FRAMES.get(key)
    if hit is None:
        h, w = (spec.height + step - 1) // step, (spec.width + step - 1) // step
        hit = np.empty((_TOP + h + _BOTTOM, _MARGIN + len(_PANELS) * (w + _GAP), 3), dtype=np.uint8)
        hit[...] = BACKGROUND
        for k, (label, _) in enumerate(_PANELS):
            _draw_text(hit, _MARGIN + k * (w + _GAP), _TOP - 14, label)
        for s, label in zip(spec.sections, ("MACRO", "BEH+TECH", "FUND+COMP")):
            _draw_text(hit, 4, _TOP + (s.row0 + s.row1) // 2 // step - 5, label)
            hit[_TOP + s.row0 // step, _MARGIN - 6 : _MARGIN] = SECTION_LINE
        hit.setflags(write=False)
        _FRAMES[key] = hit
    return hit


def preview_rgb(image: np.ndarray, spec: LayoutSpec, *, title: str = "", step: int = 1) -> np.ndarray:
    """The preview as a uint8 RGB array (see module docstring). ``step`` > 1 subsamples pixels."""
    img = np.asarray(image)
    if img.shape != spec.shape:
        raise ValueError(f"image shape {img.shape} != {spec.shape}")
    if step < 1:
        raise ValueError("step must be >= 1")
    h, w = (spec.height + step - 1) // step, (spec.width + step - 1) // step
    canvas = _frame(spec, step).copy()
    if title:
        _draw_text(canvas, 4, 2, title[:80])
    u8 = _to_u8(img[::step, ::step])
    behav = spec.section("behavioral")
    red_mid_cuts = sorted({t.col0 for t in spec.tiles if t.section == "behavioral" and t.channel == 0} - {0})
    for k, (_, ch) in enumerate(_PANELS):
        x0 = _MARGIN + k * (w + _GAP)
        panel = canvas[_TOP : _TOP + h, x0 : x0 + w]
        panel[...] = u8 if ch is None else u8[..., ch, None]  # a channel as grey levels
        for s in spec.sections[1:]:
            panel[s.row0 // step, :] = SECTION_LINE
        if ch in (None, 0):
            for c in red_mid_cuts:
                panel[(behav.row0 + 1) // step : behav.row1 // step, c // step] = TILE_LINE
    return canvas


def preview_png(image: np.ndarray, spec: LayoutSpec, *, title: str = "", step: int = 1) -> bytes:
    return png_bytes(preview_rgb(image, spec, title=title, step=step))


def write_preview(
    path: Path | str, image: np.ndarray, spec: LayoutSpec, *, title: str = "", step: int = 1, durable: bool = True
) -> Path:
    """Write the preview PNG atomically to ``path`` (``durable``: as ``paths.atomic_path``)."""
    data = preview_png(image, spec, title=title, step=step)
    with atomic_path(Path(path), durable=durable) as tmp:
        tmp.write_bytes(data)
    return Path(path)


_STATS_INDEX: dict[tuple[str, bool], list[list[np.ndarray]]] = {}


def _stats_index(spec: LayoutSpec, used_only: bool) -> list[list[np.ndarray]]:
    """Per channel, per section: flat indices of the pixels to summarise, in row-major order (the
    order boolean-mask selection gives, so the statistics are bit-identical); built once per spec."""
    key = (spec.spec_hash(), used_only)
    hit = _STATS_INDEX.get(key)
    if hit is None:
        mask = used_mask(spec) if used_only else np.ones(spec.shape, dtype=bool)
        hit = []
        for c in range(spec.channels):
            per_section = []
            for s in spec.sections:
                sel = np.zeros(spec.shape, dtype=bool)
                sel[s.row0 : s.row1, :, c] = mask[s.row0 : s.row1, :, c]
                per_section.append(np.flatnonzero(sel))
            hit.append(per_section)
        _STATS_INDEX[key] = hit
    return hit


def channel_section_stats(image: np.ndarray, spec: LayoutSpec, *, used_only: bool = True) -> dict[str, Any]:
    """mean / std / min / max per channel x section (``used_only``: skip padding and empty tiles)."""
    img = np.ascontiguousarray(image, dtype=np.float32).reshape(-1)
    index = _stats_index(spec, used_only)
    out: dict[str, Any] = {}
    for c, cname in enumerate(spec.channel_names):
        out[cname] = {}
        for s, idx in zip(spec.sections, index[c]):
            vals = np.take(img, idx).astype(np.float64)
            out[cname][s.name] = (
                {
                    "mean": float(vals.mean()),
                    "std": float(vals.std()),
                    "min": float(vals.min()),
                    "max": float(vals.max()),
                    "pixels": int(vals.size),
                }
                if vals.size
                else {"mean": None, "std": None, "min": None, "max": None, "pixels": 0}
            )
    return out


__all__ = ["channel_section_stats", "png_bytes", "preview_png", "preview_rgb", "read_png", "write_preview"]
