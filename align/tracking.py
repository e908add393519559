"""W&B tracking for a pipeline run: one group per run, one W&B run per stage, artifacts with lineage.

Each stage that runs gets a W&B run (job type = stage name, group = pipeline run name) holding the whole
resolved recipe config. TRL's trainers find that run already open and log into it. When the stage has
been published, its outputs are logged as artifacts, aliased by the stage's output id: generated data as
``dataset``, trained models as ``model`` (a reference to the local directory unless uploads are asked
for: weights are large and usually already on shared disk), and for the generation stages the
constitution as ``constitution``, aliased by its version. Online, each stage also declares the artifacts
it consumed, which draws W&B's lineage graph (constitution -> data -> SFT -> reward -> DPO). W&B refuses
to declare inputs offline, so offline the same links are kept in each artifact's metadata.

Nothing from the environment is logged, and every config goes through the one redactor (credentials masked,
keys kept: :mod:`align.redaction`).
"""

from __future__ import annotations

import json
import re
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from align.redaction import redact

GENERATION_STAGES = ("critique_revise", "preferences")
_managed: set[str] = set()


def is_managed(run) -> bool:
    """Whether ``run`` was opened by the pipeline (so a trainer must not close it)."""
    return getattr(run, "id", None) in _managed


def artifact_name(text: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "artifact"


def constitution_artifact(constitution):
    import wandb

    artifact = wandb.Artifact(
        artifact_name(f"constitution-{constitution.name}"),
        type="constitution",
        description=constitution.description or None,
        metadata={
            "identity": constitution.identity,
            "version": constitution.version,
            "content_hash": constitution.content_hash,
            "principles": {p.id: p.content_hash for p in constitution.principles},
        },
    )
    # The data, not the source file: identical content gives an identical artifact digest wherever it came from.
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(constitution.to_dict(), f, indent=2, ensure_ascii=False)
    artifact.add_file(f.name, name="constitution.json")
    return artifact


class WandbTracker:
    """Hooks the pipeline's stages (``Run(tracker=...)``) to W&B runs and artifacts."""

    def __init__(self, root: Path, group: str, config: dict[str, Any], constitution, upload_models: bool = False):
        self.root = Path(root)
        self.group = group
        self.config = redact(config)
        self.constitution = constitution
        self.upload_models = upload_models

    def _producers(self) -> dict[str, str]:
        """output id -> stage name, from the manifests on disk (stages skipped in this process included)."""
        out = {}
        for manifest in [*self.root.glob("*/manifest.json"), *self.root.glob("round*/*/manifest.json")]:
            try:
                data = json.loads(manifest.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if data.get("output_id"):
                out[data["output_id"]] = data.get("stage", manifest.parent.name)
        return out

    @contextmanager
    def stage(self, name: str, config: Any, inputs: dict[str, Any]) -> Iterator[_StageRun | None]:
        from accelerate import PartialState

        if not PartialState().is_main_process:
            yield None
            return
        import wandb

        run = wandb.init(
            job_type=name,
            name=name,
            group=self.group,
            config={"stage": name, "stage_config": redact(config), "inputs": redact(inputs), "recipe": self.config},
            reinit="finish_previous",
        )
        _managed.add(run.id)
        producers = self._producers()
        upstream = {key: f"{producers[v]}:{v}" for key, v in inputs.items() if isinstance(v, str) and v in producers}
        try:
            yield _StageRun(self, run, name, upstream)
        finally:
            _managed.discard(run.id)
            run.finish()


class _StageRun:
    def __init__(self, tracker: WandbTracker, run, name: str, upstream: dict[str, str]) -> None:
        self.tracker, self.run, self.name, self.upstream = tracker, run, name, upstream

    def _artifact(self, stage_name: str) -> str:
        return artifact_name(f"{self.tracker.group}-{stage_name}")

    def published(self, stage) -> None:
        """Log what the finished stage wrote, and what it was made from."""
        import wandb

        run, t = self.run, self.tracker
        metadata: dict[str, Any] = {"stage": stage.name, "output_id": stage.output_id, "inputs": self.upstream}
        if not run.offline:
            for ref in self.upstream.values():
                stage_name, oid = ref.split(":", 1)
                try:
                    run.use_artifact(f"{self._artifact(stage_name)}:{oid}")
                except Exception as e:  # an upstream stage that ran without W&B has no artifact: say so, go on
                    print(f"[align] W&B: no artifact for input {ref} ({type(e).__name__}); lineage stops there")
        if stage.name.rsplit("/", 1)[-1] in GENERATION_STAGES:  # round<k>/critique_revise too
            metadata["constitution"] = t.constitution.identity
            art = constitution_artifact(t.constitution)
            if run.offline:
                run.log_artifact(art, aliases=[t.constitution.version])
            else:
                run.use_artifact(art, aliases=[t.constitution.version])
        files = sorted(p for p in stage.path.glob("*.jsonl"))
        if files:
            data = wandb.Artifact(self._artifact(stage.name), type="dataset", metadata=metadata)
            for path in files:
                data.add_file(str(path), name=path.name)
            run.log_artifact(data, aliases=[stage.output_id])
        if (stage.path / "model.safetensors").exists():
            model = wandb.Artifact(self._artifact(stage.name), type="model", metadata=metadata)
            if t.upload_models:
                model.add_dir(str(stage.path))
            else:
                model.add_reference(f"file://{stage.path.resolve()}", checksum=False)
            run.log_artifact(model, aliases=[stage.output_id])
        for key, (columns, rows) in stage.tables.items():
            run.log({key: wandb.Table(columns=columns, data=rows)})
        for plot in sorted(stage.path.glob("*.png")):  # the plots a stage drew (the eval stage's), as images
            run.log({f"{stage.name}_{plot.stem}": wandb.Image(str(plot))})
        run.summary.update({k: v for k, v in stage.metrics.items() if isinstance(v, (int, float))})


# ---------------------------------------------------------------------------------------------------
# Reading offline runs back. wandb 0.31 writes records with its Go core and ships no Python reader, so
# this reads the file format (a LevelDB-style log of wandb's own protobuf records) directly.

_BLOCK = 32768
_HEADER = 7  # crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_offline_run(path: str | Path) -> list:
    """Every record of a ``run-*.wandb`` file, as ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if not data.startswith(b":W&B"):
        raise ValueError(f"{path}: not a W&B run file")
    records, pos, pending = [], 7, b""
    while pos + _HEADER <= len(data):
        left_in_block = _BLOCK - pos % _BLOCK
        if left_in_block < _HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:
            break
        if kind in (_FULL, _FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records
