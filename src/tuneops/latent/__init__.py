"""Latent-variable generative models lab: AE vs VAE vs VQ-VAE, with their failure modes made measurable.

Modules: `data` (digits / .npy images), `models`, `train`, `metrics`, `experiments`, `report`, `cli`.
Run `tuneops latent compare` (or `python -m tuneops.latent.cli compare`).
"""

from tuneops.latent.data import ImageData, LatentDataError, load_dataset

__all__ = ["ImageData", "LatentDataError", "load_dataset"]
