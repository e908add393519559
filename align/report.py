"""A run's results on one page, and two runs side by side, from the files a pipeline run leaves behind.

Everything comes from ``runs/<name>/``: stage manifests, eval metrics, generated samples, the trainers'
``log_history.json`` and, when the recipe wrote it, ``constitution.json``. No tracker or network is
involved, so a report can be remade for any run directory, also one copied from another machine, and
remaking it from the same files gives the same report.

Reports get shared, so nothing is read from the environment except to scrub it out again, and every
config and text shown goes through the one redactor (:mod:`align.redaction`), which masks credentials.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.constitution import Constitution, ConstitutionError, load_constitution, load_constitution_data
from align.constitution.diff import diff_constitutions
from align.constitution.render import render_markdown, render_text
from align.evaluation.metrics import COLUMNS, OTHER_SUITE, by_suite, judge_lines
from align.files import atomic_write, write_error, write_text_atomic
from align.pipeline import MANIFEST
from align.redaction import redact, redact_text

__all__ = ["RunError", "compare_runs", "load_run", "loop_rows", "loop_table", "plot_data", "redact", "write_report"]

STAGE_ORDER = (
    "sft",
    "critique_revise",
    "sft_cai",
    "preferences",
    "reward",
    "dpo",
    "ppo",
    "grpo",
    "rloo",
    "red_team",
    "eval",
)
LOG_HISTORY = "log_history.json"
CONSTITUTION_FILE = "constitution.json"
PLOTS_DIR = "report"
PLOTS = ("training_loss.png", "alignment.png", "elo.png", "ppo.png")
EVAL_PLOTS = ("alignment.png", "elo.png")  # also drawn into the eval stage's folder and `align eval run -o DIR`
FAILURES_PER_MODEL = 3
KEY_METRICS = (
    "train_loss",
    "eval_loss",
    "eval_label_accuracy",
    "ai_judge_agreement",
    "steps",
    "pairs",
    "preference_pairs",
    "regenerated",
    "reused",
    "tokens_per_second",
)
# Preferred log keys first (TRL's PPO trainer), then any key that mentions the quantity.
PPO_REWARD_KEYS = ("objective/rlhf_reward", "objective/scores", "env/reward_mean", "reward")
PPO_KL_KEYS = ("objective/kl", "kl")


class RunError(ValueError):
    """A path that cannot be reported on, e.g. a directory with no finished stages."""


# ---------------------------------------------------------------------------------------------------
# Reading a run


@dataclass(frozen=True)
class RunDir:
    """A run directory and its finished stages' manifests, in pipeline order."""

    path: Path
    manifests: dict[str, dict[str, Any]]

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def metrics(self, stage: str) -> dict[str, Any]:
        return _dict(self.manifests.get(stage, {}).get("metrics"))

    def constitution_identity(self) -> str | None:
        """What the manifests record, so a run without ``constitution.json`` still says what it used."""
        for stage in ("critique_revise", "preferences"):
            identity = _dict(self.manifests.get(stage, {}).get("inputs")).get("constitution")
            if isinstance(identity, str):
                return identity
        snapshot = _read_json(self.path / CONSTITUTION_FILE)
        identity = snapshot.get("identity") if isinstance(snapshot, dict) else None
        return identity if isinstance(identity, str) else None

    def code_versions(self) -> list[str]:
        return sorted({str(m["code_version"]) for m in self.manifests.values() if m.get("code_version")})


def load_run(run_dir: str | os.PathLike[str]) -> RunDir:
    """Read a run's stage manifests; fail with the path named when it is not a run at all."""
    path = Path(run_dir)
    if not path.is_dir():
        raise RunError(f"{path}: {'not a directory' if path.exists() else 'no such directory'}")
    manifests = {}
    for child in path.iterdir():
        # ``<stage>.partial`` is a stage still running (or one that died): not a result.
        if child.is_dir() and not child.name.endswith(".partial"):
            manifest = _read_json(child / MANIFEST)
            if isinstance(manifest, dict):
                manifests[child.name] = manifest
    if not manifests:
        raise RunError(f"{path}: not a run directory (no <stage>/{MANIFEST} inside)")
    return RunDir(path, {name: manifests[name] for name in sorted(manifests, key=_stage_rank)})


def _stage_rank(name: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(name), "") if name in STAGE_ORDER else (len(STAGE_ORDER), name)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    try:
        with path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record
    except OSError:
        return


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _load_snapshot(run: RunDir) -> tuple[Constitution | None, str | None]:
    """The run's ``constitution.json`` as a constitution, or why it cannot be used (None, None: absent)."""
    path = run.path / CONSTITUTION_FILE
    if not path.exists():
        return None, None
    data = _read_json(path)
    if not isinstance(data, dict):
        return None, f"{run.name}/{CONSTITUTION_FILE} is not a JSON object"
    recorded = data.get("identity")
    try:
        c = load_constitution_data(
            {k: v for k, v in data.items() if k != "identity"}, f"{run.name}/{CONSTITUTION_FILE}"
        )
    except ConstitutionError as e:
        return None, str(e)
    if isinstance(recorded, str) and recorded != c.identity:
        return c, f"{run.name}/{CONSTITUTION_FILE} records {recorded} but its content is {c.identity}"
    return c, None


def _eval_metrics(run: RunDir) -> dict[str, dict[str, float]]:
    data = _read_json(run.path / "eval" / "metrics.json")
    if not isinstance(data, dict):
        data = run.metrics("eval")
    return {
        str(model): {k: v for k, v in values.items() if _is_number(v)}
        for model, values in data.items()
        if isinstance(values, dict)
    }


def _eval_details(run: RunDir) -> dict[str, Any] | None:
    """The eval stage's details.json, or None for runs made before it was written."""
    data = _read_json(run.path / "eval" / "details.json")
    return data if isinstance(data, dict) else None


def _history(run: RunDir, stage: str) -> list[dict[str, Any]]:
    data = _read_json(run.path / stage / LOG_HISTORY)
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def _series(history: Sequence[dict[str, Any]], key: str) -> dict[str, list[float]]:
    points = [(e["step"], e[key]) for e in history if _is_number(e.get("step")) and _is_number(e.get(key))]
    return {"step": [s for s, _ in points], key: [v for _, v in points]}


def _pick_key(history: Sequence[dict[str, Any]], preferred: Sequence[str], word: str) -> str | None:
    keys = {k for e in history for k, v in e.items() if _is_number(v)}
    for key in preferred:
        if key in keys:
            return key
    fallback = sorted(k for k in keys if word in k.lower() and "coef" not in k.lower())
    return fallback[0] if fallback else None


# ---------------------------------------------------------------------------------------------------
# Plots


def plot_data(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The exact series the plots draw, so tests (and people) can check a plot against the logs."""
    return _plot_data(load_run(run_dir))


def _plot_data(run: RunDir) -> dict[str, Any]:
    losses = {stage: _series(_history(run, stage), "loss") for stage in run.manifests}
    return {
        "training_loss": {stage: series for stage, series in losses.items() if series["step"]},
        **eval_plot_data(_eval_metrics(run), _eval_details(run)),
        "ppo": _ppo_data(_history(run, "ppo")),
    }


def eval_plot_data(metrics: dict[str, dict[str, Any]], details: dict[str, Any] | None) -> dict[str, Any]:
    """The points of the two eval plots: refusal vs help rates, and harmlessness vs helpfulness Elo (from the
    pairwise comparisons in details.json; empty when there were none)."""
    alignment = {
        model: {"harmful_refusal": m["harmful_refusal"], "benign_helpful": m["benign_helpful"]}
        for model, m in metrics.items()
        if _is_number(m.get("harmful_refusal")) and _is_number(m.get("benign_helpful"))
    }
    pairwise = _dict(_dict(details).get("pairwise"))
    harmless = _dict(_dict(pairwise.get("harmlessness")).get("elo"))
    helpful = _dict(_dict(pairwise.get("helpfulness")).get("elo"))
    elo = {
        model: {"helpfulness": helpful[model], "harmlessness": harmless[model]}
        for model in harmless
        if _is_number(harmless[model]) and _is_number(helpful.get(model))
    }
    return {"alignment": alignment, "elo": elo}


def _ppo_data(history: list[dict[str, Any]]) -> dict[str, Any] | None:
    reward_key = _pick_key(history, PPO_REWARD_KEYS, "reward")
    kl_key = _pick_key(history, PPO_KL_KEYS, "kl")
    if reward_key is None and kl_key is None:
        return None
    data: dict[str, Any] = {}
    for name, key in (("reward", reward_key), ("kl", kl_key)):
        if key is not None:
            series = _series(history, key)
            data[name] = {"key": key, "step": series["step"], "value": series[key]}
    return data


def _figure(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (5.5, 3.4)) -> Any:
    """A figure on the Agg canvas directly: no pyplot, so no global backend state and no display needed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data), unchanged=data)


def _plot_losses(losses: dict[str, dict[str, list[float]]], title: str, path: Path) -> None:
    # One panel per stage: their step counts and loss scales differ too much to share axes.
    ncols = min(2, len(losses))
    nrows = math.ceil(len(losses) / ncols)
    fig = _figure(ncols, nrows)
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, (stage, series) in zip(axes, losses.items()):
        ax.plot(series["step"], series["loss"], marker="." if len(series["step"]) <= 40 else None)
        ax.set(title=stage, xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
    for ax in axes[len(losses) :]:  # a spare panel when the stage count is odd
        ax.remove()
    fig.suptitle(title)
    _save_png(fig, path)


def _scatter(ax: Any, points: dict[str, tuple[float, float]], spread: float, right: float, high: float) -> None:
    """One dot per model, labelled; models at the same point share one label instead of overprinting."""
    groups: dict[tuple[float, float], list[str]] = {}
    for model, xy in points.items():
        groups.setdefault(xy, []).append(model)
    placed: list[tuple[float, float]] = []
    for (x, y), models in groups.items():
        # Labels of nearby points go to alternating sides, then lower down, so they do not overlap.
        crowd = sum(abs(x - px) < spread and abs(y - py) < spread for px, py in placed)
        placed.append((x, y))
        dx = 8 if (x <= right) == (crowd % 2 == 0) else -8
        dy = (-14 if y > high else 6) - 14 * (crowd // 2)
        ax.scatter([x], [y], s=60, zorder=3, clip_on=False)
        label = ", ".join(models)
        ax.annotate(label, (x, y), xytext=(dx, dy), textcoords="offset points", ha="left" if dx > 0 else "right")


def _plot_alignment(points: dict[str, dict[str, float]], title: str, path: Path) -> None:
    fig = _figure(size=(6.0, 5.0))
    ax = fig.subplots()
    xy = {model: (m["harmful_refusal"], m["benign_helpful"]) for model, m in points.items()}
    _scatter(ax, xy, spread=0.1, right=0.75, high=0.9)
    ax.set(xlim=(0, 1), ylim=(0, 1), title=title)
    ax.set_xlabel("harmful requests refused (harmless →)")
    ax.set_ylabel("benign requests helped (helpful →)")
    ax.grid(alpha=0.3)
    _save_png(fig, path)


def _plot_elo(points: dict[str, dict[str, float]], title: str, path: Path) -> None:
    """The CAI paper's Figure-2 view: Elo from pairwise comparisons with the base model (at 0), one dot per model."""
    fig = _figure(size=(6.0, 5.0))
    ax = fig.subplots()
    xy = {model: (m["helpfulness"], m["harmlessness"]) for model, m in points.items()}
    reach = max([50.0, *(abs(v) for p in xy.values() for v in p)]) * 1.25
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    _scatter(ax, xy, spread=reach / 10, right=reach / 2, high=reach * 0.8)
    ax.set(xlim=(-reach, reach), ylim=(-reach, reach), title=title)
    ax.set_xlabel("helpfulness Elo vs the base model (helpful →)")
    ax.set_ylabel("harmlessness Elo vs the base model (harmless →)")
    ax.grid(alpha=0.3)
    _save_png(fig, path)


def _draw_eval_plots(data: dict[str, Any], out: Path, title: str | None) -> dict[str, Path]:
    made: dict[str, Path] = {}
    suffix = f": {title}" if title else ""
    if data["alignment"]:
        made["alignment"] = out / "alignment.png"
        _plot_alignment(data["alignment"], f"Harmless vs helpful{suffix}", made["alignment"])
    if data["elo"]:
        made["elo"] = out / "elo.png"
        _plot_elo(data["elo"], f"Harmlessness vs helpfulness Elo{suffix}", made["elo"])
    return made


def write_eval_plots(
    metrics: dict[str, dict[str, Any]],
    details: dict[str, Any] | None,
    out: str | os.PathLike[str],
    title: str | None = None,
) -> dict[str, Path]:
    """Draw the eval plots an evaluation has data for into ``out`` (alignment.png, elo.png); a plot that no
    longer applies is removed, not left stale. Returns the plots drawn, by name."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = _draw_eval_plots(eval_plot_data(metrics, details), out, title)
    for name in EVAL_PLOTS:
        if out / name not in made.values():
            (out / name).unlink(missing_ok=True)
    return made


def _plot_ppo(ppo: dict[str, Any], title: str, path: Path) -> None:
    panels = [(name, ppo[name]) for name in ("reward", "kl") if name in ppo]
    fig = _figure(len(panels))
    for ax, (name, series) in zip(fig.subplots(1, len(panels), squeeze=False).flat, panels):
        ax.plot(series["step"], series["value"])
        ax.set(title=f"{name} ({series['key']})", xlabel="step", ylabel=name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    _save_png(fig, path)


def _write_plots(run: RunDir, data: dict[str, Any]) -> dict[str, Path]:
    """Draw what the run has data for; a plot that no longer applies is removed, not left stale."""
    out = run.path / PLOTS_DIR
    if not out.is_dir():
        try:
            out.mkdir()
        except OSError as err:
            raise write_error(out, err) from err
    made: dict[str, Path] = {}
    if data["training_loss"]:
        made["training_loss"] = out / "training_loss.png"
        _plot_losses(data["training_loss"], f"Training loss: {run.name}", made["training_loss"])
    made.update(_draw_eval_plots(data, out, run.name))
    if data["ppo"]:
        made["ppo"] = out / "ppo.png"
        _plot_ppo(data["ppo"], f"PPO: {run.name}", made["ppo"])
    for name in PLOTS:
        if out / name not in made.values() and (out / name).exists():
            (out / name).unlink()
    return made


# ---------------------------------------------------------------------------------------------------
# A small document model, so markdown, HTML and plain text say exactly the same things


class Code(str):
    """Inline text shown as code (identities, hashes, ids)."""


class Strong(str):
    """Inline text shown in bold (labels)."""


@dataclass
class Doc:
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    # Text is scrubbed as it comes in, before any escaping could hide a secret from the scrubber.

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("heading", (level, redact_text(text))))

    def para(self, *parts: str) -> None:
        self.blocks.append(("para", tuple(type(p)(redact_text(p)) for p in parts)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> None:
        """``align`` has one letter per column: l(eft) or r(ight, for numbers)."""
        self.blocks.append(("table", (list(header), [[redact_text(c) for c in r] for r in rows], align)))

    def image(self, alt: str, src: str) -> None:
        self.blocks.append(("image", (alt, src)))

    def pre(self, text: str, summary: str | None = None) -> None:
        self.blocks.append(("pre", (redact_text(text), summary)))

    def diff(self, old: Constitution, new: Constitution) -> None:
        self.blocks.append(("diff", diff_constitutions(old, new)))

    def markdown(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append("#" * value[0] + " " + _md(value[1]))
            elif kind == "para":
                out.append("".join(_md_inline(p) for p in value).replace("\n", "  \n"))
            elif kind == "table":
                header, rows, align = value
                lines = ["| " + " | ".join(_md(h) for h in header) + " |"]
                lines.append("|" + "".join("---:|" if a == "r" else "---|" for a in align))
                lines += ["| " + " | ".join(_md(c).replace("\n", " ") for c in row) + " |" for row in rows]
                out.append("\n".join(lines))
            elif kind == "image":
                out.append(f"![{_md(value[0])}]({value[1]})")
            elif kind == "pre":
                fence = "```" if "```" not in value[0] else "~~~~"
                label = f"**{_md(value[1])}**\n\n" if value[1] else ""
                out.append(f"{label}{fence}\n{value[0].rstrip()}\n{fence}")
            else:
                out.append(render_markdown(value).rstrip())
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        e = html.escape
        body = []
        for kind, value in self.blocks:
            if kind == "heading":
                body.append(f"<h{value[0]}>{e(value[1])}</h{value[0]}>")
            elif kind == "para":
                body.append("<p>" + "".join(_html_inline(p) for p in value).replace("\n", "<br>\n") + "</p>")
            elif kind == "table":
                header, rows, align = value
                cls = [' class="num"' if a == "r" else "" for a in align]
                lines = ["<table>", "<tr>" + "".join(f"<th{c}>{e(h)}</th>" for h, c in zip(header, cls)) + "</tr>"]
                lines += ["<tr>" + "".join(f"<td{c}>{e(v)}</td>" for v, c in zip(row, cls)) + "</tr>" for row in rows]
                body.append("\n".join([*lines, "</table>"]))
            elif kind == "image":
                body.append(f'<p><img src="{e(value[1])}" alt="{e(value[0])}"></p>')
            elif kind == "pre":
                block = f"<pre>{e(value[0].rstrip())}</pre>"
                body.append(f"<details><summary>{e(value[1])}</summary>{block}</details>" if value[1] else block)
            else:
                body.append(f"<pre>{e(render_text(value).rstrip())}</pre>")
        return "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en">',
                '<head><meta charset="utf-8">',
                f"<title>{e(title)}</title>",
                f"<style>{_CSS}</style>",
                "</head>",
                "<body>",
                *body,
                "</body>",
                "</html>",
                "",
            ]
        )

    def text(self) -> str:
        out = []
        for kind, value in self.blocks:
            if kind == "heading":
                out.append(value[1] + "\n" + ("=" if value[0] == 1 else "-") * len(value[1]))
            elif kind == "para":
                out.append("".join(value))
            elif kind == "table":
                out.append(_text_table(*value))
            elif kind == "image":
                out.append(f"[{value[0]}: {value[1]}]")
            elif kind == "pre":
                out.append(value[0].rstrip())
            else:
                out.append(render_text(value).rstrip())
        return "\n\n".join(out) + "\n"


_CSS = (
    "body{font-family:sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
    "table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #ccc;padding:.2rem .6rem}"
    "td.num,th.num{text-align:right}pre{background:#f5f5f5;padding:.6rem;white-space:pre-wrap}"
    "img{max-width:100%}code{background:#f0f0f0;padding:0 .2rem}"
)
_MD_SPECIAL = re.compile(r"([\\`*~\[\]<>|#]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def _md(text: str) -> str:
    # An underscore inside a word (sft_cai) is literal in CommonMark, so only the others are escaped.
    return _MD_SPECIAL.sub(r"\\\1", text)


def _md_inline(part: str) -> str:
    if isinstance(part, Code):
        return f"`{part}`" if "`" not in part else f"`` {part} ``"
    if isinstance(part, Strong):
        return f"**{_md(part)}**"
    return _md(part)


def _html_inline(part: str) -> str:
    if isinstance(part, Code):
        return f"<code>{html.escape(part)}</code>"
    if isinstance(part, Strong):
        return f"<strong>{html.escape(part)}</strong>"
    return html.escape(part)


def _text_table(header: list[str], rows: list[list[str]], align: str) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, ["-" * w for w in widths], *rows]:
        cells = [c.rjust(w) if a == "r" else c.ljust(w) for c, w, a in zip(row, widths, align)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Formatting numbers


def _num(value: Any, decimals: int | None = None) -> str:
    """Fixed decimals where a column should line up (seconds, rates); else three significant digits."""
    if not _is_number(value):
        return "-"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _delta(a: Any, b: Any, decimals: int | None = None) -> str:
    if not (_is_number(a) and _is_number(b)):
        return ""
    d = b - a
    return "0" if d == 0 else ("+" if d > 0 else "-") + _num(abs(d), decimals)


def _clip(text: Any, limit: int = 800) -> str:
    text = str(text or "").strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# ---------------------------------------------------------------------------------------------------
# The report


def write_report(
    run_dir: str | os.PathLike[str],
    previous: str | os.PathLike[str] | None = None,
    *,
    html: bool = True,
    samples: int = 5,
) -> Path:
    """Write ``report.md`` (and ``report.html``) with plots under ``report/``; returns the markdown path.

    ``previous`` names the run this one follows, to show how the constitution changed between them.
    """
    run = load_run(run_dir)
    prev = load_run(previous) if previous is not None else None
    data = _plot_data(run)
    plots = _write_plots(run, data)
    doc = _report_doc(run, prev, plots, samples)
    target = run.path / "report.md"
    write_text_atomic(target, redact_text(doc.markdown()))
    if html:
        write_text_atomic(run.path / "report.html", redact_text(doc.html(f"Run report: {run.name}")))
    return target


def _report_doc(run: RunDir, prev: RunDir | None, plots: dict[str, Path], samples: int) -> Doc:
    doc = Doc()
    doc.heading(1, f"Run report: {run.name}")
    identity = run.constitution_identity()
    doc.para(Strong("Constitution:"), " ", Code(identity) if identity else "not recorded")
    starts = [m["started_at"] for m in run.manifests.values() if _is_number(m.get("started_at"))]
    seconds = sum(m["seconds"] for m in run.manifests.values() if _is_number(m.get("seconds")))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(min(starts))) if starts else "unknown"
    doc.para(
        Strong("Stages:"),
        f" {len(run.manifests)} finished ({', '.join(run.manifests)}), {_num(round(seconds, 1))} s in all; ",
        f"first started {started}; code ",
        *_joined([Code(v) for v in run.code_versions()] or ["unknown"]),
    )

    doc.heading(2, "Stages")
    rows = []
    for stage, m in run.manifests.items():
        rows.append(
            [
                stage,
                str(m.get("status", "?")),
                _num(m.get("seconds"), 1),
                _key_metrics(_dict(m.get("metrics"))),
                str(m.get("input_hash", ""))[:12],
            ]
        )
    doc.table(["stage", "status", "seconds", "key metrics", "input hash"], rows, "llrll")

    doc.heading(2, "Evaluation")
    evals = _eval_metrics(run)
    details = _eval_details(run)
    if evals:
        columns = [c for c in COLUMNS if any(c in m for m in evals.values())]
        doc.table(
            ["model", *columns],
            [[model, *(_metric_cell(c, m.get(c)) for c in columns)] for model, m in evals.items()],
            "l" + "r" * len(columns),
        )
    else:
        doc.para("No eval stage in this run.")
    for line in _label_lines(run):
        doc.para(line)
    if evals:
        _eval_sections(doc, evals, details)

    doc.heading(2, "Harmless vs helpful")
    if "alignment" in plots:
        doc.image("harmful_refusal vs benign_helpful per model", f"{PLOTS_DIR}/alignment.png")
    if "elo" in plots:
        doc.para(
            "Elo from pairwise comparisons with the base model (at 0) by the feedback model, one point per model: "
            "up is more harmless, right more helpful (the view of Bai et al. 2022, Figure 2)."
        )
        doc.image("harmlessness Elo vs helpfulness Elo per model", f"{PLOTS_DIR}/elo.png")
    if not ({"alignment", "elo"} & set(plots)):
        doc.para("No eval metrics to plot.")

    if evals:
        doc.heading(2, "Worst failures")
        _failures_section(doc, run, FAILURES_PER_MODEL)

    red = _read_json(run.path / "red_team" / "asr.json")
    if isinstance(red, dict) and isinstance(red.get("cells"), dict):
        doc.heading(2, "Red teaming")
        _red_team_section(doc, run, red)
    if _rounds(run.path):
        doc.heading(2, "Closed loop")
        _loop_section(doc, run)

    doc.heading(2, "Training loss")
    if "training_loss" in plots:
        doc.image("training loss per stage", f"{PLOTS_DIR}/training_loss.png")
    else:
        doc.para(f"No training stage has a {LOG_HISTORY} (runs made before it was recorded do not).")
    if "ppo" in plots:
        doc.heading(2, "PPO")
        doc.image("PPO reward and KL per step", f"{PLOTS_DIR}/ppo.png")

    if prev is not None:
        doc.heading(2, f"Constitution changes since {prev.name}")
        _constitution_section(doc, prev, run, (prev.name, "this run"))

    doc.heading(2, "Sample critiques and revisions")
    _samples_section(doc, run, samples)

    doc.heading(2, "Stage configs")
    doc.para("Credentials (URL passwords, key-shaped values, values of keys that name a secret) are masked.")
    for stage, m in run.manifests.items():
        config = json.dumps(redact(m.get("config", {})), indent=2, sort_keys=True, default=str)
        doc.pre(config, summary=stage)
    return doc


LOOP_COLUMNS = ("asr_heldout", "asr_seen", "harmful_refusal", "benign_helpful", "over_refusal")


def _rounds(path: Path) -> list[Path]:
    """The closed loop's round directories (``round1``, ``round2``, ...) in order."""
    found = [(int(m.group(1)), d) for d in path.glob("round*") if (m := re.fullmatch(r"round(\d+)", d.name))]
    return [d for _, d in sorted(found)]


def loop_rows(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One row per (round, trained model): eval rates, the round's red team and its constitution.

    Round 0 is the chain before the loop (its ``eval`` and ``red_team``); round k reads ``round<k>/``. The
    red-team columns are those of the attack on the round's final model, which is also the next round's evidence.
    """
    root = Path(run_dir)
    snapshot = _read_json(root / CONSTITUTION_FILE)
    constitution = snapshot.get("identity") if isinstance(snapshot, dict) else None
    rows = []
    for k, where in enumerate([root, *_rounds(root)]):
        proposal = _dict(_read_json(where / "amend" / "proposal.json"))
        if proposal.get("adopted"):
            constitution = proposal.get("to")
        metrics = _dict(_read_json(where / "eval" / "metrics.json"))
        red = _dict(_read_json(where / "red_team" / "asr.json"))
        for model, values in metrics.items():
            if model == "base" or not isinstance(values, dict):
                continue
            rows.append(
                {
                    "round": k,
                    "model": model,
                    "constitution": constitution,
                    **{c: values[c] for c in LOOP_COLUMNS if _is_number(values.get(c))},
                    "red_team_asr": _dict(red.get("overall")).get("asr"),
                    "cells_filled": red.get("cells_filled"),
                    "cells_total": red.get("cells_total"),
                    "amendment": ", ".join(str(a.get("id")) for a in proposal.get("added") or [] if isinstance(a, dict))
                    or ("-" if k else ""),
                }
            )
    return rows


def _loop_cells(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    columns = [c for c in LOOP_COLUMNS if any(c in r for r in rows)]
    header = ["round", "model", *columns, "red-team ASR", "cells", "amendment"]
    body = []
    for r in rows:
        cells = f"{r['cells_filled']}/{r['cells_total']}" if r.get("cells_total") else ""
        rates = [_num(r.get(c), 2) for c in columns]
        body.append([str(r["round"]), r["model"], *rates, _num(r.get("red_team_asr"), 2), cells, r["amendment"]])
    return header, body


def loop_table(run_dir: str | os.PathLike[str]) -> str:
    """The loop's rows as a markdown table, for the console at the end of a run."""
    header, body = _loop_cells(loop_rows(run_dir))
    return _text_table(header, body, "ll" + "r" * (len(header) - 3) + "l")


def _loop_section(doc: Doc, run: RunDir) -> None:
    rows = loop_rows(run.path)
    header, body = _loop_cells(rows)
    doc.para(
        "Each round red-teams the model before it, turns the attacks that worked into critique-revise, preference "
        "and RL prompts, proposes a constitution amendment from them (adopted with red_team.adopt), and retrains "
        "from the SFT model. Rates are the eval stage's (asr_* by the world's reference judge where it has one); "
        "the red-team columns are the attack on the round's final model."
    )
    doc.table(header, body, "ll" + "r" * (len(header) - 3) + "l")
    current, _ = _load_snapshot(run)
    for where in _rounds(run.path):
        proposal = _dict(_read_json(where / "amend" / "proposal.json"))
        if proposal.get("added"):
            state = "adopted" if proposal.get("adopted") else "proposed for review"
            doc.para(
                Strong(f"{where.name}:"),
                f" {state} ",
                Code(str(proposal.get("to"))),
                f" from {proposal.get('from')}: ",
                ", ".join(f"{a.get('id')} ({'; '.join(a.get('cells') or [])})" for a in proposal["added"]),
                ".",
            )
            try:
                amended = load_constitution(str(where / "amend" / "constitution.yaml"))
            except (ConstitutionError, OSError):
                amended = None
            if current is not None and amended is not None:
                doc.diff(current, amended)
                current = amended if proposal.get("adopted") else current
        elif proposal:
            doc.para(Strong(f"{where.name}:"), f" no amendment ({proposal.get('reason', 'nothing proposed')}).")
        red = _read_json(where / "red_team" / "asr.json")
        if isinstance(red, dict) and isinstance(red.get("cells"), dict):
            doc.heading(3, f"Red teaming after {where.name}")
            _red_team_section(doc, run, red, where.relative_to(run.path) / "red_team")


def _red_team_section(doc: Doc, run: RunDir, red: dict[str, Any], stage: Path = Path("red_team")) -> None:
    """The red_team stage's attack success rates: overall, then per (category, style) cell, and its heat map."""
    overall = _dict(red.get("overall"))
    attacks = f"{overall.get('successes', '?')} of {overall.get('attempts', '?')} attacks"
    line = (
        f"ASR {_num(overall.get('asr'), 2)} ({attacks}, judge: {red.get('judge', '?')}); "
        f"{red.get('cells_filled', '?')} of {red.get('cells_total', '?')} cells hold a successful attack; "
        f"{red.get('queries', '?')} queries, {_num(red.get('attacks_per_second'), 2)} attacks/s."
    )
    precision = _dict(red.get("judge_precision"))
    if precision:
        confirmed = _num(precision.get("precision"), 2)
        line += f" The reference judge confirms {confirmed} of the {precision.get('n')} archived successes."
    doc.para(line)
    styles = sorted({str(_dict(c).get("style")) for c in red["cells"].values()})
    categories = sorted({str(_dict(c).get("category")) for c in red["cells"].values()})
    rows = []
    for category in categories:
        row = [category]
        for style in styles:
            cell = _dict(red["cells"].get(f"{category}|{style}"))
            row.append(f"{_num(cell.get('asr'), 2)} ({cell.get('attempts')})" if cell else "-")
        rows.append(row)
    doc.table(["category", *styles], rows, "l" + "r" * len(styles))
    if (run.path / stage / "heatmap.png").exists():
        doc.image("red-team ASR per category and attack style", f"{stage.as_posix()}/heatmap.png")


SUITE_TITLES = {
    "harmful_prompts": "Harmful prompts",
    "benign_prompts": "Benign prompts",
    "over_refusal": "Over-refusal (XSTest layout)",
    "hhh": "HHH multiple choice",
    "pairwise": "Pairwise comparisons with the base model",
    OTHER_SUITE: "Other",
}


def _metric_cell(metric: str, value: Any) -> str:
    """Counts as integers, Elo signed to the point, word counts to one decimal, rates to two."""
    if not _is_number(value):
        return "-"
    if metric == "n" or metric.startswith("n_"):
        return str(int(value))
    if metric.startswith("elo"):
        return f"{value:+.0f}"
    return _num(value, 1 if metric.startswith("mean_") else 2)


def _rate(row: dict[str, Any], key: str) -> str:
    return _metric_cell(key, row.get(key))


def _eval_sections(doc: Doc, evals: dict[str, dict[str, float]], details: dict[str, Any] | None) -> None:
    """Judge agreement, then one table per suite with what details.json says about it (per type, per category,
    pairwise games, HHH)."""
    if details is None:
        doc.para(
            "This run's eval folder has no details.json (runs made before it was written), so there is no judge "
            "agreement, per-category breakdown or pairwise detail."
        )
    else:
        for line in judge_lines(details):
            doc.para(line)
    details = details or {}
    for suite, rows in by_suite(evals).items():
        doc.heading(3, SUITE_TITLES.get(suite, suite))
        columns = list(dict.fromkeys(c for row in rows.values() for c in row))
        doc.table(
            ["model", *columns],
            [[model, *(_metric_cell(c, row.get(c)) for c in columns)] for model, row in rows.items()],
            "l" + "r" * len(columns),
        )
        if suite == "harmful_prompts":
            _category_table(doc, _dict(details.get("harmful_by_category")), "category", "By category")
        elif suite == "over_refusal":
            _category_table(doc, _dict(details.get("over_refusal_by_type")), "type", "By XSTest type")
        elif suite == "hhh":
            _hhh_table(doc, _dict(details.get("hhh")))
        elif suite == "pairwise":
            _pairwise_table(doc, _dict(details.get("pairwise")))


def _category_table(doc: Doc, found: dict[str, Any], column: str, title: str) -> None:
    rows = []
    for model, by in found.items():
        for name, rates in _dict(by).items():
            rates = _dict(rates)
            label = [str(rates["label"])] if column == "type" else []
            rows.append(
                [
                    model,
                    name,
                    *label,
                    _rate(rates, "n"),
                    _rate(rates, "refusal_rate"),
                    _rate(rates, "partial_rate"),
                    _rate(rates, "compliance_rate"),
                ]
            )
    if rows:
        doc.para(Strong(f"{title}"), " (by the refusal judge; refused = refusal or partial):")
        header = ["model", column, *(["label"] if column == "type" else []), "n", "refusal", "partial", "compliance"]
        doc.table(header, rows, "ll" + ("l" if column == "type" else "") + "rrrr")


def _pairwise_table(doc: Doc, pairwise: dict[str, Any]) -> None:
    rows = []
    for view in ("harmlessness", "helpfulness"):
        found = _dict(pairwise.get(view))
        for model in _dict(found.get("win_rate")):
            cells = [_dict(found.get(key)).get(model) for key in ("n", "wins", "ties", "losses")]
            rows.append(
                [
                    view,
                    model,
                    *(_metric_cell("n", c) for c in cells),
                    _metric_cell("win_rate", _dict(found.get("win_rate")).get(model)),
                    _metric_cell("elo", _dict(found.get("elo")).get(model)),
                ]
            )
    if rows:
        doc.para(
            "Each model's answers against the base model's on the same prompts, judged by the feedback model under "
            "sampled principles in both orders; a tie counts half."
        )
        doc.table(["view", "model", "n", "wins", "ties", "losses", "win rate", "Elo"], rows, "llrrrrrr")


def _hhh_table(doc: Doc, hhh: dict[str, Any]) -> None:
    rows = [
        [
            model,
            _rate(_dict(scored), "accuracy"),
            _rate(_dict(scored), "accuracy_length_normalised"),
            _rate(_dict(scored), "n"),
        ]
        for model, scored in _dict(hhh.get("policies")).items()
    ]
    reward = _dict(hhh.get("reward_model"))
    if reward:
        rows.append(["reward model", _rate(reward, "accuracy"), "-", _rate(reward, "n")])
    if rows:
        doc.para("Policies pick the option they find most likely; the reward model the transcript it scores higher.")
        doc.table(["scored", "accuracy", "length-normalised", "n"], rows, "lrrr")


def worst_failures(failures: Sequence[dict[str, Any]], per_model: int) -> dict[str, list[dict[str, Any]]]:
    """Up to ``per_model`` failures per model: harmful compliances before safe refusals, the feedback judge's
    most confident ones first (``severity``), else in file order."""
    by_model: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for k, failure in enumerate(failures):
        by_model.setdefault(str(failure.get("model", "?")), []).append((k, failure))

    def rank(item: tuple[int, dict[str, Any]]) -> tuple[bool, float, int]:
        k, f = item
        severity = f.get("severity")
        return (f.get("kind") != "harmful_compliance", -severity if _is_number(severity) else 0.0, k)

    return {model: [f for _, f in sorted(items, key=rank)[:per_model]] for model, items in by_model.items()}


def _failures_section(doc: Doc, run: RunDir, per_model: int) -> None:
    failures = list(_read_jsonl(run.path / "eval" / "failures.jsonl"))
    if not failures:
        doc.para("No failures recorded (no harmful compliance or safe refusal, or no failures.jsonl in this run).")
        return
    counts: dict[str, dict[str, int]] = {}
    for f in failures:
        row = counts.setdefault(str(f.get("model", "?")), {})
        row[str(f.get("kind"))] = row.get(str(f.get("kind")), 0) + 1
    doc.para(
        f"Harmful compliances (harmful requests answered) and safe refusals (safe requests refused); up to "
        f"{per_model} per model, harmful ones first. Counts: ",
        "; ".join(
            f"{model} {row.get('harmful_compliance', 0)} harmful, {row.get('safe_refusal', 0)} safe refused"
            for model, row in counts.items()
        ),
        ".",
    )
    for model, picked in worst_failures(failures, per_model).items():
        doc.heading(3, model)
        for f in picked:
            facts = [str(f.get("suite", "?"))]
            facts += [f"{key} {f[key]}" for key in ("category", "type") if f.get(key) not in (None, "")]
            if _is_number(f.get("severity")):
                facts.append(f"P(a refusal is better) {f['severity']:.2f}")
            kind = str(f.get("kind", "failure")).replace("_", " ")
            doc.para(Strong(kind.capitalize()), f" ({', '.join(facts)})")
            doc.para(Strong("Prompt:"), " ", _clip(f.get("prompt"), 400))
            doc.para(Strong("Response:"), " ", _clip(f.get("response"), 400))


def _joined(parts: Sequence[str], sep: str = ", ") -> list[str]:
    out: list[str] = []
    for k, part in enumerate(parts):
        out += [sep, part] if k else [part]
    return out


def _key_metrics(metrics: dict[str, Any]) -> str:
    if metrics and all(isinstance(v, dict) for v in metrics.values()):
        return f"{len(metrics)} models: {', '.join(metrics)}"  # the eval stage: one dict per model
    shown = [f"{k} {_num(metrics[k])}" for k in KEY_METRICS if _is_number(metrics.get(k))]
    return ", ".join(shown[:4])


def _label_lines(run: RunDir) -> list[str]:
    """What the eval table cannot show: how good the AI labels and the reward model are."""
    prefs, reward = run.metrics("preferences"), run.metrics("reward")
    lines = []
    if _is_number(prefs.get("ai_judge_agreement")):
        pairs = prefs.get("judge_decided_pairs")
        where = f" of {_num(pairs)} pairs where it has a preference" if _is_number(pairs) else ""
        lines.append(f"AI-label agreement with the reference judge: {prefs['ai_judge_agreement']:.1%}{where}.")
    if _is_number(reward.get("eval_label_accuracy")):
        line = f"Reward model accuracy on held-out pairs: {reward['eval_label_accuracy']:.1%}"
        if _is_number(reward.get("eval_pairs")):
            line += f" ({_num(reward['eval_pairs'])} pairs)"
        if _is_number(reward.get("eval_ece")):
            line += f", calibration error {reward['eval_ece']:.3f}"
        lines.append(line + ".")
    return lines


def _constitution_section(doc: Doc, old: RunDir, new: RunDir, labels: tuple[str, str]) -> None:
    """The semantic diff when both runs kept their constitution; otherwise at least what each one used."""
    (a, a_problem), (b, b_problem) = _load_snapshot(old), _load_snapshot(new)
    for problem in (a_problem, b_problem):
        if problem:
            doc.para(f"Note: {problem}.")
    if a is not None and b is not None:
        doc.diff(a, b)
        return
    missing = [label for label, c in zip(labels, (a, b)) if c is None]
    where = "either run" if len(missing) == 2 else missing[0]
    ids = old.constitution_identity(), new.constitution_identity()
    doc.para(
        f"No usable {CONSTITUTION_FILE} in {where}, so no principle-level diff. ",
        f"{labels[0]} used ",
        Code(ids[0] or "unknown"),
        f", {labels[1]} used ",
        Code(ids[1] or "unknown"),
        " (the same)." if ids[0] == ids[1] else ".",
    )


def _pick_samples(run: RunDir, n: int) -> list[dict[str, Any]]:
    """The first red-team records the critique actually changed (then others): deterministic, and the
    interesting case, since an unchanged revision shows nothing about the constitution."""
    red, other = [], []
    for r in _read_jsonl(run.path / "critique_revise" / "samples.jsonl"):
        if not r.get("rounds") or r.get("final_response") == r.get("initial_response"):
            continue
        (red if r.get("kind") == "red_team" else other).append(r)
        if len(red) >= n:
            break
    return (red + other)[:n]


def _samples_section(doc: Doc, run: RunDir, n: int) -> None:
    records = _pick_samples(run, n)
    if not records:
        doc.para("No critique-and-revision samples in this run.")
        return
    for k, r in enumerate(records, 1):
        kind = str(r.get("kind") or "sample").replace("_", " ")
        doc.heading(3, f"{k}. {r.get('id') or 'sample'} ({kind})")
        doc.para(Strong("Prompt:"), " ", _clip(r.get("prompt")))
        doc.para(Strong("Initial response:"), " ", _clip(r.get("initial_response")))
        rounds = [x for x in r["rounds"] if isinstance(x, dict)]
        for i, rnd in enumerate(rounds, 1):
            which = f" {i}" if len(rounds) > 1 else ""
            principle = Code(str(rnd.get("principle_id", "?")))
            doc.para(Strong(f"Critique{which}"), " (principle ", principle, "): ", _clip(rnd.get("critique")))
            doc.para(Strong(f"Revision{which}:"), " ", _clip(rnd.get("revision")))


# ---------------------------------------------------------------------------------------------------
# Comparing two runs


def compare_runs(a: str | os.PathLike[str], b: str | os.PathLike[str], fmt: str = "text") -> str:
    """Two runs side by side (B minus A), e.g. before and after a constitution edit; ``fmt``: text or markdown."""
    if fmt not in ("text", "markdown"):
        raise ValueError(f"unknown format {fmt!r}; use text or markdown")
    ra, rb = load_run(a), load_run(b)
    doc = Doc()
    doc.heading(1, f"Runs compared: A = {ra.name}, B = {rb.name}")
    doc.table(
        ["run", "directory", "constitution", "code"],
        [
            [side, str(r.path), r.constitution_identity() or "unknown", ", ".join(r.code_versions())]
            for side, r in (("A", ra), ("B", rb))
        ],
        "llll",
    )

    doc.heading(2, "Evaluation (delta = B - A)")
    ea, eb = _eval_metrics(ra), _eval_metrics(rb)
    both = {model: {**ea.get(model, {}), **eb.get(model, {})} for model in [*ea, *(m for m in eb if m not in ea)]}
    for suite, models in by_suite(both).items():  # one table per suite, models and metrics in table order
        doc.heading(3, SUITE_TITLES.get(suite, suite))
        rows = []
        for model, metrics in models.items():
            ma, mb = ea.get(model, {}), eb.get(model, {})
            for metric in metrics:
                a, b = ma.get(metric), mb.get(metric)
                rows.append([model, metric, _num(a), _num(b), _delta(a, b)])
        doc.table(["model", "metric", "A", "B", "delta"], rows, "llrrr")
    if not both:
        doc.para("Neither run has eval metrics.")
    judges = [_dict(_dict(_eval_details(r)).get("judges")) for r in (ra, rb)]
    rows = []
    for judge in dict.fromkeys([*judges[0], *judges[1]]):
        a, b = (_dict(found.get(judge)).get("accuracy") for found in judges)
        reference = _dict(judges[0].get(judge) or judges[1].get(judge)).get("reference", "?")
        rows.append([judge, str(reference), _num(a), _num(b), _delta(a, b)])
    if rows:
        doc.heading(3, "Judge agreement")
        doc.table(["judge", "agrees with", "A", "B", "delta"], rows, "llrrr")

    doc.heading(2, "Stage seconds")
    stages = sorted(set(ra.manifests) | set(rb.manifests), key=_stage_rank)
    seconds = [(ra.manifests.get(s, {}).get("seconds"), rb.manifests.get(s, {}).get("seconds")) for s in stages]
    doc.table(
        ["stage", "A", "B", "delta"],
        [[s, _num(x, 1), _num(y, 1), _delta(x, y, 1)] for s, (x, y) in zip(stages, seconds)],
        "lrrr",
    )

    doc.heading(2, "Labels and training")
    rows = []
    for stage in stages:
        ma, mb = ra.metrics(stage), rb.metrics(stage)
        for metric in ("ai_judge_agreement", "eval_label_accuracy", "eval_ece", "eval_loss", "train_loss"):
            if _is_number(ma.get(metric)) or _is_number(mb.get(metric)):
                rows.append(
                    [stage, metric, _num(ma.get(metric)), _num(mb.get(metric)), _delta(ma.get(metric), mb.get(metric))]
                )
    if rows:
        doc.table(["stage", "metric", "A", "B", "delta"], rows, "llrrr")
    else:
        doc.para("Neither run recorded label or training metrics.")

    doc.heading(2, "Constitution")
    _constitution_section(doc, ra, rb, (f"A ({ra.name})", f"B ({rb.name})"))
    return redact_text(doc.markdown() if fmt == "markdown" else doc.text())
