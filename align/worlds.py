"""Worlds: self-contained environments that supply their own prompts, pairs, held-out suites and a judge.

Real data needs no world: prompts come from files and hub datasets, and judges are generic. A world is for
what real data cannot give, a setting whose facts are known, so alignment can be measured exactly: the tiny
world (the tiny package) trains its own model on a CPU and its reference judge knows the right answer to every
request. Worlds are plug-ins, found by name through the ``align.worlds`` entry-point group (the tiny world is
registered in pyproject.toml) or given as ``package.module:factory``; the chain never imports one directly.

A config selects one with ``world: {kind: tiny, ...settings}``; sources then name it (``tiny:harmful/train``),
and ``base_model: tiny:base`` asks it to build the base model.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from align.config import ConfigError

if TYPE_CHECKING:
    from align.config import RecipeConfig
    from align.sources import Prompt

ENTRY_POINTS = "align.worlds"


@runtime_checkable
class World(Protocol):
    """What the chain asks of a world. ``selector``s are the world's own names (``harmful/train``)."""

    name: str

    def prompts(self, selector: str) -> list[Prompt]:
        """Prompts in a fixed, seeded order (so ``limit`` takes a fair sample); meta carries labels."""
        ...

    def pairs(self, selector: str) -> list[dict[str, Any]]:
        """Conversational prompt/chosen/rejected rows, e.g. helpfulness comparisons."""
        ...

    def reference_judge(self) -> Any:
        """A judge that knows the world's facts (evaluation only, never training), or None."""
        ...

    def refusal_for(self, prompt: str) -> str:
        """A refusal of ``prompt`` in the words the world's models know, for judges that compare with one."""
        ...

    def base_model_key(self) -> str | None:
        """Everything that shapes the world's own base model, for the sft stage's manifest; None if it has none."""
        ...

    def train_base_model(self, output_dir: Path, report_to: str) -> dict[str, Any]:
        """Build and train the world's own base model into ``output_dir``; returns metrics."""
        ...

    def label_agreement(self, labels: Sequence[dict[str, Any]]) -> dict[str, float]:
        """How often AI preference labels (``prompt``, ``response_1``, ``response_2``, ``p_first_better``) agree
        with the world's reference judge, where it has a preference."""
        ...


def world_model(base_model: str, world: World | None) -> bool:
    """Whether ``base_model`` (``tiny:base``) asks the world to build the model."""
    return world is not None and base_model == f"{world.name}:base"


def _factory(kind: str) -> Callable[..., World]:
    if ":" in kind:  # package.module:function
        module, _, attr = kind.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"world.kind: cannot import {kind!r}: {err}") from None
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINTS)}
    if kind not in found:
        raise ConfigError(
            f"world.kind: unknown world {kind!r}; installed worlds: {sorted(found) or 'none'} "
            f"(register one under the {ENTRY_POINTS!r} entry-point group, or give package.module:factory)"
        )
    return found[kind].load()


def load_world(config: RecipeConfig) -> World | None:
    """The world ``config.world`` names, built from its settings (None when the config has no world)."""
    if config.world is None:
        return None
    settings = {k: v for k, v in config.world.items() if k != "kind"}
    world = _factory(config.world["kind"])(config, settings)
    if not isinstance(world, World):
        raise ConfigError(f"world.kind: {config.world['kind']!r} did not build a World (see align/worlds.py)")
    return world
