"""torchsde's solvers driven by one shared Brownian path (a BrownianNoise): strong convergence as steps grow,
and the same path as the grid-step solvers."""
from __future__ import annotations

import torch

import scoresde as sd
from scoresde.solvers import BrownianNoise


def _setup():
    sde = sd.VPSDE()
    model = sd.get_testbed("gaussian", dim=2, mean=0.3, std=0.5).model(sde)
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return sde, model, x_T, BrownianNoise(sde.T, sde.t_min, seed=7)


def test_one_brownian_path_shared_across_methods_and_step_counts():
    sde, model, x_T, noise = _setup()

    def run(method, steps):
        return sd.sample(model, "torchsde", steps, x_T=x_T, noise=noise, method=method)

    fine = run("euler", 1024)
    errors = [(run("euler", n) - fine).pow(2).mean().sqrt().item() for n in (16, 64, 256)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.02, errors
    # milstein equals euler for additive noise; both track the same path
    torch.testing.assert_close(run("milstein", 64), run("euler", 64), rtol=1e-10, atol=1e-10)


def test_euler_maruyama_is_torchsde_euler_on_the_same_path():
    """Both are Euler–Maruyama on the reverse SDE; the grid-step solver draws its increments from the same
    path, so every state agrees (but the last: euler_maruyama's final step adds no noise). Not to round-off:
    torchsde steps a hair past each grid time (dt·(1 + 1e-12), so that it takes exactly n steps), where the
    Brownian bridge differs by ~√(1e-12·dt), about 1e-6 here."""
    sde, model, x_T, noise = _setup()
    states = {}
    for name in ("euler_maruyama", "torchsde"):
        states[name] = []
        sd.sample(model, name, 32, x_T=x_T, noise=noise, callback=lambda info, s=states[name]: s.append(info.x))
    assert len(states["torchsde"]) == len(states["euler_maruyama"]) == 32
    for k, (a, b) in enumerate(zip(states["euler_maruyama"][:-1], states["torchsde"][:-1])):
        torch.testing.assert_close(a, b, rtol=0, atol=5e-5, msg=f"step {k}")
    assert not torch.allclose(states["euler_maruyama"][-1], states["torchsde"][-1], atol=1e-4)


def test_generator_noise_uses_one_batched_interval():
    sde = sd.VPSDE()
    model = sd.get_testbed("ring").model(sde)
    a = sd.sample(model, "torchsde", 8, (64, 2), seed=None, generator=torch.Generator().manual_seed(1))
    b = sd.sample(model, "torchsde", 8, (64, 2), seed=None, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_a_plain_callable_is_a_noise_source():
    """A noise function (as in notebook 2) drives every draw, torchsde's path included, reproducibly."""
    model = sd.get_testbed("ring").model(sd.VPSDE())

    def run():
        g = torch.Generator().manual_seed(3)
        return sd.sample(model, "torchsde", 8, (16, 2), noise=lambda like: torch.randn(like.shape, generator=g))

    assert torch.equal(run(), run())
