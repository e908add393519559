"""The small interface every generation backend implements, throughput bookkeeping, and data-parallel sharding."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from tqdm.auto import tqdm

from align.config import SamplingSettings

Message = dict[str, str]


class Backend(Protocol):
    """Turns chat conversations into assistant replies.

    ``name`` identifies the model in sample provenance. The counters (generated tokens, finished
    conversations, seconds spent generating) let every stage report throughput in its manifest; under
    data parallelism ``generate_sharded`` makes them totals over all processes.
    """

    name: str
    tokens_generated: int
    samples_generated: int
    seconds: float

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        sampling: SamplingSettings,
        seed: int,
        desc: str = "generate",
    ) -> list[str]: ...


def is_main_local_process() -> bool:
    """True outside distributed launches and on local rank 0: only that process draws progress bars."""
    return int(os.environ.get("LOCAL_RANK", "0")) == 0


class Progress:
    """Progress of one batch of generation: samples/s and, the number that compares backends, tokens/s.

    Inside a :func:`generation_meter` (a stage's sharded generation) it reports to the meter, so a stage makes
    one bar or line however many generate calls it takes. On its own it is its own meter. A meter on a
    terminal is a tqdm bar that stays with its final samples/s and tokens/s; elsewhere (a log, a pipe) it is
    one summary line when it ends. Only the local main process draws, so bars do not interleave.
    """

    def __init__(self, total: int, desc: str) -> None:
        self.start = time.perf_counter()
        self.tokens = 0
        self.meter = _meters[-1] if _meters else _Meter(desc, total)

    def update(self, samples: int, tokens: int) -> None:
        self.tokens += tokens
        self.meter.update(samples, tokens)

    def close(self) -> float:
        """Close the bar (unless a stage's meter owns it) and return the seconds since it was opened."""
        if not _meters or self.meter is not _meters[-1]:
            self.meter.close()
        return time.perf_counter() - self.start


class _Meter:
    def __init__(self, desc: str, total: int | None = None) -> None:
        self.desc, self.samples, self.tokens = desc, 0, 0
        self.start = time.perf_counter()
        show = is_main_local_process()
        self.bar = None
        if show and sys.stderr.isatty():
            self.bar = tqdm(total=total, desc=desc, unit="sample", leave=True, dynamic_ncols=True)
        self.line = show and self.bar is None

    def update(self, samples: int, tokens: int) -> None:
        self.samples += samples
        self.tokens += tokens
        if self.bar is not None:
            self.bar.update(samples)
            self.bar.set_postfix(tok_s=f"{self.tokens / max(time.perf_counter() - self.start, 1e-9):.0f}")

    def close(self) -> None:
        seconds = max(time.perf_counter() - self.start, 1e-9)
        if self.bar is not None:
            self.bar.close()
        elif self.line and self.samples:
            print(
                f"[align] {self.desc}: generated {self.samples} samples in {seconds:.1f}s "
                f"({self.samples / seconds:.1f} samples/s, {self.tokens / seconds:.0f} tokens/s)",
                flush=True,
            )


_meters: list[_Meter] = []


@contextlib.contextmanager
def generation_meter(desc: str, total: int | None = None) -> Iterator[None]:
    """All generation inside (any number of generate calls) shown as one bar or one summary line."""
    meter = _Meter(desc, total)
    _meters.append(meter)
    try:
        yield
    finally:
        _meters.remove(meter)
        meter.close()


def generation_metrics(backends: Iterable[Backend]) -> dict[str, Any]:
    """Totals over distinct backends for a stage manifest: tokens, conversations, seconds and tokens/s."""
    seen: dict[int, Backend] = {id(b): b for b in backends}
    tokens = sum(b.tokens_generated for b in seen.values())
    samples = sum(b.samples_generated for b in seen.values())
    seconds = sum(b.seconds for b in seen.values())
    return {
        "tokens_generated": tokens,
        "samples_generated": samples,
        "generation_seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 1) if seconds > 0 else 0.0,
        "samples_per_second": round(samples / seconds, 2) if seconds > 0 else 0.0,
    }


def shard_bounds(n: int, num_processes: int) -> list[int]:
    """Start offsets of ``num_processes`` contiguous, near-equal slices of ``n`` items (plus ``n`` at the end)."""
    return [round(i * n / num_processes) for i in range(num_processes + 1)]


def generate_sharded(
    backend: Backend,
    conversations: Sequence[Sequence[Message]],
    sampling: SamplingSettings,
    seed: int,
    desc: str = "generate",
) -> list[str]:
    """Split the conversations over the accelerate processes and return every reply, in order, everywhere.

    With one process this is ``backend.generate``. Each process takes a contiguous slice, so the gathered
    list concatenates back into the original order; each slice gets its own seed so sampled shards differ.
    Greedy decoding gives exactly the one-process replies. The backend's counters become totals over all
    processes (seconds = the slowest process's wall time), so any process can report the stage's throughput.
    """
    from accelerate.utils import gather_object

    from align.distributed import process_state

    state = process_state()
    if state.num_processes == 1:
        return backend.generate(conversations, sampling, seed, desc)
    bounds = shard_bounds(len(conversations), state.num_processes)
    lo, hi = bounds[state.process_index], bounds[state.process_index + 1]
    before = (backend.tokens_generated, backend.samples_generated, backend.seconds)
    start = time.perf_counter()
    local = backend.generate(conversations[lo:hi], sampling, seed + state.process_index, desc)
    stats = (backend.tokens_generated - before[0], backend.samples_generated - before[1])
    gathered = gather_object([(local, stats, time.perf_counter() - start)])
    replies = [reply for shard, _, _ in gathered for reply in shard]
    if len(replies) != len(conversations):
        raise RuntimeError(f"data-parallel generation returned {len(replies)} replies for {len(conversations)}")
    backend.tokens_generated = before[0] + sum(s[0] for _, s, _ in gathered)
    backend.samples_generated = before[1] + sum(s[1] for _, s, _ in gathered)
    backend.seconds = before[2] + max(t for _, _, t in gathered)
    return replies
