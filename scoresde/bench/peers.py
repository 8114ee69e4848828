"""Peer samplers on the same denoiser, the same x_T and the same NFE budget: diffusers' schedulers and, where
it imports, k-diffusion's samplers. Both are optional: :func:`plan_peers` skips (and reports) what is missing.

diffusers (VP SDEs with a discrete DDPM schedule, ``sde.ddpm_schedule``): each scheduler is built on the
1000-step schedule of *this* SDE (``trained_betas``), ε-prediction, no clipping. Its model input is the VP state
and a (possibly fractional) timestep k; the wrapper maps k to σ the way diffusers maps σ to k (linear
interpolation of log σ_k over k, σ_k² = (1 − ᾱ_k)/ᾱ_k), then to SDE time t(σ), and calls the problem's own
counted model, ``model.eps(x, t)``. Euler, Heun and DPM-Solver++ 2M use Karras σ's (ρ = 7, as scoresde's
``karras`` grid); DDPM and DDIM use ``trailing`` spacing so that the first step starts at k = N − 1 (``leading``
would skip the noisiest 10 % at 10 steps). DDPM's noise comes from one generator per sample
(``noise_seed``), as scoresde's.

On a diffusers model (:func:`scoresde.models.loader.load_diffusers`: its SDE is the
:class:`~scoresde.sde.discrete.DiscreteVPSDE` of the model's own ᾱ table) the schedulers are built on that table
(``trained_betas = 1 − ᾱ_k/ᾱ_{k−1}``, its N steps) and a timestep k is the SDE time t = k + 1, so the network sees
exactly the timesteps diffusers' own loop gives it (fractional ones included); the ε fed to the scheduler is the
counted model's ε (the network's own output for an ε-prediction model, converted from v or x₀ otherwise).

k-diffusion: ``sample_*(denoiser, x̂_T, sigmas)`` on ``get_sigmas_karras`` between σ(t_min) and σ(T), with the
denoiser ``D(x̂; σ) = model.denoiser(x̂, σ)`` and x̂_T = x_T / s(T).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scoresde.bench.planning import SweepSettings
from scoresde.bench.problems import Problem, noise_seed
from scoresde.bench.sweep import References, chunks, score_samples, start_noise
from scoresde.bench.targets import Targets
from scoresde.bench.timing import Stopwatch

# method: (scheduler class, its options, stochastic, order)
DIFFUSERS: dict[str, tuple[str, dict[str, Any], bool, float]] = {
    "ddpm": ("DDPMScheduler", {"variance_type": "fixed_large", "clip_sample": False, "timestep_spacing": "trailing"},
             True, 0.5),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "timestep_spacing": "trailing"}, False, 1.0),
    "euler": ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, False, 1.0),
    "heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}, False, 2.0),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                 "use_karras_sigmas": True}, False, 2.0),
    "unipc": ("UniPCMultistepScheduler", {}, False, 3.0),  # UniPC-bh2 with solver_order 2 + corrector: order 3
}
# method: (k_diffusion.sampling function, stochastic, order)
KDIFFUSION: dict[str, tuple[str, bool, float]] = {
    "euler": ("sample_euler", False, 1.0), "heun": ("sample_heun", False, 2.0),
    "dpmpp_2m": ("sample_dpmpp_2m", False, 2.0), "lms": ("sample_lms", False, 4.0),
}
TWO_EVALS = {"heun"}  # 2 evaluations per step, one on the last: NFE = 2n − 1 (both libraries)
Factory = Callable[[Problem, int], Callable[[Tensor, Sequence[int]], Tensor]]


def steps_for(method: str, budget: int) -> int:
    """Steps whose NFE is closest to ``budget`` (ties: the cheaper)."""
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
    try:
        import k_diffusion.sampling as sampling
        return sampling
    except Exception:  # noqa: BLE001 - k-diffusion's package __init__ imports many optional extras
        return None


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
    """``make(problem, steps)`` → ``sampler(x_T, seeds)`` running k-diffusion's ``sample_<method>``."""
    fn_name = KDIFFUSION[method][0]

    def make(problem: Problem, steps: int) -> Callable[[Tensor, Sequence[int]], Tensor]:
        sde = problem.sde
        t_max = torch.tensor(sde.T, dtype=torch.float64)
        s_max, sig_max = float(sde.s(t_max)), float(sde.sigma(t_max))
        sig_min = float(sde.sigma(torch.tensor(sde.t_min, dtype=torch.float64)))

        def sampler(x_T: Tensor, seeds: Sequence[int]) -> Tensor:
            sigmas = sampling.get_sigmas_karras(steps, sig_min, sig_max, rho=7.0, device=x_T.device)
            return getattr(sampling, fn_name)(problem.model.denoiser, x_T / s_max, sigmas, disable=True)

        return sampler

    return make


@dataclass
class PeerRun:
    """One peer sampler at one NFE budget."""

    source: str
    method: str
    budget: int
    steps: int
    stochastic: bool
    order: float
    make: Factory

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
               "tol": None, "steps": self.steps, "declared_nfe": None, "stochastic": self.stochastic,
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
        reference = None if self.stochastic or "rmse" not in targets.metrics else refs.get(refs.default_end())
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
        for method in names:
            stochastic, order = table[method][-2], table[method][-1]
            for budget in dict.fromkeys(budgets):
                runs.append(PeerRun(lib, method, budget, steps_for(method, budget), stochastic, order,
                                    factory(module, method)))
    return runs, notes
