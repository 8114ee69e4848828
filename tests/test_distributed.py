"""Several processes on the CPU (gloo): DDP training agrees across ranks and with one process, resumes exactly;
sharded sampling under torchrun equals one process bitwise, adaptive solvers included; a crashed or hung rank
makes the others fail with a clear error, leaving the last checkpoint intact."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from hydra import compose, initialize_config_dir

import scoresde as sd
from scoresde.cli.common import CONFIG_DIR
from scoresde.cli.sample import sample_checkpoint
from scoresde.cli.train import train
from scoresde.data import make_toy
from scoresde.distributed import (
    DistContext,
    RankFailure,
    init_distributed,
    rank_batches,
    resolve_device,
    run_sharded,
    seed_batches,
    shutdown,
)
from scoresde.models import EMA, MLP, Preconditioned
from scoresde.training import DSMLoss, Trainer, latest_checkpoint, load_checkpoint
from scoresde.training.batches import BatchSource

WORLD = 2


class FixedTimeLoss:
    """A loss without noise (the denoising error at t = 0.5): one process and N ranks see the same gradients."""

    def __call__(self, model, x0, generator=None):
        return ((model(x0, torch.full((len(x0),), 0.5)) - x0) ** 2).flatten(1).sum(1)


class CrashingLoss(DSMLoss):
    """DSM whose process exits (``exit``) or hangs (``hang``) on its ``at``-th call, on rank 1 only."""

    def __init__(self, rank: int, at: int, mode: str):
        super().__init__()
        self.rank, self.at, self.mode, self.calls = rank, at, mode, 0

    def __call__(self, model, x0, generator=None, **kw):
        self.calls += 1
        if self.rank == 1 and self.calls == self.at:
            if self.mode == "exit":
                os._exit(3)
            time.sleep(120)
        return super().__call__(model, x0, generator=generator, **kw)


def launch(target, *args, timeout: float = 120, grace: float = 60, method: str = "fork") -> list:
    """Run ``target(rank, port, *args)`` in WORLD forked processes (they inherit the imports, DDP's included:
    a spawned process would spend many seconds importing torch again); returns the processes, joined or
    killed after ``timeout`` (the caller checks what each did). ``method="spawn"`` starts fresh interpreters
    instead (slower; for a worker whose teardown could trip over state inherited through fork)."""
    import torch._dynamo  # noqa: F401  (DistributedDataParallel imports it; do it once, before forking)

    port, context = free_port(), mp.get_context(method)
    procs = [context.Process(target=target, args=(r, port, *args)) for r in range(WORLD)]
    for p in procs:
        p.start()
    procs[0].join(timeout=timeout)
    for p in procs:
        p.join(timeout=max(1.0, timeout - 1) if p is procs[0] else grace)  # the others end soon after rank 0
    return procs


def finish(procs: list) -> list[bool]:
    """Kill what still runs (a hung rank); returns which processes were still alive."""
    alive = [p.is_alive() for p in procs]
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    return alive


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_env(rank: int, port: int) -> None:
    """The environment torchrun gives rank ``rank`` (https://pytorch.org/docs/stable/elastic/run.html)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)


def join_group(rank: int, port: int, timeout_s: float = 60) -> DistContext:
    torchrun_env(rank, port)
    return init_distributed("cpu", timeout_s=timeout_s)


def make_trainer(ctx: DistContext | None, loss=None, ckpt_dir: Path | None = None, init_seed: int = 0,
                 **kw) -> Trainer:
    torch.manual_seed(init_seed)
    model = Preconditioned(MLP(2, hidden=32, depth=2), kind="eps")
    opts = dict(batch_size=64, lr=3e-3, warmup_steps=2, grad_clip=0.5, total_steps=8, log_every=2, seed=3,
                ema=EMA(model, decay=0.9), progress=False, ckpt_dir=ckpt_dir, distributed=ctx)
    opts.update(kw)
    return Trainer(model, sd.get_sde("vp"), loss or DSMLoss(), make_toy("ring", 512, torch.Generator().manual_seed(0)),
                   **opts)


def weights(tr: Trainer) -> dict[str, torch.Tensor]:
    return {**{f"model.{k}": v.clone() for k, v in tr.model.state_dict().items()},
            **{f"ema.{k}": v.clone() for k, v in tr.ema.shadow.items()}}


def _training_worker(rank: int, port: int, out: str) -> None:
    ctx = join_group(rank, port)
    try:
        out_dir = Path(out)
        fixed = make_trainer(ctx, FixedTimeLoss())
        fixed.train()
        straight = make_trainer(ctx)
        straight.train()
        first = make_trainer(ctx, ckpt_dir=out_dir / "ckpt")
        first.train(num_steps=5)  # 64-sample global batches of 512 points: an epoch boundary at step 8
        resumed = make_trainer(ctx, ckpt_dir=out_dir / "ckpt", init_seed=1)
        assert resumed.resume() is not None and resumed.step == 5
        resumed.train()
        torch.save({"fixed": weights(fixed), "straight": weights(straight), "resumed": weights(resumed),
                    "loss_state": straight.loss_gen.get_state(), "last_loss": straight.last_loss},
                   out_dir / f"rank{rank}.pt")
    finally:
        shutdown(ctx)


def test_ddp_training_agrees_across_ranks_with_one_process_and_resumes_exactly(tmp_path):
    procs = launch(_training_worker, str(tmp_path), method="spawn")  # a forked rank once hung in teardown in CI
    assert finish(procs) == [False] * WORLD and [p.exitcode for p in procs] == [0] * WORLD
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    for run in ("fixed", "straight", "resumed"):  # DDP keeps every rank's weights identical, bitwise
        assert all(torch.equal(r0[run][k], r1[run][k]) for k in r0[run]), run
    for k in r0["straight"]:  # the SIGKILL-free resume of a 2-rank run is exact
        assert torch.equal(r0["straight"][k], r0["resumed"][k]), k
    assert not torch.equal(r0["loss_state"], r1["loss_state"])  # each rank has its own noise stream
    assert r0["last_loss"] == r1["last_loss"]  # the logged loss is the mean over ranks
    single = make_trainer(None, FixedTimeLoss())  # one process, the same global batch of 64
    single.train()
    for k, v in weights(single).items():
        torch.testing.assert_close(r0["fixed"][k], v, rtol=1e-5, atol=1e-6)
    state = load_checkpoint(latest_checkpoint(tmp_path / "ckpt"))
    assert state["step"] == 8 and state["dist"]["world_size"] == WORLD and len(state["dist"]["rng"]) == WORLD


def _crash_worker(rank: int, port: int, out: str, mode: str) -> None:
    ctx = join_group(rank, port, timeout_s=4)
    tr = make_trainer(ctx, CrashingLoss(rank, at=6, mode=mode), ckpt_dir=Path(out) / "ckpt", ckpt_every=2)
    tick = time.perf_counter()
    try:
        tr.train()
    except RankFailure as e:
        Path(out, f"error{rank}.txt").write_text(f"{time.perf_counter() - tick:.1f}\n{e}")


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_a_crashed_or_hung_rank_makes_the_others_fail_clearly_and_the_checkpoint_survives(tmp_path, mode):
    procs = launch(_crash_worker, str(tmp_path), mode, timeout=60, grace=5)  # a hung rank stays hung: no long wait
    assert not finish(procs)[0], "rank 0 hung instead of failing"  # (a hung rank 1 is killed by finish)
    assert procs[0].exitcode == 0 and (tmp_path / "error0.txt").is_file()
    seconds, message = (tmp_path / "error0.txt").read_text().split("\n", 1)
    assert "rank 0/2" in message and "another rank probably crashed or hung" in message, message
    assert float(seconds) < 60
    path = latest_checkpoint(tmp_path / "ckpt")  # steps 2 and 4 were saved; step 6 never finished
    assert path.name == "ckpt_00000004.pt" and load_checkpoint(path)["step"] == 4


# ---- sharding without processes ---------------------------------------------------------------------------
def test_rank_batches_partition_the_seed_batches():
    batches = seed_batches(range(10, 17), 2)
    assert batches == [[10, 11], [12, 13], [14, 15], [16]]
    mine = [rank_batches(range(10, 17), 2, r, 3) for r in range(3)]
    assert [i for i, _ in mine[0]] == [0, 3] and [i for i, _ in mine[1]] == [1] and [i for i, _ in mine[2]] == [2]
    assert sorted(i for part in mine for i, _ in part) == [0, 1, 2, 3]
    assert run_sharded(lambda s: sum(s), range(10, 17), 2, DistContext()) == [21, 25, 29, 16]
    for bad, match in ((lambda: seed_batches([1], 0), "batch_size"), (lambda: rank_batches([1], 1, 2, 2), "rank"),
                       (lambda: resolve_device("tpu"), "device must be one of")):
        with pytest.raises(ValueError, match=match):
            bad()


def test_ranks_slices_of_the_global_batch_equal_one_processs_batch_flips_included():
    images = torch.arange(40 * 24.0).reshape(40, 1, 4, 6)
    labels = torch.arange(40) % 3

    def source(rank: int, world: int) -> BatchSource:
        return BatchSource(images, labels, batch_size=8, num_classes=3, device=torch.device("cpu"),
                           generator=torch.Generator().manual_seed(5), rank=rank, world_size=world, hflip=True)

    one, ranks = source(0, 1), [source(r, 2) for r in range(2)]
    flipped = 0
    for _ in range(12):  # over two epochs
        x, y = one.next()
        parts = [s.next() for s in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
        flipped += int((x[:, 0, 0, 0] > x[:, 0, 0, -1]).sum())  # each image increases along W unless flipped
    assert one.state_dict()["epoch"] == ranks[1].state_dict()["epoch"] == 3
    assert 0.3 < flipped / (12 * 8) < 0.7
    with pytest.raises(ValueError, match="divisible by the 3 ranks"):
        BatchSource(images, None, batch_size=8, num_classes=None, device=torch.device("cpu"),
                    generator=torch.Generator(), rank=0, world_size=3)
    with pytest.raises(ValueError, match="hflip needs images"):
        BatchSource(torch.randn(40, 2), None, batch_size=8, num_classes=None, device=torch.device("cpu"),
                    generator=torch.Generator(), hflip=True)


# ---- the apps under torchrun ------------------------------------------------------------------------------
def compose_cfg(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name=name, overrides=overrides)


TRAIN = ["progress=false", "batch_size=64", "model.net.hidden=32", "data.n=512", "ckpt_every=2", "log_every=2",
         "sample.every=0", "device=cpu"]


def _train_app_worker(rank: int, port: int, run: str) -> None:
    torchrun_env(rank, port)  # train() joins the process group from it
    out = train(compose_cfg("train", TRAIN + [f"out_dir={run}", "steps=6", "resume=true"]))
    assert out["world_size"] == WORLD and out["step"] == 6


def test_train_app_under_torchrun_env_resumes_a_single_process_run_and_only_rank_0_writes(tmp_path, capfd):
    run = tmp_path / "run"
    train(compose_cfg("train", TRAIN + [f"out_dir={run}", "steps=4"]))
    # spawn: forked after this process trained in-process (tensorboard writer, thread pools), a rank now and then
    # hung in its teardown; fresh interpreters do not
    procs = launch(_train_app_worker, str(run), method="spawn")
    assert finish(procs) == [False] * WORLD and [p.exitcode for p in procs] == [0] * WORLD
    printed = capfd.readouterr().out
    assert printed.count("resumed from") == 1 and "ckpt_00000004.pt" in printed  # printed by rank 0 only
    state = load_checkpoint(run / "checkpoints" / "ckpt_00000006.pt")
    assert state["step"] == 6 and state["dist"]["world_size"] == WORLD
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 2  # the first run's and rank 0's


def _sample_app_worker(rank: int, port: int, overrides: list[str]) -> None:
    torchrun_env(rank, port)  # sample_checkpoint() joins the process group from it
    out = sample_checkpoint(compose_cfg("sample", overrides))
    assert out["world_size"] == WORLD and ("samples" in out) == (rank == 0)


def test_sample_app_under_torchrun_env_equals_one_process_bitwise_with_an_adaptive_solver(tmp_path):
    run = tmp_path / "run"
    train(compose_cfg("train", TRAIN + [f"out_dir={run}", "steps=4"]))
    args = [f"ckpt={run}", "solver=ode", "+options.rtol=1e-4", "+options.atol=1e-4", "n=7", "batch_size=2",
            "seed=11", "progress=false", "device=cpu"]
    one = sample_checkpoint(compose_cfg("sample", args + [f"out_dir={tmp_path / 'one'}"]))
    procs = launch(_sample_app_worker, args + [f"out_dir={tmp_path / 'two'}"])
    assert finish(procs) == [False] * WORLD and [p.exitcode for p in procs] == [0] * WORLD
    two = np.load(tmp_path / "two" / "samples.npz")
    assert int(two["world_size"]) == WORLD and two["samples"].shape == (7, 2)
    assert np.array_equal(two["samples"], one["samples"].numpy())  # bitwise
    nfe = list(two["nfe_per_batch"])
    assert nfe == one["nfe_per_batch"]
    assert nfe[0::2] != nfe[1::2], nfe  # rank 0 (batches 0, 2) and rank 1 (1, 3) took different step counts



def _killed_sample_worker(rank: int, port: int, overrides: list[str], out: str) -> None:
    """The sample console app on a torchrun rank; rank 1 is SIGKILLed while it draws its second batch."""
    import contextlib
    import io
    import signal
    import sys

    import scoresde
    torchrun_env(rank, port)
    real, calls = scoresde.sample, [0]

    def dying(*args, **kwargs):
        calls[0] += 1
        if rank == 1 and calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    scoresde.sample = dying  # the app calls scoresde.sample(...)
    from scoresde.cli.sample import main
    sys.argv = ["scoresde-sample", *overrides]
    err, tick, code = io.StringIO(), time.perf_counter(), 0
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as e:
            code = e.code
    Path(out, f"rank{rank}.txt").write_text(f"{code}\n{time.perf_counter() - tick:.1f}\n{err.getvalue()}")


def test_sharded_sampling_with_a_killed_rank_exits_in_one_line_within_seconds(tmp_path):
    """The survivor does not wait out dist_timeout_s: gloo reports the closed connection at the gather, and the app
    prints the RankFailure as one line with exit status 1 (as training does)."""
    run = tmp_path / "run"
    train(compose_cfg("train", TRAIN + [f"out_dir={run}", "steps=2"]))
    args = [f"ckpt={run}", "n=6", "batch_size=1", "steps=10", "seed=0", "progress=false", "device=cpu",
            "dist_timeout_s=300", f"out_dir={tmp_path / 'out'}"]
    procs = launch(_killed_sample_worker, args, str(tmp_path), timeout=90, grace=5)
    assert finish(procs) == [False] * WORLD, "a rank hung"
    assert procs[1].exitcode == -9 and not (tmp_path / "rank1.txt").exists()  # killed
    code, seconds, err = (tmp_path / "rank0.txt").read_text().split("\n", 2)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert int(code) == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("scoresde-sample: rank 0/2: gathering sharded results failed"), lines[0]
    assert "another rank probably crashed" in lines[0]
    assert float(seconds) < 60  # far below the 300 s timeout
    assert not (tmp_path / "out" / "samples.npz").exists()

BENCH = ["testbed=ring", "solver=[heun,ancestral]", "budgets=[4]", "n_samples=9", "batch_size=2", "peers=[]",
         "kdiffusion=[]", "metrics=[rmse,sw]", "n_data=64", "progress=false", "device=cpu",
         "reference.rtol=1e-4", "reference.atol=1e-4"]


def _bench_worker(rank: int, port: int, out: str) -> None:
    from scoresde.cli.bench import bench
    torchrun_env(rank, port)  # bench() joins the process group from it
    result = bench(compose_cfg("bench", BENCH + [f"out_dir={out}"]))
    assert result["machine"]["world_size"] == WORLD and ("figures" in result) == (rank == 0)  # rank 0 writes


def test_bench_under_torchrun_env_shards_runs_and_equals_one_process(tmp_path):
    import json

    from scoresde.cli.bench import bench
    one = bench(compose_cfg("bench", BENCH + [f"out_dir={tmp_path / 'one'}"]))
    procs = launch(_bench_worker, str(tmp_path / "two"))
    assert finish(procs) == [False] * WORLD and [p.exitcode for p in procs] == [0] * WORLD
    two = json.loads((tmp_path / "two" / "bench.json").read_text())
    rows = lambda res: {(r["label"], r["steps"]): r for r in res["results"][0]["rows"]}  # noqa: E731
    ones, twos = rows(one), rows(two)
    assert ones.keys() == twos.keys()
    for key, row in ones.items():  # identical samples → identical metrics (stochastic ancestral included)
        assert twos[key]["nfe"] == row["nfe"] and twos[key]["sw"] == pytest.approx(row["sw"], rel=1e-6), key
