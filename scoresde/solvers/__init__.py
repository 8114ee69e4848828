"""Solvers: one interface, one registry. Importing this package registers every solver."""
from scoresde.solvers import ddim, dpm_solver, edm, ode, predictor_corrector, sde_steps, sdeint, unipc  # noqa: F401
from scoresde.solvers.base import SOLVERS, Solver, StepContext, StepInfo, get_solver, register
from scoresde.solvers.grids import GRIDS, TimeGrid, as_grid, grid_from_times, make_grid
from scoresde.solvers.noise import GeneratorNoise, NoiseSource, PerSampleNoise, make_noise

__all__ = ["SOLVERS", "Solver", "StepContext", "StepInfo", "get_solver", "register", "GRIDS", "TimeGrid",
           "as_grid", "grid_from_times", "make_grid", "GeneratorNoise", "NoiseSource", "PerSampleNoise", "make_noise"]
