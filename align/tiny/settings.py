"""The tiny world's settings: the ``world:`` section of a tiny recipe config (``kind: tiny``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from align.config import ConfigError
from align.tiny.world import STYLES


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
    # The harder world (issue 15): attack styles wrapped around requests, harmful and benign alike (see
    # world.STYLE_TEMPLATES). ``seen_styles`` reach critique-and-revise and the feedback demonstrations; the
    # other ``attack_styles`` only the helpful-only base corpus (which complies), evaluation and red teaming.
    attack_styles: list[str] = field(default_factory=list)
    seen_styles: list[str] = field(default_factory=list)
    # Benign look-alikes (world.LOOKALIKES: "steal the show", "poison the weeds"): trained on as benign requests,
    # and evaluated on other targets by the over-refusal suite ``tiny:over_refusal`` (XSTest's layout).
    lookalikes: bool = False

    def __post_init__(self) -> None:
        for name in ("attack_styles", "seen_styles"):
            unknown = sorted(set(getattr(self, name)) - set(STYLES))
            if unknown:
                raise ConfigError(f"{name}: unknown style(s) {unknown}; styles are {list(STYLES)}")
        if not set(self.seen_styles) <= set(self.attack_styles):
            raise ConfigError("seen_styles must be a subset of attack_styles")
