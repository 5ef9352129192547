"""FinNeX pure library: data, features, encoding, patches, labels, models, training, metrics.

Nothing in this package imports dagster; the orchestration layer lives in ``finnex_assets``.
"""

__version__ = "0.1.0"
