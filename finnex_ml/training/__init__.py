"""Training of the FinNeX models (``data``: datasets and loading; ``config``: TrainConfig and
TrainResult; ``trainer``: the loop and checkpoints; ``ensemble``: seed ensembles): lazy HDF5 datasets, block-shuffled loading, a seeded,
resumable trainer (AdamW, warm-up + cosine, clipping, early stopping, AMP on CUDA).

Pure library (torch, numpy, h5py; scikit-learn for the confusion matrix); never imports dagster.

Data
----
A dataset yields batches as dicts: ``"x"`` (float32 ``[b, H, W, 3]``, the stores' layout),
the named targets (int64 class labels 0 Sell / 1 Hold / 2 Buy, float32 returns), ``"row"`` (the
row in the file) and, for patch datasets built with ``patches_per_image``, ``"patch_pos"`` (the
patch's index in its image's 16×16 grid, ``row % 256``). In ``input_mode="patch"`` the trainer
reads such a dataset through :class:`BagDataset`: a sample is one image's bag of 256 patches
(``"x"`` ``[b, 256, 32, 32, 3]``, ``"patch_pos"`` ``[b, 256]``, one label per image), which the
model embeds patch by patch and pools with gated attention (multiple-instance learning, see
``finnex_ml.models.GatedAttentionPool``). :class:`H5ArrayDataset` reads batches
from HDF5 lazily (contiguous runs with ``read_direct``, never the whole dataset);
:class:`ArrayDataset` is the in-memory equivalent. :class:`BlockBatchSampler` shuffles *runs* of
consecutive rows rather than single rows, so a batch is a few contiguous reads instead of a
scattered fancy index.

Augmentation (why no flips)
---------------------------
Only Gaussian noise and mixup. The spec's random flips are not used: on this layout the columns
are time (oldest session left, newest right), so a horizontal flip reverses time and shows the
model a future it must not see; the rows are the macro / behavioural / fundamental sections and
the feature bands inside them, so a vertical flip moves features into another section's place.
Colour jitter mixes channel scales that carry meaning (each channel is a modality). Noise
(std ``noise_std``) leaves the layout intact; mixup blends two samples pixel-wise and blends their
targets the same way (soft class targets, blended returns).

Determinism and resume
----------------------
Shuffling and augmentation draw from generators seeded by ``(seed, epoch)``, so epoch ``k``
sees the same batches and noise whether or not the run was restarted before it. Dropout uses the
global torch RNG, whose state (with numpy's, Python's and CUDA's) is saved in every checkpoint.
``last.pt`` is written after each epoch (model, loss parameters, optimizer, scheduler, AMP scaler,
RNG states, epoch, best metric, early-stopping counter, history); resuming from it continues
bit-for-bit on CPU. ``torch.use_deterministic_algorithms(True)`` is on during training (warn-only
on CUDA, where a few kernels have no deterministic version) and restored afterwards.

Monitoring
----------
Early stopping and the best checkpoint follow ``monitor`` on validation, by default
``val_loss`` = the *unweighted* sum of the task losses (CE + Huber on standardised returns): the
learned uncertainty weights change during training, so the weighted total is not comparable
across epochs.
"""

from finnex_ml.geometry import BUY, CLASS_NAMES, HOLD, SELL
from finnex_ml.training.config import IMAGE_RECIPE, TrainConfig, TrainResult, image_recipe
from finnex_ml.training.data import (
    ArrayDataset,
    BagDataset,
    BlockBatchSampler,
    H5ArrayDataset,
    PanelDataset,
    as_bags,
    make_loader,
)
from finnex_ml.training.ensemble import EnsembleResult, train_ensemble
from finnex_ml.training.trainer import confusion_matrix, load_checkpoint_model, train_model

__all__ = [
    "SELL",
    "HOLD",
    "BUY",
    "CLASS_NAMES",
    "ArrayDataset",
    "BagDataset",
    "BlockBatchSampler",
    "H5ArrayDataset",
    "PanelDataset",
    "IMAGE_RECIPE",
    "image_recipe",
    "TrainConfig",
    "TrainResult",
    "EnsembleResult",
    "confusion_matrix",
    "load_checkpoint_model",
    "as_bags",
    "make_loader",
    "train_ensemble",
    "train_model",
]
