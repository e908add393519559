"""The small interface every generation backend implements, and data-parallel sharding over it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from align.config import SamplingSettings

Message = dict[str, str]


class Backend(Protocol):
    """Turns chat conversations into assistant replies.

    ``name`` identifies the model in sample provenance; ``tokens_generated`` lets stages report throughput.
    """

    name: str
    tokens_generated: int

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        sampling: SamplingSettings,
        seed: int,
        desc: str = "generate",
    ) -> list[str]: ...


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
    """
    from accelerate import PartialState
    from accelerate.utils import gather_object

    state = PartialState()
    if state.num_processes == 1:
        return backend.generate(conversations, sampling, seed, desc)
    n, k = len(conversations), state.num_processes
    bounds = [round(i * n / k) for i in range(k + 1)]
    lo, hi = bounds[state.process_index], bounds[state.process_index + 1]
    local = backend.generate(conversations[lo:hi], sampling, seed + state.process_index, desc)
    gathered = gather_object([local])
    return [reply for shard in gathered for reply in shard]
