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

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.distributed import process_state
from align.files import write_json_atomic  # re-exported: recipes import it from here
from align.redaction import redact

MANIFEST = "manifest.json"
RESUMABLE = ("shards", "checkpoints")  # what an interrupted attempt leaves for the next one
INPUT_TAG = ".input_hash"


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
    ) -> None:
        """``tracker`` (e.g. :class:`align.tracking.WandbTracker`) is told about every stage that runs.

        ``until`` names the last stage to run: entering any later one raises :class:`StopPipeline`.
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
        if self.state.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
        self.state.wait_for_everyone()
        self.code = code_version()

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
            print(f"[align] {name}: done with the same inputs, skipped ({final})", flush=True)
            yield Stage(name, final, work, True, input_hash, manifest=old, metrics=old.get("metrics", {}))
            return
        resumed = _same_inputs(work, input_hash)
        self.state.wait_for_everyone()  # every process reads the tag before the main process rewrites it
        if self.state.is_main_process:
            _prepare_work_dir(work, input_hash, keep=resumed)
        self.state.wait_for_everyone()
        print(f"[align] {name}: {'resuming from ' + str(work) if resumed else 'running'}", flush=True)
        stage = Stage(name, final, work, False, input_hash, resumed=resumed)
        tracking = self.tracker.stage(name, config, inputs) if self.tracker else contextlib.nullcontext()
        with tracking as tracked:
            started = time.time()
            try:
                yield stage
            except BaseException:
                # Nothing half-written survives a failed stage; the previous finished output, if any, stays,
                # and so do the shards and checkpoints the next attempt resumes from.
                if self.state.is_main_process:
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
                if final.exists():
                    shutil.rmtree(final)
                os.replace(work, final)
            self.state.wait_for_everyone()
            stage.done, stage.manifest = True, manifest
            if tracked is not None:
                tracked.published(stage)
        print(f"[align] {name}: done in {manifest['seconds']:.0f}s", flush=True)


def _file_sizes(directory: Path) -> dict[str, int]:
    return {
        p.relative_to(directory).as_posix(): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def _changed_files(directory: Path, recorded: dict[str, int] | None) -> list[str]:
    """Published files that are gone or have another size than when the stage finished (none recorded: none)."""
    changed = []
    for rel, size in (recorded or {}).items():
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
