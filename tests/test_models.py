"""The model interface checked against exact answers: conversions between score, ε, x₀ and v
predictions (with x = s·x₀ + s·σ·ε built from known x₀ and ε), NFE counting, input checks, and the
EDM denoiser view of a ScoreModel against a testbed's exact denoiser."""
from __future__ import annotations

import itertools

import pytest
import torch

import scoresde as sd
from scoresde.models.parametrization import PREDICTIONS, convert, to_x0_eps

F64 = torch.float64
SDE_NAMES = sorted(sd.SDES)
VP_NORMALIZED = {"vp", "cosine"}  # s² + std² = 1


@pytest.fixture(params=SDE_NAMES)
def sde(request) -> sd.SDE:
    return sd.get_sde(request.param)


def _state(sde: sd.SDE, seed: int = 0):
    """Known x₀ and ε (image-shaped), times across (0, T], and x = s·x₀ + std·ε with its four targets."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.tensor([0.01, 0.1, 0.3, 0.6, 0.9, 1.0], dtype=F64) * sde.T
    x0 = torch.randn(len(t), 2, 3, 3, generator=gen, dtype=F64)
    eps = torch.randn(x0.shape, generator=gen, dtype=F64)
    s, sigma = sde.s(t), sde.sigma(t)
    s4, sig4 = s[:, None, None, None], sigma[:, None, None, None]
    std4 = s4 * sig4
    x = s4 * x0 + std4 * eps
    alpha = 1 / torch.sqrt(1 + sig4**2)  # the VP signal scale at the same σ; σ·α is its noise scale
    targets = {"score": -eps / std4, "eps": eps, "x0": x0, "v": alpha * eps - sig4 * alpha * x0, "velocity": eps - x0}
    return x, t, s, sigma, targets


def test_conversions_between_every_pair_recover_the_known_targets(sde):
    x, _, s, sigma, targets = _state(sde)
    for src, dst in itertools.product(PREDICTIONS, PREDICTIONS):
        got = convert(targets[src], src, dst, x, s, sigma)
        torch.testing.assert_close(got, targets[dst], rtol=1e-9, atol=1e-9, msg=f"{src} -> {dst}")
    for kind in PREDICTIONS:
        x0, eps = to_x0_eps(targets[kind], kind, x, s, sigma)
        torch.testing.assert_close(x0, targets["x0"], rtol=1e-9, atol=1e-9, msg=kind)
        torch.testing.assert_close(eps, targets["eps"], rtol=1e-9, atol=1e-9, msg=kind)


def test_round_trips_are_identities(sde):
    """src → dst → src returns any output unchanged, not only a consistent one."""
    x, _, s, sigma, _ = _state(sde)
    out = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    for src, dst in itertools.product(PREDICTIONS, PREDICTIONS):
        back = convert(convert(out, src, dst, x, s, sigma), dst, src, x, s, sigma)
        torch.testing.assert_close(back, out, rtol=1e-9, atol=1e-9, msg=f"{src} -> {dst} -> {src}")


@pytest.mark.parametrize("name", sorted(VP_NORMALIZED))
def test_vp_v_prediction_is_s_eps_minus_std_x0(name):
    """Under a VP SDE, v = s·ε − std·x₀ (Salimans & Ho 2022, §4)."""
    sde = sd.get_sde(name)
    x, t, s, sigma, targets = _state(sde)
    s4, std4 = sde.s(t)[:, None, None, None], sde.std(t)[:, None, None, None]
    torch.testing.assert_close(s4**2 + std4**2, torch.ones_like(s4))
    expected = s4 * targets["eps"] - std4 * targets["x0"]
    torch.testing.assert_close(convert(targets["x0"], "x0", "v", x, s, sigma), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(convert(targets["eps"], "eps", "v", x, s, sigma), expected, rtol=1e-10, atol=1e-12)


# ---- ScoreModel ----------------------------------------------------------------------------------------------

def test_counting_wrapper_counts_one_per_evaluation():
    sde = sd.VPSDE()
    x = torch.randn(4, 2, dtype=F64)
    model = sd.ScoreModel(lambda x, t: 0.5 * x, sde, "eps")
    assert model.nfe == 0
    calls = [lambda: model.score(x, 0.5), lambda: model.x0(x, 0.5), lambda: model.eps(x, 0.5),
             lambda: model.x0_eps(x, 0.5), lambda: model.predict(x, 0.5, "v"), lambda: model(x, 0.5),
             lambda: model.denoiser(x, 2.0)]
    for i, call in enumerate(calls, start=1):
        call()
        assert model.nfe == i
    model.reset_nfe()
    assert model.nfe == 0
    # A CountingModel passed in is the counter: both see every evaluation.
    counter = sd.CountingModel(lambda x, t: x)
    shared = sd.ScoreModel(counter, sde, "x0")
    shared.score(x, 0.3)
    counter(x, torch.full((4,), 0.3))
    assert shared.nfe == counter.nfe == 2


def test_wrong_output_shape_raises():
    sde = sd.VPSDE()
    x = torch.randn(4, 2)
    model = sd.ScoreModel(lambda x, t: x[:, :1], sde, "score")
    with pytest.raises(ValueError, match="shape"):
        model.score(x, 0.5)
    with pytest.raises(ValueError, match="shape"):
        sd.ScoreModel(lambda x, t: x.sum(), sde, "eps")(x, 0.5)


def test_unknown_prediction_kind_raises():
    sde = sd.VPSDE()
    with pytest.raises(ValueError, match="prediction"):
        sd.ScoreModel(lambda x, t: x, sde, "noise")
    model = sd.ScoreModel(lambda x, t: x, sde, "eps")
    with pytest.raises(ValueError, match="prediction"):
        model.predict(torch.randn(3, 2), 0.5, "noise")
    with pytest.raises(ValueError, match="prediction"):
        convert(torch.zeros(1, 2), "eps", "noise", torch.zeros(1, 2), torch.ones(1), torch.ones(1))


@pytest.mark.parametrize("name", ["vp", "ve"])
@pytest.mark.parametrize("kind", PREDICTIONS)
def test_denoiser_matches_exact_ring_denoiser(name, kind):
    """A ScoreModel that predicts ``kind`` from the ring's exact score has D(x̂; σ) = the ring's exact denoiser."""
    sde, ring = sd.get_sde(name), sd.get_testbed("ring")

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return convert(ring.score(x, t, sde), "score", kind, x, sde.s(t), sde.sigma(t))

    model = sd.ScoreModel(fn, sde, kind)
    gen = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0, 40.0], dtype=F64).repeat_interleave(4)
    x_hat = ring.sample(len(sigma), generator=gen, dtype=F64) + sigma[:, None] * torch.randn(
        len(sigma), 2, generator=gen, dtype=F64)
    torch.testing.assert_close(model.denoiser(x_hat, sigma), ring.denoiser(x_hat, sigma), rtol=1e-8, atol=1e-8)
    assert model.nfe == 1


def test_testbed_model_gives_the_exact_score(sde):
    """GaussianMixture.model(sde) (an x₀ predictor) returns the testbed's exact score, one NFE a call."""
    ring = sd.get_testbed("ring")
    model = ring.model(sde)
    t = torch.tensor([0.01, 0.3, 0.7, 1.0], dtype=F64) * sde.T
    x, _ = sde.perturb(ring.sample(4, generator=torch.Generator().manual_seed(0), dtype=F64), t)
    torch.testing.assert_close(model.score(x, t), ring.score(x, t, sde), rtol=1e-9, atol=1e-9)
    assert model.nfe == 1
