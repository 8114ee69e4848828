"""Forward SDEs (math only) and the reverse dynamics derived from them."""
from __future__ import annotations

from scoresde.errors import UnknownNameError
from scoresde.sde.base import SDE
from scoresde.sde.edm import EDMSDE
from scoresde.sde.flow import FlowSDE, InterpolantReverseSDE
from scoresde.sde.reverse import ProbabilityFlowODE, ReverseSDE
from scoresde.sde.ve import VESDE
from scoresde.sde.vp import VPSDE, CosineVPSDE, SubVPSDE

SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDMSDE, "cosine": CosineVPSDE,
                             "flow": FlowSDE}


def get_sde(name: str, **kwargs: float) -> SDE:
    """Build an SDE by name (``vp``, ``subvp``, ``ve``, ``edm``, ``cosine``, ``flow``)."""
    if name not in SDES:
        raise UnknownNameError(f"unknown SDE {name!r}; known SDEs: {', '.join(sorted(SDES))}")
    return SDES[name](**kwargs)


__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "CosineVPSDE", "FlowSDE", "InterpolantReverseSDE",
           "ReverseSDE", "ProbabilityFlowODE", "SDES", "get_sde"]
