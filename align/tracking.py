"""W&B lineage for generated data: which constitution version made which dataset.

Training stages get their W&B runs from the TRL trainers; generation stages have no trainer, so they
open a short run of their own that logs the constitution (type ``constitution``, aliased by version) and
the generated files (type ``dataset``) with the constitution's identity in the metadata. Online, the
constitution is also declared as the run's input, which draws the lineage edge in the W&B UI; W&B does
not allow declaring inputs offline, so there the identity in the metadata is the link.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _artifact_name(text: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "artifact"


def constitution_artifact(constitution):
    import wandb

    artifact = wandb.Artifact(
        _artifact_name(f"constitution-{constitution.name}"),
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


def log_generated_dataset(
    report_to: str,
    *,
    stage: str,
    constitution,
    files: Sequence[Path],
    metadata: dict[str, Any],
    config: dict[str, Any] | None = None,
) -> None:
    """Log the constitution and the stage's files, on the main process only; a no-op unless W&B is on."""
    if report_to != "wandb":
        return
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    import wandb

    run = wandb.init(job_type=stage, name=stage, config=config or {}, reinit="finish_previous")
    try:
        constitution_art = constitution_artifact(constitution)
        if run.offline:
            run.log_artifact(constitution_art, aliases=[constitution.version])
        else:
            run.use_artifact(constitution_art, aliases=[constitution.version])
        dataset = wandb.Artifact(
            _artifact_name(f"{stage}-data"),
            type="dataset",
            metadata={**metadata, "constitution": constitution.identity},
        )
        for path in files:
            dataset.add_file(str(path), name=Path(path).name)
        run.log_artifact(dataset)
        run.summary.update({k: v for k, v in metadata.items() if isinstance(v, (int, float))})
    finally:
        run.finish()
