# %% [markdown]
# # 3 · Solvers and their cost
#
# **What you will learn**
#
# * How to compare ODE solvers fairly: the same problem (the probability-flow ODE of an exact score), the same
#   starting noise, the error against a very accurate reference, and the cost measured as **NFE** — the number
#   of score evaluations, counted by a wrapper around the model (never computed from a formula).
# * That the *order* a solver declares is a slope you can measure: Euler (1), DDIM (1), Heun (2),
#   DPM-Solver++(2M) (2), and how an adaptive Runge–Kutta method (dopri5) trades tolerance for NFE.
# * That the **time grid** matters as much as the solver: uniform in t, Karras et al.'s ρ-grid, uniform in log-SNR.

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import scoresde as sd

torch.manual_seed(0)
sde = sd.VPSDE()
testbed = sd.get_testbed("ring")
model = testbed.model(sde)
B = 256
x_T = sde.prior_sample((B, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
tick = time.perf_counter()
model.reset_nfe()
reference = sd.sample(model, "ode", 1, x_T=x_T, method="dopri5", rtol=1e-10, atol=1e-10)
print(f"reference: dopri5 at rtol = atol = 1e-10, {model.nfe} NFE, {time.perf_counter() - tick:.1f} s")

for name in ["euler", "ddim", "heun", "dpmpp_2m", "ode"]:
    s = sd.get_solver(name)
    print(f"{name:9s} stochastic={s.stochastic!s:5s} order={s.order}  uses={s.uses}  — "
          f"{type(s).__doc__.splitlines()[0]}")


def run(solver, steps, grid="karras", **options):
    """(RMS error to the reference, measured NFE, seconds) of one solve from x_T."""
    model.reset_nfe()
    tick = time.perf_counter()
    x = sd.sample(model, solver, steps, x_T=x_T, grid=grid, **options)
    return (x - reference).pow(2).sum(1).mean().sqrt().item(), model.nfe, time.perf_counter() - tick

# %% [markdown]
# ## 3.1 Error against NFE on the Karras grid
#
# Fixed-step solvers at 5 … 320 steps on Karras et al.'s grid (ρ = 7), and dopri5 (the `ode` solver, which
# hands the probability-flow ODE to torchdiffeq) at tolerances 10⁻² … 10⁻⁸. `euler`, `heun` and `dpmpp_2m` step in
# σ on the state `x/s`; `ddim` is the same first-order step written in DDIM's form.

# %%
STEPS = [5, 10, 20, 40, 80, 160, 320]
FIXED = ["euler", "ddim", "heun", "dpmpp_2m"]
results = {name: [run(name, n) for n in STEPS] for name in FIXED}
TOLS = [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
adaptive = [run("ode", 1, method="dopri5", rtol=tol, atol=tol) for tol in TOLS]

print(f"{'steps':>6s} " + " ".join(f"{n + ' err':>14s} {'NFE':>4s}" for n in FIXED))
for i, n in enumerate(STEPS):
    print(f"{n:6d} " + " ".join(f"{results[k][i][0]:14.2e} {results[k][i][1]:4d}" for k in FIXED))
print(f"\n{'tol':>6s} {'dopri5 err':>11s} {'NFE':>5s}")
for tol, (err, nfe, _) in zip(TOLS, adaptive):
    print(f"{tol:6.0e} {err:11.2e} {nfe:5d}")

# %%
def fitted_order(rows, last=3):
    """Slope of −log error against log NFE over the last ``last`` points (the asymptotic range)."""
    err = np.array([r[0] for r in rows[-last:]])
    nfe = np.array([r[1] for r in rows[-last:]])
    return -np.polyfit(np.log(nfe), np.log(err), 1)[0]


orders = {name: fitted_order(results[name]) for name in FIXED}
fig, ax = plt.subplots(figsize=(8, 5.5))
for name, marker in zip(FIXED, "osD^"):
    nfe = np.array([r[1] for r in results[name]])
    err = np.array([r[0] for r in results[name]])
    line, = ax.loglog(nfe, err, marker + "-", label=f"{name}: measured slope {orders[name]:.2f}")
    p = sd.get_solver(name).order
    ax.loglog(nfe, err[-1] * (nfe / nfe[-1]) ** -p, "--", color=line.get_color(), lw=0.8,
              label=f"  order {p:g} line")
ax.loglog([r[1] for r in adaptive], [r[0] for r in adaptive], "k*-", label="dopri5, tol 1e-2 … 1e-8")
ax.set_xlabel("NFE (measured)")
ax.set_ylabel("RMS error vs reference")
ax.set_title("probability-flow ODE of the ring, VP SDE, Karras grid ρ = 7")
ax.legend(fontsize=8)
fig.tight_layout()
for name in FIXED:
    print(f"{name:9s} declared order {sd.get_solver(name).order:g}, "
          f"fitted slope over the last three NFE: {orders[name]:.2f}")
i80, i40 = STEPS.index(80), STEPS.index(40)
ratio_dpm = results["euler"][i80][0] / results["dpmpp_2m"][i80][0]
ratio_heun = results["euler"][i80][0] / results["heun"][i40][0]
print(f"at 80 NFE Euler's error is {ratio_dpm:.1f}× DPM-Solver++(2M)'s and {ratio_heun:.1f}× Heun's (40 steps)")

# %% [markdown]
# Read the plot at a fixed budget (a vertical line): the second-order methods pull away from Euler as the budget
# grows, by the factor printed above at 80 NFE, and the gap widens with every doubling (slope 2 against 1). At
# 5–10 NFE no method is accurate, and Heun, which spends two evaluations per step, can be the worst. dopri5 pays
# a few dozen NFE even at loose tolerance (each of its steps costs 6 evaluations, plus rejected steps), which is
# why diffusion samplers use low-order multistep or Heun methods at small budgets. With an exact, smooth score
# and a budget of 150 NFE or more, though, dopri5's high order wins by one to three orders of magnitude. (Euler and
# DDIM coincide: DDIM with η = 0 is Euler's step in σ on `x/s`, written differently.)
#
# ## 3.2 The time grid
#
# The same solvers on three grids with the same number of steps:
#
# * `uniform`: equal steps in t;
# * `karras`: `σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ` with ρ = 7 — dense at small σ;
# * `logsnr`: equal steps in `λ = −log σ` (DPM-Solver's choice).

# %%
GRIDS = ["uniform", "karras", "logsnr"]
GRID_STEPS = [5, 10, 20, 40, 80]
grid_err = {(name, g): [run(name, n, grid=g)[0] for n in GRID_STEPS] for name in ["euler", "heun", "dpmpp_2m"]
            for g in GRIDS}
print(f"{'solver':9s} {'grid':8s} " + " ".join(f"{n:>9d}" for n in GRID_STEPS) + "   (RMS error at N steps)")
for (name, g), errs in grid_err.items():
    print(f"{name:9s} {g:8s} " + " ".join(f"{e:9.2e}" for e in errs))

fig, axes = plt.subplots(1, 3, figsize=(16, 4))
for ax, name in zip(axes, ["euler", "heun", "dpmpp_2m"]):
    for g in GRIDS:
        ax.loglog(GRID_STEPS, grid_err[(name, g)], "o-", label=g)
    ax.set_title(name)
    ax.set_xlabel("steps")
    ax.legend()
axes[0].set_ylabel("RMS error")
fig.tight_layout()

t_uniform = sd.make_grid(sde, 10, "uniform")
t_karras = sd.make_grid(sde, 10, "karras", rho=7.0)
print("\nσ of a 10-step uniform grid:", " ".join(f"{v:.3g}" for v in t_uniform.sigma_list))
print("σ of a 10-step Karras grid: ", " ".join(f"{v:.3g}" for v in t_karras.sigma_list))

# %% [markdown]
# Under the VP SDE σ(t) spans four orders of magnitude; the uniform grid in t jumps from σ = 0.34 to 0.01 in its
# last step, where the ring's modes form, while the Karras grid spends three steps there. Which grid wins depends
# on the solver and the budget (the table): the log-SNR grid is best for DPM-Solver++, whose step is exact in λ
# for the linear part.
#
# ## 3.3 Karras's ρ
#
# ρ = 1 spaces σ uniformly; larger ρ concentrates steps at small σ (ρ → ∞ is uniform in log σ). Heun and
# DPM-Solver++ with 10 steps:

# %%
RHOS = [1, 2, 3, 5, 7, 10, 20, 50]
rho_err = {name: [run(name, 10, grid="karras", rho=float(r))[0] for r in RHOS] for name in ["heun", "dpmpp_2m"]}
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, errs in rho_err.items():
    ax.semilogy(RHOS, errs, "o-", label=f"{name}, 10 steps")
    best = RHOS[int(np.argmin(errs))]
    print(f"{name:9s} RMS error at ρ = " + ", ".join(f"{r}: {e:.2e}" for r, e in zip(RHOS, errs))
          + f"  → best ρ = {best}")
ax.set_xscale("log")
ax.set_xlabel("ρ")
ax.set_ylabel("RMS error")
ax.legend()
fig.tight_layout()

# %% [markdown]
# ## 3.4 Wall-clock
#
# NFE is the right currency when the model dominates (a U-Net); with an exact mixture score each evaluation is
# cheap, so the per-step overhead of the solver shows. Seconds per solve of 256 samples at 40 steps:

# %%
for name in FIXED:
    _, nfe, sec = run(name, 40)
    print(f"{name:9s} {nfe:4d} NFE  {1000 * sec:7.1f} ms  ({1e6 * sec / nfe:6.0f} µs per NFE)")
_, nfe, sec = run("ode", 1, method="dopri5", rtol=1e-5, atol=1e-5)
print(f"{'dopri5':9s} {nfe:4d} NFE  {1000 * sec:7.1f} ms  ({1e6 * sec / nfe:6.0f} µs per NFE)  rtol = atol = 1e-5")

# %% [markdown]
# ## Summary

# %%
at = STEPS.index(20)
print("declared order vs fitted slope (Karras grid): "
      + ", ".join(f"{n} {sd.get_solver(n).order:g} vs {orders[n]:.2f}" for n in FIXED))
print("RMS error at 20 steps (Karras): "
      + ", ".join(f"{n} {results[n][at][0]:.1e} ({results[n][at][1]} NFE)" for n in FIXED))
print("dopri5: " + ", ".join(f"tol {t:.0e} → {e:.1e} ({nfe} NFE)" for t, (e, nfe, _) in zip(TOLS, adaptive)
                             if t in (1e-3, 1e-5, 1e-8)))
i10 = GRID_STEPS.index(10)
print("heun, 10 steps, by grid: " + ", ".join(f"{g} {grid_err[('heun', g)][i10]:.1e}" for g in GRIDS))
print("dpmpp_2m, 10 steps, by grid: " + ", ".join(f"{g} {grid_err[('dpmpp_2m', g)][i10]:.1e}" for g in GRIDS))
print("best ρ at 10 steps: " + ", ".join(f"{n} ρ = {RHOS[int(np.argmin(e))]}" for n, e in rho_err.items()))
print(f"at 80 NFE, Euler's error / DPM-Solver++(2M)'s: {ratio_dpm:.1f}; / Heun's: {ratio_heun:.1f}")

# %% [markdown]
# * Measured slopes match the declared orders: first order for Euler and DDIM, second order for Heun and
#   DPM-Solver++(2M) (a slope is only meaningful in the asymptotic range, hence the fit over the last points).
# * At a fixed NFE budget the grid can matter as much as the solver: DPM-Solver++ at 10 steps gains about an
#   order of magnitude going from the uniform-in-t grid to the log-SNR grid. On this problem (t_min = 10⁻³, a sharp
#   2-D mixture) a larger ρ than Karras's 7 keeps helping at 10 steps; ρ → ∞ approaches the log-SNR grid.
# * Adaptive dopri5 reaches any accuracy you ask for, but its cost floor is high for the loose accuracies
#   sampling needs: compare its NFE at tol 10⁻² with DPM-Solver++'s at a similar error.

# %% [markdown]
# ## Checks
#
# The claims above as assertions, so the notebook fails (in `tests/test_notebooks.py`) when a number stops
# saying what the text says.

# %%
err = {name: np.array([r[0] for r in results[name]]) for name in FIXED}
for name in FIXED:
    declared = sd.get_solver(name).order
    assert abs(orders[name] - declared) < 0.25, f"{name}: fitted slope {orders[name]:.2f}, declared {declared:g}"
assert np.allclose(err["euler"], err["ddim"], rtol=1e-6, atol=0), "DDIM (η = 0) should be Euler's step"
# the second-order methods pull away from Euler at equal NFE, more with every doubling (from 20 NFE on)
i20 = STEPS.index(20)
vs_dpm = err["euler"][i20:] / err["dpmpp_2m"][i20:]
vs_heun = err["euler"][i20 + 1:] / err["heun"][i20:-1]  # Heun at n steps costs 2n NFE
assert (vs_dpm > 1).all() and (np.diff(vs_dpm) > 0).all(), f"Euler / DPM-Solver++ at equal NFE: {vs_dpm}"
assert (vs_heun > 1).all() and (np.diff(vs_heun) > 0).all(), f"Euler / Heun at equal NFE: {vs_heun}"
assert ratio_dpm > 1 and ratio_heun > 1, (ratio_dpm, ratio_heun)
few = [r for name in FIXED for r in results[name] if r[1] <= 10]
assert min(r[0] for r in few) > 0.1, "at 5–10 NFE no method should be accurate"
assert max(FIXED, key=lambda n: results[n][0][0]) == "heun", "Heun (two NFE a step) is the worst at 5 steps"
# dopri5: any accuracy at a price; a few dozen NFE even at loose tolerance; at 150+ NFE it wins by 10× or more
ad_err, ad_nfe = np.array([r[0] for r in adaptive]), np.array([r[1] for r in adaptive])
assert (np.diff(ad_nfe) > 0).all() and ad_err[-1] < 1e-6, (ad_err, ad_nfe)
assert ad_nfe[0] >= 24, f"dopri5 at tol 1e-2 took only {ad_nfe[0]} NFE"
for e, nfe in zip(ad_err, ad_nfe):
    best_fixed = min(r[0] for name in FIXED for r in results[name] if r[1] <= nfe)
    assert nfe < 150 or 10 * e < best_fixed, f"dopri5 at {nfe} NFE: {e:.1e} vs fixed-step {best_fixed:.1e}"
# grids
sig_u, sig_k = np.array(t_uniform.sigma_list), np.array(t_karras.sigma_list)
assert 1e4 < sig_u[0] / sig_u[-1] < 1e5, "σ(t) of the VP SDE spans four orders of magnitude"
assert abs(sig_u[-2] - 0.34) < 0.01 and (sig_u < 0.34).sum() == 1, sig_u
assert (sig_k < 0.34).sum() == 3, f"the Karras grid should take three steps below σ = 0.34: {sig_k}"
for i in range(len(GRID_STEPS)):
    best = min(GRIDS, key=lambda gr: grid_err[("dpmpp_2m", gr)][i])
    assert best == "logsnr", f"log-SNR should be DPM-Solver++'s best grid at {GRID_STEPS[i]} steps, got {best}"
gain = grid_err[("dpmpp_2m", "uniform")][i10] / grid_err[("dpmpp_2m", "logsnr")][i10]
assert gain > 5, f"uniform → log-SNR at 10 steps gains only {gain:.1f}× for DPM-Solver++"
for name, errs in rho_err.items():
    tail = errs[RHOS.index(7):]
    assert all(a > b for a, b in zip(tail, tail[1:])), f"{name}: ρ > 7 should keep helping at 10 steps: {tail}"
    assert RHOS[int(np.argmin(errs))] > 7
    logsnr = grid_err[(name, "logsnr")][i10]
    assert abs(errs[-1] / logsnr - 1) < 0.25, f"{name}: ρ = 50 should approach the log-SNR grid"
