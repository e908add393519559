"""The accelerate process state, created the same way everywhere in align.

``PartialState()`` only sees a multi-process launch on CPU when it is created with ``cpu=True``
(``ACCELERATE_USE_CPU`` is read by ``AcceleratorState``, not by ``PartialState``). Without that, each of
``accelerate launch --num_processes 2`` processes on a CPU-only machine believes it is the only one: they
all generate everything and all write as the main process. Whichever is created first fixes the state
for the process, so every align module asks here.
"""

from __future__ import annotations

import os


def process_state():
    """accelerate's ``PartialState``: gloo across processes on CPU, nccl on GPUs, one process when not launched."""
    import torch
    from accelerate import PartialState

    flag = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=flag or not torch.cuda.is_available())
