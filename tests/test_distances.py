"""Distances between sample sets against closed forms, brute-force transcriptions and exact testbed samples;
the dataset loaders and the shipped feature classifiers."""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import scoresde as sd
import scoresde.evaluation.metrics as dist
from scoresde.data import FASHION_MNIST_ROOT, load_digits, load_fashion_mnist, read_idx
from scoresde.evaluation.features import feature_extractor, load_classifier, weights_path
from scoresde.evaluation.metrics import (
    chi_radius,
    frechet_distance,
    frechet_distance_from_features,
    kernel_distance,
    mmd,
    mode_coverage,
    precision_recall,
    replication_score,
)

FASHION_PRESENT = Path(FASHION_MNIST_ROOT, "t10k-images-idx3-ubyte.gz").is_file()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_mmd2(x: torch.Tensor, y: torch.Tensor, k) -> float:
    """Gretton et al. 2012, eq. 3, written out with full kernel matrices."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x[:, None], x[None]), k(y[:, None], y[None]), k(x[:, None], y[None])
    return float((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum())
                 / (n * (n - 1)) - 2 * kxy.mean())


# ------------------------------------------------------------------------------------------- Fréchet distance
def test_frechet_of_a_set_to_itself_and_to_a_shifted_copy():
    f = torch.randn(3000, 6, generator=gen(), dtype=torch.float64) @ torch.randn(6, 6, generator=gen(1),
                                                                                   dtype=torch.float64)
    shift = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0, 0.25], dtype=torch.float64)
    assert frechet_distance_from_features(f, f) < 1e-8
    assert frechet_distance_from_features(f, f + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([0.0, 1.0, -1.0]), torch.tensor([2.0, 1.0, 0.5])
    v1, v2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    want = float((mu1 - mu2).pow(2).sum() + (v1 + v2 - 2 * (v1 * v2).sqrt()).sum())
    assert frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2)) == pytest.approx(want, rel=1e-10)


def test_frechet_matches_the_symmetric_w2_formula_for_non_commuting_covariances():
    """tr((Σ₁Σ₂)^{1/2}) = tr((Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2}), computed here with eigh only."""
    a, b = np.random.default_rng(0).normal(size=(2, 5, 5))
    c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    w, v = np.linalg.eigh(c1)
    r1 = v @ np.diag(np.sqrt(w)) @ v.T
    tr_root = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ c2 @ r1), 0, None)).sum()
    want = np.trace(c1) + np.trace(c2) - 2 * tr_root
    assert frechet_distance(np.zeros(5), c1, np.zeros(5), c2) == pytest.approx(want, rel=1e-8)


def test_frechet_with_fewer_samples_than_dimensions_is_finite():
    f1, f2 = torch.randn(5, 20, generator=gen()), torch.randn(5, 20, generator=gen(1))
    value = frechet_distance_from_features(f1, f2)
    (m1, c1), (m2, c2) = dist.mean_cov(f1), dist.mean_cov(f2)
    eye = 1e-6 * torch.eye(20, dtype=torch.float64)
    assert math.isfinite(value) and value == pytest.approx(frechet_distance(m1, c1 + eye, m2, c2 + eye), rel=1e-4)


def test_frechet_falls_back_to_an_eps_offset_when_sqrtm_fails(monkeypatch):
    real_sqrtm, calls = dist.linalg.sqrtm, []

    def failing_once(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(dist.linalg, "sqrtm", failing_once)
    c1, c2 = torch.diag(torch.tensor([1.0, 4.0])), torch.diag(torch.tensor([4.0, 1.0]))
    with pytest.warns(UserWarning, match="adding 1e-06 to the diagonals"):
        value = frechet_distance(torch.zeros(2), c1, torch.zeros(2), c2)
    assert len(calls) == 2 and value == pytest.approx(2.0, rel=1e-5)  # Σ(σ1 + σ2 − 2√(σ1σ2)) = 1 + 1


# ---------------------------------------------------------------------------------------------------- MMD / KID
def test_mmd_matches_the_written_out_estimator_and_chunks(monkeypatch):
    x, y = torch.randn(40, 3, generator=gen(), dtype=torch.float64), torch.rand(30, 3, generator=gen(1),
                                                                                dtype=torch.float64)
    hs = [0.5, 2.0]

    def rbf(a, b):
        return sum(torch.exp(-(a - b).pow(2).sum(-1) / (2 * h * h)) for h in hs)

    want = brute_mmd2(x, y, rbf)
    assert mmd(x, y, hs) == pytest.approx(want, rel=1e-10)
    monkeypatch.setattr(dist, "_CHUNK_ELEMENTS", 7)  # row chunks of a few points
    assert mmd(x, y, hs) == pytest.approx(want, rel=1e-10)
    h = dist.median_bandwidth(x, y)
    assert mmd(x, y) == pytest.approx(mmd(x, y, h), rel=1e-12)


@pytest.mark.parametrize("bandwidths", [None, [0.25, 1.0, 4.0]])
def test_mmd_is_unbiased_and_detects_a_shift(bandwidths):
    ring = sd.get_testbed("ring")
    g = gen(3)
    same = torch.tensor([mmd(ring.sample(200, g), ring.sample(200, g), bandwidths) for _ in range(30)])
    shifted = torch.tensor([mmd(ring.sample(200, g), ring.sample(200, g) + 1.0, bandwidths) for _ in range(30)])
    assert abs(float(same.mean())) < 3 * float(same.std()) / math.sqrt(len(same))
    assert bool((same < 0).any())  # unbiased: single values straddle 0
    assert bool((shifted > 0).all()) and float(shifted.mean()) > float(same.mean()) + 5 * float(same.std())


def test_kid_is_the_polynomial_kernel_mmd_and_detects_a_shift():
    x, y = torch.randn(300, 8, generator=gen()), torch.randn(300, 8, generator=gen(1))

    def poly(a, b):
        return ((a * b).sum(-1) / 8 + 1) ** 3

    full = kernel_distance(x, y, n_subsets=1, subset_size=300)  # one subset holding every sample
    assert full.mean == pytest.approx(brute_mmd2(x.double(), y.double(), poly), rel=1e-9) and full.std == 0.0
    same = kernel_distance(x, y, n_subsets=50, subset_size=100, generator=gen(2))
    shifted = kernel_distance(x, y + 0.5, n_subsets=50, subset_size=100, generator=gen(2))
    assert abs(same.mean) < 3 * same.std and shifted.mean > 10 * same.std
    assert kernel_distance(x, y, 5, 100, gen(7)) == kernel_distance(x, y, 5, 100, gen(7))  # injected randomness


# ---------------------------------------------------------------------------------------------- precision / recall
def test_precision_recall_by_hand():
    real = torch.arange(10.0)[:, None]  # k = 1: every ball has radius 1
    fake = torch.tensor([[0.5], [20.0]])  # one inside, one far out; fake balls have radius 19.5
    assert precision_recall(real, fake, k=1) == (0.5, 1.0)
    x = torch.randn(200, 4, generator=gen())
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100) == (0.0, 0.0)


def test_precision_recall_sees_missing_modes():
    ring = sd.get_testbed("ring")
    real = ring.sample(800, gen())
    half = real[(real[:, 1] > 0.1)]  # the generator dropped the lower modes
    p, r = precision_recall(real, half)
    assert p > 0.95 and r < 0.7


# ---------------------------------------------------------------------------------------------- mode coverage
def test_chi_radius():
    assert chi_radius(1, 3.0) == pytest.approx(3.0)
    assert chi_radius(2, 3.0) == pytest.approx(math.sqrt(-2 * math.log(1 - math.erf(3 / math.sqrt(2)))))
    assert math.sqrt(64) < chi_radius(64) < math.sqrt(64) + 3


def test_mode_coverage_of_exact_ring_samples_and_of_one_mode():
    ring = sd.get_testbed("ring")
    rep = mode_coverage(ring.sample(4000, gen()), ring)
    assert rep.modes_covered == rep.n_modes == 8
    assert torch.allclose(rep.weights, torch.full((8,), 1 / 8, dtype=torch.float64), atol=0.025)
    assert rep.fraction_off_mode < 0.01 and rep.tv < 0.05
    one = ring.means[3] + ring.stds[3] * torch.randn(500, 2, generator=gen(1), dtype=torch.float64)
    rep = mode_coverage(one, ring)
    assert rep.modes_covered == 1 and rep.counts[3] == int(rep.counts.sum())
    assert rep.tv == pytest.approx(7 / 8, abs=0.01)
    off = mode_coverage(torch.zeros(10, 2), ring)  # the centre of the ring is on no mode
    assert off.fraction_off_mode == 1.0 and off.modes_covered == 0 and off.tv == 1.0


def test_mode_coverage_radius_is_right_in_high_dimension():
    """Exact samples of a 64-D mixture sit ≈ 8c from their mean: a fixed 3c radius would call them all off-mode."""
    mix = sd.get_testbed("high_dim")
    rep = mode_coverage(mix.sample(3000, gen()), mix)
    assert rep.fraction_off_mode < 0.01 and rep.modes_covered == 10 and rep.tv < 0.05


# ---------------------------------------------------------------------------------------------- replication
def test_noisy_training_images_are_copies_and_fresh_samples_are_not():
    train, _ = load_digits()
    idx = torch.randint(len(train), (64,), generator=gen())
    rep = replication_score(train[idx] + 1e-3 * torch.randn(64, 1, 8, 8, generator=gen(1)), train)
    assert rep.fraction_copies == 1.0 and torch.equal(rep.nearest, idx) and bool((rep.ratios < 0.01).all())
    mix = sd.get_testbed("high_dim")  # in d dims P(d1/d2 < r) ≈ r^d for fresh samples: none in 64-D
    rep = replication_score(mix.sample(200, gen(2)), mix.sample(2000, gen(3)))
    assert rep.fraction_copies == 0.0 and bool((rep.d1 <= rep.d2).all())


def test_ideal_denoiser_is_a_copier():
    testbed = sd.get_testbed("digits")
    model = testbed.model(sd.EDMSDE())
    x = sd.sample(model, "heun", 20, (16, 1, 8, 8), grid="karras", denoise=True, seed=0)
    rep = replication_score(x, testbed.means.reshape(-1, 1, 8, 8))
    assert rep.fraction_copies > 0.9


# ---------------------------------------------------------------------------------------------- classifiers and data
def test_shipped_digits_classifier_accuracy_and_features():
    assert weights_path("digits").stat().st_size < 1_000_000
    x, y = load_digits("test")
    model = load_classifier("digits")
    acc = float((model(x).argmax(1) == y).double().mean())
    assert acc > 0.95
    f = feature_extractor("digits", batch_size=100)(x)
    assert f.shape == (len(x), 128) and f.dtype == torch.float32
    assert torch.allclose(f, model.features(x), atol=1e-6)


def test_shipped_fashion_classifier_features():
    assert weights_path("fashion_mnist").stat().st_size < 1_000_000
    f = feature_extractor("fashion_mnist")(torch.rand(5, 1, 28, 28) * 2 - 1)
    assert f.shape == (5, 128)


NO_FASHION = "Fashion-MNIST not installed (apt-get install -y dataset-fashion-mnist)"


@pytest.mark.skipif(not FASHION_PRESENT, reason=NO_FASHION)
def test_fashion_mnist_loader_and_classifier():
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.min() == -1 and x.max() == 1 and torch.equal(y.bincount(),
                                                                                             torch.full((10,), 1000))
    acc = float((load_classifier("fashion_mnist")(x[:500]).argmax(1) == y[:500]).double().mean())  # shipped: 0.918
    assert acc > 0.85


def test_digits_loader_and_split():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == -1 and x.max() == 1
    assert torch.allclose(x.double(), sd.get_testbed("digits").means.reshape(-1, 1, 8, 8))  # same scaling
    (xtr, ytr), (xte, yte) = load_digits("train"), load_digits("test")
    assert len(xtr) + len(xte) == 1797 and len(xte) == 359
    assert torch.equal(torch.cat([ytr, yte]).sort().values, y.sort().values)


def test_idx_reader_plain_and_gzip(tmp_path):
    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + np.array([2, 3, 4], dtype=">u4").tobytes() + data.tobytes()
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    assert np.array_equal(read_idx(tmp_path / "a"), data) and np.array_equal(read_idx(tmp_path / "a.gz"), data)
    (tmp_path / "bad").write_bytes(raw[:-1])
    with pytest.raises(ValueError, match="IDX header"):
        read_idx(tmp_path / "bad")


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_fashion_mnist_names_the_install_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation", root=tmp_path)


def test_bad_input_errors():
    a, b = torch.randn(10, 3), torch.randn(10, 4)
    for fn in (mmd, frechet_distance_from_features, kernel_distance, precision_recall, replication_score):
        with pytest.raises(ValueError, match="same number of dimensions"):
            fn(a, b)
    for k in (0, -1, 1.5):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            precision_recall(a, a, k=k)
    with pytest.raises(ValueError, match="at least 4 samples"):
        precision_recall(a[:3], a, k=3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd(a[:1], a)
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(a, a, [1.0, -1.0])
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="mixture 2"):
        mode_coverage(a, sd.get_testbed("ring"))
    with pytest.raises(ValueError, match="threshold"):
        replication_score(a, a, threshold=0)
    with pytest.raises(ValueError, match=r"shape \(N, 1, 8, 8\)"):
        feature_extractor("digits")(torch.zeros(2, 1, 28, 28))
    with pytest.raises(KeyError, match="fashion_mnist"):
        load_classifier("cifar10")
    with pytest.raises(ValueError, match="split"):
        load_digits("val")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    ring = sd.get_testbed("ring")
    x, y = ring.sample(500, gen()), ring.sample(400, gen(1))
    xc, yc = x.cuda(), y.cuda()
    assert mmd(xc, yc) == pytest.approx(mmd(x, y), rel=1e-9, abs=1e-12)
    assert frechet_distance_from_features(xc, yc) == pytest.approx(frechet_distance_from_features(x, y), rel=1e-9)
    assert precision_recall(xc, yc) == precision_recall(x, y)
    assert mode_coverage(xc, ring).tv == pytest.approx(mode_coverage(x, ring).tv)
    assert replication_score(xc, yc).fraction_copies == replication_score(x, y).fraction_copies
    imgs = load_digits("test")[0]
    f = feature_extractor("digits")
    assert f(imgs.cuda()).device.type == "cuda"
    assert torch.allclose(f(imgs.cuda()).cpu(), f(imgs), atol=1e-4)
