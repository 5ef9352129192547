"""Mega-image encoding: layout spec, leak-free normalisation, encode/decode, HDF5 store, previews, QA.

Pure library (numpy, polars, h5py); never imports dagster. Encoders (``encoders.py``) are
selected by name: ``create_encoder("tiles")`` is the tile layout below, and
``register_encoder(name, cls)`` adds another. Typical use of the tile layout's functions::

    spec = build_layout(table.columns)                 # default tile assignment
    cfg = NormConfig()                                 # rolling robust z, W=252, logistic squash
    write_spec(root, spec, cfg, normalization_summary(table, spec, cfg))
    for item in encode_dates(table, dates, spec, cfg): # table holds history_needed(spec, cfg)-1 rows before dates[0]
        write_encoded(root, item, spec, cfg)
    with open_range(root, dates) as view:              # lazy [N, 512, 512, 3]
        batch = view[0:16]
"""

from finnex_ml.encoding.encoder import (
    EncodedImage,
    PixelLookup,
    decode,
    describe_pixel,
    encode,
    encode_dates,
    feature_matrix,
    history_needed,
    normalization_summary,
    pixel_lookup,
    used_mask,
)
from finnex_ml.encoding.encoders import (
    DEFAULT_ENCODER,
    QA_CHECKS,
    ImageEncoder,
    ImageSpec,
    TileEncoder,
    create_encoder,
    encoder_names,
    encoder_of,
    register_encoder,
    unregister_encoder,
)
from finnex_ml.encoding.layout import DEFAULT_ASSIGNMENT, DEFAULT_SESSIONS, LayoutSpec, Section, Tile, build_layout
from finnex_ml.encoding.normalize import (
    NormConfig,
    NormWindow,
    SessionNorm,
    TrailingNormalizer,
    feature_summary,
    normalization_parameters,
    normalize_session,
    normalize_window,
    params_hash,
)
from finnex_ml.encoding.preview import channel_section_stats, png_bytes, preview_png, read_png, write_preview
from finnex_ml.encoding.qa import (
    SeriesQA,
    band_image,
    check_feature_preservation,
    check_image,
    check_spatial_integrity,
    check_temporal_continuity,
    check_window_continuity,
    run_qa,
)
from finnex_ml.encoding.store import (
    RangeView,
    image_path,
    list_dates,
    open_range,
    read_encoder,
    read_image,
    read_record,
    read_spec,
    write_encoded,
    write_image,
    write_range_vds,
    write_spec,
)

__all__ = [
    "DEFAULT_ASSIGNMENT",
    "DEFAULT_ENCODER",
    "QA_CHECKS",
    "ImageEncoder",
    "ImageSpec",
    "TileEncoder",
    "create_encoder",
    "encoder_names",
    "encoder_of",
    "register_encoder",
    "unregister_encoder",
    "read_encoder",
    "DEFAULT_SESSIONS",
    "EncodedImage",
    "LayoutSpec",
    "NormConfig",
    "NormWindow",
    "PixelLookup",
    "RangeView",
    "Section",
    "SeriesQA",
    "SessionNorm",
    "Tile",
    "TrailingNormalizer",
    "band_image",
    "build_layout",
    "channel_section_stats",
    "check_feature_preservation",
    "check_image",
    "check_spatial_integrity",
    "check_temporal_continuity",
    "check_window_continuity",
    "decode",
    "describe_pixel",
    "encode",
    "encode_dates",
    "feature_matrix",
    "feature_summary",
    "history_needed",
    "normalization_summary",
    "image_path",
    "list_dates",
    "normalization_parameters",
    "normalize_session",
    "normalize_window",
    "open_range",
    "params_hash",
    "pixel_lookup",
    "png_bytes",
    "preview_png",
    "read_image",
    "read_png",
    "read_record",
    "read_spec",
    "run_qa",
    "used_mask",
    "write_encoded",
    "write_image",
    "write_range_vds",
    "write_spec",
    "write_preview",
]
