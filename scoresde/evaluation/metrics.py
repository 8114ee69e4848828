"""The one home of sample-quality metrics: distances between sample sets (sliced Wasserstein, MMD, Fréchet distance
(FID-style), kernel distance (KID)), the error of paired samples (RMSE), the fitted convergence order of an error
against a cost, mode coverage of a Gaussian mixture, k-NN precision/recall and training-data replication.

Every function takes batches of shape (N, ...) (flattened to (N, d)) on any device, works in chunks so memory stays
bounded, and returns Python floats or small reports whose tensors live on the CPU.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy import linalg, stats
from torch import Tensor

from scoresde.testbeds.mixture import GaussianMixture

_CHUNK_ELEMENTS = 1 << 22  # entries of one (rows × columns) block of a distance or kernel matrix
_MEDIAN_POINTS = 1000  # points per set used by the median heuristic


# --------------------------------------------------------------------------------------------------- helpers
def _flat(x: Tensor, name: str, min_n: int = 1) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim < 1:
        raise ValueError(f"{name} must be a tensor of shape (N, ...), got {type(x).__name__}")
    if x.shape[0] < min_n:
        raise ValueError(f"{name} needs at least {min_n} samples, got {x.shape[0]}")
    if not (x.is_floating_point() or x.dtype in (torch.uint8, torch.int64, torch.int32)):
        raise ValueError(f"{name} must hold real numbers, got {x.dtype}")
    return x.detach().reshape(x.shape[0], -1)


def _pair(x: Tensor, y: Tensor, names: tuple[str, str], min_n: int, dtype: torch.dtype | None = None
          ) -> tuple[Tensor, Tensor]:
    """Flatten two sample sets, check their dimensions agree, put y on x's device, cast both to ``dtype`` (by
    default float64 if either is float64, else float32)."""
    x, y = _flat(x, names[0], min_n), _flat(y, names[1], min_n)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} must have the same number of dimensions per sample, got "
                         f"{x.shape[1]} and {y.shape[1]}")
    if dtype is None:
        dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    return x.to(dtype), y.to(device=x.device, dtype=dtype)


def _rows_per_chunk(n_cols: int) -> int:
    return max(1, _CHUNK_ELEMENTS // max(n_cols, 1))


def _sq_dist(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances (len(a), len(b)), ``|a|² + |b|² − 2⟨a, b⟩`` clamped at 0."""
    return (a.pow(2).sum(1, keepdim=True) + b.pow(2).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)


def _kernel_sum(a: Tensor, b: Tensor, kernel: Callable[[Tensor, Tensor], Tensor], same: bool) -> Tensor:
    """``Σ_{i,j} k(a_i, b_j)``, leaving out i = j when ``same`` (a is b), computed in row chunks."""
    total = a.new_zeros(())
    step = _rows_per_chunk(len(b))
    for start in range(0, len(a), step):
        block = kernel(a[start:start + step], b)
        total = total + block.sum()
        if same:
            total = total - block[:, start:start + step].diagonal().sum()
    return total


def _mmd2_unbiased(x: Tensor, y: Tensor, kernel: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Unbiased MMD² (Gretton et al. 2012, Lemma 6 / eq. 3): mean k over distinct pairs within x and within y,
    minus twice the mean over all cross pairs."""
    m, n = len(x), len(y)
    kxx = _kernel_sum(x, x, kernel, same=True) / (m * (m - 1))
    kyy = _kernel_sum(y, y, kernel, same=True) / (n * (n - 1))
    kxy = _kernel_sum(x, y, kernel, same=False) / (m * n)
    return kxx + kyy - 2 * kxy


def _spread(n: int, m: int, device: torch.device) -> Tensor:
    """``m`` indices spread evenly over ``range(n)`` (all of them when m ≥ n)."""
    return torch.arange(n, device=device) if m >= n else torch.linspace(0, n - 1, m, device=device).long()


# ------------------------------------------------------------------------------------------------------- MMD
def median_bandwidth(x: Tensor, y: Tensor) -> float:
    """Median heuristic: the median Euclidean distance between distinct points of the pooled sample
    (Gretton et al. 2012, section 8), over at most 1000 evenly spaced points of each set."""
    x, y = _pair(x, y, ("x", "y"), 1, torch.float64)
    z = torch.cat([x[_spread(len(x), _MEDIAN_POINTS, x.device)], y[_spread(len(y), _MEDIAN_POINTS, x.device)]])
    iu = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    h = float(_sq_dist(z, z)[iu[0], iu[1]].median().sqrt())
    if not h > 0:
        raise ValueError("median-heuristic bandwidth is 0 (most pairs coincide); pass bandwidths explicitly")
    return h


def mmd(x: Tensor, y: Tensor, bandwidths: float | Sequence[float] | None = None) -> float:
    """Unbiased squared maximum mean discrepancy with a Gaussian RBF kernel.

    ``MMD²_u = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mn) Σ_{i,j} k(x_i, y_j)``
    (Gretton, Borgwardt, Rasch, Schölkopf & Smola 2012, "A kernel two-sample test", JMLR, eq. 3), with
    ``k(a, b) = Σ_h exp(−|a − b|² / (2h²))`` summed over the bandwidths h. Unbiased: its mean is 0 when x and y
    come from the same distribution, so single values can be slightly negative. Computed in float64.

    Args:
        x: (m, ...) samples, m ≥ 2, flattened.
        y: (n, ...) samples, n ≥ 2, same number of dimensions per sample.
        bandwidths: one h or several (a sum of kernels, robust to the scale); ``None``: the median heuristic
            (``median_bandwidth``).
    Returns:
        MMD²_u as a float.
    """
    x, y = _pair(x, y, ("x", "y"), 2, torch.float64)
    hs = [median_bandwidth(x, y)] if bandwidths is None else (
        [float(bandwidths)] if isinstance(bandwidths, (int, float)) else [float(h) for h in bandwidths])
    if not hs or any(not (h > 0 and math.isfinite(h)) for h in hs):
        raise ValueError(f"bandwidths must be positive finite numbers, got {bandwidths!r}")
    gammas = torch.tensor([1.0 / (2 * h * h) for h in hs], dtype=torch.float64, device=x.device)

    def rbf(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-_sq_dist(a, b)[..., None] * gammas).sum(-1)

    return float(_mmd2_unbiased(x, y, rbf))


# ------------------------------------------------------------------------------------------------- mode coverage
@dataclass
class ModeReport:
    """Result of ``mode_coverage``; tensors on the CPU.

    Attributes:
        counts: (K,) on-mode samples assigned to each component.
        weights: (K,) estimated mode weights, counts / Σ counts (zeros when no sample is on a mode).
        true_weights: (K,) the mixture's weights.
        modes_covered: components with at least ``min_count`` on-mode samples.
        n_modes: K.
        fraction_off_mode: fraction of samples farther than the radius from their nearest mean.
        tv: total-variation distance ½ Σ_k |weights_k − true_weights_k| (1.0 when no sample is on a mode).
        assignment: (N,) index of each sample's nearest mean.
        on_mode: (N,) whether each sample lies within the radius of its nearest mean.
        radius: (K,) the radius of each component.
    """

    counts: Tensor
    weights: Tensor
    true_weights: Tensor
    modes_covered: int
    n_modes: int
    fraction_off_mode: float
    tv: float
    assignment: Tensor
    on_mode: Tensor
    radius: Tensor


def chi_radius(dim: int, radius_stds: float = 3.0) -> float:
    """The ``radius_stds``-sigma radius of a standard Gaussian in ``dim`` dimensions, in units of its std.

    |x − μ|/c of x ~ N(μ, c² I_d) follows the chi distribution with d degrees of freedom, which concentrates near
    √(d − ½) with spread ≈ 1/√2; a fixed "3c" is therefore too small for d > 9 (almost no exact sample would be
    on its mode) and "3c√d" far too loose. The radius here keeps the meaning of "within k standard deviations" in
    1-D: it is the chi_d quantile at probability ``P(|N(0, 1)| ≤ k) = erf(k/√2)`` (0.9973 for k = 3), so an
    exact sample falls inside with that probability in every dimension. d = 1: k; d = 2 and k = 3: 3.44;
    d = 64: 10.0 ≈ √64 + 2.
    """
    if dim < 1 or not radius_stds > 0:
        raise ValueError(f"need dim >= 1 and radius_stds > 0, got {dim} and {radius_stds}")
    return float(math.sqrt(stats.chi2.ppf(math.erf(radius_stds / math.sqrt(2)), dim)))


def mode_coverage(samples: Tensor, mixture: GaussianMixture, radius_stds: float = 3.0, min_count: int = 1,
                  min_radius: float = 0.0) -> ModeReport:
    """Which modes of a Gaussian mixture ``Σ_k w_k N(μ_k, c_k² I)`` the samples cover, and with what weights.

    Each sample is assigned to its nearest component mean; it is on that mode if ``|x − μ_k| ≤ r_k`` with
    ``r_k = max(c_k · chi_radius(d, radius_stds), min_radius)`` (the chi-distribution radius, see ``chi_radius``).
    The counts of on-mode samples give estimated weights, compared with the true ones by total variation; a mode
    is covered with at least ``min_count`` on-mode samples — the "high-quality samples within 3 standard
    deviations" of mode-collapse studies (Srivastava et al. 2017, VEEGAN; Dieng et al. 2019), with the radius
    made right for d > 1. For point-mass components (c_k = 0, the ideal denoiser of a dataset) only
    ``min_radius`` counts; use ``replication_score`` there.

    Args:
        samples: (N, *event_shape) or (N, d) samples, any device.
        mixture: the target mixture (``scoresde.testbeds.GaussianMixture``).
        radius_stds: k of the "k-sigma" radius.
        min_count: on-mode samples a mode needs to count as covered.
        min_radius: lower bound on every radius (absolute units).
    """
    x = _flat(samples, "samples").to(torch.float64)
    if x.shape[1] != mixture.dim:
        raise ValueError(f"samples have {x.shape[1]} dimensions per sample, the mixture {mixture.dim}")
    if not isinstance(min_count, int) or min_count < 1:
        raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
    means = mixture.means.to(x.device)
    radius = (mixture.stds * chi_radius(mixture.dim, radius_stds)).clamp_min(float(min_radius))
    assignment = torch.cat([_sq_dist(chunk, means).argmin(1) for chunk in x.split(_rows_per_chunk(len(means)))])
    dist = (x - means[assignment]).norm(dim=1)  # exact distance to the assigned mean
    on_mode = (dist <= radius.to(x.device)[assignment]).cpu()
    assignment = assignment.cpu()
    k = len(means)
    counts = torch.bincount(assignment[on_mode], minlength=k)
    n_on = int(counts.sum())
    weights = counts.to(torch.float64) / n_on if n_on else torch.zeros(k, dtype=torch.float64)
    tv = 0.5 * float((weights - mixture.weights).abs().sum()) if n_on else 1.0
    return ModeReport(counts=counts, weights=weights, true_weights=mixture.weights.clone(),
                      modes_covered=int((counts >= min_count).sum()), n_modes=k,
                      fraction_off_mode=1.0 - n_on / len(x), tv=tv, assignment=assignment, on_mode=on_mode,
                      radius=radius)


# ---------------------------------------------------------------------------------------------- Fréchet distance
def _as_numpy64(a: Tensor | np.ndarray, name: str, ndim: int) -> np.ndarray:
    out = a.detach().to("cpu", torch.float64).numpy() if isinstance(a, Tensor) else np.asarray(a, dtype=np.float64)
    if out.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {out.shape}")
    return out


def _sqrtm(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """scipy's matrix square root; also says whether scipy found the matrix singular (it warns)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = linalg.sqrtm(a)
    singular = any("singular" in str(w.message).lower() for w in caught)
    return np.asarray(root), singular


def frechet_distance(mu1: Tensor | np.ndarray, cov1: Tensor | np.ndarray, mu2: Tensor | np.ndarray,
                     cov2: Tensor | np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂), the FID formula:

    ``d² = |μ₁ − μ₂|² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})`` (Dowson & Landau 1982; Heusel et al. 2017, eq. 6).

    Computed in float64 with ``scipy.linalg.sqrtm`` as the reference FID code does (Heusel et al.'s TTUR and
    pytorch-fid): if the product is singular (scipy warns, e.g. fewer samples than feature dimensions) or the
    root is not finite, ``eps·I`` is added to both covariances and the root recomputed (with a warning); a small
    imaginary part from round-off is dropped, a large one (|Im diag| > 1e-3) raises. The result is clamped at 0,
    which round-off can undershoot by ~1e-12 for identical inputs.

    Args:
        mu1, mu2: (d,) means. cov1, cov2: (d, d) covariances. eps: the diagonal offset of the fallback.
    """
    mu1, mu2 = _as_numpy64(mu1, "mu1", 1), _as_numpy64(mu2, "mu2", 1)
    cov1, cov2 = _as_numpy64(cov1, "cov1", 2), _as_numpy64(cov2, "cov2", 2)
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, cov1 {cov1.shape}, mu2 {mu2.shape}, cov2 {cov2.shape}")
    covmean, singular = _sqrtm(cov1 @ cov2)
    if singular or not np.isfinite(covmean).all():
        warnings.warn(f"frechet_distance: singular covariance product; adding {eps} to the diagonals", stacklevel=2)
        offset = np.eye(d) * eps
        covmean, _ = _sqrtm((cov1 + offset) @ (cov2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"frechet_distance: imaginary component {np.abs(covmean.imag).max():.3g} in sqrtm")
        covmean = covmean.real
    diff = mu1 - mu2
    value = diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean)
    return max(float(value), 0.0)


def mean_cov(f: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (d,) and unbiased covariance (d, d) of features (N, d), N ≥ 2, in float64 on f's device."""
    f = _flat(f, "features", 2).to(torch.float64)
    mu = f.mean(0)
    centered = f - mu
    return mu, centered.T @ centered / (len(f) - 1)


def frechet_distance_from_features(f1: Tensor, f2: Tensor, eps: float = 1e-6) -> float:
    """FID-style distance between two feature sets (N₁, d) and (N₂, d): ``frechet_distance`` of their means and
    unbiased covariances (Heusel et al. 2017)."""
    f1, f2 = _pair(f1, f2, ("f1", "f2"), 2, torch.float64)
    return frechet_distance(*mean_cov(f1), *mean_cov(f2), eps=eps)


# ---------------------------------------------------------------------------------------------------- KID
class KernelDistance(NamedTuple):
    """KID: mean and standard deviation of the unbiased MMD² over the subsets."""

    mean: float
    std: float


def kernel_distance(real_feats: Tensor, fake_feats: Tensor, n_subsets: int = 100, subset_size: int = 1000,
                    generator: torch.Generator | None = None) -> KernelDistance:
    """Kernel Inception Distance (Bińkowski, Sutherland, Arbel & Gretton 2018, "Demystifying MMD GANs", sec. 2.1):
    the unbiased MMD² with the cubic polynomial kernel ``k(a, b) = (⟨a, b⟩/d + 1)³``, averaged over
    ``n_subsets`` random subsets of ``min(subset_size, N_real, N_fake)`` samples of each set, drawn without
    replacement within a subset from ``generator`` (CPU), as in the reference code (100 subsets of 1000).

    Returns:
        ``KernelDistance(mean, std)`` over the subsets (std is 0 for one subset). Computed in float64.
    """
    x, y = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"), 2, torch.float64)
    if not isinstance(n_subsets, int) or n_subsets < 1 or not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"need n_subsets >= 1 and subset_size >= 2, got {n_subsets!r} and {subset_size!r}")
    m = min(subset_size, len(x), len(y))
    d = x.shape[1]

    def poly(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.T / d + 1).pow(3)

    values = []
    for _ in range(n_subsets):
        ix = torch.randperm(len(x), generator=generator)[:m].to(x.device)
        iy = torch.randperm(len(y), generator=generator)[:m].to(x.device)
        values.append(_mmd2_unbiased(x[ix], y[iy], poly))
    v = torch.stack(values).cpu()
    return KernelDistance(float(v.mean()), float(v.std()) if n_subsets > 1 else 0.0)


# ---------------------------------------------------------------------------------------------- precision / recall
class PrecisionRecall(NamedTuple):
    precision: float
    recall: float


def _knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each point of x to its k-th nearest other point of x, shape (N,)."""
    step = _rows_per_chunk(len(x))
    return torch.cat([torch.cdist(c, x).topk(k + 1, dim=1, largest=False).values[:, k] for c in x.split(step)])


def _inside_any(points: Tensor, centers: Tensor, radii: Tensor) -> Tensor:
    """Whether each point lies in at least one ball B(center_j, radius_j), shape (N,)."""
    step = _rows_per_chunk(len(centers))
    return torch.cat([(torch.cdist(c, centers) <= radii[None, :]).any(1) for c in points.split(step)])


def precision_recall(real_feats: Tensor, fake_feats: Tensor, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019, eqs. 1–2).

    The manifold of a set is the union of balls around its points whose radius is the distance to the point's
    k-th nearest neighbour within the set. Precision: fraction of fake samples inside the real manifold (quality);
    recall: fraction of real samples inside the fake manifold (coverage). The paper uses k = 3.

    Args:
        real_feats: (N, d) real features; fake_feats: (M, d) generated features; both need more than k points.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    x, y = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"), k + 1)
    precision = _inside_any(y, x, _knn_radii(x, k)).double().mean()
    recall = _inside_any(x, y, _knn_radii(y, k)).double().mean()
    return PrecisionRecall(float(precision), float(recall))


# ---------------------------------------------------------------------------------------------- replication
@dataclass
class ReplicationReport:
    """Result of ``replication_score``; tensors on the CPU.

    Attributes:
        fraction_copies: fraction of samples with ratio < threshold.
        ratios: (N,) d1/d2 of each sample (0 when d1 = 0).
        nearest: (N,) index of each sample's nearest training example.
        d1, d2: (N,) distances to the nearest and second-nearest training examples.
        is_copy: (N,) ratios < threshold.
        threshold: the threshold used.
    """

    fraction_copies: float
    ratios: Tensor
    nearest: Tensor
    d1: Tensor
    d2: Tensor
    is_copy: Tensor
    threshold: float


def replication_score(samples: Tensor, train: Tensor, threshold: float = 1 / 3) -> ReplicationReport:
    """How many samples are copies of training examples, by the nearest-neighbour distance ratio.

    For each sample, ``d1/d2`` = Euclidean distance to its nearest training example over the distance to the
    second nearest; below ``threshold`` (1/3) the sample counts as a memorized copy (Yoon et al. 2023, "Diffusion
    probabilistic models generalize when they fail to memorize"; Gu et al. 2023, "On memorization in diffusion
    models", eq. 2). Candidates are found with ``torch.cdist`` in chunks; d1 and d2 are then recomputed exactly
    from the two differences. An exact match (d1 = 0) has ratio 0 even if the training set holds duplicates of
    it; deduplicate the training set otherwise (near duplicates make d2 ≈ d1 and hide copies).

    Args:
        samples: (N, ...) generated samples; train: (M, ...) training examples, M ≥ 2, same size per sample.
        threshold: ratio below which a sample is a copy, in (0, 1].
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    x, t = _pair(samples, train, ("samples", "train"), 1)
    if len(t) < 2:
        raise ValueError(f"train needs at least 2 examples, got {len(t)}")
    step = _rows_per_chunk(len(t))
    top2 = torch.cat([torch.cdist(c, t).topk(2, dim=1, largest=False).indices for c in x.split(step)])
    d1 = (x - t[top2[:, 0]]).norm(dim=1).double()
    d2 = (x - t[top2[:, 1]]).norm(dim=1).double()
    swap = d2 < d1  # the exact recomputation may reorder near ties
    nearest = torch.where(swap, top2[:, 1], top2[:, 0])
    d1, d2 = torch.minimum(d1, d2), torch.maximum(d1, d2)
    ratios = torch.where(d1 == 0, torch.zeros_like(d1), d1 / d2)
    is_copy = ratios < threshold
    return ReplicationReport(fraction_copies=float(is_copy.double().mean()), ratios=ratios.cpu(),
                             nearest=nearest.cpu(), d1=d1.cpu(), d2=d2.cpu(), is_copy=is_copy.cpu(),
                             threshold=float(threshold))


# --------------------------------------------------------------------------------------------- sliced Wasserstein
def _sorted_projections(x: Tensor, theta: Tensor) -> Tensor:
    """⟨θ_p, x_i⟩ sorted over the samples, shape (P, N). On the CPU NumPy's sort is used: it is 4–10× faster
    than ``torch.sort`` on rows of a few thousand values (torch 2.x), and it dominates the cost here."""
    proj = theta.T @ x.T
    if proj.device.type == "cpu":
        return torch.from_numpy(np.sort(proj.numpy(), axis=-1))
    return proj.sort(dim=-1).values


def _quantile_indices(n: int, m: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Merge the breakpoints {i/n} ∪ {j/m} of two empirical quantile functions.

    Returns the widths of the pieces of [0, 1] on which both quantile functions are constant, and for
    each piece the index into the sorted samples of each set (exact rationals: no round-off)."""
    # breakpoints as integers in units of 1/(n·m), so that equal fractions compare equal
    u_x = torch.arange(1, n + 1, dtype=torch.int64, device=device) * m  # i/n = i·m / (n·m)
    u_y = torch.arange(1, m + 1, dtype=torch.int64, device=device) * n  # j/m = j·n / (n·m)
    u = torch.unique(torch.cat([u_x, u_y]))  # sorted right ends of the pieces, in units of 1/(n·m)
    lo = torch.cat([u.new_zeros(1), u[:-1]])
    widths = (u - lo).to(torch.float64) / (n * m)
    # the piece (lo, u] lies in sample ⌈u·n/(n·m)⌉ − 1 = ⌈u/m⌉ − 1 of x and ⌈u/n⌉ − 1 of y
    ix = torch.div(u + m - 1, m, rounding_mode="floor") - 1
    iy = torch.div(u + n - 1, n, rounding_mode="floor") - 1
    return widths, ix, iy


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of ``x`` and ``y``.

    ``SW₂(μ, ν) = ( E_θ W₂²(θ#μ, θ#ν) )^{1/2}`` with θ uniform on the unit sphere and ``θ#μ`` the
    projection ⟨θ, x⟩ (Bonneel, Rabin, Peyré & Pfister 2015, "Sliced and Radon Wasserstein
    barycenters of measures", eq. 9; Rabin et al. 2011). The expectation is a Monte Carlo mean over
    ``n_projections`` random unit directions drawn from ``generator``. Each 1-D W₂² is exact for the
    two empirical measures: ``∫₀¹ |F⁻¹(u) − G⁻¹(u)|² du`` with the step quantile functions of the
    sorted projections, integrated over the merged breakpoints {i/N} ∪ {j/M}; for N = M this is the
    mean squared difference of the sorted projections.

    Args:
        x: samples of shape (N, ...), flattened to (N, d).
        y: samples of shape (M, ...), flattened to (M, d); M may differ from N.
        n_projections: number of random directions.
        generator: CPU ``torch.Generator`` for the directions (injected randomness; same seed, same directions).
    Returns:
        SW₂ as a float (in the units of the data).
    """
    x, y = _pair(x, y, ("x", "y"), 1, torch.float64)
    if not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be a positive integer, got {n_projections!r}")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    theta = (theta / theta.norm(dim=0, keepdim=True)).to(x.device)
    px, py = _sorted_projections(x, theta), _sorted_projections(y, theta)  # (P, N), (P, M)
    if px.shape[1] == py.shape[1]:
        w2_sq = (px - py).pow(2).mean(dim=1)
    else:
        widths, ix, iy = _quantile_indices(px.shape[1], py.shape[1], x.device)
        w2_sq = (px[:, ix] - py[:, iy]).pow(2) @ widths
    return float(w2_sq.mean().sqrt())



# ------------------------------------------------------------------------------------ paired error, convergence order
def rmse(x: Tensor, y: Tensor) -> float:
    """Root mean square difference over all elements, ``sqrt(mean((x − y)²))``, of two equally shaped tensors
    (e.g. a solver's samples and a reference solution from the same starting noise). Computed in float64."""
    if x.shape != y.shape:
        raise ValueError(f"rmse needs tensors of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.numel() == 0:
        raise ValueError("rmse of empty tensors is undefined")
    diff = x.detach().to(torch.float64) - y.detach().to(device=x.device, dtype=torch.float64)
    return float(diff.pow(2).mean().sqrt())



def fit_order(cost: Iterable[float], err: Iterable[float]) -> float | None:
    """The convergence order: −slope of log ``err`` against log ``cost`` (NFE, steps), fitted by least squares
    (as diffrax's tests do), or None with fewer than two distinct usable points (non-positive or non-finite errors
    are left out). For ``err ∝ cost^−p`` it returns p."""
    pts = [(math.log(n), math.log(e)) for n, e in zip(cost, err) if n and n > 0 and e and e > 0 and math.isfinite(e)]
    if len({p[0] for p in pts}) < 2:
        return None
    x, y = np.array(pts).T
    return float(-np.polyfit(x, y, 1)[0])


__all__ = ["KernelDistance", "ModeReport", "PrecisionRecall", "ReplicationReport", "chi_radius", "frechet_distance",
           "frechet_distance_from_features", "kernel_distance", "mean_cov", "median_bandwidth", "mmd",
           "mode_coverage", "precision_recall", "replication_score", "sliced_wasserstein", "rmse", "fit_order"]
