"""Timing that holds still: interleaved, repeated, paired measurement behind every speed figure.

One helper for every wall-clock number the project quotes (``benchmarks/solver_overhead.py``,
``benchmarks/train_throughput.py``, the per-run timer of ``scoresde-bench``):

* :func:`pin_conditions` fixes what moves the numbers — the torch thread count and
  ``torch.set_flush_denormal(True)`` where the CPU supports it — and records them with the machine's load average;
* :func:`compare` runs the implementations *interleaved*: after ``warmup`` untimed rounds, each of ``repeats``
  rounds runs every implementation once (rotating the order by one each round, so no implementation always runs
  first or right after the same neighbour), on the same input objects, allocated by the caller outside the timed
  region. On CUDA each call is timed with CUDA events after a ``torch.cuda.synchronize()``; on CPU with
  ``time.perf_counter``;
* a :class:`Comparison` reports the median and the interquartile range (IQR) of each implementation and of each
  *paired* ratio — the ratio of the two implementations' times in the same round, not the ratio of their medians —
  and :meth:`Ratio.verdict` calls a ratio "not resolved" when its IQR straddles 1 (or the target it is held
  against) instead of answering yes or no;
* :func:`pool` joins the rounds of several comparisons of the same implementations made in separate, fresh
  processes. A process fixes things no round inside it can vary — where the allocator places the tensors, which
  pages are already mapped, how the code is laid out — and those move a CPU timing by several percent from one
  invocation to the next while rounds inside one process agree to a fraction of that. Quantiles of the pooled
  rounds (pairs stay within their round) include that process-to-process spread, so separate invocations of a
  script that pools three processes agree where single-process runs report narrow, disjoint IQRs;
* :meth:`Comparison.too_noisy` names every figure whose IQR/median is above a stated threshold
  (:data:`MAX_SPREAD`); the scripts print their table anyway but refuse to write it into README/RESULTS.

A single timed call (a sweep run) uses :class:`Stopwatch`, which synchronises the same way.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

MAX_SPREAD = 0.10
"""Default refusal threshold: a table is not written when any figure's IQR/median exceeds 10 %."""

Clock = Callable[[], float]


def sync(device: torch.device | str | None) -> None:
    """Wait for queued CUDA work on ``device`` (no-op on CPU), so a wall-clock time covers it."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def load_average() -> tuple[float, float, float] | None:
    """The 1, 5 and 15-minute load averages (``os.getloadavg``), or None where the OS has none."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except (OSError, AttributeError):
        return None


@dataclass
class Conditions:
    """What a measurement ran under: threads, denormal flushing, device, cores and the load around it."""

    threads: int
    flush_denormal: bool | None  # None: not pinned by this measurement
    device: str
    cores: int | None = field(default_factory=os.cpu_count)
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None

    @property
    def loaded(self) -> bool:
        """True when the 1-minute load before or after the run was above half the cores: other jobs were
        competing for them (the benchmark itself adds up to its thread count to the 'after' figure)."""
        limit = 0.5 * (self.cores or 1)
        before = self.load_before is not None and self.load_before[0] > limit
        after = self.load_after is not None and self.load_after[0] > limit + self.threads
        return before or after

    def describe(self) -> str:
        """One line for the output: threads, flush-denormal, and the load average before and after."""
        fmt = lambda load: "n/a" if load is None else "/".join(f"{v:.2f}" for v in load)  # noqa: E731
        flush = {True: "on", False: "not supported on this CPU", None: "not pinned"}[self.flush_denormal]
        verdict = "LOADED (other jobs competed for the cores)" if self.loaded else "quiet"
        return (f"{self.threads} torch threads on {self.cores} cores, flush-denormal {flush}, device {self.device}; "
                f"load average (1/5/15 min) before {fmt(self.load_before)}, after {fmt(self.load_after)}: {verdict}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the ``loaded`` flag."""
        return {**asdict(self), "loaded": self.loaded}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Conditions:
        """The inverse of :meth:`to_dict` (``loaded`` is derived, so it is dropped)."""
        return cls(**{k: tuple(v) if k.startswith("load_") and v is not None else v
                      for k, v in fields.items() if k != "loaded"})


def pin_conditions(threads: int | None = None, device: torch.device | str = "cpu",
                   flush_denormal: bool = True) -> Conditions:
    """Set the torch thread count (``None``: keep the current one, but record it) and, with ``flush_denormal``,
    ``torch.set_flush_denormal(True)`` (False in the result where the CPU does not support it, None when not
    asked for). Records the load
    average now; :func:`compare` fills in the load after."""
    if threads is not None:
        torch.set_num_threads(int(threads))
    flushed = bool(torch.set_flush_denormal(True)) if flush_denormal else None
    return Conditions(torch.get_num_threads(), flushed, str(device), load_before=load_average())


class Stopwatch:
    """Seconds of one timed region, synchronised on CUDA: ``with Stopwatch(device) as sw: ...; sw.seconds``.

    On CUDA the region is bracketed by ``torch.cuda.synchronize()`` and timed with CUDA events (the GPU's own
    clock for the queued work); on CPU with ``time.perf_counter`` (or an injected ``clock``, for tests)."""

    def __init__(self, device: torch.device | str | None = None, clock: Clock = time.perf_counter):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.clock, self.seconds = clock, float("nan")
        self._cuda = self.device.type == "cuda"

    def __enter__(self) -> Stopwatch:
        sync(self.device)
        if self._cuda:
            self._start, self._end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(self.device))
        self._t0 = self.clock()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            self._end.record(torch.cuda.current_stream(self.device))
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            self.seconds = self.clock() - self._t0


@dataclass(frozen=True)
class Summary:
    """Median and quartiles of ``n`` values (inclusive method; q25 = q75 = the value when n = 1)."""

    median: float
    q25: float
    q75: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """The summary of ``values`` (at least one)."""
        if not values:
            raise ValueError("no values to summarize")
        if len(values) == 1:
            return cls(values[0], values[0], values[0], 1)
        q25, med, q75 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(med, q25, q75, len(values))

    @property
    def spread(self) -> float:
        """IQR / median: the relative spread the refusal threshold is held against."""
        return (self.q75 - self.q25) / abs(self.median) if self.median else float("inf")

    def fmt(self, spec: str = ".3f", scale: float = 1.0) -> str:
        """``median [q25–q75]`` with every number multiplied by ``scale``."""
        return (f"{format(self.median * scale, spec)} "
                f"[{format(self.q25 * scale, spec)}–{format(self.q75 * scale, spec)}]")


@dataclass(frozen=True)
class Ratio:
    """The paired ratio ``num/den`` (one value per round) and the target it is held against."""

    num: str
    den: str
    summary: Summary
    target: float = 1.0

    @property
    def side(self) -> int:
        """-1: the whole IQR is below the target; +1: above; 0: it straddles the target (not resolved)."""
        return side(self.summary, self.target)

    @property
    def resolved(self) -> bool:
        """Whether the IQR lies on one side of the target."""
        return self.side != 0

    def verdict(self, below: str = "yes", above: str = "no") -> str:
        """``below`` or ``above`` the target, or "not resolved" when the IQR straddles it."""
        return VERDICTS[self.side].format(below=below, above=above)


VERDICTS = {-1: "{below}", 1: "{above}", 0: "not resolved"}


def side(summary: Summary, target: float) -> int:
    """-1 when the IQR of ``summary`` is wholly below ``target``, +1 wholly above, 0 when it straddles it."""
    return -1 if summary.q75 < target else (1 if summary.q25 > target else 0)


@dataclass(frozen=True)
class Agreement:
    """One figure measured by several separate runs: what they agree on.

    The runs agree on a value when their IQRs overlap (max q25 ≤ min q75): the quoted value is then the median of
    their medians with the envelope of their IQRs (lowest q25 to highest q75). They agree on a verdict against a
    target when every run resolved it the same way — even where the values themselves disagree (three loaded runs
    can differ on how much faster one implementation is and all still resolve that it is faster)."""

    summaries: tuple[Summary, ...]

    @property
    def overlap(self) -> bool:
        """Whether the IQRs of all runs have a point in common."""
        return max(s.q25 for s in self.summaries) <= min(s.q75 for s in self.summaries)

    def fmt(self, spec: str = ".3f") -> str:
        """``median [lo–hi]`` when the runs agree, else ``disagree: m1 / m2 / …`` (each run's median)."""
        if not self.overlap:
            return "disagree: " + " / ".join(format(s.median, spec) for s in self.summaries)
        med = statistics.median(s.median for s in self.summaries)
        lo, hi = min(s.q25 for s in self.summaries), max(s.q75 for s in self.summaries)
        return f"{format(med, spec)} [{format(lo, spec)}–{format(hi, spec)}]"

    def verdict(self, target: float, below: str = "yes", above: str = "no") -> str:
        """The verdict every run gives against ``target``, or "not resolved" when any run straddles it or two
        runs resolve it opposite ways."""
        sides = {side(s, target) for s in self.summaries}
        one = sides.pop() if len(sides) == 1 else 0
        return VERDICTS[one].format(below=below, above=above)


def write_between_markers(path: str | os.PathLike[str], name: str, text: str) -> None:
    """Replace what lies between ``<!-- name: begin -->`` and ``<!-- name: end -->`` in the file at ``path``
    (a README or RESULTS table) by ``text``; a file without both markers is an error, not a silent append."""
    from pathlib import Path

    begin, end = f"<!-- {name}: begin -->", f"<!-- {name}: end -->"
    doc = Path(path).read_text()
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise ValueError(f"{path} needs exactly one {begin} … {end} pair around the table to replace")
    head, rest = doc.split(begin)
    Path(path).write_text(head + begin + "\n" + text.strip("\n") + "\n" + end + rest.split(end, 1)[1])


def too_noisy(figures: Mapping[str, Summary], threshold: float = MAX_SPREAD) -> list[str]:
    """One reason per figure whose IQR/median exceeds ``threshold``: why a table must not be written."""
    return [f"{name}: IQR/median {s.spread:.1%} > {threshold:.0%}" for name, s in figures.items()
            if s.spread > threshold]


@dataclass
class Comparison:
    """Timings of interleaved implementations: ``times[name][i]`` is round i; ``order`` is every timed call."""

    times: dict[str, list[float]]
    order: list[str]
    conditions: Conditions

    def summary(self, name: str, scale: float = 1.0) -> Summary:
        """Median and IQR of one implementation's seconds (times ``scale``, e.g. 1e3/steps for ms/step)."""
        return Summary.of([t * scale for t in self.times[name]])

    def ratio(self, num: str, den: str, target: float = 1.0) -> Ratio:
        """The paired ratio ``num/den``: round i's time of ``num`` over round i's time of ``den``."""
        pairs = [a / b for a, b in zip(self.times[num], self.times[den], strict=True) if b > 0]
        return Ratio(num, den, Summary.of(pairs), target)

    def difference(self, a: str, b: str, scale: float = 1.0) -> Summary:
        """The paired difference ``a − b`` (round by round), times ``scale`` (e.g. 1e6/steps for µs/step)."""
        return Summary.of([(x - y) * scale for x, y in zip(self.times[a], self.times[b], strict=True)])

    def too_noisy(self, ratios: Sequence[Ratio] = (), threshold: float = MAX_SPREAD) -> list[str]:
        """Reasons to refuse writing a table: every implementation and ratio whose IQR/median exceeds
        ``threshold`` (empty when the run is steady enough)."""
        items = {name: self.summary(name) for name in self.times}
        items.update({f"{r.num}/{r.den}": r.summary for r in ratios})
        return too_noisy(items, threshold)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: conditions, per-implementation seconds and their summaries."""
        return {"conditions": self.conditions.to_dict(), "runs_s": self.times,
                "summary_s": {k: asdict(self.summary(k)) for k in self.times}}


def pool(comparisons: Sequence[Comparison]) -> Comparison:
    """One comparison of the rounds of ``comparisons`` (the same implementations, timed in separate processes):
    every implementation's times concatenated in order, so round i of the pooled result is round i of one
    process for every implementation and paired ratios stay paired. Conditions: the first's threads and load
    before, the last's load after."""
    if not comparisons:
        raise ValueError("nothing to pool")
    names = list(comparisons[0].times)
    if any(list(c.times) != names for c in comparisons):
        raise ValueError(f"pooled comparisons must time the same implementations, got "
                         f"{[list(c.times) for c in comparisons]}")
    first, last = comparisons[0].conditions, comparisons[-1].conditions
    conditions = Conditions(first.threads, first.flush_denormal, first.device, first.cores, first.load_before,
                            last.load_after)
    return Comparison({n: [t for c in comparisons for t in c.times[n]] for n in names},
                      [o for c in comparisons for o in c.order], conditions)


def compare(impls: Mapping[str, Callable[..., Any]], inputs: Sequence[Any] = (), *, repeats: int = 21,
            warmup: int = 2, device: torch.device | str | None = None, conditions: Conditions | None = None,
            rotate: bool = True, clock: Clock = time.perf_counter) -> Comparison:
    """Time ``impls`` interleaved: ``warmup`` untimed rounds, then ``repeats`` timed rounds, each calling every
    implementation once as ``fn(*inputs)`` — the same input objects for all, so nothing is allocated for them
    inside the timed region.

    With ``rotate`` round r starts at implementation r mod k (A B C, B C A, C A B, …); without, every round is
    A B C. Each call is timed by a :class:`Stopwatch` on ``device`` (CUDA events and synchronisation on a GPU).
    ``conditions`` (default: :func:`pin_conditions` with the current threads) gets the load average after."""
    if not impls:
        raise ValueError("nothing to time")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be ≥ 1 and warmup ≥ 0, got repeats={repeats}, warmup={warmup}")
    conditions = conditions or pin_conditions(device=device or "cpu")
    names = list(impls)
    for _ in range(warmup):
        for name in names:
            impls[name](*inputs)
    times: dict[str, list[float]] = {name: [] for name in names}
    order: list[str] = []
    for r in range(repeats):
        k = r % len(names) if rotate else 0
        for name in names[k:] + names[:k]:
            with Stopwatch(device, clock) as sw:
                impls[name](*inputs)
            times[name].append(sw.seconds)
            order.append(name)
    conditions.load_after = load_average()
    return Comparison(times, order, conditions)
