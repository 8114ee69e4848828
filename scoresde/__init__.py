"""scoresde: score-based generative modeling as continuous SDEs and ODEs.

Public API:
    SDEs         VPSDE, SubVPSDE, VESDE, EDMSDE, CosineVPSDE, FlowSDE (rectified flow), get_sde, ReverseSDE,
                 ProbabilityFlowODE
    model        ScoreModel (score / eps / x0 / v predictions, counted NFE), CountingModel, Preconditioned (wrap a
                 network F(x, c_noise, labels) into a model of any SDE), load_model (a shipped name, pretrained
                 file, checkpoint or run dir: the one loader; nothing in a file can run code)
    testbeds     GaussianMixture, get_testbed (gaussian, ring, grid, high_dim, digits)
    solvers      SOLVERS, get_solver, Solver, make_grid, TimeGrid, PerSampleNoise, GeneratorNoise, BrownianNoise
    sampling     sample

Subpackages imported explicitly: scoresde.training (losses, Trainer, checkpoints), scoresde.evaluation
(likelihood, metrics), scoresde.guidance and scoresde.editing (guidance, SDEdit, inpainting, anagrams, hybrids),
scoresde.models.pretrained (the shipped Fashion-MNIST model), scoresde.bench (the sampler benchmark suite),
scoresde.distributed (torchrun helpers), scoresde.data (datasets and toys).
"""
from scoresde.models import CountingModel, Preconditioned, ScoreModel
from scoresde.models.loader import load_model
from scoresde.sampling import sample
from scoresde.sde import (
    EDMSDE,
    SDE,
    SDES,
    VESDE,
    VPSDE,
    CosineVPSDE,
    FlowSDE,
    ProbabilityFlowODE,
    ReverseSDE,
    SubVPSDE,
    get_sde,
)
from scoresde.solvers import (
    GRIDS,
    SOLVERS,
    BrownianNoise,
    GeneratorNoise,
    PerSampleNoise,
    Solver,
    StepInfo,
    TimeGrid,
    get_solver,
    make_grid,
)
from scoresde.testbeds import GaussianMixture, get_testbed
from scoresde.utils import append_dims

__version__ = "0.1.0"

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "CosineVPSDE", "FlowSDE", "SDES", "get_sde", "ReverseSDE",
           "ProbabilityFlowODE", "ScoreModel", "CountingModel", "Preconditioned", "load_model", "GaussianMixture",
           "get_testbed", "SOLVERS", "GRIDS", "Solver", "StepInfo", "TimeGrid", "get_solver", "make_grid",
           "GeneratorNoise", "PerSampleNoise", "BrownianNoise", "sample", "append_dims", "__version__"]
