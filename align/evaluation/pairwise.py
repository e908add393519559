"""Pairwise comparison against the base model: win rates and Elo, the CAI paper's Figure-2 view.

Each model's answer to a prompt is compared with the base model's answer to the same prompt by the
feedback model, which reads the constitution's comparison questions (harmlessness, on harmful prompts) or
our helpfulness questions (``data/helpfulness.yaml``, on benign prompts) under sampled principles in both
orders. An outcome is a win, a tie or a loss for the model; win rates count ties as half a win.

Elo ratings are the Bradley-Terry maximum-likelihood fit on the Elo scale: P(i beats j) =
1 / (1 + 10^((R_j - R_i) / 400)), with the base model anchored at 0. Against the base alone this is
R = 400 * log10(w / (1 - w)) for a win rate w; with games between other models too, all ratings are
fitted jointly. A model that wins (or loses) every game has no finite maximum-likelihood rating, so the
comparison adds ``prior_ties`` virtual tied games against the base per model (default 1), which keeps
every rating finite and moves a well-measured one little; the pure :func:`elo_ratings` uses none unless
asked and says when the fit does not exist.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

from align.feedback.preferences import OptionScorer, Pair, label_pairs

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per unit of natural-log strength


@dataclass(frozen=True)
class Outcome:
    """One comparison: ``score`` is ``model``'s result against ``opponent``: 1 win, 0.5 tie, 0 loss."""

    model: str
    opponent: str
    score: float

    def __post_init__(self) -> None:
        if self.score not in (0.0, 0.5, 1.0):
            raise ValueError(f"an outcome's score is 1 (win), 0.5 (tie) or 0 (loss), got {self.score}")
        if self.model == self.opponent:
            raise ValueError(f"{self.model!r} cannot play itself")


def outcome_score(p_model_better: float) -> float:
    """The judge's probability that the model's answer is better, as a result: win, tie (exactly 0.5) or loss."""
    return 1.0 if p_model_better > 0.5 else 0.0 if p_model_better < 0.5 else 0.5


def win_rates(outcomes: Sequence[Outcome]) -> dict[str, dict[str, float]]:
    """Per model, over every game it played (as ``model`` or as ``opponent``): n, wins, ties, losses, win_rate.

    win_rate = (wins + ties / 2) / n.
    """
    table: dict[str, dict[str, float]] = {}
    for o in outcomes:
        for name, score in ((o.model, o.score), (o.opponent, 1.0 - o.score)):
            row = table.setdefault(name, {"n": 0, "wins": 0, "ties": 0, "losses": 0, "win_rate": 0.0})
            row["n"] += 1
            row["win_rate"] += score  # the running total of points until divided below
            row["wins" if score == 1.0 else "losses" if score == 0.0 else "ties"] += 1
    for row in table.values():
        row["win_rate"] /= row["n"]
    return dict(sorted(table.items()))


def _reaches_everything(start: int, edges: list[set[int]]) -> bool:
    seen, stack = {start}, [start]
    while stack:
        for j in edges[stack.pop()] - seen:
            seen.add(j)
            stack.append(j)
    return len(seen) == len(edges)


def elo_ratings(
    outcomes: Sequence[Outcome], anchor: str, *, prior_ties: float = 0.0, tol: float = 1e-10, max_iter: int = 100
) -> dict[str, float]:
    """Bradley-Terry maximum-likelihood ratings on the Elo scale, ``anchor`` fixed at 0.

    A tie enters the likelihood as half a win and half a loss: score * log p + (1 - score) * log(1 - p). The fit is
    Newton's method on log-strengths, which converges in a handful of steps for any number of models.
    ``prior_ties`` adds that many tied games between each other model and the anchor.

    The maximum exists only if the "scored against" graph is strongly connected (every model has taken
    some points from, and given some points to, the rest, directly or through others); otherwise a rating
    runs off to infinity, and this raises ValueError naming the models it cannot rate.
    """
    if prior_ties < 0:
        raise ValueError("prior_ties must be >= 0")
    names = sorted({anchor} | {o.model for o in outcomes} | {o.opponent for o in outcomes})
    games = [(o.model, o.opponent, o.score, 1.0) for o in outcomes]  # (player, opponent, score, weight)
    if prior_ties > 0:
        games += [(name, anchor, 0.5, prior_ties) for name in names if name != anchor]
    index = {name: i for i, name in enumerate(names)}
    a = np.array([index[g[0]] for g in games], dtype=int)
    b = np.array([index[g[1]] for g in games], dtype=int)
    s = np.array([g[2] for g in games], dtype=float)
    w = np.array([g[3] for g in games], dtype=float)

    scored_against: list[set[int]] = [set() for _ in names]  # i -> j when i took points from j
    for i, j, score in zip(a, b, s):
        if score > 0:
            scored_against[i].add(j)
        if score < 1:
            scored_against[j].add(i)
    lost_to: list[set[int]] = [set() for _ in names]
    for i, targets in enumerate(scored_against):
        for j in targets:
            lost_to[j].add(i)
    if len(names) > 1 and not (
        _reaches_everything(index[anchor], scored_against) and _reaches_everything(index[anchor], lost_to)
    ):
        raise ValueError(
            "no finite Bradley-Terry ratings: some model won (or lost) every game it played against the others "
            f"(models: {', '.join(names)}); pass prior_ties > 0"
        )

    free = [i for i in range(len(names)) if i != index[anchor]]
    theta = np.zeros(len(names))

    def log_likelihood(t: np.ndarray) -> float:
        d = t[a] - t[b]
        return float(np.sum(w * (s * -np.logaddexp(0, -d) + (1 - s) * -np.logaddexp(0, d))))

    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[a] - theta[b])))
        grad = np.zeros(len(names))
        np.add.at(grad, a, w * (s - p))
        np.add.at(grad, b, -w * (s - p))
        if np.max(np.abs(grad[free]), initial=0.0) < tol:
            break
        info = np.zeros((len(names), len(names)))  # the negative Hessian
        v = w * p * (1 - p)
        np.add.at(info, (a, a), v)
        np.add.at(info, (b, b), v)
        np.add.at(info, (a, b), -v)
        np.add.at(info, (b, a), -v)
        step = np.zeros(len(names))
        step[free] = np.linalg.solve(info[np.ix_(free, free)], grad[free])
        current, scale = log_likelihood(theta), 1.0
        while log_likelihood(theta + scale * step) < current and scale > 1e-8:  # backtrack if Newton overshoots
            scale /= 2
        theta = theta + scale * step
    return {name: float(ELO_SCALE * theta[index[name]]) for name in names}


# ---------------------------------------------------------------------------------------------------
# Asking the feedback model


def helpfulness_constitution():
    """Our helpfulness comparison questions, shipped with the package (``data/helpfulness.yaml``)."""
    from align.constitution import load_constitution

    with resources.as_file(resources.files("align.evaluation") / "data" / "helpfulness.yaml") as path:
        return load_constitution(path)


def compare_with_base(
    prompts: Sequence[str],
    responses: Mapping[str, Sequence[str]],
    base: str,
    scorer: OptionScorer,
    constitution,
    *,
    num_principles: int = 4,
    seed: int = 0,
    prior_ties: float = 1.0,
) -> dict:
    """Every model's answers against ``base``'s, prompt by prompt, judged by the feedback model.

    ``responses`` maps each model name (the base included) to its answers, in the order of ``prompts``.
    Returns ``{"win_rate": {model: w}, "elo": {model: R}, "n": {model: n}, "wins"/"ties"/"losses": {...}}``
    for every model but the base (whose Elo, 0, is included). Identical answers tie without a query.
    """
    if base not in responses:
        raise ValueError(f"no responses from the base model {base!r}; models: {', '.join(responses)}")
    for name, answers in responses.items():
        if len(answers) != len(prompts):
            raise ValueError(f"{name}: {len(answers)} responses for {len(prompts)} prompts")
    others = [name for name in responses if name != base]
    outcomes: list[Outcome] = []
    for name in others:
        # One labelling per model, with the same seed: a model's games depend on its answers and the base's only,
        # never on which other models are compared in the same run.
        asked: list[Pair] = []
        for prompt, mine, theirs in zip(prompts, responses[name], responses[base]):
            if mine.strip() == theirs.strip():
                outcomes.append(Outcome(name, base, 0.5))
            else:
                asked.append(Pair(prompt, mine, theirs))
        if asked:
            rows = label_pairs(asked, constitution, scorer, num_principles=num_principles, seed=seed, both_orders=True)
            outcomes += [Outcome(name, base, outcome_score(row["p_first_better"])) for row in rows]
    rates = win_rates(outcomes)
    elo = elo_ratings(outcomes, base, prior_ties=prior_ties) if outcomes else {base: 0.0}
    result: dict[str, dict[str, float]] = {key: {} for key in ("win_rate", "elo", "n", "wins", "ties", "losses")}
    for name in others:
        for key in ("win_rate", "n", "wins", "ties", "losses"):
            result[key][name] = rates[name][key] if name in rates else 0
        result["elo"][name] = elo.get(name, 0.0)
    result["elo"][base] = 0.0
    return result


def harmlessness_and_helpfulness(
    harmful_prompts: Sequence[str],
    harmful_responses: Mapping[str, Sequence[str]],
    benign_prompts: Sequence[str],
    benign_responses: Mapping[str, Sequence[str]],
    base: str,
    scorer: OptionScorer,
    constitution,
    *,
    helpfulness=None,
    num_principles: int = 4,
    seed: int = 0,
    prior_ties: float = 1.0,
) -> dict:
    """Harmlessness (harmful prompts, the constitution's questions) and helpfulness (benign prompts, our
    helpfulness questions or ``helpfulness``), each as :func:`compare_with_base` returns it."""
    common = {"num_principles": num_principles, "seed": seed, "prior_ties": prior_ties}
    return {
        "harmlessness": compare_with_base(harmful_prompts, harmful_responses, base, scorer, constitution, **common),
        "helpfulness": compare_with_base(
            benign_prompts, benign_responses, base, scorer, helpfulness or helpfulness_constitution(), **common
        ),
    }
