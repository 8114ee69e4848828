# %% [markdown]
# # 2 · The Markov chain and the SDE: DDPM is a discretization
#
# **What you will learn**
#
# * DDPM's noise schedule `β_i` (Ho et al. 2020) is the VP SDE's `β(t)` sampled on a grid and divided by `N`,
#   and the chain's `ᾱ_i = Π(1 − β_j)` converges to the SDE's `s(t)²` as `N` grows — we measure the rate.
# * Three ways to sample with **one exact score** (an 8-Gaussian ring, whose score is known in closed form, so
#   every error we see belongs to the sampler): DDPM **ancestral** sampling, **Euler–Maruyama** on the reverse
#   SDE, and the **probability-flow ODE**.
# * All three converge as the number of steps grows; with the same noise, the chain and the SDE solver
#   follow the *same* path in the limit. We plot trajectories and error against steps and fit the rates.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import scoresde as sd
from scoresde.evaluation import sliced_wasserstein

torch.manual_seed(0)
sde = sd.VPSDE()
testbed = sd.get_testbed("ring")
model = testbed.model(sde)  # exact score of every marginal p_t, NFE counted
print(sde)
print(testbed)

# %% [markdown]
# ## 2.1 `β_i` is `β(t)/N`
#
# `sde.ddpm_schedule(N)` returns Ho et al.'s `β_i = linspace(β_min/N, β_max/N, N)` (for `N = 1000` exactly
# `linspace(1e-4, 0.02, 1000)`) and `ᾱ_i = Π_{j≤i}(1 − β_j)`. Step `i` of the chain covers the time interval
# `((i)/N, (i+1)/N]`, and `log(1 − β) ≈ −β`, so `ᾱ_i ≈ exp(−Σβ_j) ≈ exp(−∫_0^{(i+1)/N} β) = s((i+1)/N)²`.

# %%
betas, alpha_bar = sde.ddpm_schedule(1000)
print(f"N = 1000: β_1 = {betas[0]:.2e}, β_N = {betas[-1]:.2e} (Ho et al.: 1e-4 and 0.02)")

fig, axes = plt.subplots(1, 3, figsize=(15, 3.5))
errors_ab = []
NS = [30, 100, 300, 1000, 3000, 10000]
for n in NS:
    b, ab = sde.ddpm_schedule(n)
    t_end = torch.arange(1, n + 1, dtype=torch.float64) / n
    errors_ab.append((ab - sde.s(t_end) ** 2).abs().max().item())
    if n in (30, 100, 1000):
        t_grid = torch.arange(n, dtype=torch.float64) / (n - 1)
        axes[0].plot(t_grid, b * n, ".-" if n < 100 else "-", ms=4, label=f"N·β_i, N = {n}")
        axes[1].plot(t_end, ab, ".-" if n < 100 else "-", ms=4, label=f"ᾱ_i, N = {n}")
tt = torch.linspace(0, 1, 200, dtype=torch.float64)
axes[0].plot(tt, sde.beta(tt), "k--", label="β(t)")
axes[1].plot(tt, sde.s(tt) ** 2, "k--", label="s(t)²")
axes[0].set_title("DDPM's β_i·N against the SDE's β(t)")
axes[1].set_title("ᾱ_i against s(t)² at t = (i+1)/N")
for ax in axes[:2]:
    ax.set_xlabel("t")
    ax.legend(fontsize=8)
slope_ab = np.polyfit(np.log(NS), np.log(errors_ab), 1)[0]
axes[2].loglog(NS, errors_ab, "o-")
axes[2].set_title(f"max |ᾱ_i − s(t_i)²|: slope {slope_ab:.2f}")
axes[2].set_xlabel("N")
fig.tight_layout()
for n, e in zip(NS, errors_ab):
    print(f"N = {n:5d}: max |ᾱ_i − s((i+1)/N)²| = {e:.2e}")
print(f"fitted slope of log error against log N: {slope_ab:.2f} (a first-order discretization: −1)")

# %% [markdown]
# ## 2.2 Ho et al.'s Algorithm 2, written out, is `sd.sample(..., "ancestral", grid="ddpm")`
#
# Ho's sampler in ε-form is `x ← (x − β_i/√(1 − ᾱ_i)·ε_θ(x, i))/√(1 − β_i) + √β_i·z`, with no noise at the last
# step. The `ddpm` grid puts the chain's step `i` at the continuous time where `s(t)² = ᾱ_i`, so the continuous
# model answers for the discrete one. We run our own six-line loop and the library's `ancestral` solver from
# the same `x_T` with the same noise draws `z`, in float64.

# %%
N, B = 1000, 512
gen = torch.Generator().manual_seed(0)
x_T = torch.randn(B, 2, generator=gen, dtype=torch.float64)
zs = [torch.randn(B, 2, generator=gen, dtype=torch.float64) for _ in range(N)]
t_of_step = sde.t_of_alpha_bar(alpha_bar)  # the time of chain step i

x = x_T.clone()
for i in reversed(range(N)):  # Ho et al. 2020, Algorithm 2
    eps = model.eps(x, t_of_step[i].expand(B))
    x = (x - betas[i] / torch.sqrt(1 - alpha_bar[i]) * eps) / torch.sqrt(1 - betas[i])
    if i > 0:
        x = x + torch.sqrt(betas[i]) * zs[i]
ho = x

draws = iter(zs[N - 1:0:-1])  # the library asks for noise once per step, in the same order as the loop above
lib = sd.sample(model, "ancestral", N, x_T=x_T, grid="ddpm", noise=lambda like: next(draws))
chain_vs_library = (ho - lib).abs().max().item()
print(f"ddpm grid: starts at t = {t_of_step[-1].item():.4f}, ends at t = {t_of_step[0].item():.2e}, then σ = 0")
print(f"max |Ho's loop − sd.sample(ancestral, grid='ddpm')| = {chain_vs_library:.1e}")

# %% [markdown]
# ## 2.3 Three samplers, one score, the same noise
#
# * `ancestral`: the chain, on any time grid (the forward kernel between grid points gives `α_i`, `β_i`).
# * `euler_maruyama`: Euler–Maruyama on the reverse SDE `dx = [f x − g² ∇log p_t] dt + g dw̄` (Song et al. eq. 6).
# * `ode` with `method="euler"`: Euler on the probability-flow ODE `dx/dt = f x − ½g² ∇log p_t` (eq. 13).
#
# `seed=0` gives sample `i` its own generator seeded `i`, and the two stochastic samplers draw one `z` per step,
# so with the same `seed` and grid they see the **same** noise. We record the trajectories through the
# solver callback.

# %%
def trajectories(solver, steps, n=6, **options):
    record = []
    x = sd.sample(model, solver, steps, (n, 2), seed=0, callback=lambda info: record.append(info.x.clone()),
                  **options)
    return torch.stack(record), x


fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
data = testbed.sample(2000, generator=torch.Generator().manual_seed(1))
for ax, (solver, opts) in zip(axes, [("ancestral", {}), ("euler_maruyama", {}), ("ode", {"method": "euler"})]):
    path, _ = trajectories(solver, 200, **opts)
    ax.scatter(data[:, 0], data[:, 1], s=1, c="lightgray")
    for k in range(path.shape[1]):
        ax.plot(path[:, k, 0], path[:, k, 1], lw=0.8)
        ax.plot(path[-1, k, 0], path[-1, k, 1], "k.", ms=6)
    ax.set_title(f"{solver} {opts.get('method', '')} — 200 steps")
    ax.set_aspect("equal")
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(-3.2, 3.2)
fig.tight_layout()

# %% [markdown]
# The two stochastic samplers (left, middle) wander with the injected noise and — with the same noise —
# follow nearly the same paths; the ODE (right) glides deterministically from the prior to a mode.
#
# ## 2.4 Convergence as the number of steps grows
#
# Four measurements on a uniform time grid from `T = 1` to `t_min = 10⁻³`, 2000 samples each. Both stochastic
# samplers draw their noise from one generator seeded 0 (faster than one generator per sample), so they again
# see the same noise.
#
# 1. **Distribution error**: the sliced Wasserstein distance `SW₂` to 20000 exact samples; its floor is `SW₂`
#    between two exact sample sets of the same sizes (mean ± std over 8 draws: the Monte Carlo noise).
# 2. **Mode width**: `√(mean squared distance to the nearest ring centre / 2)`, the per-coordinate spread of
#    the modes (0.1 for the ring); a coarse sampler blurs or over-sharpens the modes.
# 3. **Chain vs SDE, same noise**: the median distance between `ancestral` and `euler_maruyama` samples.
# 4. **ODE path error**: RMS distance between Euler on the ODE and an accurate dopri5 solution (rtol = 1e-8)
#    from the same `x_T`.

# %%
STEPS = [10, 20, 50, 100, 200, 500]
n = 2000
exact = testbed.sample(20000, generator=torch.Generator().manual_seed(2)).float()
exact_small = testbed.sample(n, generator=torch.Generator().manual_seed(3)).float()
floors = [sliced_wasserstein(testbed.sample(n, generator=torch.Generator().manual_seed(100 + k)).float(), exact,
                             generator=torch.Generator().manual_seed(5)) for k in range(8)]
floor, floor_sd = float(np.mean(floors)), float(np.std(floors))


def mode_width(x):
    d = torch.cdist(x.double(), testbed.means).min(1).values
    return (d.pow(2).mean() / 2).sqrt().item()


width_exact, width_small = mode_width(exact), mode_width(exact_small)
x_T = sde.prior_sample((n, 2), generator=torch.Generator().manual_seed(6), dtype=torch.float64)
reference = sd.sample(model, "ode", 1, x_T=x_T, method="dopri5", rtol=1e-8, atol=1e-8)

SAMPLERS = {"ancestral": ("ancestral", {}), "euler_maruyama": ("euler_maruyama", {}),
            "ode (Euler)": ("ode", {"method": "euler"})}
sw = {k: [] for k in SAMPLERS}
width = {k: [] for k in SAMPLERS}
gap, ode_err, seconds = [], [], {k: 0.0 for k in SAMPLERS}
for steps in STEPS:
    outs = {}
    for name, (solver, opts) in SAMPLERS.items():
        tick = time.perf_counter()
        if solver == "ode":
            outs[name] = sd.sample(model, solver, steps, x_T=x_T, **opts)
        else:
            outs[name] = sd.sample(model, solver, steps, (n, 2), seed=None, generator=torch.Generator().manual_seed(0))
        seconds[name] += time.perf_counter() - tick
        sw[name].append(sliced_wasserstein(outs[name].float(), exact, generator=torch.Generator().manual_seed(5)))
        width[name].append(mode_width(outs[name]))
    gap.append((outs["ancestral"] - outs["euler_maruyama"]).norm(dim=1).median().item())
    ode_err.append((outs["ode (Euler)"] - reference).pow(2).sum(1).mean().sqrt().item())

print(f"{'steps':>6s} | {'SW₂: ancestral':>14s} {'EM':>7s} {'ODE':>7s} | {'width: anc':>10s} {'EM':>7s} {'ODE':>7s} |"
      f" {'|anc − EM|':>10s} {'|ODE − ref|':>11s}")
for i, steps in enumerate(STEPS):
    print(f"{steps:6d} | {sw['ancestral'][i]:14.4f} {sw['euler_maruyama'][i]:7.4f} {sw['ode (Euler)'][i]:7.4f} | "
          f"{width['ancestral'][i]:10.4f} {width['euler_maruyama'][i]:7.4f} {width['ode (Euler)'][i]:7.4f} | "
          f"{gap[i]:10.5f} {ode_err[i]:11.5f}")
print(f"SW₂ floor (exact vs exact, {n} vs 20000 samples, 8 draws): {floor:.4f} ± {floor_sd:.4f}")
print(f"mode width of exact samples: {width_exact:.4f} (20000 samples), {width_small:.4f} ({n} samples)")
print("seconds for all step counts: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))

# %%
def slope(x, y, last=4):
    return np.polyfit(np.log(x[-last:]), np.log(y[-last:]), 1)[0]


slope_gap, slope_ode = slope(STEPS, gap), slope(STEPS, ode_err)
fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
for k in SAMPLERS:
    axes[0].loglog(STEPS, sw[k], "o-", label=k)
    axes[1].semilogx(STEPS, width[k], "o-", label=k)
axes[0].axhspan(floor - 2 * floor_sd, floor + 2 * floor_sd, color="gray", alpha=0.2,
                label="exact vs exact, ±2 std")
axes[0].set_title("distribution error SW₂ to exact samples")
axes[1].axhline(width_exact, color="k", ls="--", label="exact")
axes[1].set_title("mode width (exact: 0.1)")
axes[2].loglog(STEPS, gap, "o-", label=f"median |ancestral − EM|, same noise (slope {slope_gap:.2f})")
axes[2].loglog(STEPS, ode_err, "s-", label=f"RMS |ODE Euler − dopri5| (slope {slope_ode:.2f})")
ref_line = np.array(STEPS, dtype=float)
for y, style in [(gap, "k:"), (ode_err, "k--")]:
    axes[2].loglog(ref_line, y[-1] * (ref_line / ref_line[-1]) ** -1.0, style, lw=0.8)
axes[2].set_title("path errors (dashed / dotted: order 1, N⁻¹)")
for ax in axes:
    ax.set_xlabel("steps N")
    ax.legend(fontsize=8)
fig.tight_layout()
print(f"fitted slope, median |ancestral − EM| over the last 4 step counts: {slope_gap:.2f}")
print(f"fitted slope, RMS |ODE Euler − dopri5| over the last 4 step counts: {slope_ode:.2f} (Euler's order: −1)")

# %% [markdown]
# ## Summary

# %%
print(f"ᾱ_i vs s(t)²: max error {errors_ab[NS.index(1000)]:.1e} at N = 1000, fitted rate N^{slope_ab:.2f}")
print(f"Ho's Algorithm 2 vs the library's ancestral solver on the ddpm grid: max difference {chain_vs_library:.1e}")
last = len(STEPS) - 1
print(f"SW₂ to exact samples at {STEPS[0]} → {STEPS[last]} steps: "
      + ", ".join(f"{k} {v[0]:.3f} → {v[last]:.3f}" for k, v in sw.items())
      + f" (exact vs exact: {floor:.3f} ± {floor_sd:.3f})")
print(f"mode width at {STEPS[0]} → {STEPS[last]} steps: "
      + ", ".join(f"{k} {v[0]:.3f} → {v[last]:.3f}" for k, v in width.items()) + f" (exact {width_exact:.3f})")
print(f"ancestral vs Euler–Maruyama with the same noise: median gap {gap[0]:.3f} → {gap[last]:.4f}, "
      f"rate N^{slope_gap:.2f}")
print(f"probability-flow ODE, Euler vs dopri5: RMS error {ode_err[0]:.3f} → {ode_err[last]:.5f}, "
      f"rate N^{slope_ode:.2f}")

# %% [markdown]
# * DDPM's discrete schedule is a first-order discretization of the VP SDE: `ᾱ_i − s(t_i)²` shrinks like `1/N`.
# * The chain (ancestral sampling) and Euler–Maruyama on the reverse SDE are two discretizations of the same
#   reverse-time SDE: driven by the same noise, their samples approach each other as the steps shrink, at the
#   rate the fit above reports (the noise is additive, so Euler–Maruyama is strongly first order here).
# * The probability-flow ODE is deterministic, needs no noise, and Euler on it converges at order 1 to the
#   exact ODE solution.
# * At the distribution level, coarse grids distort the modes (widths far from 0.1 at 10 steps, Euler–Maruyama
#   the worst); at a few hundred steps all three samplers give mode widths near the exact 0.1 and `SW₂` values
#   of the size of the Monte Carlo noise. `SW₂` on 2000 points is a blunt instrument: the mode width, a
#   statistic aimed at what coarse steps get wrong, sees far more.

# %% [markdown]
# ## Checks
#
# The claims above as assertions, so the notebook fails (in `tests/test_notebooks.py`) when a number stops
# saying what the text says.

# %%
assert abs(betas[0].item() - 1e-4) < 1e-12 and abs(betas[-1].item() - 0.02) < 1e-12, "Ho et al.'s β_1, β_N"
assert abs(slope_ab + 1) < 0.1, f"ᾱ_i − s(t_i)² should shrink like 1/N, fitted N^{slope_ab:.2f}"
assert chain_vs_library < 1e-10, f"Ho's Algorithm 2 and the ancestral solver differ by {chain_vs_library:.1e}"
assert abs(slope_gap + 1) < 0.2, f"ancestral vs EM with the same noise: rate N^{slope_gap:.2f}, expected N^-1"
assert abs(slope_ode + 1) < 0.15, f"Euler on the ODE: rate N^{slope_ode:.2f}, expected N^-1"
assert all(a > b for a, b in zip(gap, gap[1:])) and all(a > b for a, b in zip(ode_err, ode_err[1:])), "not converging"
assert abs(width_exact - 0.1) < 0.005, f"exact mode width {width_exact:.4f}, the ring's std is 0.1"
coarse = {k: abs(v[0] - width_exact) for k, v in width.items()}
assert min(coarse.values()) > 0.05, f"10 steps should distort the modes: {coarse}"
assert max(coarse, key=coarse.get) == "euler_maruyama", f"Euler–Maruyama should be the worst at 10 steps: {coarse}"
for k in SAMPLERS:
    fine = [abs(w - width_exact) for s, w in zip(STEPS, width[k]) if s >= 200]
    assert max(fine) < 0.01, f"{k}: mode width far from the exact one at a few hundred steps: {fine}"
    assert sw[k][-1] < floor + 3 * floor_sd, f"{k}: SW₂ {sw[k][-1]:.3f} above the Monte Carlo noise"
