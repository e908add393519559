"""Crash-safe, process-count-independent generation: fixed shards, each written atomically once.

A generating stage (critique-and-revise, AI labelling, evaluation) splits its items into shards of a fixed
``shard_size``. Each shard is produced by one process, as a whole, with its own seed
(:func:`shard_seed`), and written atomically to ``<dir>/NNNNN.jsonl``. So:

* a killed run loses at most the shards in flight: on restart, finished shards are read back and only the
  missing ones are generated, and no item is generated (or written) twice;
* a shard's content depends on its items and seed only, never on which process made it, how many processes
  there are or whether the run was interrupted. A resumed or a 2-process run equals an uninterrupted
  single-process one, for sampled generation too (given the same shard size).

Each file starts with a header line naming the shard's index, item count and a hash of its items; a file
that does not match what the shard should hold (another prompt set, a truncated copy) is regenerated,
with a warning. The stage's final file is the concatenation of the shards in order.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from align.data import write_jsonl_atomic
from align.faults import fault_point, stage_of

T = TypeVar("T")
Records = list[dict[str, Any]]
# (the shard's items, the shard's index) -> (its records, numeric counts to sum over shards)
ShardFn = Callable[[list[T], int], tuple[Records, dict[str, float]]]


def shard_seed(seed: int, index: int) -> int:
    """The seed of shard ``index``: distinct per shard, and the same whoever generates it and when."""
    digest = hashlib.sha256(f"{seed}\x1fshard\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def local_generate(backend: Any, conversations: Sequence, sampling: Any, seed: int, desc: str = "generate") -> list:
    """Generate in this process only: a shard is made by one process, so it must not be split again."""
    return backend.generate(conversations, sampling, seed, desc)


@dataclass
class ShardRun:
    """What :func:`run_sharded` returns: every record in item order, plus what was reused."""

    records: Records
    counts: dict[str, float] = field(default_factory=dict)
    counts_resumed: dict[str, float] = field(default_factory=dict)  # the part of counts from shards already done
    shards: int = 0
    shards_reused: int = 0
    shards_generated: int = 0


def _items_hash(items: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(list(items), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read_shard(path: Path, index: int, items: Sequence[Any]) -> tuple[Records, dict[str, float]] | None:
    """The records of a finished shard file, or None (with a warning) if it is not the expected shard."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0])
        records = [json.loads(line) for line in lines[1:] if line.strip()]
    except (OSError, IndexError, json.JSONDecodeError) as err:
        warnings.warn(f"{path}: unreadable shard ({err}); generating it again", stacklevel=3)
        return None
    expected = {"shard": index, "items": len(items), "items_hash": _items_hash(items)}
    if {k: header.get(k) for k in expected} != expected or header.get("records") != len(records):
        warnings.warn(f"{path}: shard does not match its items (another run?); generating it again", stacklevel=3)
        return None
    return records, header.get("counts", {})


def run_sharded(
    items: Sequence[T],
    directory: str | os.PathLike,
    process: ShardFn,
    shard_size: int,
    *,
    desc: str = "shards",
) -> ShardRun:
    """Produce records for ``items`` shard by shard into ``directory``, resuming from finished shards.

    ``process(shard_items, index)`` must be deterministic given its arguments (use :func:`shard_seed`)
    and must not communicate with other processes (use :func:`local_generate`). Under accelerate, missing
    shards are dealt round-robin to the processes; every process returns the full, ordered result.
    """
    from accelerate import PartialState

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    state = PartialState()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    n_shards = math.ceil(len(items) / shard_size)
    bounds = [(i * shard_size, min((i + 1) * shard_size, len(items))) for i in range(n_shards)]
    paths = [directory / f"{i:05d}.jsonl" for i in range(n_shards)]

    # Every process decides from the same files, before any process writes a new one.
    done = {}
    if state.is_main_process:
        for i, (lo, hi) in enumerate(bounds):
            if paths[i].exists() and (found := _read_shard(paths[i], i, items[lo:hi])) is not None:
                done[i] = found
    missing = [i for i in range(n_shards) if i not in done]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [missing]
        broadcast_object_list(box, from_process=0)
        missing = box[0]
    if n_shards > len(missing):  # a resumed attempt: say how much of it an earlier one finished
        print(f"[align] {desc}: {n_shards - len(missing)} of {n_shards} shards already done", flush=True)
    stage = stage_of(directory)
    from align.generation.base import generation_meter

    with generation_meter(desc):  # one bar or summary line for every generation of the missing shards
        for i in missing[state.process_index :: state.num_processes]:
            lo, hi = bounds[i]
            records, counts = process(list(items[lo:hi]), i)
            header = {
                "shard": i,
                "items": hi - lo,
                "items_hash": _items_hash(items[lo:hi]),
                "records": len(records),
                "counts": counts,
            }
            write_jsonl_atomic(paths[i], [header, *records])
            fault_point(stage)
    state.wait_for_everyone()

    result = ShardRun([], shards=n_shards, shards_reused=n_shards - len(missing), shards_generated=len(missing))
    for i, (lo, hi) in enumerate(bounds):
        found = _read_shard(paths[i], i, items[lo:hi])
        if found is None:
            raise RuntimeError(f"{paths[i]}: shard missing or invalid after generation")
        records, counts = found
        result.records.extend(records)
        for key, value in counts.items():
            result.counts[key] = result.counts.get(key, 0) + value
            if i not in missing:
                result.counts_resumed[key] = result.counts_resumed.get(key, 0) + value
    return result
