"""Guidance against exact answers on a class-labelled Gaussian mixture.

* The labelled mixture's conditional score and noisy classifier p_t(y | x) are exact (autograd, Bayes).
* Classifier-free guidance at scale w is exactly ∇[w log p_t(x|y) + (1−w) log p_t(x)], and equals classifier
  guidance with the exact classifier at the same scale; the combination does not depend on the parametrization.
* With w = 1 (CFG) or scale 1 (classifier), every registered solver samples the exact class-conditional
  distribution; larger scales raise E[p(y | x)] monotonically (w = 0 gives the class prior exactly).
* NFE is honest: one guided evaluation = one batched network call of 2B rows = two network passes.
* A trained noise-aware classifier reaches the exact classifier's cross-entropy.
* Bad input: non-finite scales, unknown classes, unconditional networks, weights that do not sum to one.
* Randomness is injected: a filtered combination checks itself on a probe from its generator, never the global RNG.
"""
from __future__ import annotations

import math

import pytest
import torch

import scoresde as sd
from scoresde.guidance import (
    Branch,
    ClassifierNet,
    NoiseConditionalClassifier,
    classifier_free_guidance,
    classifier_guidance,
    compose,
    noisy_batch,
    train_classifier,
)
from scoresde.models import Preconditioned, UNet
from scoresde.testbeds import GaussianMixture
from scoresde.testbeds.labelled import LabelledMixture, labelled_ring

pytestmark = pytest.mark.usefixtures("single_thread")
STEPS = {"euler_maruyama": 200, "reverse_diffusion": 200, "ancestral": 200, "pc": 100, "torchsde": 200, "ode": 30,
         "euler": 150, "ddim": 150,  # first-order methods need more steps for an unbiased second moment
         "dpmpp_2m_sde": 200, "dpmpp_3m_sde": 200}  # and the multistep SDE solvers, whose h jumps on a uniform grid


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def points(n: int = 64, seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    return scale * torch.randn(n, 2, generator=g(seed), dtype=torch.float64)


@pytest.mark.parametrize("sde_name", ["vp", "edm"])
def test_conditional_score_and_classifier_are_exact(sde_name):
    tb, sde = labelled_ring(std=0.7), sd.get_sde(sde_name)
    x, t = points(), torch.full((64,), 0.3 if sde_name == "vp" else 1.5, dtype=torch.float64)
    for y in (0, 1, None):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(tb.log_prob(xr, t, sde, y).sum(), xr)
        torch.testing.assert_close(tb.score(x, t, sde, y), grad, rtol=1e-9, atol=1e-12)
    # Bayes: log p(y|x) = log p(x|y) + log π_y − log p(x); the null class is the unconditional mixture
    joint = torch.stack([tb.log_prob(x, t, sde, y) for y in (0, 1)], 1) + tb.class_prior.log()
    bayes = joint - tb.log_prob(x, t, sde)[:, None]
    torch.testing.assert_close(tb.log_class_probs(x, t, sde), bayes, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(tb.log_prob(x, t, sde), tb.mixture.marginal_log_prob(x, t, sde))


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, -0.5])
def test_cfg_is_the_tilted_score_and_equals_exact_classifier_guidance(w):
    tb, sde = labelled_ring(std=0.7), sd.get_sde("vp")
    x, t = points(), torch.full((64,), 0.2, dtype=torch.float64)
    y = torch.arange(64) % 2
    cfg = classifier_free_guidance(tb, sde, y, w).score(x, t)
    xr = x.clone().requires_grad_(True)
    tilted = w * tb.log_prob(xr, t, sde, y) + (1 - w) * tb.log_prob(xr, t, sde)
    torch.testing.assert_close(cfg, torch.autograd.grad(tilted.sum(), xr)[0], rtol=1e-9, atol=1e-10)
    cg = classifier_guidance(tb.score_model(sde), tb.classifier(sde), y, w, num_classes=2).score(x, t)
    torch.testing.assert_close(cfg, cg, rtol=1e-9, atol=1e-10)


def tiny_conditional_unet() -> Preconditioned:
    torch.manual_seed(0)
    net = UNet(img_resolution=8, in_channels=1, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
               attn_resolutions=(), dropout=0.0, num_classes=3, emb_mult=2, init_zero=1.0)
    return Preconditioned(net, kind="edm").eval().requires_grad_(False)


def test_cfg_on_a_network_is_one_batched_call_and_parametrization_free():
    net, sde = tiny_conditional_unet(), sd.get_sde("vp")
    x, t, y, w = torch.randn(4, 1, 8, 8, generator=g(1)), torch.full((4,), 0.4), torch.tensor([0, 1, 2, 1]), 3.0
    guided = classifier_free_guidance(net, sde, y, w)
    cond, null = net.score_model(sde, y).score(x, t), net.score_model(sde).score(x, t)
    expect = null + w * (cond - null)  # combined in score space; the wrapper combines x0 predictions
    out = guided.score(x, t)
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(classifier_free_guidance(net, sde, y, w, batched=False).score(x, t), out)
    assert guided.counts == {"network_calls": 1, "network_passes": 2} and guided.nfe == 1
    assert (cond - null).abs().max() > 1e-3  # the test could fail: the classes differ


def test_nfe_is_counted_per_guided_evaluation():
    tb, sde = labelled_ring(), sd.get_sde("edm")
    for batched, calls in ((True, 1), (False, 2)):
        m = classifier_free_guidance(tb, sde, 1, 2.0, batched=batched)
        sd.sample(m, "heun", 6, (16, 2), grid="karras", denoise=True)
        assert m.nfe == 11 == sd.get_solver("heun").declared_nfe(sd.make_grid(sde, 6, "karras", denoise=True))
        assert m.counts == {"network_calls": calls * 11, "network_passes": 22}


def mode_weights(x: torch.Tensor, tb: LabelledMixture) -> torch.Tensor:
    nearest = torch.cdist(x.double(), tb.mixture.means).argmin(1)
    return torch.bincount(nearest, minlength=len(tb.labels)).double() / len(x)


@pytest.mark.parametrize("solver", sorted(sd.SOLVERS))
def test_cfg_w1_samples_the_exact_conditional_with_every_solver(solver):
    tb, sde, n = labelled_ring(), sd.get_sde("vp"), 2000
    model = classifier_free_guidance(tb, sde, 0, 1.0)
    x = sd.sample(model, solver, STEPS.get(solver, 40), (n, 2), seed=None, generator=g(0), denoise=True)
    exact = tb.conditional(0).weights.new_zeros(8).index_copy_(0, torch.arange(0, 8, 2), tb.conditional(0).weights)
    tv = 0.5 * (mode_weights(x, tb) - exact).abs().sum()
    assert tv < 0.05, tv  # unguided (w = 0) sampling puts half its mass on class 1: TV = 0.5
    second = x.double().pow(2).sum(1).mean()  # exact E|x|² = r² + 2c² = 16.5
    assert abs(second - 16.5) < 4 * float(x.double().pow(2).sum(1).std()) / math.sqrt(n) + 0.15, second


def mean_posterior(x: torch.Tensor, tb: LabelledMixture, y: int = 0) -> torch.Tensor:
    return tb.log_class_probs(x.double(), 1e-6, sd.get_sde("vp")).exp()[:, y].mean()


def test_larger_scales_sharpen_and_scale_1_matches_the_exact_conditional():
    tb, sde, n = labelled_ring(std=1.0), sd.get_sde("vp"), 4000
    exact = mean_posterior(tb.conditional(0).sample(n, g(5)), tb)  # E_{x ~ p(x|y)} p(y|x), Monte Carlo
    means = {}
    for w in (0.0, 1.0, 2.0, 4.0):
        cfg = classifier_free_guidance(tb, sde, 0, w)
        means[w] = mean_posterior(sd.sample(cfg, "heun", 25, (n, 2), seed=None, generator=g(1), denoise=True), tb)
    cg = classifier_guidance(tb.score_model(sde), tb.classifier(sde), 0, 1.0, num_classes=2)
    cg_mean = mean_posterior(sd.sample(cg, "heun", 25, (n, 2), seed=None, generator=g(1), denoise=True), tb)
    assert abs(means[0.0] - 0.5) < 0.02  # w = 0: E_{x~p}[p(y|x)] = π_y exactly
    assert abs(means[1.0] - exact) < 0.015 and abs(cg_mean - exact) < 0.015, (means[1.0], cg_mean, exact)
    assert 0.6 < exact < 0.95  # overlapping classes: there is room to sharpen
    assert means[0.0] < means[1.0] < means[2.0] < means[4.0], means


def test_a_trained_noise_aware_classifier_reaches_the_exact_cross_entropy():
    tb = LabelledMixture(GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), 1.0), [0, 1])
    sde = sd.get_sde("vp")
    torch.manual_seed(0)
    clf = NoiseConditionalClassifier(ClassifierNet((2,), 2, width=32), sigma_data=2.0)
    data, labels = tb.sample(4096, g(0))
    losses = train_classifier(clf, sde, data, labels, steps=200, batch_size=128, lr=3e-3, generator=g(1))
    x0, y = tb.sample(4000, g(2))
    x_t, t = noisy_batch(sde, x0, g(3))
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(clf.bind(sde)(x_t, t), y)
    best = torch.nn.functional.cross_entropy(tb.log_class_probs(x_t.double(), t.double(), sde), y)  # exact p_t(y|x)
    assert losses[0] > best + 0.2 and float(ce) < float(best) + 0.03, (losses[0], float(ce), float(best))
    guided = classifier_guidance(tb.score_model(sde), clf.bind(sde), 1, 1.0, num_classes=2)
    x = sd.sample(guided, "heun", 20, (500, 2), seed=None, generator=g(4), denoise=True)
    exact = mean_posterior(tb.conditional(1).sample(4000, g(5)), tb, y=1)
    assert abs(mean_posterior(x, tb, y=1) - exact) < 0.03
    assert guided.counts["classifier_passes"] == guided.nfe == 39


@pytest.mark.parametrize("scale", [math.nan, math.inf, "big"])
def test_non_finite_scale_is_refused(scale):
    with pytest.raises(ValueError, match="guidance scale must be"):
        classifier_free_guidance(labelled_ring(), sd.get_sde("vp"), 0, scale)
    with pytest.raises(ValueError, match="guidance scale must be"):
        classifier_guidance(labelled_ring().score_model(sd.get_sde("vp")), lambda x, t: x, 0, scale, 2)


def test_unknown_class_and_unconditional_network_are_refused():
    tb, sde, x = labelled_ring(), sd.get_sde("vp"), torch.zeros(3, 2)
    with pytest.raises(ValueError, match="unknown class 7"):
        classifier_free_guidance(tb, sde, 7, 2.0).score(x, 0.5)
    with pytest.raises(ValueError, match="unknown class 2"):  # the null class is not a class to guide toward
        classifier_guidance(tb.score_model(sde), tb.classifier(sde), 2, 1.0, num_classes=2).score(x, 0.5)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        classifier_free_guidance(tb, sde, torch.tensor([0, 1]), 2.0).score(x, 0.5)
    flat = Preconditioned(UNet(img_resolution=8, in_channels=1, model_channels=8, channel_mult=(1,),
                               num_res_blocks=1, attn_resolutions=()), kind="edm")
    with pytest.raises(ValueError, match="class-conditional model"):
        classifier_free_guidance(flat, sde, 0, 2.0).score(torch.zeros(1, 1, 8, 8), 0.5)


def test_branch_weights_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to the identity"):
        compose(labelled_ring(), sd.get_sde("vp"), [Branch(0, 2.0), Branch(None, 0.5)])


def test_filtered_compose_draws_its_check_from_the_generator_never_the_global_rng():
    """The one-time check that filtered branches add up to the identity draws its probe from ``generator`` (or a
    private seeded one): the global RNG state is untouched and the result does not depend on it."""
    means = torch.rand(4, 64, generator=g(0), dtype=torch.float64) * 2 - 1
    tb = LabelledMixture(GaussianMixture(means, 0.1, event_shape=(1, 8, 8)), [0, 0, 1, 1], 2)
    sde, x, t = sd.get_sde("edm"), torch.randn(3, 1, 8, 8, generator=g(1), dtype=torch.float64), 0.7

    def low(v):
        return v.mean(dim=(-2, -1), keepdim=True).expand_as(v)

    def high(v):
        return v - low(v)

    def run(global_seed, generator, weight=1.0):
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        out = compose(tb, sde, [Branch(0, 1.0, filter=low), Branch(1, weight, filter=high)],
                      generator=generator).score(x, t)
        assert torch.equal(torch.get_rng_state(), before), "compose drew from the global RNG"
        return out

    first = run(0, g(5))
    for seed, generator in [(1, g(5)), (2, g(6)), (3, None)]:
        assert torch.equal(run(seed, generator), first)
    cond0, cond1 = tb.score(x, t, sde, 0), tb.score(x, t, sde, 1)
    expected = low(cond0) + high(cond1)
    torch.testing.assert_close(first, expected)
    used = g(5)
    run(0, used)
    assert not torch.equal(used.get_state(), g(5).get_state()), "the probe did not come from the generator"
    with pytest.raises(ValueError, match="sum to the identity"):
        run(0, g(5), weight=0.5)
