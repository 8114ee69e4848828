"""Peer samplers on the same denoiser, the same x_T and the same NFE budget: diffusers' schedulers and, where
it imports, k-diffusion's samplers. Both are optional: :func:`plan_peers` skips (and reports) what is missing.

diffusers (VP SDEs with a discrete DDPM schedule, ``sde.ddpm_schedule``): each scheduler is built on the
1000-step schedule of *this* SDE (``trained_betas``), ε-prediction, no clipping. Its model input is the VP state
and a (possibly fractional) timestep k; the wrapper maps k to σ the way diffusers maps σ to k (linear
interpolation of log σ_k over k, σ_k² = (1 − ᾱ_k)/ᾱ_k), then to SDE time t(σ), and calls the problem's own
counted model, ``model.eps(x, t)``. ``euler``, ``heun`` and ``dpmpp_2m`` use Karras σ's (ρ = 7, as scoresde's
``karras`` grid; ``*_default``: the scheduler's default grid); ``dpmpp_3m`` (DPM-Solver++, ``solver_order=3``),
``deis`` (DEIS-tAB3) and ``unipc`` the scheduler's default grid (``*_karras``: Karras σ's); DDPM and DDIM use
``trailing`` spacing so that the first step starts at k = N − 1 (``leading``
would skip the noisiest 10 % at 10 steps). DDPM's noise comes from one generator per sample
(``noise_seed``), as scoresde's.

On a diffusers model (:func:`scoresde.models.loader.load_diffusers`: its SDE is the
:class:`~scoresde.sde.discrete.DiscreteVPSDE` of the model's own ᾱ table) the schedulers are built on that table
(``trained_betas = 1 − ᾱ_k/ᾱ_{k−1}``, its N steps) and a timestep k is the SDE time t = k + 1, so the network sees
exactly the timesteps diffusers' own loop gives it (fractional ones included); the ε fed to the scheduler is the
counted model's ε (the network's own output for an ε-prediction model, converted from v or x₀ otherwise).

k-diffusion (imported through :mod:`scoresde.bench.kdiffusion_import`, which loads its unmodified
``sampling.py`` when the package ``__init__`` does not import): ``sample_*(denoiser, x̂_T, sigmas)`` on
``get_sigmas_karras`` between σ(t_min) and σ(T), with the denoiser ``D(x̂; σ) = model.denoiser(x̂, σ)`` and
x̂_T = x_T / s(T); ``euler``, ``heun``, ``dpmpp_2m``, ``lms`` (4th-order linear multistep in σ), ``dpmpp_2m_sde``
(η = 1, midpoint), ``dpmpp_3m_sde`` (η = 1) and ``dpmpp_3m_sde_eta0`` (η = 0), and ``dpm_adaptive`` (DPM-Solver-23
with step control at k-diffusion's default rtol = 0.05, atol = 0.0078: one run whatever the budgets, its NFE
measured, its row's ``tol`` the rtol). See :func:`kdiffusion_factory` for the SDE samplers' noise.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scoresde.bench.kdiffusion_import import is_standalone, load_sampling
from scoresde.bench.planning import SweepSettings
from scoresde.bench.problems import Problem, noise_seed
from scoresde.bench.sweep import References, chunks, score_samples, start_noise
from scoresde.bench.targets import Targets
from scoresde.bench.timing import Stopwatch

# method: (scheduler class, its options, stochastic, order). Where a scheduler has both a default grid and Karras
# σ's, both are peers: the older names (euler, heun, dpmpp_2m) mean Karras and their default-grid twins end in
# _default; the newer ones (dpmpp_3m, deis, unipc) mean the scheduler's default grid and their twins end in _karras.
_DPMPP = "DPMSolverMultistepScheduler"
_KARRAS = {"use_karras_sigmas": True}
DIFFUSERS: dict[str, tuple[str, dict[str, Any], bool, float]] = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_large", "clip_sample": False, "timestep_spacing": "trailing"},
             True, 0.5),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "timestep_spacing": "trailing"}, False, 1.0),
    "euler": ("EulerDiscreteScheduler", _KARRAS, False, 1.0),
    "euler_default": ("EulerDiscreteScheduler", {}, False, 1.0),
    "heun": ("HeunDiscreteScheduler", _KARRAS, False, 2.0),
    "heun_default": ("HeunDiscreteScheduler", {}, False, 2.0),
    "dpmpp_2m": (_DPMPP, {"algorithm_type": "dpmsolver++", "solver_order": 2, **_KARRAS}, False, 2.0),
    "dpmpp_2m_default": (_DPMPP, {"algorithm_type": "dpmsolver++", "solver_order": 2}, False, 2.0),
    # solver_order=3: the 3M update of k-diffusion and scoresde's dpmpp_3m (φ₃ on half the second difference),
    # second order as measured (README, "dpmpp_3m"), so declared 2
    "dpmpp_3m": (_DPMPP, {"algorithm_type": "dpmsolver++", "solver_order": 3}, False, 2.0),
    "dpmpp_3m_karras": (_DPMPP, {"algorithm_type": "dpmsolver++", "solver_order": 3, **_KARRAS}, False, 2.0),
    "deis": ("DEISMultistepScheduler", {"solver_order": 3}, False, 3.0),  # DEIS-tAB3, diffusers' default order
    "deis_karras": ("DEISMultistepScheduler", {"solver_order": 3, **_KARRAS}, False, 3.0),
    "unipc": ("UniPCMultistepScheduler", {}, False, 3.0),  # UniPC-bh2 with solver_order 2 + corrector: order 3
    "unipc_karras": ("UniPCMultistepScheduler", _KARRAS, False, 3.0),
}
# method: (k_diffusion.sampling function, its options, stochastic, order). SDE samplers: strong order 1 (as
# scoresde's dpmpp_*_sde declare); dpmpp_3m_sde at η = 0 is the deterministic 3M, second order (README).
KDIFFUSION: dict[str, tuple[str, dict[str, Any], bool, float]] = {
    "euler": ("sample_euler", {}, False, 1.0), "heun": ("sample_heun", {}, False, 2.0),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, False, 2.0), "lms": ("sample_lms", {}, False, 4.0),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {"eta": 1.0, "solver_type": "midpoint"}, True, 1.0),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {"eta": 1.0}, True, 1.0),
    "dpmpp_3m_sde_eta0": ("sample_dpmpp_3m_sde", {"eta": 0.0}, False, 2.0),
    # DPM-Solver-23 with its PID step control at k-diffusion's default tolerances: chooses its own steps
    "dpm_adaptive": ("sample_dpm_adaptive", {"order": 3, "rtol": 0.05, "atol": 0.0078}, False, 3.0),
}
ADAPTIVE = {"dpm_adaptive"}  # k-diffusion samplers that choose their steps: one run, at their rtol, NFE measured
TWO_EVALS = {"heun", "heun_default"}  # 2 evaluations per step, one on the last: NFE = 2n − 1 (both libraries)
Factory = Callable[[Problem, int | None], Callable[[Tensor, Sequence[int]], Tensor]]


def steps_for(method: str, budget: int) -> int:
    """Steps whose NFE is closest to ``budget`` (ties: the cheaper): every fixed-grid peer costs one evaluation per
    step except Heun's 2n − 1."""
    return max(1, (budget + 1) // 2) if method in TWO_EVALS else budget


def import_diffusers() -> Any | None:
    try:
        import diffusers
        for cls, *_ in DIFFUSERS.values():
            getattr(diffusers, cls)
        return diffusers
    except Exception:  # noqa: BLE001 - an optional peer: any import failure means "not installed"
        return None


def import_kdiffusion() -> Any | None:
    """k-diffusion's ``sampling`` module, if necessary without its package ``__init__``
    (:func:`scoresde.bench.kdiffusion_import.load_sampling`); None when it is not installed."""
    return load_sampling()


def diffusers_factory(module: Any, method: str) -> Factory:
    """``make(problem, steps)`` → ``sampler(x_T, seeds)`` running diffusers' ``method`` scheduler's canonical loop."""
    cls_name, options, _, _ = DIFFUSERS[method]

    def make(problem: Problem, steps: int) -> Callable[[Tensor, Sequence[int]], Tensor]:
        betas, t_of_timestep = peer_table(problem.sde)
        sched = getattr(module, cls_name)(num_train_timesteps=len(betas), trained_betas=betas.numpy(),
                                          prediction_type="epsilon", **options)

        def eps(x: Tensor, k: Tensor) -> Tensor:
            t = t_of_timestep(float(k))
            return problem.model.eps(x, torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype))

        def sampler(x_T: Tensor, seeds: Sequence[int]) -> Tensor:
            sched.set_timesteps(steps, device=x_T.device)
            x = x_T * sched.init_noise_sigma
            kw = {}
            if method == "ddpm":
                kw["generator"] = [torch.Generator(x_T.device).manual_seed(noise_seed(s)) for s in seeds]
            for k in sched.timesteps:
                x = sched.step(eps(sched.scale_model_input(x, k), k), k, x, **kw).prev_sample
            return x

        return sampler

    return make


def peer_table(sde: Any) -> tuple[Tensor, Callable[[float], float]]:
    """The betas a diffusers scheduler is built on and the SDE time of its (fractional) timestep k: the model's own
    ᾱ table with t = k + 1 for a table SDE (``alphas_cumprod``, :meth:`timestep` = t − 1), else the SDE's 1000-step
    DDPM schedule with k → σ as diffusers maps σ → k (log σ linear in k) and t = t(σ)."""
    table = getattr(sde, "alphas_cumprod", None)
    if isinstance(table, Tensor) and hasattr(sde, "timestep"):
        ab = table.to(torch.float64)
        return 1 - ab / torch.cat([ab.new_ones(1), ab[:-1]]), lambda k: k + 1.0
    if not hasattr(sde, "ddpm_schedule"):
        raise ValueError(f"diffusers peers need a VP-type SDE with a discrete DDPM schedule; {sde.name} has none")
    betas, alpha_bar = sde.ddpm_schedule(1000)
    log_sigmas = (0.5 * torch.log((1 - alpha_bar) / alpha_bar)).numpy()
    ks = np.arange(1000, dtype=np.float64)

    def t_of_timestep(k: float) -> float:
        sigma = math.exp(float(np.interp(k, ks, log_sigmas)))
        return float(sde.t_of_sigma(torch.tensor(sigma, dtype=torch.float64)))

    return betas, t_of_timestep


def kdiffusion_factory(sampling: Any, method: str) -> Factory:
    """``make(problem, steps)`` → ``sampler(x_T, seeds)`` running k-diffusion's ``sample_<method>``.

    Fixed-grid samplers run on ``get_sigmas_karras(steps, σ(t_min), σ(T), ρ = 7)`` (which appends σ = 0, so the
    last step is the jump to the data). SDE samplers get k-diffusion's own ``BrownianTreeNoiseSampler`` over
    [min σ > 0, max σ] with a list of seeds, one Brownian tree per sample seeded with ``noise_seed(seed)`` (the
    per-sample seed scoresde's own noise uses): a sample's noise does not depend on the batch it is drawn in.
    ``dpm_adaptive`` integrates from σ(T) to σ(t_min) with its own steps and stops there; one denoiser call
    x̂ ← D(x̂; σ(t_min)) then makes the same jump to the data as the fixed grids' last step (counted in its NFE).
    """
    fn_name, options, stochastic, _ = KDIFFUSION[method]

    def make(problem: Problem, steps: int | None) -> Callable[[Tensor, Sequence[int]], Tensor]:
        sde = problem.sde
        t_max = torch.tensor(sde.T, dtype=torch.float64)
        s_max, sig_max = float(sde.s(t_max)), float(sde.sigma(t_max))
        sig_min = float(sde.sigma(torch.tensor(sde.t_min, dtype=torch.float64)))
        fn, denoiser = getattr(sampling, fn_name), problem.model.denoiser

        def sampler(x_T: Tensor, seeds: Sequence[int]) -> Tensor:
            x = x_T / s_max
            if method in ADAPTIVE:
                x = fn(denoiser, x, sig_min, sig_max, disable=True, **options)
                return denoiser(x, torch.full((x.shape[0],), sig_min, dtype=x.dtype, device=x.device))
            if steps is None:
                raise ValueError(f"k-diffusion's {method} needs a step count")
            sigmas = sampling.get_sigmas_karras(steps, sig_min, sig_max, rho=7.0, device=x_T.device)
            if not stochastic:
                return fn(denoiser, x, sigmas, disable=True, **options)
            positive = sigmas[sigmas > 0]
            tree = sampling.BrownianTreeNoiseSampler(x, positive.min(), positive.max(),
                                                     seed=[noise_seed(s) for s in seeds])
            with warnings.catch_warnings():  # torchsde rounds the tree's ends to its tolerance's digits, so a query
                # at σ_max = 152.1669921875 (float32) exceeds the stored 152.166992 (or one at σ_min = 0.0019999996
                # falls below 0.002) and is clamped to it, with a warning per step and per sample; the clamp moves
                # the increment by ~1e-9 relative
                warnings.filterwarnings("ignore", message="Should have t[ab][<>]=t[01]", category=UserWarning)
                return fn(denoiser, x, sigmas, disable=True, noise_sampler=tree, **options)

        return sampler

    return make


@dataclass
class PeerRun:
    """One peer sampler at one NFE budget."""

    source: str
    method: str
    budget: int | None  # None: an adaptive sampler (its ``tol`` is set; its NFE is measured)
    steps: int | None
    stochastic: bool
    order: float
    make: Factory
    tol: float | None = None

    def draw(self, problem: Problem, seeds: Sequence[int], settings: SweepSettings) -> tuple[Tensor, int, float]:
        """Like :func:`scoresde.bench.sweep.draw`: the same x_T (:func:`~scoresde.bench.sweep.start_noise`),
        chunked by ``batch_size``."""
        sampler = self.make(problem, self.steps)
        outs, nfes, seconds = [], [], 0.0
        x_all, size = start_noise(problem, seeds, settings), settings.batch_size or len(seeds)
        with torch.no_grad():
            for i, part in enumerate(chunks(seeds, size)):
                x_T = x_all[i * size:(i + 1) * size]
                problem.model.reset_nfe()
                with Stopwatch(problem.device) as watch:  # the same timer as scoresde's runs
                    outs.append(sampler(x_T, part))
                seconds += watch.seconds
                nfes.append(problem.model.nfe)
        return torch.cat(outs), max(nfes), seconds

    def measure(self, problem: Problem, targets: Targets, refs: References, settings: SweepSettings
                ) -> dict[str, Any]:
        row = {"problem": problem.name, "sde": problem.sde.name, "source": self.source, "label": self.method,
               "solver": f"{self.source}:{self.method}", "grid": "peer", "options": {}, "budget": self.budget,
               "tol": self.tol, "steps": self.steps, "declared_nfe": None, "stochastic": self.stochastic,
               "order": self.order, "nfe": None, "time_s": None, "samples_per_s": None, "rmse": None,
               "error": None, "sw": None, "mmd": None, "nll": None, "fd": None}
        try:
            x, nfe, seconds = self.draw(problem, settings.seeds, settings)
        except (FloatingPointError, ValueError, RuntimeError) as err:
            row["error"] = f"{type(err).__name__}: {err}"
            return row
        if not bool(torch.isfinite(x).all()):
            row["error"] = "non-finite samples"
            return row
        reference = None if self.stochastic or "rmse" not in targets.metrics else refs.get(refs.data_end())
        return score_samples(row, x, nfe, seconds, problem, targets, reference)


def plan_peers(diffusers_methods: Sequence[str], kdiffusion_methods: Sequence[str], budgets: Sequence[int]
               ) -> tuple[list[PeerRun], list[str]]:
    """Peer runs for every installed library and method at every budget, and notes on what was skipped."""
    for names, table, lib in ((diffusers_methods, DIFFUSERS, "diffusers"), (kdiffusion_methods, KDIFFUSION,
                                                                            "k-diffusion")):
        bad = sorted(set(names) - set(table))
        if bad:
            raise ValueError(f"unknown {lib} peer methods {bad}; known: {', '.join(table)}")
    runs, notes = [], []
    libs = ((diffusers_methods, "diffusers", import_diffusers, diffusers_factory, DIFFUSERS),
            (kdiffusion_methods, "k-diffusion", import_kdiffusion, kdiffusion_factory, KDIFFUSION))
    for names, lib, importer, factory, table in libs:
        if not names:
            continue
        module = importer()
        if module is None:
            notes.append(f"{lib} is not installed (or does not import); its peers were skipped")
            continue
        if lib == "k-diffusion" and is_standalone(module):
            notes.append("k-diffusion's sampling.py was loaded without its package __init__ (whose extras, e.g. "
                         "torchvision, do not import); see scoresde/bench/kdiffusion_import.py")
        for method in names:
            _, options, stochastic, order = table[method]
            make = factory(module, method)
            if lib == "k-diffusion" and method in ADAPTIVE:
                runs.append(PeerRun(lib, method, None, None, stochastic, order, make, tol=options["rtol"]))
                continue
            for budget in dict.fromkeys(budgets):
                runs.append(PeerRun(lib, method, budget, steps_for(method, budget), stochastic, order, make))
    return runs, notes
