"""Train a small MLP on the 2-D ring and compare its samples with the exact score's (the training tests' bar)."""
from __future__ import annotations

import time

import torch

import scoresde as sd
from scoresde.evaluation import sliced_wasserstein
from scoresde.models import EMA, MLP, Preconditioned
from scoresde.training import Trainer


def ring_sliced_wasserstein(sde_name: str, kind: str, loss, steps: int, seed: int, n: int = 2000
                            ) -> tuple[dict[str, float], dict[str, int], float]:
    """``(SW, NFE, training seconds)``: an MLP in ``Preconditioned(kind)`` trained with ``loss`` under ``sde_name``
    for ``steps`` steps on 20000 ring samples, then the trained net and the exact score ("net", "exact") sampled with
    Heun (18 Karras steps) from the same x_T; SW is the sliced Wasserstein distance to ``n`` fresh ring samples."""
    tb, sde = sd.get_testbed("ring"), sd.get_sde(sde_name)
    torch.manual_seed(seed)
    data = tb.sample(20000, torch.Generator().manual_seed(seed)).float()
    model = Preconditioned(MLP(2, hidden=128, depth=2), kind=kind)
    tr = Trainer(model, sde, loss, data, batch_size=256, lr=2e-3, warmup_steps=50, total_steps=steps,
                 ema=EMA(model, decay=0.995), seed=seed, progress=False, log_every=0)
    start = time.perf_counter()
    tr.train()
    seconds = time.perf_counter() - start
    tr.ema.copy_to(tr.ema_model)
    x_T = sde.prior_sample((n, 2), torch.Generator().manual_seed(100 + seed))
    ref = tb.sample(n, torch.Generator().manual_seed(999 + seed)).float()
    sw, nfe = {}, {}
    for name, score_model in (("net", tr.ema_model.score_model(sde)), ("exact", tb.model(sde))):
        with torch.no_grad():
            x = sd.sample(score_model, "heun", 18, grid="karras", x_T=x_T.clone())
        nfe[name] = score_model.nfe
        sw[name] = sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))
    return sw, nfe, seconds
