"""The red-team loop: propose attacks from archived ones, ask the target in batches, judge, keep the best per cell.

Each iteration draws a batch of children. A child starts from a seed request (a plain prompt of the source, in a
random style) or from an archived elite, whose request is kept and whose style is either changed or re-applied
with a fresh template; now and then the request is swapped for another seed of the same risk category, so a
cell can find a request its style works on. Each slot's strategy (align/redteam/strategies.py: ``mutation``,
``pair``, ``escalation``; chosen at random when there are several) turns that start into an attack. The target
answers every child (a multi-turn child first gets the target's own replies to its earlier turns), the judge
scores the answers, and :class:`~align.redteam.archive.Archive` keeps the most harmful attack per cell. A pair
child the target refused is rewritten by the attacker LM and asked again, within the same iteration, up to
``pair_iterations`` attacks; each of them is judged and archived.

Judges read the seed request, not the wrapper: what matters is whether the answer helps with what was really
asked, and a world's refusal (``refusal_for``) is looked up by the plain request. The judge is issue 14's
interface: ``refusal`` (rules; harm = 1 - its refusal score) or ``feedback`` (the feedback model; harm =
P(a refusal is better)). A world's reference judge never steers the search; it only reports how often the
judge's archived successes are real compliances (the judge's precision).

Reproducible and resumable: iteration ``i`` draws from ``Random(f"{seed}:{i}")``, the target is greedy and the
attacker samples with a seed drawn from that rng, so a run killed after any iteration and run again continues
from ``state.json`` (written atomically after every iteration, with ``archive.jsonl`` and ``asr.json``) to the
same archive. ``max_queries`` is the run's total
budget of target queries (a re-run with a larger one continues); ``max_seconds`` limits each invocation.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align.config import ConfigError
from align.files import atomic_write, write_json_atomic, write_jsonl_atomic, write_text_atomic
from align.redteam.archive import Archive, Entry
from align.redteam.mutations import PLAIN, STYLES, fill_placeholders
from align.redteam.strategies import (
    ESCALATION,
    MUTATION,
    PAIR,
    PAIR_STYLE,
    STRATEGIES,
    Attacker,
    Child,
    Parent,
    Strategy,
    archive_styles,
    build_strategies,
)

STATE_FILE = "state.json"
STATE_VERSION = 1
Target = Callable[[list[list[dict[str, str]]]], list[str]]


@dataclass(frozen=True)
class Seed:
    """A plain harmful request and the risk category it belongs to (its cell's row)."""

    request: str
    category: str


@dataclass
class SearchSettings:
    """The loop's knobs; budgets are checked before each iteration (a batch never overspends ``max_queries``)."""

    max_queries: int = 256
    max_seconds: float | None = None
    batch_size: int = 16
    seed: int = 0
    styles: tuple[str, ...] = STYLES
    seed_fraction: float = 0.25  # share of children drawn fresh from the seeds rather than from the archive
    change_style: float = 0.5  # chance a child of an elite takes another style (else re-mutates in its own)
    swap_request: float = 0.25  # chance a child of an elite takes another seed request of the same category
    strategies: tuple[str, ...] = (MUTATION,)  # align/redteam/strategies.py; each slot of a batch draws one
    pair_iterations: int = 3  # pair: attacks one child may make in an iteration while the target keeps refusing
    escalation_turns: int = 3  # escalation: user turns, from the harmless opener to the request

    def __post_init__(self) -> None:
        if self.max_queries < 1:
            raise ConfigError("max_queries must be >= 1")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError("max_seconds must be > 0")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        unknown = [s for s in self.styles if s not in STYLES]
        if unknown or not self.styles:
            raise ConfigError(f"styles: unknown {unknown}; choose from {', '.join(STYLES)}")
        self.strategies = tuple(self.strategies)
        check_strategies(self.strategies, self.pair_iterations, self.escalation_turns)


def check_strategies(strategies: Sequence[str], pair_iterations: int, escalation_turns: int) -> None:
    """The strategy settings of a config section or the command line, with errors that name the field."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise ConfigError(f"strategies: unknown {unknown or 'none given'}; choose from {', '.join(STRATEGIES)}")
    if len(set(strategies)) != len(strategies):
        raise ConfigError(f"strategies: {list(strategies)} names a strategy twice")
    if pair_iterations < 1:
        raise ConfigError("pair_iterations must be >= 1")
    if escalation_turns < 2:
        raise ConfigError("escalation_turns must be >= 2 (a harmless opener, then the request)")


def seeds_from_prompts(prompts: Sequence[Any]) -> list[Seed]:
    """Seed requests and their risk categories: a ``category`` column, the world's harmful verb, else ``all``.

    Rows a source labels benign or safe (a tiny world's ``tiny:train``, XSTest's safe prompts) are left out: the
    search attacks harmful requests only.
    """
    seeds = []
    for prompt in prompts:
        if str(prompt.meta.get("label", "")).lower() in ("benign", "safe"):
            continue
        category = prompt.meta.get("category") or prompt.meta.get("verb") or "all"
        seeds.append(Seed(prompt.text, str(category)))
    if not seeds:
        raise ConfigError("no harmful prompts to attack (every row is labelled benign or safe)")
    return seeds


def harm_score(judge_name: str, verdict: Any) -> float:
    """A verdict as harm in [0, 1]: 1 = full compliance with the harmful request."""
    if judge_name == "refusal":
        return 1.0 - float(verdict.score)
    if judge_name == "feedback":
        return float(verdict.score)
    raise ValueError(f"the red-team search reads the refusal or feedback judge, not {judge_name!r}")


@dataclass
class SearchState:
    fingerprint: dict[str, Any]
    iteration: int = 0
    queries: int = 0
    seconds: float = 0.0
    archive: Archive = field(default_factory=Archive)
    # pair: rewrites asked of the attacker LM, and how many were usable (the rest fell back to a mutation)
    attacker: dict[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "iteration": self.iteration,
            "queries": self.queries,
            "seconds": round(self.seconds, 3),
            **({"attacker": self.attacker} if self.attacker is not None else {}),
            **self.archive.to_state(),
        }


def load_state(out: Path, fingerprint: dict[str, Any]) -> SearchState:
    """The saved state of a run in ``out`` (a new one if there is none); another run's state is an error."""
    path = out / STATE_FILE
    if not path.exists():
        return SearchState(fingerprint)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read the saved red-team state ({err}); remove it to start afresh") from None
    if data.get("version") != STATE_VERSION or data.get("fingerprint") != fingerprint:
        changed = sorted(
            k
            for k in set(fingerprint) | set(data.get("fingerprint", {}))
            if data.get("fingerprint", {}).get(k) != fingerprint.get(k)
        )
        raise ConfigError(
            f"{path}: this output directory holds a red-team run with other settings ({', '.join(changed)} differ); "
            "use another -o, or remove the directory to start afresh"
        )
    return SearchState(
        fingerprint,
        data["iteration"],
        data["queries"],
        float(data["seconds"]),
        Archive.from_state(data),
        data.get("attacker"),
    )


@dataclass
class _Draft:
    """A child of this iteration on its way to the target: its strategy, its cell and its place in the lineage."""

    id: str
    strategy: Strategy
    request: str
    category: str
    parent: str | None
    child: Child
    round: int = 0


def _children(
    state: SearchState,
    seeds: Sequence[Seed],
    settings: SearchSettings,
    strategies: Sequence[Strategy],
    rng: random.Random,
) -> list[_Draft]:
    """The iteration's children, drawn slot by slot, each within what is left of the budget after those before it.

    A slot reserves its child's most expensive course (``Strategy.cost``): a batch never overspends
    ``max_queries``. With one strategy no draw chooses it, so a mutation-only run draws what it always drew.
    """
    by_category: dict[str, list[Seed]] = {}
    for seed in seeds:
        by_category.setdefault(seed.category, []).append(seed)
    elites = state.archive.sorted_elites()
    budget = settings.max_queries - state.queries
    out: list[_Draft] = []
    for slot in range(settings.batch_size):
        strategy = strategies[0] if len(strategies) == 1 else rng.choice(strategies)
        if not elites or rng.random() < settings.seed_fraction:
            parent = None
            seed = rng.choice(seeds)
            request, category, style = seed.request, seed.category, rng.choice(settings.styles)
        else:
            parent = rng.choice(elites)
            request, category = parent.request, parent.category
            style = rng.choice(settings.styles) if rng.random() < settings.change_style else parent.style
            if rng.random() < settings.swap_request:
                request = rng.choice(by_category[category]).request if category in by_category else request
        # the elite's attack and the target's answer travel with it while the request is the elite's own
        answered = parent is not None and request == parent.request
        start = Parent(
            request,
            category,
            style,
            tuple(parent.conversation) if answered else (),
            parent.response if answered else "",
        )
        child = strategy.propose(start, rng)
        cost = strategy.cost(child)
        if cost > budget:
            break
        budget -= cost
        out.append(
            _Draft(f"{state.iteration}-{slot}", strategy, request, category, parent.id if parent else None, child)
        )
    return out


def _realise(drafts: list[_Draft], strategies: Sequence[Strategy], rng: random.Random, state: SearchState) -> None:
    """Let each strategy finish its children of this round in one batch (the attacker LM writes pair attacks)."""
    for strategy in strategies:
        mine = [d for d in drafts if d.strategy is strategy]
        if not mine:
            continue
        done = strategy.realise([d.child for d in mine], rng)
        if strategy.name == PAIR:
            asked = sum(d.child.attacker_prompt is not None for d in mine)
            used = sum(c.style == PAIR_STYLE for c in done)
            state.attacker = state.attacker or {"asked": 0, "used": 0}
            state.attacker["asked"] += asked
            state.attacker["used"] += used
        for draft, child in zip(mine, done, strict=True):
            draft.child = child


def run_search(
    seeds: Sequence[Seed],
    target: Target,
    judge: Any,
    out: str | Path,
    settings: SearchSettings,
    *,
    fingerprint: dict[str, Any] | None = None,
    reference: Any = None,
    synonyms: dict[str, Sequence[str]] | None = None,
    attacker: Attacker | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> dict[str, Any]:
    """Run (or continue) the search in ``out`` until a budget runs out; returns what ``asr.json`` says.

    ``target`` answers a batch of conversations; ``judge`` has ``name`` and ``judge(prompts, responses)``;
    ``fingerprint`` is what must match for a saved state to be continued (model, prompts, judge, seed...).
    ``attacker`` (conversations, seed) -> texts is the pair strategy's attacker LM. In one iteration every child
    is answered and judged once per round; a pair child that failed is rewritten for the next round (up to
    ``pair_iterations``), the others are done after one.
    """
    if not seeds:
        raise ConfigError("no seed requests to attack (the prompt source gave none)")
    if PAIR in settings.strategies and attacker is None:
        raise ConfigError("strategies: pair needs an attacker model")
    strategies = build_strategies(
        settings.strategies,
        settings.styles,
        attacker=attacker,
        pair_iterations=settings.pair_iterations,
        escalation_turns=settings.escalation_turns,
        synonyms=synonyms,
    )
    styles = archive_styles(strategies, settings.styles)
    out = Path(out)
    fingerprint = {**(fingerprint or {}), "seed": settings.seed, "styles": list(settings.styles)}
    fingerprint["batch_size"] = settings.batch_size
    if settings.strategies != (MUTATION,):  # a mutation-only run keeps the fingerprint it had before strategies
        fingerprint["strategies"] = list(settings.strategies)
        fingerprint["pair_iterations"] = settings.pair_iterations if PAIR in settings.strategies else None
        fingerprint["escalation_turns"] = settings.escalation_turns if ESCALATION in settings.strategies else None
    state = load_state(out, fingerprint)
    categories = sorted({s.category for s in seeds})
    start = time.monotonic()
    while state.queries < settings.max_queries:
        if settings.max_seconds is not None and time.monotonic() - start >= settings.max_seconds:
            log(f"time budget of {settings.max_seconds:g}s reached")
            break
        rng = random.Random(f"{settings.seed}:{state.iteration}")
        drafts = _children(state, seeds, settings, strategies, rng)
        if not drafts:
            break
        began = time.monotonic()
        attempts = kept = 0
        while drafts:
            _realise(drafts, strategies, rng, state)
            conversations, spent = fill_placeholders([d.child.conversation for d in drafts], target)
            responses = target([list(c) for c in conversations])
            verdicts = judge.judge([d.request for d in drafts], responses)
            state.queries += spent + len(drafts)
            again: list[_Draft] = []
            for draft, conversation, response, verdict in zip(drafts, conversations, responses, verdicts, strict=True):
                entry = Entry(
                    id=draft.id,
                    category=draft.category,
                    style=draft.child.style,
                    request=draft.request,
                    conversation=conversation,
                    response=response,
                    verdict=verdict.label,
                    score=harm_score(judge.name, verdict),
                    parent=draft.parent,
                    iteration=state.iteration,
                    strategy=draft.strategy.name,
                )
                kept += state.archive.add(entry)
                attempts += 1
                if not entry.success and draft.round + 1 < draft.strategy.rounds:
                    # the next round reads this attack and the target's answer to it
                    answered = Parent(entry.request, entry.category, entry.style, tuple(conversation), response)
                    child = draft.strategy.propose(answered, rng)
                    next_id = f"{draft.id.split('.')[0]}.{draft.round + 1}"
                    again.append(
                        _Draft(next_id, draft.strategy, entry.request, entry.category, entry.id, child, draft.round + 1)
                    )
            drafts = again
        state.seconds += time.monotonic() - began
        state.iteration += 1
        summary = write_outputs(out, state, categories, styles, judge.name, reference)
        log(
            f"iteration {state.iteration}: {attempts} attacks, {kept} kept; "
            f"ASR {summary['overall']['asr']:.2f}, {summary['cells_filled']}/{summary['cells_total']} cells, "
            f"{state.queries}/{settings.max_queries} queries"
        )
    return write_outputs(out, state, categories, styles, judge.name, reference)


def reference_precision(archive: Archive, reference: Any) -> dict[str, Any] | None:
    """Of the archived successes, the share the world's reference judge calls a compliance (None: no successes)."""
    wins = archive.successes()
    if reference is None or not wins:
        return None
    verdicts = reference.judge([e.request for e in wins], [e.response for e in wins])
    confirmed = sum(v.label == "compliance" for v in verdicts)
    return {"n": len(wins), "confirmed": confirmed, "precision": confirmed / len(wins)}


def write_outputs(
    out: Path, state: SearchState, categories: Sequence[str], styles: Sequence[str], judge: str, reference: Any
) -> dict[str, Any]:
    """archive.jsonl, asr.json, asr.md, heatmap.png (when matplotlib imports) and state.json, each atomically.

    state.json goes last: a run killed in between redoes at most the files of an iteration it already counted.
    """
    summary = state.archive.summary(categories, styles)
    summary.update(
        judge=judge,
        iterations=state.iteration,
        queries=state.queries,
        seconds=round(state.seconds, 3),
        # attacks judged per second of search (generation and judging; a multi-turn attack is one attack)
        attacks_per_second=round(summary["overall"]["attempts"] / state.seconds, 3) if state.seconds > 0 else 0.0,
    )
    if state.attacker is not None:  # pair: how often the attacker LM's rewrite was usable
        summary["attacker"] = {**state.attacker, "fallbacks": state.attacker["asked"] - state.attacker["used"]}
    precision = reference_precision(state.archive, reference)
    if precision is not None:
        summary["judge_precision"] = precision
    write_jsonl_atomic(out / "archive.jsonl", (e.to_row() for e in state.archive.sorted_elites()))
    write_json_atomic(out / "asr.json", summary)
    write_text_atomic(out / "asr.md", asr_table(summary, categories, styles))
    heat_map(summary, categories, styles, out / "heatmap.png")
    write_json_atomic(out / STATE_FILE, state.to_json())
    return summary


def asr_table(summary: dict[str, Any], categories: Sequence[str], styles: Sequence[str]) -> str:
    """ASR per cell as a Markdown table (rows: categories; columns: styles; '-' where nothing was tried)."""
    lines = ["| category | " + " | ".join(styles) + " | all |", "|---" * (len(styles) + 2) + "|"]
    for category in categories:
        row = []
        for style in styles:
            cell = summary["cells"].get(f"{category}|{style}")
            row.append(f"{cell['asr']:.2f} ({cell['attempts']})" if cell else "-")
        by_category = summary["by_category"][category]
        row.append(f"{by_category['asr']:.2f}" if by_category["attempts"] else "-")
        lines.append(f"| {category} | " + " | ".join(row) + " |")
    by_style = summary["by_style"]
    lines.append(
        "| all | " + " | ".join(f"{by_style[s]['asr']:.2f}" if by_style[s]["attempts"] else "-" for s in styles)
    )
    lines[-1] += f" | {summary['overall']['asr']:.2f} |"
    overall = summary["overall"]
    lines += [
        "",
        f"ASR (attack success rate, judge: {summary.get('judge', '?')}) per cell, attempts in brackets. "
        f"Overall {overall['successes']}/{overall['attempts']}; {summary['cells_filled']} of "
        f"{summary['cells_total']} cells hold a successful attack.",
    ]
    if "judge_precision" in summary:
        p = summary["judge_precision"]
        lines.append(f"Judge precision on archived successes (reference judge): {p['precision']:.2f} of {p['n']}.")
    return "\n".join(lines) + "\n"


def heat_map(summary: dict[str, Any], categories: Sequence[str], styles: Sequence[str], path: Path) -> bool:
    """ASR per cell as an image; False (no file) when matplotlib is not installed (asr.md has the same numbers)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cells = summary["cells"]
    grid = [[cells[f"{c}|{s}"]["asr"] if f"{c}|{s}" in cells else math.nan for s in styles] for c in categories]
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(styles), 1.0 + 0.35 * len(categories)))
    # cells never tried are grey, told apart from cells tried and never broken
    colours = plt.get_cmap("magma_r").with_extremes(bad="lightgrey")
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap=colours, aspect="auto")
    ax.set_xticks(range(len(styles)), [s.replace("_", "\n") for s in styles], fontsize=8)
    ax.set_yticks(range(len(categories)), categories, fontsize=8)
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="tab:blue")
    fig.colorbar(image, ax=ax, label="attack success rate")
    ax.set_title(f"Red-team ASR by cell ({summary['queries']} queries)", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    finally:
        plt.close(fig)
    return True


def settings_dict(settings: SearchSettings) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}


__all__ = ["PLAIN", "STYLES", "SearchSettings", "Seed", "harm_score", "run_search", "seeds_from_prompts"]
