"""Image data for the latent-variable lab: scikit-learn digits by default, or a user `.npy` array.

Every image set is normalised to float32 in [0, 1] with shape (N, H, W). Bad files raise
`LatentDataError`, whose message names the file and says how to fix it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_IMAGES = 20
MIN_SIDE = 4


class LatentDataError(ValueError):
    """Raised when an image or label file cannot be used; the message names the file and the fix."""


@dataclass
class ImageData:
    """A train/test split of images in [0, 1] with (real or pseudo) class labels for the judge classifier."""

    x_train: np.ndarray  # (N, H, W) float32
    x_test: np.ndarray
    y_train: np.ndarray  # (N,) int64
    y_test: np.ndarray
    source: str
    label_source: str  # "digits", "file" or "kmeans" (pseudo-classes when no labels are given)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.x_train.shape[1]), int(self.x_train.shape[2])

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max()) + 1)


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 bundled 8x8 scikit-learn digits as (N, 8, 8) float32 in [0, 1] plus labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel intensities are integers 0..16.
    x = (digits.images / 16.0).astype(np.float32)
    return x, digits.target.astype(np.int64)


def _fail(path: Path | str, problem: str, fix: str) -> LatentDataError:
    return LatentDataError(f"{path}: {problem}. Fix: {fix}")


def _load_array(path: Path) -> np.ndarray:
    if not path.exists():
        raise _fail(path, "file not found", "pass the path of an existing .npy file")
    if path.is_dir():
        raise _fail(path, "is a directory, not a .npy file", "pass the path of a .npy file")
    try:
        # allow_pickle=False: an object array could run arbitrary code and is never an image stack.
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise _fail(path, f"not a plain numeric .npy array ({exc})", "save it with np.save(path, images.astype('float32'))") from exc
    except Exception as exc:  # corrupted header, not an npy at all, .npz, ...
        raise _fail(path, f"cannot be read as a .npy array ({type(exc).__name__}: {exc})", "save the images with np.save(path, images)") from exc
    if not isinstance(arr, np.ndarray):
        raise _fail(path, "holds an .npz archive, not a single array", "save one array with np.save(path, images)")
    return arr


def validate_images(arr: np.ndarray, path: Path | str = "<array>") -> np.ndarray:
    """Check and normalise an image array to (N, H, W) float32 in [0, 1]; raise LatentDataError otherwise."""
    if arr.dtype.kind not in "biuf":
        raise _fail(path, f"has dtype {arr.dtype}, not numeric", "store pixel intensities as numbers, e.g. images.astype('float32')")
    if arr.size == 0:
        raise _fail(path, f"is empty (shape {arr.shape})", "save a non-empty array of images")
    if arr.ndim == 4 and 1 in (arr.shape[1], arr.shape[3]):
        # Single-channel images stored channels-first or channels-last.
        arr = arr[:, 0] if arr.shape[1] == 1 else arr[..., 0]
    if arr.ndim == 2:
        side = math.isqrt(arr.shape[1])
        if side * side != arr.shape[1]:
            raise _fail(
                path,
                f"is 2-D with {arr.shape[1]} values per row, which is not a square image",
                "save images as a 3-D array (N, H, W), or flattened square images (N, H*H)",
            )
        arr = arr.reshape(arr.shape[0], side, side)
    if arr.ndim != 3:
        raise _fail(
            path,
            f"has shape {arr.shape}; expected (N, H, W) grayscale images or (N, H*H) flattened square images",
            "reshape to (N, H, W) (convert colour images to grayscale first) and save again",
        )
    n, h, w = arr.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise _fail(path, f"images are {h}x{w}; the lab needs at least {MIN_SIDE}x{MIN_SIDE}", "check the array axes are (N, H, W)")
    if n < MIN_IMAGES:
        raise _fail(path, f"has only {n} images; the lab needs at least {MIN_IMAGES} for a train/test split", "add more images")
    arr = arr.astype(np.float64)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise _fail(path, f"contains {bad} NaN/inf values", "drop or replace them (e.g. np.nan_to_num) before saving")
    lo, hi = float(arr.min()), float(arr.max())
    if hi - lo <= 0:
        raise _fail(path, f"every pixel has the same value ({lo})", "check that the file holds the real images")
    # A global min-max keeps relative intensities, whatever the original range (0..255, 0..16, -1..1).
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def load_npy_images(path: str | Path) -> np.ndarray:
    """Load and validate a user `.npy` image array."""
    path = Path(path)
    return validate_images(_load_array(path), path)


def load_labels(path: str | Path, n: int) -> np.ndarray:
    """Load integer class labels for `n` images from a `.npy` file."""
    path = Path(path)
    y = _load_array(path)
    if y.ndim != 1 or y.shape[0] != n:
        raise _fail(path, f"has shape {y.shape}; expected ({n},), one label per image", "save a 1-D array of integer labels")
    if y.dtype.kind not in "biu":
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise _fail(path, f"has dtype {y.dtype}; labels must be integers", "save labels with labels.astype('int64')")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise _fail(path, "contains negative labels", "use labels 0..C-1")
    if len(np.unique(y)) < 2:
        raise _fail(path, "has a single class", "the judge classifier needs at least two classes")
    # Re-index to 0..C-1 so the classifier head is compact.
    _, y = np.unique(y, return_inverse=True)
    return y.astype(np.int64)


def pseudo_labels(x: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """k-means cluster ids used as classes when a user data set comes without labels."""
    from sklearn.cluster import KMeans

    k = int(min(n_classes, len(x) // 2))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed)
    return km.fit_predict(x.reshape(len(x), -1)).astype(np.int64)


def load_dataset(
    path: str | Path | None = None,
    labels: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> ImageData:
    """Load digits (default) or a `.npy` image file, split it and attach labels for the judge classifier."""
    if path is None:
        x, y = load_digits_images()
        source, label_source = "sklearn digits (8x8)", "digits"
        if labels is not None:
            raise LatentDataError(f"{labels}: labels were given without --data. Fix: pass --data PATH.npy too, or drop --labels")
    else:
        x = load_npy_images(path)
        source = str(path)
        if labels is not None:
            y, label_source = load_labels(labels, len(x)), "file"
        else:
            y, label_source = pseudo_labels(x, 10, seed), "kmeans"
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    if limit is not None:
        order = order[: max(MIN_IMAGES, int(limit))]
    n_test = max(1, int(round(len(order) * test_fraction)))
    test, train = order[:n_test], order[n_test:]
    return ImageData(x[train], x[test], y[train], y[test], source, label_source)
