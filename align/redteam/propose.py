"""The constitution learns from red teaming: propose an amended version that targets the cells attacks broke.

``align constitution propose CONSTITUTION --evidence RUN_DIR [--candidates FILE] -o NEW.yaml`` reads a red-team
run (``asr.json`` and ``archive.jsonl`` of ``align redteam``), ranks its cells (risk category x attack style) by
attack success rate, and for the worst cells picks principles from a candidates file: for each cell, the most
specific candidate that says it addresses the cell's style and/or category (one naming both beats one naming
the style only, which beats a general one), skipping candidates the constitution already has and cells an
earlier pick already covers. The result is a new file, the input with the picks appended and its minor version
bumped, with a comment above each added principle and a changelog entry that cite the evidence (cells, ASR,
attempts), for a person to review and adopt; the input is never written.

With a feedback model (``--feedback-model``) each candidate that fits a worst cell is also scored, as the feedback
judge would use it: asked the candidate's own comparison question, how often does the model prefer a refusal
over the archived failing responses of the cells it addresses (``evidence``, higher is better), and over
helpful answers to benign controls (``controls``, a false alarm, lower is better)? A cell then gets the candidate
with the best ``evidence - controls`` (specificity breaks ties), and the scores go into the changelog.

Why a candidates file and not a model: the selection is what can be tested and trusted here (the tiny world's
model cannot write principles); a model-drafted candidate can be added to the file and goes through the same
selection.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from align.constitution.edit import _bump_yaml, _content_end, _dash_column, dump_constitution
from align.constitution.model import (
    Constitution,
    ConstitutionError,
    Principle,
    load_constitution,
    load_constitution_data,
    parse_constitution_text,
)
from align.constitution.versions import bump_version
from align.files import write_text_atomic

DEFAULT_CANDIDATES = Path(__file__).resolve().parents[2] / "constitutions" / "candidates" / "harmless.yaml"


class NothingToAmend(ConstitutionError):
    """The evidence holds no successful attack, or no new candidate addresses its worst cells."""


@dataclass(frozen=True)
class Candidate:
    """A principle that could be added, and the attack styles and risk categories it is written against."""

    principle: Principle
    styles: tuple[str, ...] = ()  # empty: any style
    categories: tuple[str, ...] = ()  # empty: any category

    def addresses(self, category: str, style: str) -> bool:
        return (not self.styles or style in self.styles) and (not self.categories or category in self.categories)

    def specificity(self, category: str, style: str) -> tuple:
        """Sort key: named both of the cell's facets first, then the fewest styles and categories, then the id."""
        named = (style in self.styles) + (category in self.categories)
        return (-named, len(self.styles) or math.inf, len(self.categories) or math.inf, self.principle.id)


@dataclass(frozen=True)
class FailingCell:
    category: str
    style: str
    asr: float
    successes: int
    attempts: int

    @property
    def key(self) -> str:
        return f"{self.category}|{self.style}"

    def describe(self) -> str:
        return f"{self.key} ASR {self.asr:.2f} ({self.successes}/{self.attempts})"


def load_candidates(path: str | os.PathLike) -> list[Candidate]:
    """Candidates from a YAML file: ``candidates: [{id, critique, revision, comparison, tags, addresses}]``.

    ``addresses: {styles: [...], categories: [...]}`` says what a candidate is for; each candidate's principle
    fields are checked as a constitution's would be (errors name the file).
    """
    source = os.fspath(path)
    try:
        data = yaml.safe_load(Path(source).read_text(encoding="utf-8"))
    except OSError as err:
        raise ConstitutionError(f"cannot read the candidates file ({err.strerror or err})", source=source) from None
    except yaml.YAMLError as err:
        raise ConstitutionError(f"not valid YAML ({err})", source=source) from None
    rows = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows:
        raise ConstitutionError("needs a non-empty 'candidates:' list of principles", source=source)
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ConstitutionError(f"candidates[{i}]: must be a mapping", source=source)
        row = dict(row)
        addresses = row.pop("addresses", {}) or {}
        if not isinstance(addresses, dict) or set(addresses) - {"styles", "categories"}:
            raise ConstitutionError(f"candidates[{i}].addresses: a mapping of styles and categories", source=source)
        lists = {k: addresses.get(k) or [] for k in ("styles", "categories")}
        if not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in lists.values()):
            raise ConstitutionError(
                f"candidates[{i}].addresses: styles and categories are lists of names", source=source
            )
        try:
            wrapped = load_constitution_data({"name": "candidates", "version": "0.0.0", "principles": [row]}, source)
        except ConstitutionError as err:
            raise ConstitutionError(f"candidates[{i}]: {err}", source=source) from None
        out.append(Candidate(wrapped.principles[0], tuple(lists["styles"]), tuple(lists["categories"])))
    ids = [c.principle.id for c in out]
    if len(set(ids)) != len(ids):
        raise ConstitutionError("candidate ids must be unique", source=source)
    return out


def failing_cells(run_dir: str | os.PathLike) -> list[FailingCell]:
    """The run's cells with at least one successful attack, worst (highest ASR, then most successes) first."""
    path = Path(run_dir) / "asr.json"
    try:
        summary = json.loads(path.read_text())
        cells = summary["cells"]
    except OSError:
        raise ConstitutionError(f"{path}: no red-team results here (run `align redteam -o {run_dir}` first)") from None
    except (ValueError, KeyError, TypeError):
        raise ConstitutionError(f"{path}: not an asr.json written by `align redteam`") from None
    out = [
        FailingCell(c["category"], c["style"], float(c["asr"]), int(c["successes"]), int(c["attempts"]))
        for c in cells.values()
        if c.get("successes", 0) > 0
    ]
    return sorted(out, key=lambda c: (-c.asr, -c.successes, c.key))


def fresh_candidates(constitution: Constitution, candidates: list[Candidate]) -> list[Candidate]:
    """The candidates the constitution does not have yet (by id or by critique text)."""
    have = {p.id for p in constitution.principles} | {p.critique for p in constitution.principles}
    return [c for c in candidates if c.principle.id not in have and c.principle.critique not in have]


def select(
    constitution: Constitution,
    candidates: list[Candidate],
    cells: list[FailingCell],
    *,
    max_cells: int,
    max_new: int,
    scores: dict[str, dict[str, float]] | None = None,
) -> list[tuple[Candidate, list[FailingCell]]]:
    """For the ``max_cells`` worst cells, one new candidate per cell: the best scored (``evidence - controls``)
    when ``scores`` are given, else the most specific. Each pick lists the failing cells (of all of them) it
    addresses, which is the evidence cited for it."""
    fresh = fresh_candidates(constitution, candidates)
    picks: list[Candidate] = []

    def rank(candidate: Candidate, cell: FailingCell) -> tuple:
        score = (scores or {}).get(candidate.principle.id)
        net = score["evidence"] - score.get("controls", 0.0) if score else 0.0
        return (-round(net, 6), candidate.specificity(cell.category, cell.style))

    for cell in cells[:max_cells]:
        if len(picks) >= max_new or any(p.addresses(cell.category, cell.style) for p in picks):
            continue
        matching = [c for c in fresh if c.addresses(cell.category, cell.style) and c not in picks]
        if matching:
            picks.append(min(matching, key=lambda c, cell=cell: rank(c, cell)))
    return [(p, [c for c in cells if p.addresses(c.category, c.style)]) for p in picks]


def failing_attacks(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The archive's successful attacks (rows of ``archive.jsonl``), for scoring candidates on the evidence."""
    path = Path(run_dir) / "archive.jsonl"
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        raise ConstitutionError(f"{path}: no archive to score candidates on") from None
    except ValueError:
        raise ConstitutionError(f"{path}: not an archive written by `align redteam`") from None
    return [r for r in rows if r.get("success")]


def score_candidates(
    constitution: Constitution,
    candidates: list[Candidate],
    attacks: list[dict[str, Any]],
    controls: list[tuple[str, str]],
    scorer: Any,
    refusal_for: Any,
    *,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Each candidate's ``evidence`` (mean P(refusal better) over the failing responses of the cells it addresses)
    and ``controls`` (the same over helpful answers to benign requests), asked its own comparison question in
    both orders by the feedback model behind ``scorer``."""
    from align.feedback.preferences import Pair, label_pairs

    def mean_p_refusal(pairs: list[Pair], candidate: Candidate) -> float | None:
        if not pairs:
            return None
        alone = dataclasses.replace(constitution, principles=(candidate.principle,))
        rows = label_pairs(pairs, alone, scorer, num_principles=1, seed=seed, both_orders=True)
        return sum(float(r["p_first_better"]) for r in rows) / len(rows)

    control_pairs = [Pair(prompt, refusal_for(prompt), response) for prompt, response in controls]
    out = {}
    for candidate in candidates:
        evidence = [
            Pair(a["conversation"][-1]["content"], refusal_for(a.get("request", "")), a["response"])
            for a in attacks
            if candidate.addresses(str(a.get("category")), str(a.get("style")))
        ]
        score = mean_p_refusal(evidence, candidate)
        if score is None:
            continue
        out[candidate.principle.id] = {"evidence": score, "n_evidence": float(len(evidence))}
        control = mean_p_refusal(control_pairs, candidate)
        if control is not None:
            out[candidate.principle.id].update(controls=control, n_controls=float(len(control_pairs)))
    return out


def _insert_principles(text: str, principles: list[tuple[Principle, list[str]]]) -> str:
    """``text`` with each principle appended to its block ``principles:`` list, a comment block above each."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    node = next((v for k, v in root.value if isinstance(k, yaml.ScalarNode) and k.value == "principles"), None)
    if not isinstance(node, yaml.SequenceNode) or node.flow_style or not node.value:
        raise ValueError("principles is not a block list")
    end = _content_end(node.value[-1])
    at = end.line + (1 if end.column > 0 else 0)
    dash = " " * _dash_column(text, root, "principles")
    block = []
    for principle, comments in principles:
        data = dataclasses.asdict(principle)
        data["tags"] = list(principle.tags)
        for key, default in (("comparison", None), ("tags", []), ("weight", 1.0)):
            if data[key] == default:
                del data[key]
        # flow style for lists of scalars only: `tags: [safety, jailbreak]`, as the shipped files write them
        dumped = yaml.safe_dump([data], sort_keys=False, allow_unicode=True, width=4096, default_flow_style=None)
        block.append("\n" + "".join(f"{dash}# {line}".rstrip() + "\n" for line in comments))
        block.append("".join(dash + line + "\n" for line in dumped.splitlines()))
    lines = text.splitlines(keepends=True)
    if at and not lines[at - 1].endswith("\n"):
        lines[at - 1] += "\n"
    lines[at:at] = block
    return "".join(lines)


def amended_text(
    path: str, old: Constitution, picks: list[tuple[Candidate, list[FailingCell]]], run_dir: str, message: str
) -> tuple[str, Constitution]:
    """The new file's text and constitution: the input's own text with the picks and the bump edited in (so its
    comments survive), or, when its layout does not allow that (JSON, flow lists), our own layout."""
    new_version = bump_version(old.version, "minor")
    if any(e["version"] == new_version for e in old.changelog):
        raise ConstitutionError(f"the changelog already has an entry for {new_version}", source=path)
    added = tuple(candidate.principle for candidate, _ in picks)
    expected = dataclasses.replace(
        old,
        principles=(*old.principles, *added),
        version=new_version,
        changelog=(*old.changelog, {"version": new_version, "message": message}),
    )
    comments = {
        c.principle.id: [
            ("Drafted by the feedback model and proposed" if "drafted" in c.principle.tags else "Proposed")
            + f" by `align constitution propose` from red-team evidence in {run_dir}:",
            *(f"  {cell.describe()}" for cell in cells),
            "Review before adopting.",
        ]
        for c, cells in picks
    }
    suffix = Path(path).suffix.lower()
    if suffix != ".json":
        try:
            text = Path(path).read_text(encoding="utf-8")
            text = text if text.endswith("\n") else text + "\n"
            inserted = _insert_principles(text, [(p, comments[p.id]) for p in added])
            with_principles = parse_constitution_text(inserted, path)
            bumped = _bump_yaml(inserted, with_principles, new_version, message)
            if parse_constitution_text(bumped, path) == expected:
                return bumped, expected
        except (ValueError, ConstitutionError, yaml.YAMLError):
            pass  # fall through to our own layout
    header = [f"{old.name} {new_version}: {message}"] + [line for p in added for line in comments[p.id]]
    return dump_constitution(expected, suffix or ".yaml", comments=header), expected


def propose(
    constitution_path: str,
    run_dir: str,
    output: str,
    *,
    candidates_path: str | None = None,
    max_cells: int = 3,
    max_new: int = 2,
    force: bool = False,
    scoring: dict[str, Any] | None = None,
    drafter: Any = None,
) -> dict[str, Any]:
    """Write the amended constitution to ``output`` (never over the input); returns what was chosen and why.

    ``scoring`` (``{"scorer", "refusal_for", "controls", "seed"}``) scores the candidates with a feedback model.
    ``drafter`` (conversations -> replies, :mod:`align.redteam.draft`) drafts one more candidate per worst cell;
    drafts are only ever picked on their scores, so a drafter needs ``scoring``.
    """
    if drafter is not None and scoring is None:
        raise ConstitutionError("drafted principles are picked on their scores: drafting needs a feedback model")
    if Path(output).resolve() == Path(constitution_path).resolve():
        raise ConstitutionError("the output must be a new file; propose never overwrites the constitution it reads")
    if Path(output).exists() and not force:
        raise ConstitutionError("already exists; pass --force to overwrite it", source=output)
    old = load_constitution(constitution_path)
    candidates = load_candidates(candidates_path or DEFAULT_CANDIDATES)
    cells = failing_cells(run_dir)
    if not cells:
        raise NothingToAmend(f"{run_dir}: the red-team run found no successful attacks; nothing to amend")
    drafts: dict[str, int] | None = None
    if drafter is not None:
        from align.redteam.draft import draft_candidates

        taken = {c.principle.id for c in candidates} | {c.principle.critique for c in candidates}
        taken |= {p.id for p in old.principles} | {p.critique for p in old.principles}
        drafted, drafts = draft_candidates(drafter, cells[:max_cells], failing_attacks(run_dir), taken)
        candidates = [*candidates, *drafted]
    scores = None
    if scoring is not None:
        worst = cells[:max_cells]
        fitting = [c for c in fresh_candidates(old, candidates) if any(c.addresses(x.category, x.style) for x in worst)]
        scores = score_candidates(
            old,
            fitting,
            failing_attacks(run_dir),
            scoring.get("controls", []),
            scoring["scorer"],
            scoring["refusal_for"],
            seed=scoring.get("seed", 0),
        )
    picks = select(old, candidates, cells, max_cells=max_cells, max_new=max_new, scores=scores)
    if not picks:
        worst = ", ".join(c.key for c in cells[:max_cells])
        raise NothingToAmend(f"no new candidate addresses the worst cells ({worst}); add candidates for them")

    def scored(candidate: Candidate) -> str:
        score = (scores or {}).get(candidate.principle.id)
        if not score:
            return ""
        controls = f", controls {score['controls']:.2f}" if "controls" in score else ""
        return f" (feedback model prefers a refusal: evidence {score['evidence']:.2f}{controls})"

    message = "Red-team amendment from {}: {}".format(
        Path(run_dir).name or run_dir,
        "; ".join(
            f"added {c.principle.id} for {', '.join(x.describe() for x in cells_)}{scored(c)}" for c, cells_ in picks
        ),
    )
    text, new = amended_text(constitution_path, old, picks, str(run_dir), message)
    write_text_atomic(output, text)
    return {
        "from": old.identity,
        "to": new.identity,
        "added": [
            {"id": c.principle.id, "cells": [x.describe() for x in cells_], "score": (scores or {}).get(c.principle.id)}
            for c, cells_ in picks
        ],
        "scores": scores,
        "worst_cells": [c.describe() for c in cells[:max_cells]],
        **({"drafts": drafts} if drafts is not None else {}),
    }
