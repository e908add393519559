"""The ``align`` command line.

``align constitution ...`` covers the life of a constitution file: validate and lint it, show and hash
it, diff two versions (also across git revisions), bump its version, check in CI that a content change
came with a big enough bump, move it to and from other projects' layouts, and propose an amended version from
red-team evidence.

``align redteam`` searches for attacks a model complies with (align/redteam/).

``align report RUN_DIR`` writes a run's report (markdown, HTML, plots) from its directory alone, and
``align runs compare A B`` puts two runs side by side, e.g. before and after a constitution edit.

``align eval run|score|hhh`` evaluates any models on a config's suites, labels existing responses with a judge,
and scores HHH multiple choice.

Exit codes: 0 success; 1 the check asked for failed (invalid file, warnings under --strict, an
unbumped change, a diff under --exit-code); 2 the command could not run (bad arguments, a file or git
revision that cannot be read).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import yaml

from align.constitution import SUFFIXES, Constitution, ConstitutionError, load_constitution
from align.constitution.diff import diff_constitutions
from align.constitution.edit import bump_file, dump_constitution
from align.constitution.layouts import Imported, export_llm_swarm, import_anthropic, import_llm_swarm
from align.constitution.lint import lint
from align.constitution.model import ConstitutionWarning, parse_constitution_text
from align.constitution.render import render_markdown, render_text
from align.constitution.sources import check_file, load_at_revision, read_source, split_source
from align.files import WriteError, write_text_atomic
from align.report import RunError, compare_runs, write_report

__all__ = ["build_parser", "main"]


def _out(text: str = "") -> None:
    print(text, file=sys.stdout)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _use_color(choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    # https://no-color.org: any non-empty NO_COLOR turns colour off.
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


# ---------------------------------------------------------------------------------------------------
# Commands


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for spec in args.files:
        try:
            with warnings.catch_warnings():  # the lint below reports them, with the other warnings
                warnings.simplefilter("ignore", ConstitutionWarning)
                c = read_source(spec)
        except ConstitutionError as e:
            _err(f"error: {e}")
            failed = True
            continue
        found = lint(c, rl_cai=args.rl_cai)
        for w in found:
            _err(f"warning: {w}")
        if found and args.strict:
            failed = True
            _out(f"FAIL {spec}: {_count(len(found), 'warning')}, which --strict treats as errors")
        else:
            suffix = f" ({_count(len(found), 'warning')})" if found else ""
            _out(f"ok {spec}: {c.identity}{suffix}")
    return 1 if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    c = read_source(args.file)
    _out(c.identity)
    _out(f"source: {c.source}")
    if c.description:
        _out(textwrap.fill(c.description, width=100, initial_indent="  ", subsequent_indent="  "))
    compared = sum(p.comparison is not None for p in c.principles)
    latest = f", latest {c.changelog[-1]['version']}" if c.changelog else ""
    _out(
        f"{_count(len(c.principles), 'principle')} ({compared} with a comparison question), "
        f"{_count(len(c.few_shot), 'few-shot example')}, {_count(len(c.changelog), 'changelog entry')}{latest}"
    )
    _out()
    rows = [("ID", "TAGS", "WEIGHT", "HASH", "CRITIQUE")]
    for p in c.principles:
        critique = p.critique if len(p.critique) <= 60 else p.critique[:59].rstrip() + "…"
        rows.append((p.id, ", ".join(p.tags), f"{p.weight:g}", p.content_hash, critique))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        _out("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    for spec in args.files:
        c = read_source(spec)
        value = c.content_hash if args.full else c.identity
        _out(value if len(args.files) == 1 else f"{value}  {spec}")
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    if args.new is None:
        # One argument: what changed in the working file since the last commit.
        path, rev = split_source(args.old)
        if rev is not None:
            raise ConstitutionError("with a single argument, give the working file (it is compared with HEAD)")
        old, new = read_source(f"{path}@HEAD"), load_constitution(path)
    else:
        old, new = read_source(args.old), read_source(args.new)
    d = diff_constitutions(old, new)
    if args.format == "json":
        _out(json.dumps(d.to_dict(), indent=2, ensure_ascii=False))
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(d))
    else:
        sys.stdout.write(render_text(d, color=_use_color(args.color)))
    return 1 if args.exit_code and d.has_changes else 0


def cmd_bump(args: argparse.Namespace) -> int:
    level = args.level
    if level is None:
        return _suggest_bump(args.file, args.against)
    if not args.message:
        raise ConstitutionError("a bump needs a changelog message: -m 'what changed'")
    old, new = bump_file(args.file, level, args.message)
    _out(f"{args.file}: {old.version} -> {new.version} ({new.identity})")
    return 0


def _suggest_bump(path: str, rev: str) -> int:
    """Without a level, say what the change since ``rev`` calls for; writing is left to the user."""
    new = load_constitution(path)
    try:
        old = load_at_revision(path, rev)
    except ConstitutionError as e:
        _err(f"error: no bump level given, and no git version to compare with ({e})")
        _err("  pass --major, --minor or --patch")
        return 2
    if old is None:
        _err(f"no bump level given; {path} is new since {rev}, so there is nothing to compare with")
        _err("  pass --major, --minor or --patch")
        return 1
    d = diff_constitutions(old, new)
    if d.required_bump == "none":
        _out(f"{path}: no content change since {rev}; no bump needed")
        return 0
    why = "; ".join(reason for _, reason in d.reasons)
    if d.sufficient:
        _out(f"{path}: already bumped {old.version} -> {new.version}, enough for the {d.required_bump} change ({why})")
        return 0
    _out(f"{path}: since {rev}: {why}")
    _out(f"suggested: align constitution bump {path} --{d.required_bump} -m '...'")
    _out(f"  ({old.version} -> {d.suggested_version})")
    return 1


def cmd_check(args: argparse.Namespace) -> int:
    failed = False
    for path in args.files:
        result = check_file(path, args.against)
        (_out if result.ok else _err)(("" if result.ok else "FAIL ") + result.message)
        failed |= not result.ok
    return 1 if failed else 0


def cmd_propose(args: argparse.Namespace) -> int:
    from align.redteam.propose import propose

    if args.max_cells < 1 or args.max_new < 1:
        raise ConstitutionError("--max-cells and --max-new must be >= 1")
    scoring = None
    if (args.controls or args.draft) and not args.feedback_model:
        flag = "--controls are scored" if args.controls else "--draft drafts with"
        raise ConstitutionError(f"{flag} by the feedback model: add --feedback-model DIR")
    drafter = None
    if args.feedback_model:
        try:
            scoring = _propose_scoring(args)
        except ValueError as e:  # DataError and ConfigError are ValueErrors
            _err(f"error: {e}")
            return 2
        if args.draft:
            drafter = _drafter(args.feedback_model)
    result = propose(
        args.file,
        args.evidence,
        args.output,
        candidates_path=args.candidates,
        max_cells=args.max_cells,
        max_new=args.max_new,
        force=args.force,
        scoring=scoring,
        drafter=drafter,
    )
    _out(f"{args.output}: {result['from']} -> {result['to']}")
    if "drafts" in result:
        d = result["drafts"]
        _out(f"  drafts: {d['kept']} of {d['asked']} kept ({d['unparsable']} unparsable, {d['invalid']} invalid)")
    _out(f"  worst cells: {'; '.join(result['worst_cells'])}")
    for added in result["added"]:
        _out(f"  added {added['id']} for {'; '.join(added['cells'])}")
    for cid, score in sorted((result["scores"] or {}).items()):
        controls = f", controls {score['controls']:.2f}" if "controls" in score else ""
        _out(f"  candidate {cid}: evidence {score['evidence']:.2f} (n {score['n_evidence']:.0f}){controls}")
    _out(f"review it with: align constitution diff {args.file} {args.output}")
    return 0


def _drafter(model: str):
    """Greedy replies of ``model`` (transformers backend) to the drafting conversations."""
    from align.config import BackendSettings, SamplingSettings
    from align.generation import build_backend

    backend = build_backend(BackendSettings(), model)
    sampling = SamplingSettings(max_new_tokens=160, temperature=0.0, batch_size=8)
    return lambda conversations: backend.generate(conversations, sampling, 0, "drafting principles")


def _propose_scoring(args: argparse.Namespace) -> dict:
    """The feedback model and what it compares against: the world's refusals and benign controls, or a generic
    refusal and a ``--controls`` file of benign prompts with helpful responses."""
    from align.config import RecipeConfig, load_config
    from align.evaluation.judges import generic_refusal
    from align.feedback.preferences import OptionScorer
    from align.worlds import load_world

    world = load_world(load_config(RecipeConfig, args.world)) if args.world else None
    controls: list[tuple[str, str]] = []
    if args.controls:
        from align.evaluation.scoring import select_columns

        rows = select_columns(args.controls)
        controls = list(zip(rows.prompts, rows.responses))
    elif world is not None:  # the world's helpful answers to benign requests, over its refusals
        controls = [(p["prompt"][-1]["content"], p["chosen"][-1]["content"]) for p in world.pairs("helpfulness")]
    model, tokenizer = _load_causal_lm(args.feedback_model)
    if tokenizer.chat_template is None:
        raise ValueError(f"--feedback-model {args.feedback_model}: the tokenizer has no chat template")
    return {
        "scorer": OptionScorer(model, tokenizer, batch_size=16),
        "refusal_for": world.refusal_for if world is not None else generic_refusal,
        "controls": controls[: args.num_controls],
        "seed": args.seed,
    }


def _default_name(out: str) -> str:
    stem = Path(out).stem if out != "-" else "imported"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._") or "imported"


def _write_output(out: str, text: str, force: bool) -> None:
    if out == "-":
        sys.stdout.write(text)
        return
    if os.path.exists(out) and not force:
        raise ConstitutionError("already exists; pass --force to overwrite it", source=out)
    write_text_atomic(out, text)


def cmd_import(args: argparse.Namespace) -> int:
    name = args.name or _default_name(args.output)
    if args.comparisons and args.source_format != "anthropic":
        raise ConstitutionError("--comparisons only applies to --from anthropic")
    if args.source_format == "llm-swarm":
        imported: Imported = import_llm_swarm(args.file, name=name, version=args.version)
    else:
        imported = import_anthropic(args.file, args.comparisons, name=name, version=args.version)
    suffix = Path(args.output).suffix.lower() if args.output != "-" else ".yaml"
    if suffix not in SUFFIXES:
        raise ConstitutionError(f"output must end in one of {', '.join(SUFFIXES)}", source=args.output)
    trailer: list[str] = []
    if imported.unpaired_comparisons:
        questions = yaml.safe_dump(list(imported.unpaired_comparisons), allow_unicode=True, width=4096)
        note = "Comparison questions from the import with no principle to attach to; kept here for review:"
        trailer = [note, questions]
        if suffix == ".json":
            _err("note: JSON cannot hold comments; these comparison questions are not in the output:")
            _err(textwrap.indent(questions, "  ").rstrip("\n"))
    comments = [f"Imported by `align constitution import --from {args.source_format}` from {Path(args.file).name}."]
    text = dump_constitution(imported.constitution, suffix, comments=comments, trailer=trailer)
    _write_output(args.output, text, args.force)
    for note in imported.notes:
        _err(f"note: {note}")
    # the identity of what was written: dump_constitution checked that the text parses back to it
    c = parse_constitution_text(text, args.output, suffix=suffix)
    _err(f"imported {_count(len(c.principles), 'principle')} and {_count(len(c.few_shot), 'few-shot example')}")
    _err(f"  as {c.identity} in {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    c: Constitution = read_source(args.file)
    data, notes = export_llm_swarm(c)
    _write_output(args.output, json.dumps(data, indent=2, ensure_ascii=False) + "\n", args.force)
    for note in notes:
        _err(f"note: {note}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    try:
        path = write_report(args.run_dir, args.previous, html=args.html)
    except RunError as e:
        _err(f"error: {e}")
        return 2
    except OSError as e:
        _err(f"error: cannot write the report: {e}")
        return 2
    _out(str(path))
    return 0


def cmd_runs_compare(args: argparse.Namespace) -> int:
    try:
        text = compare_runs(args.a, args.b, fmt=args.format)
    except RunError as e:
        _err(f"error: {e}")
        return 2
    sys.stdout.write(text)
    return 0


def _load_causal_lm(path: str):
    """A causal LM and its tokenizer from a local directory (on the GPU when there is one)."""
    from align.generation.transformers_backend import load_backend

    if not Path(path).is_dir():
        raise ValueError(f"--model {path}: not a directory")
    backend = load_backend(path)
    return backend.model, backend.tokenizer


def _build_judge(args: argparse.Namespace):
    from align.evaluation.judges import FeedbackJudge, RefusalJudge, RewardJudge

    if args.judge == "refusal":
        if args.model or args.constitution:
            raise ValueError("the refusal judge uses no model or constitution; drop --model and --constitution")
        return RefusalJudge()
    if not args.model:
        raise ValueError(f"--judge {args.judge} needs --model DIR (the {args.judge} model)")
    if args.judge == "reward":
        if not Path(args.model).is_dir():
            raise ValueError(f"--model {args.model}: not a directory")
        return RewardJudge.from_dir(args.model, batch_size=args.batch_size)
    if not args.constitution:
        raise ValueError("--judge feedback needs --constitution FILE: its comparison questions are what is asked")
    from align.feedback.preferences import OptionScorer

    constitution = load_constitution(args.constitution)
    model, tokenizer = _load_causal_lm(args.model)
    if tokenizer.chat_template is None:
        raise ValueError(f"--model {args.model}: the tokenizer has no chat template, which the feedback judge needs")
    scorer = OptionScorer(model, tokenizer, batch_size=args.batch_size)
    return FeedbackJudge(scorer, constitution, num_principles=args.num_principles, seed=args.seed)


def cmd_eval_score(args: argparse.Namespace) -> int:
    from align.data import DataError, write_jsonl_atomic
    from align.evaluation.judges import REFUSED_OR_NOT, SAFE, UNSAFE
    from align.evaluation.scoring import judge_rows, select_columns

    vocabulary = {"refusal": sorted(REFUSED_OR_NOT), "feedback": [SAFE, UNSAFE], "reward": None}[args.judge]
    try:
        if args.label_column and vocabulary is None:
            raise ValueError("--label-column needs a judge that labels (refusal or feedback); reward only scores")
        rows = select_columns(
            args.file,
            prompt_column=args.prompt_column,
            response_column=args.response_column,
            label_column=args.label_column,
            labels=vocabulary,
        )
        judge = _build_judge(args)
        out, agreed = judge_rows(rows, judge, binary=REFUSED_OR_NOT if args.judge == "refusal" else None)
        write_jsonl_atomic(args.output, out)
    except (DataError, ValueError, OSError) as e:
        _err(f"error: {e}")
        return 2
    _out(f"{args.output}: {_count(len(out), 'row')} judged by {args.judge}")
    if agreed is not None:
        accuracy, kappa = agreed["accuracy"], agreed["kappa"]
        _out(f"agreement with {args.label_column!r}: {accuracy:.3f} (kappa {kappa:.3f}, n {agreed['n']})")
        if "binary" in agreed:
            _out(f"  refused vs complied: {agreed['binary']['accuracy']:.3f} (kappa {agreed['binary']['kappa']:.3f})")
        for label, row in agreed["per_class"].items():
            _out(f"  {label}: {row['agreement']:.3f} of {row['n']}  predicted as {agreed['confusion'][label]}")
    return 0


def cmd_eval_hhh(args: argparse.Namespace) -> int:
    from align.data import DataError
    from align.evaluation.hhh import load_hhh, score_policy, score_reward_model

    try:
        items = load_hhh(args.file)
        if not Path(args.model).is_dir():
            raise ValueError(f"--model {args.model}: not a directory")
        if args.reward:
            from align.evaluation.judges import RewardJudge

            judge = RewardJudge.from_dir(args.model)
            result = score_reward_model(items, judge.model, judge.tokenizer, batch_size=args.batch_size)
        else:
            model, tokenizer = _load_causal_lm(args.model)
            result = score_policy(items, model, tokenizer, raw=True if args.raw else None, batch_size=args.batch_size)
    except (DataError, ValueError, OSError) as e:
        _err(f"error: {e}")
        return 2
    if args.json:
        line = {"accuracy": result["accuracy"], "n": result["n"]}
        if "accuracy_length_normalised" in result:
            line["accuracy_length_normalised"] = result["accuracy_length_normalised"]
        _out(json.dumps(line))
    elif args.reward:
        _out(f"reward model {args.model}: accuracy {result['accuracy']:.3f} on {_count(result['n'], 'question')}")
    else:
        _out(
            f"policy {args.model} ({result['rendering']}): accuracy {result['accuracy']:.3f}, length-normalised "
            f"{result['accuracy_length_normalised']:.3f}, on {_count(result['n'], 'question')}"
        )
    return 0


def cmd_eval_run(args: argparse.Namespace) -> int:
    from align.config import ConfigError, RecipeConfig, load_config
    from align.data import DataError, WriteError
    from align.stages.evaluate import name_models, prepare_eval, run_eval

    out = Path(args.output)
    try:
        models = name_models(args.models)
        # A recipe config works as it is: only its eval section, constitution, seed, world and trust_remote_code
        # are used (the first model, not base_model, is the base of the pairwise comparisons).
        config = load_config(RecipeConfig, args.config)
        ctx = prepare_eval(config, models, args.reward_model)
        result = run_eval(ctx, models, out, args.reward_model)
    except (ConfigError, DataError, WriteError) as e:
        _err(f"error: {e}")
        return 2
    _out((out / "table.md").read_text().rstrip())
    _out()
    plots = ", ".join(p.name for p in sorted(out.glob("*.png")))
    _out(f"{out}: metrics.json, details.json, table.md, responses.jsonl, failures.jsonl{', ' + plots if plots else ''}")
    _out(f"  {_count(len(result.metrics), 'model')}; answers kept in {out / 'shards'} (a re-run reuses them)")
    return 0


def cmd_redteam(args: argparse.Namespace) -> int:
    from align.config import BackendSettings, ConfigError, PromptSource, RecipeConfig, SamplingSettings, load_config
    from align.data import DataError
    from align.redteam.search import SearchSettings, run_search, seeds_from_prompts
    from align.sources import load_prompts, prompts_hash
    from align.worlds import load_world

    out = Path(args.output)
    try:
        if not Path(args.model).is_dir():
            raise ConfigError(f"--model {args.model}: not a directory (give the target model's folder)")
        config = load_config(RecipeConfig, args.world) if args.world else None
        world = load_world(config) if config is not None else None
        source = PromptSource(path=args.prompts, limit=args.limit)
        prompts, _ = load_prompts(source, world, "--prompts")
        seeds = seeds_from_prompts(prompts)
        styles = tuple(s.strip() for s in args.styles.split(",")) if args.styles else None
        strategies = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
        settings = SearchSettings(
            max_queries=args.max_queries,
            max_seconds=args.max_seconds,
            batch_size=args.batch_size,
            seed=args.seed,
            **({"styles": styles} if styles else {}),
            strategies=strategies,
            pair_iterations=args.pair_iterations,
            escalation_turns=args.escalation_turns,
        )
        if args.attacker_model and "pair" not in strategies:
            raise ValueError("--attacker-model is for --strategies with pair; the other strategies use no attacker")
        if args.attacker_max_new_tokens < 1:
            raise ValueError("--attacker-max-new-tokens must be >= 1")
        judge = _redteam_judge(args, config, world)
        from align.generation import build_backend

        attacker = None
        attacker_name = args.attacker_model or args.feedback_model or args.model
        if "pair" in strategies:
            # a local folder or a hub id (in the cache, or downloaded), generated in-process like the target
            try:
                attacker_backend = build_backend(BackendSettings(), attacker_name, name="attacker")
            except OSError as e:
                raise ValueError(f"--attacker-model {attacker_name}: cannot load it ({e})") from None
            attacker_sampling = SamplingSettings(
                max_new_tokens=args.attacker_max_new_tokens, temperature=1.0, batch_size=args.batch_size
            )

            def attacker(conversations: list, seed: int) -> list[str]:
                return attacker_backend.generate(conversations, attacker_sampling, seed, "red team attacker")

        backend = build_backend(BackendSettings(), args.model, name="target", run_model=True)
        sampling = SamplingSettings(max_new_tokens=args.max_new_tokens, temperature=0.0, batch_size=args.batch_size)

        def target(conversations: list) -> list[str]:
            return backend.generate(conversations, sampling, args.seed, "red team")

        fingerprint = {
            "model": str(Path(args.model).resolve()),
            "prompts": prompts_hash(prompts),
            "judge": args.judge,
            "max_new_tokens": args.max_new_tokens,
        }
        if attacker is not None:
            local = Path(attacker_name)
            fingerprint["attacker"] = str(local.resolve()) if local.is_dir() else attacker_name
        reference = world.reference_judge() if world is not None else None
        from align.generation.base import generation_meter

        with generation_meter("red team"):  # one throughput line for the whole search, not one per batch
            summary = run_search(
                seeds,
                target,
                judge,
                out,
                settings,
                fingerprint=fingerprint,
                reference=reference,
                attacker=attacker,
                log=_err,
            )
    except (ConfigError, DataError, ValueError) as e:
        _err(f"error: {e}")
        return 2
    overall = summary["overall"]
    _out((out / "asr.md").read_text().rstrip())
    _out()
    _out(
        f"{out}: archive.jsonl, asr.json, asr.md{', heatmap.png' if (out / 'heatmap.png').exists() else ''}, "
        f"state.json; ASR {overall['asr']:.3f} over {_count(overall['attempts'], 'attack')}, "
        f"{summary['queries']} queries in {summary['iterations']} iterations ({summary['attacks_per_second']:.2f}/s)"
    )
    return 0


def _redteam_judge(args: argparse.Namespace, config, world):
    from align.evaluation.judges import FeedbackJudge, RefusalJudge, generic_refusal

    if args.judge == "refusal":
        if args.feedback_model or args.constitution:
            raise ValueError(
                "--feedback-model and --constitution are for --judge feedback; the refusal judge uses rules"
            )
        return RefusalJudge(config.eval.refusal if config is not None else None)
    constitution_path = args.constitution or (config.constitution if config is not None else None)
    if not constitution_path:
        raise ValueError("--judge feedback needs --constitution FILE (or a --world config that names one)")
    from align.feedback.preferences import OptionScorer

    model, tokenizer = _load_causal_lm(args.feedback_model or args.model)
    if tokenizer.chat_template is None:
        raise ValueError("the feedback model's tokenizer has no chat template, which the feedback judge needs")
    return FeedbackJudge(
        OptionScorer(model, tokenizer, batch_size=args.batch_size),
        load_constitution(constitution_path),
        refusal_for=world.refusal_for if world is not None else generic_refusal,
        num_principles=args.num_principles,
        seed=args.seed,
        refusal_gate=RefusalJudge(config.eval.refusal if config is not None else None),
    )


# ---------------------------------------------------------------------------------------------------
# Parser

SOURCE_HELP = "a file, or path@gitrev for the file as committed at a git revision (e.g. harmless.yaml@HEAD~1)"


def version_string() -> str:
    """``align 0.1.0 (commit 1a2b3c4)``: the installed package's version, and the checkout's commit if any."""
    from importlib.metadata import PackageNotFoundError, version

    from align.pipeline import code_version

    try:
        number = version("align")
    except PackageNotFoundError:  # run from a source tree that was never installed
        number = "unknown"
    commit = code_version()
    return f"align {number}" + (f" (commit {commit})" if commit != "unknown" else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align", description="Constitutional AI tooling.")
    parser.add_argument("--version", action="version", version=version_string())
    groups = parser.add_subparsers(dest="group", metavar="COMMAND")
    cparser = groups.add_parser("constitution", help="validate, inspect, diff and version constitution files")
    sub = cparser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    p = sub.add_parser("validate", help="load files strictly and print lint warnings")
    p.add_argument("files", nargs="+", metavar="FILE", help=SOURCE_HELP)
    p.add_argument("--strict", action="store_true", help="fail on warnings too")
    p.add_argument("--rl-cai", action="store_true", help="also require a comparison question per principle")
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("show", help="identity, description and a table of principles")
    p.add_argument("file", metavar="FILE", help=SOURCE_HELP)
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("hash", help="print the identity name@version+sha256:<12 hex>")
    p.add_argument("files", nargs="+", metavar="FILE", help=SOURCE_HELP)
    p.add_argument("--full", action="store_true", help="print the full 64-hex content hash instead")
    p.set_defaults(handler=cmd_hash)

    p = sub.add_parser("diff", help="semantic diff by principle id, with the version bump it needs")
    p.add_argument("old", metavar="A", help=SOURCE_HELP)
    p.add_argument("new", metavar="B", nargs="?", help="the newer side; if left out, A is compared with A@HEAD")
    p.add_argument("--format", choices=("text", "json", "markdown"), default="text")
    p.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="auto: on a TTY, unless NO_COLOR"
    )
    p.add_argument("--exit-code", action="store_true", help="exit 1 when the two differ")
    p.set_defaults(handler=cmd_diff)

    p = sub.add_parser("bump", help="raise the version and add a changelog entry, keeping comments")
    p.add_argument("file", metavar="FILE")
    level = p.add_mutually_exclusive_group()
    for name in ("major", "minor", "patch"):
        level.add_argument(f"--{name}", dest="level", action="store_const", const=name)
    p.add_argument("-m", "--message", help="changelog message for the new version")
    p.add_argument(
        "--against", default="HEAD", metavar="REV", help="without a level: suggest one from the change since REV"
    )
    p.set_defaults(handler=cmd_bump)

    p = sub.add_parser("check", help="fail when content changed since REV without a big enough version bump")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--against", default="HEAD", metavar="REV", help="git revision to compare with (default HEAD)")
    p.set_defaults(handler=cmd_check)

    p = sub.add_parser(
        "propose",
        help="write an amended version that targets the cells a red-team run broke (for review)",
        description="Rank the cells (risk category x attack style) of an `align redteam` run by attack success "
        "rate and, for the worst, add the most specific new principle from a candidates file; the new version "
        "(minor bump, changelog and comments citing the evidence) goes to OUT, never over FILE.",
    )
    p.add_argument("file", metavar="FILE", help="the constitution the red-teamed model was trained on")
    p.add_argument("--evidence", required=True, metavar="RUN_DIR", help="an `align redteam` output directory")
    p.add_argument(
        "--candidates", metavar="FILE", help="candidate principles (default: constitutions/candidates/harmless.yaml)"
    )
    p.add_argument("--max-cells", type=int, default=3, help="how many of the worst cells to address (default 3)")
    p.add_argument("--max-new", type=int, default=2, help="at most this many new principles (default 2)")
    p.add_argument("--feedback-model", metavar="DIR", help="score candidates with this feedback model")
    p.add_argument(
        "--draft",
        action="store_true",
        help="the feedback model also drafts one candidate per worst cell (picked only on its scores)",
    )
    p.add_argument("--controls", metavar="FILE", help="benign prompt/response rows (CSV or JSONL) for the scores")
    p.add_argument("--world", metavar="CONFIG", help="a config with a world: its refusals and benign controls")
    p.add_argument("--num-controls", type=int, default=32, help="benign controls scored per candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, metavar="NEW.yaml")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(handler=cmd_propose)

    p = sub.add_parser("import", help="convert another project's constitution layout to ours")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--from", dest="source_format", required=True, choices=("llm-swarm", "anthropic"))
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=".yaml, .yml or .json; '-' for stdout (YAML)")
    p.add_argument("--name", help="constitution name (default: from OUT's file name)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--comparisons", metavar="FILE", help="anthropic: JSON list of comparison questions")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(handler=cmd_import)

    p = sub.add_parser("export", help="write a constitution in another project's layout")
    p.add_argument("file", metavar="FILE", help=SOURCE_HELP)
    p.add_argument("--to", dest="target_format", required=True, choices=("llm-swarm",))
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="'-' for stdout")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.set_defaults(handler=cmd_export)

    p = groups.add_parser("report", help="write report.md, report.html and plots for a pipeline run directory")
    p.add_argument("run_dir", metavar="RUN_DIR", help="e.g. runs/cai-tiny")
    p.add_argument("--previous", metavar="RUN_DIR", help="an earlier run: show how the constitution changed since")
    p.add_argument("--html", action=argparse.BooleanOptionalAction, default=True, help="also write report.html")
    p.set_defaults(handler=cmd_report)

    rparser = groups.add_parser("runs", help="work with pipeline run directories")
    rsub = rparser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    p = rsub.add_parser("compare", help="eval metrics, timings and constitution of two runs side by side")
    p.add_argument("a", metavar="RUN_A")
    p.add_argument("b", metavar="RUN_B")
    p.add_argument("--format", choices=("text", "markdown"), default="text")
    p.set_defaults(handler=cmd_runs_compare)

    eparser = groups.add_parser("eval", help="judge responses and score models on evaluation files")
    esub = eparser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    p = esub.add_parser("score", help="label a CSV/JSONL of prompts and responses with a judge, one row per row")
    p.add_argument("file", metavar="FILE", help=".csv (with a header) or .jsonl")
    p.add_argument("--judge", required=True, choices=("refusal", "feedback", "reward"))
    p.add_argument("--model", metavar="DIR", help="feedback: the feedback model; reward: the reward model")
    p.add_argument("--constitution", metavar="FILE", help="feedback: whose comparison questions are asked")
    p.add_argument("--prompt-column", default="prompt", metavar="C")
    p.add_argument("--response-column", default="response", metavar="C")
    p.add_argument("--label-column", metavar="C", help="reference labels: also print the judge's agreement")
    p.add_argument("--num-principles", type=int, default=4, help="feedback: principles sampled per response")
    p.add_argument("--seed", type=int, default=0, help="feedback: seed of the principle sampling")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("-o", "--output", required=True, metavar="OUT.jsonl")
    p.set_defaults(handler=cmd_eval_score)

    p = esub.add_parser(
        "run",
        help="run a config's eval suites on any models: metrics.json, details.json, table.md and plots",
        description="Answer the suites of the config's eval: section (plus its constitution, seed, world and "
        "trust_remote_code; a recipe config works as it is) with every model, judge the answers and compare each "
        "model with the first (the base) pairwise. Generation is sharded: a killed run, run again, reuses the "
        "finished shards in OUT_DIR/shards.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="YAML with an eval: section (e.g. a recipe config)")
    p.add_argument(
        "models", nargs="+", metavar="MODEL", help="a model directory or hub id, or NAME=MODEL; the first is the base"
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.add_argument("--reward-model", metavar="DIR", help="also score every answer with this reward model")
    p.set_defaults(handler=cmd_eval_run)

    p = esub.add_parser("hhh", help="accuracy of a policy or reward model on HHH multiple choice")
    p.add_argument("file", metavar="FILE", help="CAI-paper JSONL (prompt/corrects/incorrects) or BIG-bench layout")
    p.add_argument("--model", required=True, metavar="DIR")
    p.add_argument("--reward", action="store_true", help="DIR is a reward model: score the whole transcripts")
    p.add_argument("--raw", action="store_true", help="policy: score plain text, not through the chat template")
    p.add_argument("--json", action="store_true", help='print one line: {"accuracy": ..., "n": ...}')
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(handler=cmd_eval_hhh)

    p = groups.add_parser(
        "redteam",
        help="search for attacks a model complies with: archive.jsonl, asr.json, asr.md and a heat map",
        description="Turn harmful prompts into attacks (style mutations; with --strategies also an attacker LM that "
        "rewrites refused attacks, and multi-turn escalation), ask the target model in batches, judge the answers "
        "and keep the most successful attack per (risk category, attack style) cell. Resumable: run it again with "
        "the same -o to continue (a larger --max-queries continues a finished run).",
    )
    p.add_argument("--model", required=True, metavar="DIR", help="the target model (a local directory)")
    p.add_argument("--prompts", required=True, metavar="SOURCE", help="harmful prompts: a file, folder, or tiny:...")
    p.add_argument("--world", metavar="CONFIG", help="a config with a world: section (e.g. a tiny recipe config)")
    p.add_argument("--judge", choices=("refusal", "feedback"), default="refusal")
    p.add_argument("--feedback-model", metavar="DIR", help="feedback judge: the model asked (default: --model)")
    p.add_argument("--constitution", metavar="FILE", help="feedback judge: whose comparison questions are asked")
    p.add_argument("--num-principles", type=int, default=2, help="feedback judge: principles sampled per answer")
    p.add_argument("--max-queries", type=int, default=256, help="total target queries of the run (default 256)")
    p.add_argument("--max-seconds", type=float, help="stop this invocation after S seconds")
    p.add_argument("--batch-size", type=int, default=16, help="attacks per iteration (one generation batch)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--styles", metavar="A,B", help="attack styles to use (default: all)")
    p.add_argument(
        "--strategies",
        default="mutation",
        metavar="A,B",
        help="how attacks are proposed: mutation (style templates), pair (an attacker LM rewrites refused attacks), "
        "escalation (multi-turn); default mutation",
    )
    p.add_argument(
        "--attacker-model",
        metavar="MODEL",
        help="pair: the attacker LM, a folder or hub id (default: the judge's --feedback-model, else --model)",
    )
    p.add_argument("--pair-iterations", type=int, default=3, help="pair: attacks per child while refused (default 3)")
    p.add_argument("--attacker-max-new-tokens", type=int, default=96)
    p.add_argument(
        "--escalation-turns", type=int, default=3, help="escalation: user turns, opener to request (default 3)"
    )
    p.add_argument("--limit", type=int, help="use the first N prompts of the source")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    p.set_defaults(handler=cmd_redteam)

    parser.set_defaults(_usage=parser)
    cparser.set_defaults(_usage=cparser)
    rparser.set_defaults(_usage=rparser)
    eparser.set_defaults(_usage=eparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for the ``align`` script; returns the exit code so tests can call it directly."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help (0) and on usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    handler = getattr(args, "handler", None)
    if handler is None:
        args._usage.print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except (ConstitutionError, WriteError) as e:
        _err(f"error: {e}")
        return 2
    except BrokenPipeError:
        # e.g. `align constitution show x.yaml | head`: the reader left, which is not an error. Point
        # stdout at devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
