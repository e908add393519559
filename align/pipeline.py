"""Run directory and stage manifests: skip what is done, redo what changed, never leave half an output.

``runs/<name>/<stage>/`` appears only once the stage has finished: work happens in
``<stage>.partial/`` and is renamed into place with its ``manifest.json`` as the last step. A stage is
skipped when its manifest says done with the same input hash. Each finished stage gets a fresh
``output_id`` that downstream stages include in their inputs, so redoing a stage redoes everything after it.

A stage that died (killed, or failed with an error) keeps its resumable state in ``<stage>.partial/``:
the directories named in :data:`RESUMABLE` (generation shards, training checkpoints), tagged with the
input hash they were made for. The next attempt with the same inputs starts from them; any other files
of the dead attempt, and state made for other inputs, are deleted first.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.console import duration
from align.distributed import process_state
from align.files import WriteError, write_error, write_json_atomic  # write_json_atomic: recipes import it here
from align.redaction import redact

MANIFEST = "manifest.json"
LOCK = ".lock"
RESUMABLE = ("shards", "checkpoints")  # what an interrupted attempt leaves for the next one
INPUT_TAG = ".input_hash"


class RunLocked(RuntimeError):
    """Another run is using the run directory; the message names it (pid, host, start) and what to do."""


class StopPipeline(Exception):
    """Raised on entering a stage after ``until``: the run ends there, cleanly, with nothing of it started."""


def stable_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def code_version() -> str:
    """The git commit of the checkout (with a -dirty mark), recorded for provenance only."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{rev}-dirty" if rev and dirty else rev or "unknown"


@dataclass
class Stage:
    """Handle given to the recipe inside ``Run.stage``: where to write, and whether work is needed."""

    name: str
    path: Path  # the final directory; valid to read once the stage is done
    work_dir: Path  # where to write while running
    done: bool
    input_hash: str
    resumed: bool = False  # the work dir holds shards or checkpoints of an earlier attempt with these inputs
    manifest: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    # name -> (columns, rows): samples a tracker shows as tables (W&B), next to the files on disk
    tables: dict[str, tuple[list[str], list[list[Any]]]] = field(default_factory=dict)

    @property
    def output_id(self) -> str:
        return self.manifest.get("output_id", "")

    def record(self, result: Any) -> None:
        """Take a stage function's result (:class:`align.stages.Result`): its metrics and tracker tables."""
        self.metrics, self.tables = result.metrics, result.tables

    @property
    def model_name(self) -> str:
        """What generation provenance calls this stage's model: its directory and output id, so samples are
        never reused across retrained weights."""
        return f"{self.path.parent}/{self.name}@{self.output_id}"

    @property
    def out(self) -> Path:
        """The directory holding this stage's files: the final one if done, the work one while running."""
        return self.path if self.done else self.work_dir


class Run:
    """A pipeline run directory shared by every process of an accelerate launch."""

    def __init__(
        self,
        root: str | Path,
        force: set[str] | None = None,
        order: list[str] | None = None,
        tracker: Any = None,
        until: str | None = None,
        plan: list[str] | None = None,
    ) -> None:
        """``tracker`` (e.g. :class:`align.tracking.WandbTracker`) is told about every stage that runs.

        ``until`` names the last stage to run: entering any later one raises :class:`StopPipeline`. ``plan``
        lists the stages this run will enter, in order (default: ``order``), for the ``stage k/N`` lines.
        The run directory is locked for the life of the process (:class:`RunLock`); all processes of one
        launch share the lock, and a second run gets :class:`RunLocked` naming the holder.
        """
        self.root = Path(root)
        self.tracker = tracker
        self.state = process_state()  # multi-process launches on CPU too
        self.order = order or []
        unknown = sorted(set(force or ()) - set(self.order)) if self.order else []
        if unknown:
            raise ValueError(f"--force: unknown stage(s) {unknown}; stages are {self.order}")
        if until is not None and until not in self.order:
            raise ValueError(f"--until: unknown stage {until!r}; stages are {self.order}")
        self.until = until
        # Forcing a stage forces everything after it.
        first = min((self.order.index(s) for s in force or ()), default=len(self.order))
        self.force = set(self.order[first:])
        self.plan = [s for s in (plan or self.order) if until is None or self._position(s) <= self._position(until)]
        self.started = time.time()
        self.seconds: dict[str, float] = {}  # stages that ran in this process, and how long they took
        self.lock = RunLock(self.root)
        held_by = None
        if self.state.is_main_process:
            with _writes_named(self.root):
                self.root.mkdir(parents=True, exist_ok=True)
            held_by = self.lock.acquire()
        if self.state.num_processes > 1:  # every process learns whether the run may go on
            from accelerate.utils import broadcast_object_list

            box = [held_by]
            broadcast_object_list(box, from_process=0)
            held_by = box[0]
        if held_by is not None:
            raise RunLocked(held_by)
        self.state.wait_for_everyone()
        self.code = code_version()

    def _position(self, name: str) -> int:
        return self.order.index(name) if name in self.order else len(self.order)

    def _progress(self, name: str, elapsed_only: bool = False) -> str:
        """``stage k/N, 3m05s elapsed, about 1m40s left`` for the stage lines (the estimate where there is one).

        The time left sums, for each stage still to come, how long it took the last time it ran here (its
        manifest), or else the mean of the stages run so far in this process; stages already done are
        expected to be skipped again while nothing before them has had to run.
        """
        parts = []
        if name in self.plan:
            parts.append(f"stage {self.plan.index(name) + 1}/{len(self.plan)}")
        parts.append(f"{duration(time.time() - self.started)} elapsed")
        if elapsed_only:
            return ", ".join(parts)
        after = self.plan[self.plan.index(name) :] if name in self.plan else []  # this stage too, until it is done
        mean = sum(self.seconds.values()) / len(self.seconds) if self.seconds else None
        left, known = 0.0, True
        for stage in after:
            if stage in self.seconds:
                continue
            old = self.manifest(stage)
            if old.get("status") == "done" and not self.seconds and stage not in self.force:
                continue  # nothing has run yet: a finished stage is likely skipped again
            if isinstance(old.get("seconds"), (int, float)):
                left += old["seconds"]
            elif mean is not None:
                left += mean
            else:
                known = False
        if known and (after or self.seconds):
            parts.append(f"about {duration(left)} left")
        return ", ".join(parts)

    def manifest(self, name: str) -> dict[str, Any]:
        path = self.root / name / MANIFEST
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    @contextmanager
    def stage(self, name: str, config: Any, inputs: dict[str, Any]) -> Iterator[Stage]:
        """Run the body only if the stage is not already done with these inputs; publish atomically."""
        if self.until is not None and name in self.order and self.order.index(name) > self.order.index(self.until):
            raise StopPipeline(f"stopped after {self.until} (--until)")
        input_hash = stable_hash({"config": config, "inputs": inputs})
        final, work = self.root / name, self.root / f"{name}.partial"
        old = self.manifest(name)
        damaged = _changed_files(final, old.get("files")) if old.get("status") == "done" else []
        if damaged:
            print(f"[align] {name}: published files missing or changed ({', '.join(damaged[:3])}), redoing", flush=True)
        if (
            name not in self.force
            and old.get("status") == "done"
            and old.get("input_hash") == input_hash
            and not damaged
        ):
            print(
                f"[align] {name}: done with the same inputs, skipped ({final}; {self._progress(name, True)})",
                flush=True,
            )
            yield Stage(name, final, work, True, input_hash, manifest=old, metrics=old.get("metrics", {}))
            return
        resumed = _same_inputs(work, input_hash)
        self.state.wait_for_everyone()  # every process reads the tag before the main process rewrites it
        if self.state.is_main_process:
            with _writes_named(work):
                _prepare_work_dir(work, input_hash, keep=resumed)
        self.state.wait_for_everyone()
        doing = "resuming from " + str(work) if resumed else "running"
        print(f"[align] {name}: {doing} ({self._progress(name)})", flush=True)
        stage = Stage(name, final, work, False, input_hash, resumed=resumed)
        tracking = self.tracker.stage(name, config, inputs) if self.tracker else contextlib.nullcontext()
        with tracking as tracked:
            started = time.time()
            try:
                yield stage
            except BaseException:
                # Nothing half-written survives a failed stage; the previous finished output, if any, stays,
                # and so do the shards and checkpoints the next attempt resumes from. A cleanup that fails
                # too (a read-only or full disk) must not hide the error that stopped the stage.
                if self.state.is_main_process:
                    with contextlib.suppress(OSError):
                        _keep_only_resumable(work)
                raise
            self.state.wait_for_everyone()  # every process has written its part
            problems = _verify_outputs(work) if self.state.is_main_process else []
            if self.state.num_processes > 1:
                from accelerate.utils import broadcast_object_list

                box = [problems]
                broadcast_object_list(box, from_process=0)
                problems = box[0]
            if problems:  # not published: the stage failed, its shards/checkpoints stay, and a re-run redoes it
                if self.state.is_main_process:
                    _keep_only_resumable(work)
                raise RuntimeError(f"{name}: outputs failed verification, not published: {'; '.join(problems)}")
            if self.state.is_main_process:
                with _writes_named(work):
                    for sub in (*RESUMABLE, INPUT_TAG):  # resume state is not part of the published output
                        target = work / sub
                        if target.is_dir():
                            shutil.rmtree(target)
                        elif target.exists():
                            target.unlink()
            manifest = {
                "stage": name,
                "status": "done",
                "input_hash": input_hash,
                "output_id": stable_hash([input_hash, started, time.time()])[:16],
                "config": redact(config),  # manifests get shared: credentials masked, every key kept
                "inputs": redact(inputs),
                "code_version": self.code,
                "started_at": started,
                "seconds": round(time.time() - started, 2),
                "metrics": stage.metrics,
            }
            self.state.wait_for_everyone()
            if self.state.is_main_process:
                manifest["files"] = _file_sizes(work)  # what "done" means: a re-run checks they are still there
                write_json_atomic(work / MANIFEST, manifest)
                with _writes_named(final):
                    if final.exists():
                        shutil.rmtree(final)
                    os.replace(work, final)
            self.state.wait_for_everyone()
            stage.done, stage.manifest = True, manifest
            if tracked is not None:
                tracked.published(stage)
        self.seconds[name] = manifest["seconds"]
        print(f"[align] {name}: done in {duration(manifest['seconds'])} ({self._progress(name)})", flush=True)


@contextmanager
def _writes_named(path: Path) -> Iterator[None]:
    """Turn a failed filesystem change under ``path`` (read-only, full) into a WriteError naming the file."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        raise write_error(err.filename or path, err, "nothing of the stage was published") from err


class RunLock:
    """One run per run directory, as a file ``<run dir>/.lock`` naming its holder (pid, host, start time).

    Created with O_EXCL, so two runs cannot both take it. A lock whose holder is gone is stale and taken
    over: on this host the pid is no longer running (or is another process, by its start time); a holder
    on another host cannot be checked from here, so the message says how to remove it. Released at exit;
    a killed run leaves it, and the next run finds it stale. On a read-only run directory nothing can be
    written, so no lock is needed (and none can be taken).
    """

    def __init__(self, root: Path) -> None:
        self.path = root / LOCK
        self.held = False

    @staticmethod
    def _me() -> dict[str, Any]:
        return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid())}

    def acquire(self) -> str | None:
        """Take the lock; None on success, else why not (naming the holder)."""
        me = {**self._me(), "started_at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and {k: holder.get(k) for k in ("pid", "host")} == {
                    k: me[k] for k in ("pid", "host")
                }:
                    self.held = True  # this process took it already (a second Run on the same directory)
                    return None
                if holder is None or not self._stale(holder):
                    return self._refusal(holder)
                print(f"[align] {self.path}: taking over the lock of pid {holder.get('pid')}, which is gone")
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            except OSError as err:
                if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                    return None  # a read-only run directory: nothing can be written, so nothing can clash
                raise write_error(self.path, err, "the run did not start") from err
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
                f.flush()
                os.fsync(f.fileno())
            self.held = True
            atexit.register(self.release)
            return None
        return self._refusal(self._holder())

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                with contextlib.suppress(OSError):
                    self.path.unlink()
            self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # being written right now, or left half-written by a kill: stale once it is a few seconds old
            with contextlib.suppress(OSError):
                if time.time() - self.path.stat().st_mtime > 10:
                    return {}
            return None
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def _stale(holder: dict[str, Any]) -> bool:
        if not holder:
            return True
        if holder.get("host") != socket.gethostname():
            return False  # cannot be checked from here
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        start = holder.get("process_start")
        return start is not None and start != _process_start(pid)  # the pid now belongs to another process

    def _refusal(self, holder: dict[str, Any] | None) -> str:
        if not holder:
            return f"{self.path.parent}: another run is starting in this run directory; try again in a moment"
        return (
            f"{self.path.parent}: in use by another run (pid {holder.get('pid')} on {holder.get('host')}, "
            f"started {holder.get('started_at')}); wait for it to finish, or if it is gone, delete {self.path}"
        )


def _process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot, Linux), to tell a reused pid from the lock's holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


# A model directory's card (README.md) is written after the eval stage and rewritten when the evaluation changes
# (align.evaluation.cards): it describes the stage's output, it is not part of it, so it never redoes the stage.
MODEL_CARD = "README.md"


def _file_sizes(directory: Path) -> dict[str, int]:
    return {
        p.relative_to(directory).as_posix(): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST and p.relative_to(directory).as_posix() != MODEL_CARD
    }


def _changed_files(directory: Path, recorded: dict[str, int] | None) -> list[str]:
    """Published files that are gone or have another size than when the stage finished (none recorded: none)."""
    changed = []
    for rel, size in (recorded or {}).items():
        if rel == MODEL_CARD:  # recorded by runs made before cards were written after the eval stage
            continue
        try:
            if (directory / rel).stat().st_size != size:
                changed.append(rel)
        except OSError:
            changed.append(rel)
    return changed


def _verify_outputs(work: Path) -> list[str]:
    """Every output file the stage wrote is whole (JSON parses, safetensors has all its bytes), and there is one."""
    from align.integrity import file_problem

    skip = (*RESUMABLE, INPUT_TAG)  # resume state is checked by its own readers
    files = [p for p in sorted(work.rglob("*")) if p.is_file() and p.relative_to(work).parts[0] not in skip]
    problems = [problem for p in files if (problem := file_problem(p))]
    stray = [p.name for p in files if p.name.endswith(".tmp")]
    if stray:
        problems.append(f"temporary files left behind: {stray}")
    return problems


def _same_inputs(work: Path, input_hash: str) -> bool:
    try:
        tag = (work / INPUT_TAG).read_text().strip()
    except OSError:
        return False
    return tag == input_hash and any((work / sub).is_dir() for sub in RESUMABLE)


def _keep_only_resumable(work: Path) -> None:
    """Delete everything of a dead attempt except its resumable state (and the tag saying for what inputs)."""
    if not work.exists():
        return
    for child in work.iterdir():
        if child.name in RESUMABLE or child.name == INPUT_TAG:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    if not any((work / sub).is_dir() for sub in RESUMABLE):
        shutil.rmtree(work, ignore_errors=True)


def _prepare_work_dir(work: Path, input_hash: str, keep: bool) -> None:
    if keep:
        _keep_only_resumable(work)
    elif work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / INPUT_TAG).write_text(input_hash + "\n")
