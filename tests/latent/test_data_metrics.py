"""Data validation and metric definitions."""

import numpy as np
import pytest
import torch

from tuneops.latent import metrics as M
from tuneops.latent.data import LatentDataError, load_dataset, load_digits_images, load_npy_images, validate_images


def test_digits_default_split_is_normalised_and_deterministic():
    x, y = load_digits_images()
    assert x.shape == (1797, 8, 8) and x.min() == 0.0 and x.max() == 1.0 and set(np.unique(y)) == set(range(10))
    a, b = load_dataset(seed=1), load_dataset(seed=1)
    assert a.x_train.shape[0] + a.x_test.shape[0] == 1797 and a.label_source == "digits"
    assert np.array_equal(a.x_test, b.x_test) and not np.array_equal(a.x_test, load_dataset(seed=2).x_test)


def test_npy_accepts_3d_and_flattened_square(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (30, 6, 6)).astype(np.uint8)
    np.save(tmp_path / "a.npy", imgs)
    np.save(tmp_path / "b.npy", imgs.reshape(30, 36))
    a, b = load_npy_images(tmp_path / "a.npy"), load_npy_images(tmp_path / "b.npy")
    assert a.shape == (30, 6, 6) and a.dtype == np.float32 and a.min() == 0 and a.max() == 1
    assert np.array_equal(a, b)


def test_npy_without_labels_gets_kmeans_pseudo_classes(tmp_path):
    x, _ = load_digits_images()
    np.save(tmp_path / "d.npy", x[:200])
    data = load_dataset(tmp_path / "d.npy", seed=0)
    assert data.label_source == "kmeans" and data.n_classes == 10


@pytest.mark.parametrize(
    "array, needle",
    [
        (np.zeros((0, 8, 8)), "empty"),
        (np.random.rand(30, 10), "not a square image"),
        (np.random.rand(30, 3, 8, 8), "expected (N, H, W)"),
        (np.random.rand(30), "expected (N, H, W)"),
        (np.full((30, 8, 8), np.nan), "NaN"),
        (np.ones((30, 8, 8)), "same value"),
        (np.random.rand(5, 8, 8), "only 5 images"),
        (np.array([["a"] * 4] * 30), "not numeric"),
    ],
)
def test_bad_arrays_raise_typed_error_naming_file_and_fix(tmp_path, array, needle):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(LatentDataError) as exc:
        load_npy_images(path)
    msg = str(exc.value)
    assert str(path) in msg and needle in msg and "Fix:" in msg


def test_missing_pickled_and_non_npy_files(tmp_path):
    with pytest.raises(LatentDataError, match="file not found"):
        load_npy_images(tmp_path / "nope.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}] * 30, dtype=object), allow_pickle=True)
    with pytest.raises(LatentDataError, match="obj.npy"):
        load_npy_images(tmp_path / "obj.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(LatentDataError, match="text.npy"):
        load_npy_images(tmp_path / "text.npy")


def test_partial_nan_is_counted():
    x = np.random.rand(30, 8, 8)
    x[0, 0, :3] = np.nan
    with pytest.raises(LatentDataError, match="3 NaN"):
        validate_images(x, "mem.npy")


def test_active_units_counts_dimensions_that_vary_with_x():
    torch.manual_seed(0)
    mu = torch.zeros(1000, 5)
    mu[:, 0] = torch.randn(1000)  # informative
    mu[:, 1] = 0.2 * torch.randn(1000)  # var 0.04 > 0.01
    mu[:, 2] = 0.05 * torch.randn(1000)  # var 0.0025: collapsed
    assert M.active_units(mu) == 2


def test_perplexity_and_dead_codes():
    assert M.perplexity(np.array([5, 5, 5, 5])) == pytest.approx(4.0)
    assert M.perplexity(np.array([10, 0, 0, 0])) == pytest.approx(1.0)
    assert M.dead_codes(np.array([3, 0, 1, 0])) == 2


def test_frechet_distance_is_zero_for_same_and_grows_with_shift():
    a = np.random.default_rng(0).normal(size=(500, 4))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    # Equal covariances: the distance is the squared mean shift.
    assert M.frechet_distance(a + 2.0, a) == pytest.approx(16.0, rel=1e-6)


def test_sharpness_is_lower_for_blurred_images():
    x, _ = load_digits_images()
    x = torch.from_numpy(x[:50])
    blurred = torch.nn.functional.avg_pool2d(x[:, None], 3, stride=1, padding=1)[:, 0]
    assert M.sharpness(blurred) < 0.8 * M.sharpness(x)


def test_gap_ratio_separates_on_and_off_manifold_queries():
    torch.manual_seed(0)
    codes = torch.randn(500, 4) * 0.1 + 3.0
    assert M.nearest_distance_ratio(torch.randn(200, 4) * 0.1 + 3.0, codes) < 2.0
    assert M.nearest_distance_ratio(torch.randn(200, 4), codes) > 10.0


def test_score_samples_confidence_and_class_entropy():
    clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        for p in clf.parameters():
            p.zero_()
        clf[3].bias.copy_(torch.tensor([10.0, 0.0]))  # always class 0, very confident
    s = M.score_samples(clf, torch.rand(20, 2, 2))
    assert s["confidence"] > 0.99 and s["class_entropy_bits"] == 0.0 and s["max_class_entropy_bits"] == 1.0
