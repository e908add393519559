"""The accelerate process state, created the same way everywhere in align.

``accelerate launch --multi_gpu --num_processes N`` on a machine without any accelerator starts N
processes, but accelerate picks its CPU (gloo) backend only when told to use the CPU: a plain
``PartialState()``, and every Trainer (whose TrainingArguments rebuild the state), treats each process as
a lone one, so every process does all the work and they race on the run directory.
``ACCELERATE_USE_CPU`` is the switch both accelerate and transformers read, so it is set here; whichever
state is created first fixes it for the process, so every align module asks here.
"""

from __future__ import annotations

import os


def process_state():
    """accelerate's ``PartialState``: gloo across processes on CPU, nccl on GPUs, one process when not launched."""
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def end_processes(clean: bool = True) -> None:
    """Leave the process group, if there is one: after a clean run every process first waits for the others.

    A process that exits with its gloo/nccl group still up tears it down during interpreter shutdown, while
    the group's threads may still be talking to a peer that has already gone; that can end in std::terminate
    ("terminate called without an active exception", SIGABRT) after all the work is done. Destroying the
    group explicitly, once everyone has arrived, closes its connections in order. After a failure the others
    may never arrive, so the group is destroyed without waiting.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if clean:
            dist.barrier()
    finally:
        dist.destroy_process_group()
