"""Solvers: one interface, one registry. Importing this package imports every module in it, so every solver
(a ``@register``-ed class in any module here) is registered by discovery: adding a solver is adding its file."""
import importlib
import pkgutil

from scoresde.solvers.base import SOLVERS, Solver, StepContext, StepInfo, get_solver, register
from scoresde.solvers.grid_search import optimize_grid
from scoresde.solvers.grids import GRIDS, TimeGrid, as_grid, grid_from_times, load_grid, make_grid, save_grid
from scoresde.solvers.noise import BrownianNoise, GeneratorNoise, NoiseSource, PerSampleNoise, as_noise, make_noise
from scoresde.solvers.sigma_term import SigmaSolver, SigmaTerm

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["SOLVERS", "Solver", "StepContext", "StepInfo", "get_solver", "register", "GRIDS", "TimeGrid",
           "as_grid", "grid_from_times", "load_grid", "make_grid", "optimize_grid", "save_grid", "BrownianNoise",
           "GeneratorNoise", "NoiseSource", "PerSampleNoise", "as_noise", "make_noise", "SigmaSolver", "SigmaTerm"]
