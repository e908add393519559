"""The tiny world's settings: the ``world:`` section of a tiny recipe config (``kind: tiny``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TinyWorldConfig:
    """The world the embedded default trains its own base model on (see align/tiny/world.py)."""

    seed: int = 0
    # The constitution whose requests the base corpus demonstrates: the tiny model's "pretraining". None =
    # the recipe's constitution. Pin it to experiment with edits of the recipe's constitution without
    # retraining the base model (and to let critique-and-revise reuse samples of unchanged principles).
    constitution: str | None = None
    holdout_fraction: float = 0.15
    n_verbs: int | None = None  # None = all; smaller values make a faster world for tests
    n_objects: int | None = None
    n_phrasings: int | None = None
    feedback_fraction: float = 0.5
    comparison_fraction: float = 0.15
    vocab_size: int = 1024
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
