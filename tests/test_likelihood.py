"""Likelihoods: the probability-flow ODE against exact marginal densities, Hutchinson's estimator, bits/dim,
the DDPM variational bound and the scoresde-likelihood app."""
from __future__ import annotations

import math

import pytest
import torch
from hydra import compose, initialize_config_dir

import scoresde as sd
from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.likelihood import likelihood
from scoresde.evaluation.ddpm_bound import ddpm_bound, discretized_gaussian_log_likelihood
from scoresde.evaluation.likelihood import Dequantization, bits_per_dim, ode_log_likelihood
from tests.conftest import gen

pytestmark = pytest.mark.usefixtures("single_thread")



def data(testbed: str, n: int, seed: int = 0) -> tuple[sd.GaussianMixture, torch.Tensor]:
    tb = sd.get_testbed(testbed)
    return tb, tb.sample(n, generator=gen(seed), dtype=torch.float64)


# ---- (a) exact divergence against exact densities ----------------------------------------------------
@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("testbed", ["gaussian", "ring"])
def test_exact_divergence_matches_the_marginal_density(testbed, sde_name):
    sde = sd.get_sde(sde_name)
    tb, x = data(testbed, 16)
    model = tb.model(sde)
    r = ode_log_likelihood(model, x, rtol=1e-7, atol=1e-7)
    exact = tb.marginal_log_prob(x, sde.t_min, sde)
    # 1% per sample; the 2e-3 nats floor covers the prior mismatch p_T ≠ N(0, std(T)²) (VE: |x|²/2σ_max² ≈ 1e-3)
    assert torch.all((r.log_likelihood - exact).abs() <= 0.01 * exact.abs() + 2e-3), (r.log_likelihood, exact)
    assert r.std_error is None and r.bits_per_dim is None
    assert r.nfe > 10 and r.nfe == model.nfe and r.seconds > 0
    assert torch.allclose(r.log_likelihood, r.prior_logp + r.delta_logp)
    assert r.log_likelihood.dtype == torch.float64 and r.x_T.shape == x.shape


@pytest.mark.parametrize("sde_name", ["subvp", "edm", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_any_sde_and_any_parametrization_give_the_exact_density(sde_name, prediction):
    """The ODE sees the model only through its score: an exact ε-, x₀- or v-model of the mixture gives the same
    log-density as the exact score, under every SDE."""
    from scoresde.models.parametrization import convert
    sde, (tb, x) = sd.get_sde(sde_name), data("ring", 6)

    def fn(x, t):
        return convert(tb.score(x, t, sde), "score", prediction, x, sde.s(t), sde.sigma(t))

    r = ode_log_likelihood(sd.ScoreModel(fn, sde, prediction), x, rtol=1e-6, atol=1e-6)
    exact = tb.marginal_log_prob(x, sde.t_min, sde)
    assert torch.all((r.log_likelihood - exact).abs() <= 0.01 * exact.abs() + 2e-3), (r.log_likelihood, exact)


def test_t_min_is_respected_and_the_model_never_sees_times_outside():
    sde, (tb, x) = sd.get_sde("vp"), data("ring", 8)
    seen = []

    def score(x, t):
        seen.append(t)
        return tb.score(x, t, sde)

    model = sd.ScoreModel(score, sde, "score")
    r = ode_log_likelihood(model, x, t_min=0.05, rtol=1e-7, atol=1e-7)
    t = torch.cat(seen)
    assert float(t.min()) >= 0.05 and float(t.max()) <= sde.T
    exact = tb.marginal_log_prob(x, 0.05, sde)
    assert torch.allclose(r.log_likelihood, exact, rtol=0.01, atol=1e-3)


# ---- (b) Hutchinson ------------------------------------------------------------------------------
@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_estimate_is_unbiased_with_an_honest_std_error(noise):
    sde, (tb, x) = sd.get_sde("vp"), data("ring", 16)
    model = tb.model(sde)
    exact = ode_log_likelihood(model, x, rtol=1e-5, atol=1e-5).log_likelihood
    estimates, errors = [], []
    for seed in range(4):
        r = ode_log_likelihood(model, x, divergence="hutchinson", probes=16, noise=noise, rtol=1e-5,
                               atol=1e-5, generator=gen(seed))
        estimates.append(r.log_likelihood)
        errors.append(r.std_error)
    est, err = torch.stack(estimates), torch.stack(errors)
    assert bool((err > 0).all())
    z = (est - exact) / err  # (seeds, samples): standard normal if unbiased and the error is right
    assert abs(float(z.mean())) * math.sqrt(z.numel()) < 4
    assert 0.6 < float(z.std()) < 1.6
    spread = est.std(0)  # empirical spread across seeds, per sample, against the reported error
    ratio = float(spread.pow(2).mean().sqrt() / err.pow(2).mean().sqrt())
    assert 0.6 < ratio < 1.5, ratio


def test_one_probe_reports_nan_std_error_and_probes_are_reproducible():
    sde, (tb, x) = sd.get_sde("vp"), data("ring", 4)
    r1 = ode_log_likelihood(tb.model(sde), x, divergence="hutchinson", generator=gen(3))
    r2 = ode_log_likelihood(tb.model(sde), x, divergence="hutchinson", generator=gen(3))
    assert bool(torch.isnan(r1.std_error).all())
    assert torch.equal(r1.log_likelihood, r2.log_likelihood)


# ---- (c) bits per dimension ---------------------------------------------------------------------
def test_dequantized_uniform_density_on_the_cube_is_eight_bits():
    d = 3
    log_p = torch.full((5,), -d * math.log(2.0), dtype=torch.float64)  # uniform on [-1, 1]^D
    assert torch.allclose(bits_per_dim(log_p, d), torch.full_like(log_p, 8.0), atol=1e-12)
    deq = Dequantization(256)
    k = torch.randint(0, 256, (5, 1, 2, 2), generator=gen(0)).to(torch.float64)
    x_tilde, log_q = deq(2 * k / 255 - 1, gen(1))
    assert bool((x_tilde >= -1).all() and (x_tilde < 1).all())
    assert torch.equal(((x_tilde + 1) * 128).floor(), k)  # each point stays in its own bin
    bpd = deq.bits_per_dim(torch.full((5,), -4 * math.log(2.0), dtype=torch.float64), log_q, 4)
    assert torch.allclose(bpd, torch.full_like(bpd, 8.0), atol=1e-12)
    assert bits_per_dim(torch.tensor([0.0]), 2, scale=1.0).item() == 0.0


def test_dequantized_ode_bits_per_dim_match_the_exact_density():
    sde, tb = sd.get_sde("vp"), sd.get_testbed("gaussian", std=0.5)
    levels = 17
    x = (2 * torch.randint(0, levels, (6, 2), generator=gen(0)) / (levels - 1) - 1).to(torch.float64)
    deq = Dequantization(levels, centered=True)
    r = ode_log_likelihood(tb.model(sde), x, rtol=1e-7, atol=1e-7, dequantization=deq, generator=gen(1))
    assert (r.x - x).abs().max() <= 1 / (levels - 1) and r.log_q.shape == (6,)
    exact = deq.bits_per_dim(tb.marginal_log_prob(r.x, sde.t_min, sde), r.log_q, 2)
    assert torch.allclose(r.bits_per_dim, exact, rtol=1e-3)


def test_discretized_decoder_sums_to_one_over_all_levels():
    levels, mean, std = 17, torch.tensor([[0.3]]), torch.tensor([[0.4]])
    x = (2 * torch.arange(levels) / (levels - 1) - 1).to(torch.float64)[:, None]
    p = discretized_gaussian_log_likelihood(x, mean.expand_as(x).double(), std.expand_as(x).double(), levels).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-12)


# ---- (d) the DDPM bound ----------------------------------------------------------------------------
def test_ddpm_bound_is_above_the_nll_and_tightens_with_more_steps():
    sde, (tb, x) = sd.get_sde("vp"), data("gaussian", 1000)
    nll = -tb.log_prob(x)
    gaps = {}
    for variance in ("beta", "posterior"):
        for steps in (25, 100, 400):
            r = ddpm_bound(tb.model(sde), x, steps, decoder="continuous", variance=variance, generator=gen(steps))
            assert r.nfe == steps and r.bits_per_dim is None
            g = r.nats - nll
            gaps[variance, steps] = (float(g.mean()), float(g.std()) / math.sqrt(len(g)))
    for (mean, se) in gaps.values():
        assert mean > -4 * se  # a bound on the NLL, in expectation over the data
    post = [gaps["posterior", n] for n in (25, 100, 400)]
    assert post[0][0] > post[1][0] + 4 * post[1][1] and post[1][0] > post[2][0] + 4 * post[2][1]
    assert gaps["beta", 25][0] > gaps["beta", 400][0]
    assert gaps["beta", 400][0] < 4 * gaps["beta", 400][1] + 0.05  # nearly tight with the exact score


def test_ddpm_bound_sampled_steps_is_an_unbiased_estimate():
    sde, (tb, x) = sd.get_sde("vp"), data("gaussian", 2000)
    full = ddpm_bound(tb.model(sde), x, 50, decoder="continuous", generator=gen(0)).nats
    part = ddpm_bound(tb.model(sde), x, 50, decoder="continuous", timesteps=5, generator=gen(1)).nats
    diff = part - full
    assert abs(float(diff.mean())) < 4 * float(diff.std()) / math.sqrt(len(diff))


# ---- (e) the app -------------------------------------------------------------------------------------
def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="likelihood", overrides=overrides)


def test_cli_is_reproducible_and_reports_the_exact_value(capsys):
    overrides = ["n=8", "batch=4", "progress=false", "ddpm_bound.steps=25", "rtol=1e-4", "atol=1e-4", "seed=3",
                 "divergence=hutchinson", "probes=2"]
    first, second = likelihood(compose_cfg(overrides)), likelihood(compose_cfg(overrides))
    assert first["mean"] == second["mean"] and first["ddpm"]["mean"] == second["ddpm"]["mean"]
    assert first["nfe"] > 0 and math.isfinite(first["exact"])
    out = capsys.readouterr().out
    assert "exact:" in out and "DDPM bound" in out and "±" in out
    other = likelihood(compose_cfg([*overrides[:-3], "divergence=exact", "sde=ve"]))
    assert other["ddpm"] is None and other["mean"] == pytest.approx(other["exact"], abs=0.02)


def test_cli_on_the_digits_testbed_reports_bits_per_dim_at_dequantized_points():
    out = likelihood(compose_cfg(["testbed=digits", "n=2", "progress=false", "method=euler",
                                  "ddpm_bound.enabled=false"]))
    assert out["unit"] == "bits/dim" and out["divergence"] == "hutchinson" and out["nfe"] == 1
    x = sd.get_testbed("digits").means[:2].reshape(2, 1, 8, 8)
    assert float((out["points"] - x).abs().max()) <= 1 / 16  # 17 levels: bins of width 2/16 centred on the data
    assert math.isfinite(out["exact"]) and math.isfinite(out["mean"])


# ---- (f) bad input -----------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    sde, (tb, x) = sd.get_sde("vp"), data("ring", 4)
    model = tb.model(sde)
    with pytest.raises(ValueError, match="probes must be >= 1"):
        ode_log_likelihood(model, x, divergence="hutchinson", probes=0)
    with pytest.raises(ValueError, match="divergence"):
        ode_log_likelihood(model, x, divergence="trace")
    with pytest.raises(ValueError, match="noise"):
        ode_log_likelihood(model, x, divergence="hutchinson", noise="uniform")
    with pytest.raises(ValueError, match="shape"):
        ode_log_likelihood(model, x[0])
    with pytest.raises(ValueError, match="t_min"):
        ode_log_likelihood(model, x, t_min=2.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        Dequantization(256)(x * 10)
    with pytest.raises(ValueError, match="grid"):
        Dequantization(256)(torch.full((2, 3), 0.1234))
    with pytest.raises(ValueError, match="shape"):
        Dequantization(256)(torch.zeros(3))
    with pytest.raises(ValueError, match="levels"):
        Dequantization(1)
    with pytest.raises(ValueError, match="DDPM discretization"):
        ddpm_bound(sd.get_testbed("ring").model(sd.get_sde("ve")), x, 10)
    with pytest.raises(ValueError, match="1 − s²"):
        ddpm_bound(tb.model(sd.get_sde("subvp")), x, 30, decoder="continuous")
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        ddpm_bound(model, x * 10, 30)
    with pytest.raises(ValueError, match="variance"):
        ddpm_bound(model, x, 30, decoder="continuous", variance="learned")
