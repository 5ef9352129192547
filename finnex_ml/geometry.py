"""The mega-image geometry and the class ids: the one place these numbers are declared.

The layout spec (``finnex_ml.encoding.layout``) embeds them and saves them with every image
store; the store, patches, models and interpretability read them from here or from a saved spec.
This module imports nothing, so the models can use it without pulling in polars.
"""

from __future__ import annotations

# image: float32 [rows, columns, channels] in [0, 1]
HEIGHT, WIDTH, CHANNELS = 512, 512, 3
IMAGE_SHAPE: tuple[int, int, int] = (HEIGHT, WIDTH, CHANNELS)
CHANNEL_NAMES: tuple[str, ...] = ("red", "green", "blue")

# 32x32 patches on a 16x16 grid, row-major
PATCH = 32
GRID = HEIGHT // PATCH
N_PATCHES = GRID * GRID
PATCHES_SHAPE: tuple[int, int, int, int] = (N_PATCHES, PATCH, PATCH, CHANNELS)

# row sections: (name, first row, end row exclusive, description)
SECTIONS: tuple[tuple[str, int, int, str], ...] = (
    ("macro", 0, 171, "Macro-economic environment (rows 0-170)"),
    ("behavioral", 171, 342, "Behavioural + technical fusion (rows 171-341)"),
    ("fundamental", 342, 512, "Fundamental + competitive analysis (rows 342-511)"),
)
SECTION_NAMES: tuple[str, ...] = tuple(s[0] for s in SECTIONS)
SECTION_ROWS: tuple[tuple[int, int], ...] = tuple((s[1], s[2]) for s in SECTIONS)

# label classes, everywhere (labels, heads, confusion matrices, reports)
SELL, HOLD, BUY = 0, 1, 2
CLASS_NAMES: tuple[str, str, str] = ("sell", "hold", "buy")
NUM_CLASSES = len(CLASS_NAMES)
