"""What a run prints: a quiet console by default, and the full log in ``runs/<name>/logs/``.

The console gets align's own lines: a line per stage start and finish (``stage k/N``, elapsed time and an
estimate of the time left), a summary line per generation (samples/s and tokens/s; a live bar on a
terminal), warnings about the run's own files, errors, the final table and the report path. Libraries are
quieted unless ``verbose`` (``-v``): W&B is silent with its console capture off, transformers, datasets and
huggingface_hub draw no progress bars and their warnings stay out of the console, the Trainer's per-step log
lines are not printed. The log file always gets everything: every line printed by any module, every library
warning and log record, the Trainer's logs, all through the one redactor (:mod:`align.redaction`).

A recipe calls :func:`start` once it knows its run directory and ends through :func:`entry_point`, which
turns the errors a user can fix into ``error: ...`` and exit code 2 and leaves the process group cleanly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from align.redaction import redact_text

ROOT = Path(__file__).resolve().parent.parent  # warnings raised from align's own code go to the console
LOGS = "logs"
LIBRARY_LOGGERS = ("transformers", "datasets", "accelerate", "trl", "peft", "huggingface_hub", "httpx", "torch")
_state: dict[str, Any] = {"started": False, "verbose": True, "log": None}


def quiet() -> bool:
    """True once :func:`start` ran without ``verbose``: library chatter (Trainer log lines, bars) is log-only."""
    return _state["started"] and not _state["verbose"]


class _LogSink:
    """The log file, or until the run directory is known (the run's inputs are checked first, and a run
    that fails those checks writes nothing) the lines held in memory, written out when the file opens."""

    def __init__(self) -> None:
        self.held: list[str] = []
        self.file: TextIO | None = None

    def write(self, text: str) -> int:
        if self.file is None:
            self.held.append(text)
        else:
            self.file.write(text)
        return len(text)

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def open(self, path: Path) -> None:
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the life of the process
        self.file.write("".join(self.held))
        self.file.flush()
        self.held = []


def log_file() -> TextIO | None:
    """Where this process's log goes (the file, or the lines held until it opens), once :func:`start` ran."""
    return _state["log"]


def log(text: str) -> None:
    """Write a line to the log file only (what the console leaves out but a post-mortem needs)."""
    if (f := log_file()) is not None:
        f.write(redact_text(text.rstrip("\n")) + "\n")
        f.flush()


def quiet_environment(verbose: bool = False) -> None:
    """The switches libraries read from the environment when they start; set before they are imported.

    W&B reads ``WANDB_SILENT``/``WANDB_CONSOLE`` when a run starts, the hub and datasets their progress-bar
    switches when imported. Values the user set are kept.
    """
    if verbose:
        return
    for name, value in (
        ("WANDB_SILENT", "true"),
        ("WANDB_CONSOLE", "off"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
        ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1"),
    ):
        os.environ.setdefault(name, value)


# Lines libraries print() unasked, whatever their log level: log only, unless verbose.
NOISE = ("[INFO] Running in WANDB offline mode",)  # transformers' W&B integration, on import


class _Tee:
    """A stream that writes to the console (``show``) and, redacted, to the log file."""

    def __init__(self, console: TextIO, show: bool) -> None:
        self.console = console
        self.show = show
        self.after_noise = False  # print() writes its newline separately: it goes where its line went

    def write(self, text: str) -> int:
        noise = not _state["verbose"] and (text.startswith(NOISE) or (self.after_noise and text == "\n"))
        self.after_noise = noise and text != "\n"
        if self.show and not noise:
            self.console.write(redact_text(text))
        f = log_file()
        if f is not None and text and not text.startswith("\r"):  # a terminal bar redrawing itself: not a line
            f.write(redact_text(text))
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        if (f := log_file()) is not None:
            f.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ...: the console's
        return getattr(self.console, name)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings from align's own code on the console; libraries' (FutureWarning, ...) in the log only."""
    text = warnings.formatwarning(message, category, filename, lineno, line)
    own = Path(filename).resolve().is_relative_to(ROOT) and ".venv" not in Path(filename).parts
    if _state["verbose"] or own:
        sys.stderr.write(text)
    else:
        log(text)


def start(run_dir: str | os.PathLike | None, *, verbose: bool = False, rank: int = 0) -> Path | None:
    """Open ``<run_dir>/logs/<time>-<pid>[-rank<k>].log``, send every stream and library log there, quiet the
    console.

    Processes other than the first show only their errors and warnings (their lines are in their own logs).
    With ``run_dir`` None the log is held in memory until :func:`open_log` (nothing is written for a run whose
    inputs fail their checks). Returns the log's path, or None where none is open.
    """
    quiet_environment(verbose)
    _state.update(started=True, verbose=verbose, rank=rank)
    if _state["log"] is None:
        _state["log"] = _LogSink()
    path = open_log(run_dir) if run_dir is not None else None
    if not isinstance(sys.stdout, _Tee):
        sys.stdout = _Tee(sys.stdout, show=verbose or rank == 0)
        sys.stderr = _Tee(sys.stderr, show=True)
    warnings.showwarning = _show_warning
    _route_library_logs(verbose)
    return path


def open_log(run_dir: str | os.PathLike) -> Path | None:
    """Open this process's log file in ``<run_dir>/logs/`` with what was held so far. Returns its path, or
    None where it cannot be written (a read-only run directory: the run can still show a finished result)."""
    sink = _state["log"]
    rank = _state.get("rank", 0)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"  # two runs started in one second: two files
    path = Path(run_dir) / LOGS / (f"{stamp}.log" if rank == 0 else f"{stamp}-rank{rank}.log")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sink.open(path)
    except OSError as err:
        print(f"[align] no log file: {path.parent}: {err.strerror}", file=sys.stderr, flush=True)
        sink.held, sink.file = [], open(os.devnull, "w")  # noqa: SIM115 - nothing to keep, nothing to hold
        return None
    return path


def _route_library_logs(verbose: bool) -> None:
    """Library log records: all of WARNING and above to the log file; to the console only errors (or, with
    ``verbose``, what the library would print anyway). Progress bars off unless ``verbose``."""
    import datasets
    import transformers

    transformers.utils.logging.get_logger("transformers")  # their console handlers exist from here on
    datasets.utils.logging.get_logger("datasets")
    console_level = logging.WARNING if verbose else logging.ERROR
    file_handler = None
    if log_file() is not None:
        file_handler = logging.StreamHandler(log_file())
        file_handler.setFormatter(_RedactingFormatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        file_handler.setLevel(logging.INFO)
    loggers = [logging.getLogger(), *(logging.getLogger(name) for name in LIBRARY_LOGGERS)]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(console_level)  # the libraries' own console handlers
        if file_handler is not None:
            logger.addHandler(file_handler)
    root = logging.getLogger()
    if not root.handlers or root.handlers == [file_handler]:  # else Python's last-resort handler prints WARNINGs
        console = logging.StreamHandler(sys.stderr)
        console.setLevel(console_level)
        root.addHandler(console)
    root.setLevel(min(root.level or logging.WARNING, logging.INFO))
    if verbose:
        return
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_warning()
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # an older hub: its bars follow HF_HUB_DISABLE_PROGRESS_BARS
        pass


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``: short enough for a stage line."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def user_errors() -> tuple[type[BaseException], ...]:
    """The errors a user can fix from the message: reported as ``error: ...`` with exit code 2, no traceback."""
    from align.config import ConfigError
    from align.constitution import ConstitutionError
    from align.data import DataError
    from align.files import WriteError
    from align.pipeline import RunLocked
    from align.train.errors import TrainingDiverged

    return (ConfigError, ConstitutionError, DataError, WriteError, TrainingDiverged, RunLocked)


def entry_point(main: Callable[[], object]) -> int:
    """Run a recipe's ``main``; the exit code: 0, or 2 for a user error (printed, no traceback).

    Every process then leaves the process group (:func:`align.distributed.end_processes`): a process that
    exits with it still up can abort at exit ("terminate called without an active exception").
    """
    from align.distributed import end_processes
    from align.pipeline import StopPipeline

    code = 1
    try:
        main()
        code = 0
    except StopPipeline as stop:
        print(f"[align] {stop}", flush=True)
        code = 0
    except user_errors() as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        code = 2
    finally:
        end_processes(clean=code == 0)
    return code
