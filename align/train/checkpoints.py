"""Crash-safe checkpoints, one implementation for every trainer: TRL's (SFT, reward, DPO, GRPO, RLOO) and our PPO.

A checkpoint is a directory ``<output_dir>/checkpoints/<name>-N`` (``checkpoint-N`` from the Trainer,
``step-N`` from PPO) holding everything a run needs to continue from step N. Whoever writes one, it only
counts once it is complete: the Trainer writes file by file, so a completion marker is added after its save
(:class:`align.train.common.CrashSafety`); PPO writes a temporary directory and publishes it with one rename
(:func:`publish_checkpoint`). On start, :func:`newest_valid_checkpoint` picks the newest checkpoint that has
its marker and whose files are structurally whole (no tensor is loaded), and warns about and deletes any
newer broken one. The pipeline keeps ``checkpoints/`` of a dead stage for its next attempt.

Two failures end training with a clean message instead of a traceback: a non-finite loss
(:func:`diverged`, naming the step and the last good checkpoint) and a failed write (:func:`write_failure`,
naming the file: the disk filled up or the filesystem is read-only).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from align.faults import fault_point, stage_of
from align.files import WriteError, write_error
from align.integrity import file_problem, torch_file_problem
from align.train.errors import TrainingDiverged

CHECKPOINTS = "checkpoints"
COMPLETE = ".align_complete"  # written into a checkpoint once every file of it is on disk
_NAME = re.compile(r"^(?:checkpoint|step)-(\d+)$")
# What a failed write says when the exception carries no errno (torch.save, safetensors wrap the OSError).
_MESSAGES = {
    "no space left on device": errno.ENOSPC,
    "disk quota exceeded": errno.EDQUOT,
    "read-only file system": errno.EROFS,
    "permission denied": errno.EACCES,
}
INCOMPLETE = "the checkpoint is incomplete and will not be resumed from; make room and run the same command again"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a ``checkpoint-N`` or ``step-N`` directory name, else None."""
    match = _NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


def files_problem(path: str | os.PathLike, required: Iterable[str] = ()) -> str | None:
    """Why the checkpoint directory ``path`` is not complete, or None: the marker, the ``required`` files, and
    every safetensors, torch-saved and JSON file in it structurally whole."""
    path = Path(path)
    if not path.is_dir() or checkpoint_step(path) is None:
        return "not a checkpoint-N directory"
    if not (path / COMPLETE).exists():
        return "no completion marker (the save was interrupted)"
    for name in required:
        if not (path / name).exists():
            return f"{name} missing"
    for file in sorted(path.iterdir()):
        check = torch_file_problem if file.suffix in (".pt", ".pth", ".bin") else file_problem
        if file.is_file() and (problem := check(file)):
            return problem
    return None


def newest_valid_checkpoint(
    output_dir: str | os.PathLike,
    *,
    problem: Callable[[Path], str | None] = files_problem,
    delete_invalid: bool = True,
) -> Path | None:
    """The newest checkpoint under ``<output_dir>/checkpoints`` that ``problem`` finds nothing wrong with.

    Broken ones newer than it are warned about and (``delete_invalid``) deleted, so that a trainer does not
    later save into, or rotate by, a half-written directory.
    """
    root = Path(output_dir) / CHECKPOINTS
    found = sorted((step, p) for p in root.glob("*-*") if p.is_dir() and (step := checkpoint_step(p)) is not None)
    for _, path in reversed(found):
        reason = problem(path)
        if reason is None:
            return path
        warnings.warn(f"{path}: skipping corrupt or partial checkpoint: {reason}", stacklevel=2)
        if delete_invalid:
            shutil.rmtree(path, ignore_errors=True)
    return None


def mark_complete(path: Path, step: int) -> None:
    """Write the completion marker: everything else of the checkpoint is on disk."""
    (path / COMPLETE).write_text(f"{step}\n")


def publish_checkpoint(tmp: Path, final: Path, *, keep: int) -> None:
    """Publish a checkpoint written whole into ``tmp`` as ``final`` with one rename; keep the newest ``keep``.

    The rename is a fault point (``ALIGN_FAULT_AFTER=<stage>:<n>``), like the Trainer's saves.
    """
    step = checkpoint_step(final)
    mark_complete(tmp, step)
    if final.exists():  # an unusable checkpoint of the same step, left by the attempt that died
        shutil.rmtree(final)
    os.replace(tmp, final)
    fault_point(stage_of(final))
    older = sorted((s, p) for p in final.parent.glob("*-*") if (s := checkpoint_step(p)) is not None and s < step)
    for _, old in older[: max(0, len(older) - keep + 1)]:
        shutil.rmtree(old, ignore_errors=True)


def diverged(
    output_dir: str | os.PathLike,
    step: int,
    detail: str = "",
    *,
    problem: Callable[[Path], str | None] = files_problem,
) -> TrainingDiverged:
    """The error for a NaN or infinite loss at ``step`` (1-based): the stage, the step, the last good checkpoint."""
    last = newest_valid_checkpoint(output_dir, problem=problem, delete_invalid=False)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
    detail = f" ({detail})" if detail else ""
    return TrainingDiverged(
        f"{stage_of(output_dir)}: loss is NaN or infinite at step {step}{detail}; training stopped, {kept}. "
        "Lower the learning rate or check the data."
    )


def write_failure(err: BaseException, directory: str | os.PathLike, consequence: str = INCOMPLETE) -> WriteError | None:
    """A :class:`WriteError` naming the file that was being written under ``directory`` when ``err`` ended a
    save, or None if ``err`` is not a failed write.

    torch.save and safetensors report a full disk as RuntimeError or their own error type, without an errno
    or a file name; the reason is read from the message or the filesystem, and the file is the most recently
    modified one, the file the save was writing.
    """
    code = _errno_of(err, Path(directory))
    if code is None:
        return None
    target = getattr(err, "filename", None) or _newest_file(Path(directory)) or directory
    return write_error(target, OSError(code, os.strerror(code)), consequence)


def _errno_of(err: BaseException, directory: Path) -> int | None:
    """The errno behind a failed save: from the exception chain, else from the state of the filesystem.

    torch.save on a full disk fails with messages such as "unexpected pos 64 vs 0" that name no cause, so
    when the chain says nothing, a filesystem that is read-only or has no block left is taken as the cause.
    """
    seen: set[int] = set()
    chain: BaseException | None = err
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno in _MESSAGES.values():
            return chain.errno
        text = str(chain).lower()
        for message, code in _MESSAGES.items():
            if message in text:
                return code
        chain = chain.__cause__ or chain.__context__
    try:
        stats = os.statvfs(directory if directory.exists() else directory.parent)
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return errno.EROFS
    return errno.ENOSPC if stats.f_bavail == 0 else None


def _newest_file(directory: Path) -> Path | None:
    files = [p for p in directory.rglob("*") if p.is_file()] if directory.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns, default=None)


def trainer_checkpoint_problem(path: str | os.PathLike) -> str | None:
    """Why a Trainer's ``checkpoint-N`` cannot be resumed from, or None if it is complete.

    On top of :func:`files_problem`: ``trainer_state.json`` at step N, and the model weights, optimiser,
    scheduler and RNG states present. FSDP and DeepSpeed write sharded directories instead
    (``pytorch_model_fsdp_*``, ``global_step*``), whose completeness rests on the marker.
    """
    path = Path(path)
    if problem := files_problem(path):
        return problem
    try:
        state = json.loads((path / "trainer_state.json").read_text())
    except (OSError, ValueError) as err:
        return f"trainer_state.json unreadable ({err})"
    if state.get("global_step") != checkpoint_step(path):
        return f"trainer_state.json is at step {state.get('global_step')}, not {checkpoint_step(path)}"
    sharded = [p for p in path.iterdir() if p.is_dir() and p.name.startswith(("pytorch_model_fsdp", "global_step"))]
    if sharded:
        return None
    if not list(path.glob("*.safetensors")):
        return "no model weights (*.safetensors or a sharded state)"
    for required in ("optimizer.pt", "scheduler.pt"):
        if not (path / required).exists():
            return f"{required} missing"
    if not list(path.glob("rng_state*.pth")):
        return "no RNG state (rng_state*.pth)"
    return None
