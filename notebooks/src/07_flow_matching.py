# %% [markdown]
# # 7 · Flow matching: the straight-line path next to VP and VE
#
# **What you will learn**
#
# * Flow matching / rectified flow interpolate `x_t = (1 − t)·x₀ + t·ε`. In this library's notation that is one
#   more linear SDE, `sd.get_sde("flow")`: signal scale `s(t) = 1 − t`, `σ(t) = t/(1 − t)`, so `std(t) = s·σ = t`.
#   We plot `s` and `std` against `t` for the flow, VP and VE paths and draw `q(x_t | x₀)` of the 2-D ring.
# * The probability-flow ODE of each path, run with the **exact** score of the ring (an 8-Gaussian mixture whose
#   score is known in closed form, so every error is the solver's): we draw the trajectories and *measure* how
#   straight they are. Each conditional path `x₀ → ε` of the flow is a straight line; the trajectories of the
#   marginal ODE need not be, and we measure what they are.
# * The same data sampled by all three paths with the same solver and step count.
# * Error against the number of network evaluations (NFE) for Euler and Heun under each path, against a tight
#   dopri5 solution from the same `x_T`, with fitted convergence orders.

# %%
import time

import matplotlib.pyplot as plt
import torch

import scoresde as sd
from scoresde.evaluation import fit_order, sliced_wasserstein

tick = time.perf_counter()
torch.manual_seed(0)
testbed = sd.get_testbed("ring")
SDES = {"VP": sd.get_sde("vp"), "VE": sd.get_sde("ve"), "flow": sd.get_sde("flow")}
models = {k: testbed.model(sde) for k, sde in SDES.items()}  # exact score of every marginal, NFE counted
COLORS = {"VP": "C0", "VE": "C1", "flow": "C2"}
for k, sde in SDES.items():
    print(f"{k:5s} {sde}  prior std {sde.prior_std():g}")
print(testbed)

# %% [markdown]
# ## 7.1 The marginals: signal scale and noise std
#
# Every path here has `q(x_t | x₀) = N(s(t)·x₀, std(t)²·I)`. VP keeps `s² + std² = 1` (variance preserving), VE
# keeps `s = 1` and lets `std = σ` grow to `σ_max = 50`, and the flow moves **linearly** from data to noise:
# `s = 1 − t`, `std = t`, so `s + std = 1`. Its prior is `N(0, I)` (at its horizon `T = 0.999`, `σ = 999`).

# %%
tt = torch.linspace(1e-3, 0.999, 400, dtype=torch.float64)
fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
for k, sde in SDES.items():
    axes[0].plot(tt, sde.s(tt), color=COLORS[k], label=k)
    axes[1].plot(tt, sde.std(tt), color=COLORS[k], label=k)
    axes[2].semilogy(tt, sde.sigma(tt), color=COLORS[k], label=k)
axes[0].set_title("signal scale s(t)")
axes[1].set_title("noise std(t) = s(t)·σ(t)")
axes[1].set_ylim(0, 1.5)
axes[2].set_title("σ(t) = std/s (log scale)")
for ax in axes:
    ax.set_xlabel("t")
    ax.legend(fontsize=8)
fig.tight_layout()

flow = SDES["flow"]
flow_std_error = (flow.std(tt) - tt).abs().max().item()
flow_sum_error = (flow.s(tt) + flow.std(tt) - 1).abs().max().item()
flow_sigma_error = (flow.s(tt) * flow.sigma(tt) - tt).abs().max().item()
vp_error = (SDES["VP"].s(tt) ** 2 + SDES["VP"].std(tt) ** 2 - 1).abs().max().item()
print(f"flow: max |std(t) − t| = {flow_std_error:.1e}, max |s + std − 1| = {flow_sum_error:.1e}, "
      f"max |s·σ − t| = {flow_sigma_error:.1e}")
print(f"VP:   max |s² + std² − 1| = {vp_error:.1e};  VE: s = 1 everywhere: {bool((SDES['VE'].s(tt) == 1).all())}")

# %% [markdown]
# Samples of `q(x_t | x₀)` for 1000 ring points at four times, the same `x₀` and the same `ε` under each path.
# The flow shrinks the ring while the noise grows; VP does the same on a different clock; VE keeps the ring's
# size and buries it under noise of std up to 50 (note the axis limits of its row).

# %%
gen = torch.Generator().manual_seed(1)
x0 = testbed.sample(1000, generator=gen)
eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
TIMES = [0.05, 0.3, 0.6, 0.9]
fig, axes = plt.subplots(3, 4, figsize=(13, 9.6))
for row, (k, sde) in enumerate(SDES.items()):
    for col, t in enumerate(TIMES):
        xt, _ = sde.perturb(x0, t, noise=eps)
        ax = axes[row, col]
        ax.scatter(xt[:, 0], xt[:, 1], s=1, color=COLORS[k])
        lim = max(3.0, 3.5 * sde.std(torch.tensor(t, dtype=torch.float64)).item())
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_title(f"{k}, t = {t}: s = {sde.s(torch.tensor(t)).item():.2f}, "
                     f"std = {sde.std(torch.tensor(t)).item():.2f}", fontsize=9)
fig.tight_layout()

# %% [markdown]
# ## 7.2 Probability-flow ODE trajectories: how straight are they?
#
# We start 300 points from the same standard normal draws `z` (`x_T = prior_std·z`: VE's prior has std 50),
# integrate each path's probability-flow ODE with 400 Euler steps (the `ode` solver, `method="euler"`) and record
# every state through the sampler's callback (`StepInfo.x`). Three measures per trajectory:
#
# * **length ratio** = path length / distance between its endpoints (1 for a straight line);
# * **chord deviation** = the largest distance from the chord `x_T → x₀`, divided by the chord's length;
# * **radius dip** = the smallest `|x|` along the path divided by the smaller of `|x_T|`, `|x₀|` (below 1: the
#   path first moves toward the data mean, the origin, and then out again).

# %%
z = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
paths, straightness = {}, {}
for k, sde in SDES.items():
    record = []
    x_T = sde.prior_std() * z
    sd.sample(models[k], "ode", 400, x_T=x_T, method="euler", callback=lambda info, r=record: r.append(info.x.clone()))
    path = torch.cat([x_T[None], torch.stack(record)])  # (401, 300, 2)
    paths[k] = path
    chord = path[-1] - path[0]
    dist = chord.norm(dim=-1)
    length = (path[1:] - path[:-1]).norm(dim=-1).sum(0)
    unit = chord / dist[:, None]
    rel = path - path[0]
    deviation = (rel - (rel * unit).sum(-1, keepdim=True) * unit).norm(dim=-1).max(0).values / dist
    radius = path.norm(dim=-1)
    dip = radius.min(0).values / torch.minimum(radius[0], radius[-1])
    straightness[k] = {"length ratio": (length / dist).median().item(),
                       "chord deviation": deviation.median().item(),
                       "radius dip": dip.median().item()}
print(f"{'path':5s} | medians over 300 trajectories: " + ", ".join(straightness["VP"]))
for k, v in straightness.items():
    print(f"{k:5s} | " + "   ".join(f"{name} {value:.3f}" for name, value in v.items()))

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 5))
data = testbed.sample(2000, generator=torch.Generator().manual_seed(2))
for ax, (k, path) in zip(axes, paths.items()):
    ax.scatter(data[:, 0], data[:, 1], s=1, c="lightgray")
    for j in range(12):
        ax.plot(path[:, j, 0], path[:, j, 1], lw=0.9)
        ax.plot(path[-1, j, 0], path[-1, j, 1], "k.", ms=6)
        ax.plot(path[0, j, 0], path[0, j, 1], "kx", ms=5)
    s = straightness[k]
    ax.set_title(f"{k}: length ratio {s['length ratio']:.3f}, radius dip {s['radius dip']:.2f}", fontsize=10)
    ax.set_aspect("equal")
    ax.set_xlim(-3.2, 3.2)
    ax.set_ylim(-3.2, 3.2)
fig.suptitle("probability-flow ODE trajectories (× start, • end); VE's starts lie outside the frame (std 50)")
fig.tight_layout()

# %% [markdown]
# What the numbers say (they are printed above; the Checks cell holds them to it):
#
# * By length ratio the order is **VE < VP < flow**: on this data, with the exact score, the flow's marginal
#   ODE trajectories are the *least* straight of the three. The radius dip shows why: a flow trajectory first
#   contracts toward the data mean (at large `t` the best guess of `x₀` is the mean, the origin) and then moves out
#   to a mode — it goes in and back out, nearly along one line (a small chord deviation, but a long path).
# * VE's trajectories look straight because they start at radius ~50 and fall almost radially onto the ring;
#   the bend near the data is tiny next to the chord.
# * "Flow matching gives straight paths" is a statement about each *conditional* path `x₀ → ε`. The marginal
#   ODE averages those lines, and with eight well-separated modes the average bends. (Rectified flow's
#   "reflow" step exists to straighten it.)
#
# ## 7.3 The same data, sampled by all three paths with one solver
#
# Heun (`sd.sample(..., "heun", 16)`, 32 network evaluations), 1000 samples from seeds 0…999 under each path,
# judged by the sliced Wasserstein distance `SW₂` to 20000 exact samples and by the mode width
# `√(mean squared distance to the nearest ring centre / 2)` (exact: 0.1).

# %%
exact = testbed.sample(20000, generator=torch.Generator().manual_seed(3)).float()
floor = sliced_wasserstein(testbed.sample(1000, generator=torch.Generator().manual_seed(4)).float(), exact,
                           generator=torch.Generator().manual_seed(5))


def mode_width(x):
    d = torch.cdist(x.double(), testbed.means).min(1).values
    return (d.pow(2).mean() / 2).sqrt().item()


samples, sw, width, nfe = {}, {}, {}, {}
for k in SDES:
    models[k].reset_nfe()
    samples[k] = sd.sample(models[k], "heun", 16, (1000, 2), seed=0)
    nfe[k] = models[k].nfe
    sw[k] = sliced_wasserstein(samples[k].float(), exact, generator=torch.Generator().manual_seed(5))
    width[k] = mode_width(samples[k])
for k in SDES:
    print(f"{k:5s}: NFE {nfe[k]}, SW₂ {sw[k]:.4f}, mode width {width[k]:.4f}")
print(f"exact vs exact (1000 vs 20000 samples): SW₂ {floor:.4f}, mode width {mode_width(exact):.4f}")

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
for ax, k in zip(axes, SDES):
    ax.scatter(exact[:3000, 0], exact[:3000, 1], s=1, c="lightgray")
    ax.scatter(samples[k][:, 0], samples[k][:, 1], s=2, color=COLORS[k])
    ax.set_title(f"{k}, heun 16 steps: SW₂ {sw[k]:.3f}, width {width[k]:.3f}", fontsize=10)
    ax.set_aspect("equal")
    ax.set_xlim(-3, 3)
    ax.set_ylim(-3, 3)
fig.tight_layout()

# %% [markdown]
# ## 7.4 Error against NFE, Euler and Heun, under each path
#
# 500 points, `x_T = prior_std·z` with the same `z` for every path; the reference is the `ode` solver with dopri5
# at `rtol = atol = 1e-7` from the same `x_T`; the error is the RMS distance to it at `t_min`. Uniform time grids
# with 8…128 steps; the NFE is counted by the model (Heun costs two per step). `fit_order` returns `p` in
# `error ∝ NFE^−p`.

# %%
STEPS = [8, 16, 32, 64, 128]
z = torch.randn(500, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
errors, nfes, orders = {}, {}, {}
for k, sde in SDES.items():
    x_T = sde.prior_std() * z
    reference = sd.sample(models[k], "ode", 1, x_T=x_T, method="dopri5", rtol=1e-7, atol=1e-7)
    for solver in ("euler", "heun"):
        errors[k, solver], nfes[k, solver] = [], []
        for steps in STEPS:
            models[k].reset_nfe()
            x = sd.sample(models[k], solver, steps, x_T=x_T)
            nfes[k, solver].append(models[k].nfe)
            errors[k, solver].append((x - reference).pow(2).sum(1).mean().sqrt().item())
        orders[k, solver] = fit_order(nfes[k, solver], errors[k, solver])
        orders[k, solver, "last 3"] = fit_order(nfes[k, solver][-3:], errors[k, solver][-3:])

fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
for ax, solver in zip(axes, ("euler", "heun")):
    for k in SDES:
        ax.loglog(nfes[k, solver], errors[k, solver], "o-", color=COLORS[k],
                  label=f"{k} (order {orders[k, solver]:.2f})")
    ax.set_title(f"{solver}: RMS error to dopri5 against NFE")
    ax.set_xlabel("NFE")
    ax.legend(fontsize=8)
fig.tight_layout()
for (k, solver), e in errors.items():
    print(f"{k:5s} {solver:6s} NFE {nfes[k, solver]}: " + " ".join(f"{v:.2e}" for v in e)
          + f"  order {orders[k, solver]:.2f} (last 3: {orders[k, solver, 'last 3']:.2f})")

# %% [markdown]
# ## Summary

# %%
print(f"flow marginals: std(t) = t to {flow_std_error:.0e}, s + std = 1 to {flow_sum_error:.0e}")
print("PF-ODE trajectories, median length ratio: "
      + ", ".join(f"{k} {v['length ratio']:.3f}" for k, v in straightness.items())
      + "; median radius dip: " + ", ".join(f"{k} {v['radius dip']:.2f}" for k, v in straightness.items()))
print("heun, 16 steps: " + ", ".join(f"{k} SW₂ {sw[k]:.3f} width {width[k]:.3f}" for k in SDES)
      + f" (exact vs exact SW₂ {floor:.3f})")
for solver in ("euler", "heun"):
    print(f"{solver}: error at NFE {nfes['VP', solver][0]} → {nfes['VP', solver][-1]}: "
          + ", ".join(f"{k} {errors[k, solver][0]:.1e} → {errors[k, solver][-1]:.1e} (order {orders[k, solver]:.2f})"
                      for k in SDES))
print(f"whole notebook: {time.perf_counter() - tick:.1f} s")

# %% [markdown]
# * The flow path is `x_t = (1 − t)x₀ + tε`: its signal scale and noise std are straight lines in `t` that sum to 1.
# * Its probability-flow ODE trajectories on the ring are **not** the straightest here: by median length ratio
#   VE < VP < flow. Flow trajectories dip toward the data mean before heading out to a mode. Straight conditional
#   paths do not make the marginal ODE straight.
# * Still, on uniform time grids Euler on the flow path has the smallest error of the three at every NFE measured
#   here; all three Euler errors fall at order ≈ 1. Heun converges at order ≈ 2 or better under every path, but at
#   the coarsest grid (16 NFE) the flow path's Heun error is the largest of the three: the ranking depends on NFE.
# * With Heun at 32 NFE (16 steps) the three sample sets are indistinguishable by `SW₂` on 1000 points (all at
#   the exact-vs-exact level), but the mode width tells them apart: VE is closest to the exact 0.1, then the
#   flow, and VP's modes are the most blurred.

# %% [markdown]
# ## Checks
#
# The claims above as assertions, so the notebook fails (in `tests/test_notebooks.py`) when a number stops
# saying what the text says.

# %%
assert flow_std_error < 1e-12 and flow_sum_error < 1e-12, "flow: std(t) = t and s + std = 1 exactly"
assert flow_sigma_error < 1e-9 and vp_error < 1e-9, "flow s·σ = t, VP s² + std² = 1"
ratio = {k: v["length ratio"] for k, v in straightness.items()}
assert ratio["VE"] < ratio["VP"] < ratio["flow"], f"straightness ordering VE < VP < flow by length ratio: {ratio}"
assert straightness["flow"]["radius dip"] < straightness["VE"]["radius dip"], "flow paths dip toward the mean"
assert straightness["flow"]["radius dip"] < 0.9, f"flow radius dip {straightness['flow']['radius dip']:.2f}"
for k in SDES:
    for solver in ("euler", "heun"):
        e = errors[k, solver]
        assert all(a > b for a, b in zip(e, e[1:])), f"{k} {solver}: errors should decrease with NFE: {e}"
    assert abs(orders[k, "euler"] - 1) < 0.3, f"{k}: Euler's fitted order {orders[k, 'euler']:.2f}, expected ≈ 1"
    assert orders[k, "heun"] > 1.7, f"{k}: Heun's fitted order {orders[k, 'heun']:.2f}, expected ≥ 2 - 0.3"
    assert sw[k] < 1.5 * floor, f"{k}: SW₂ {sw[k]:.3f} above the exact-vs-exact level {floor:.3f}"
blur = {k: abs(width[k] - mode_width(exact)) for k in SDES}
assert blur["VE"] < blur["flow"] < blur["VP"], f"mode-width error ordering VE < flow < VP with heun 16 steps: {blur}"
for i in range(len(STEPS)):
    euler_at = {k: errors[k, "euler"][i] for k in SDES}
    assert min(euler_at, key=euler_at.get) == "flow", f"Euler, NFE {STEPS[i]}: flow should be smallest: {euler_at}"
heun_first = {k: errors[k, "heun"][0] for k in SDES}
assert max(heun_first, key=heun_first.get) == "flow", f"Heun at 16 NFE: flow should be largest: {heun_first}"
