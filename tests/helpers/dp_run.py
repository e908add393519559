"""Run by tests/test_data_parallel.py under ``accelerate launch --num_processes 2``: one pipeline stage.

Every process opens the same run directory (one lock, taken by process 0 for all of them), gathers its pid
inside a stage, and the main process writes what it saw into the stage's output. The recipe's entry point
ends the run, so the process group is torn down before exit.
"""

import json
import os
import sys
from pathlib import Path

from accelerate.utils import gather_object

from align.console import entry_point
from align.pipeline import LOCK, Run


def main() -> None:
    root = Path(sys.argv[1])
    run = Run(root, force={"gather"}, order=["gather"])
    holder = json.loads((root / LOCK).read_text())
    with run.stage("gather", config={}, inputs={}) as stage:
        pids = gather_object([os.getpid()])
        if run.state.is_main_process:
            seen = {"lock_pid": holder["pid"], "pids": pids}
            (stage.work_dir / "seen.json").write_text(json.dumps(seen) + "\n")


if __name__ == "__main__":
    sys.exit(entry_point(main))
