"""One function per stage of the chain; recipes/cai.py only orders them.

A stage function reads its inputs (the run's :class:`Context`, earlier stages' directories) and writes its
outputs into the directory it is given, returning a :class:`Result` (metrics for the manifest, tables for the
tracker). It knows nothing of manifests, skipping, resuming or publication: :mod:`align.pipeline` owns those.
"""

from __future__ import annotations

from align.stages.amend import amend
from align.stages.context import Context, Result, prepare
from align.stages.evaluate import evaluate
from align.stages.feedback import critique_revise, preferences
from align.stages.redteam import red_team
from align.stages.train import optimise, reward, sft_cai, train_base

__all__ = [
    "Context",
    "Result",
    "amend",
    "critique_revise",
    "evaluate",
    "optimise",
    "preferences",
    "prepare",
    "red_team",
    "reward",
    "sft_cai",
    "train_base",
]
