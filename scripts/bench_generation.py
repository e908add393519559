"""Tokens/s of the critique-and-revise stage on the tiny model, four ways, side by side in one run.

    python scripts/bench_generation.py [--config recipes/configs/cai_tiny.yaml] [--prompts 64]

(a) one conversation at a time, in-process: what a per-request pipeline (llm-swarm style) does without
    a batching server;
(b) the batched transformers backend (the config's batch size, prompts sorted by length);
(c) the openai backend against `transformers serve` started here on loopback, serving the same model
    directory (requests concurrent up to --concurrency);
(d) two processes of (b) under `accelerate launch` (gloo on CPU), prompts sharded and gathered.

Every row runs the same workload: for each red-team prompt a response, then one round of critique and
revision (3 generations per prompt, the config's sampling settings). Tokens are counted the same way for
every row, by re-tokenising every generated text, and the table prints each row's ratio against (a).
Each row runs --repeats times ((a) and (b) alternating) and keeps its fastest run, the one least disturbed
by other work on a shared machine.
The tiny world's base model is trained first if ALIGN_CACHE does not hold it (about 3 minutes on 2 cores
for cai_tiny, 20 s for cai_smoke), unless --model gives one.

Every process, the server's included, uses one thread: on a small shared CPU two OpenMP threads per
process measured slower, and it makes (b) and (d) the same engine on one and on two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def workload(cfg_path: str, n: int):
    """(config, constitution, red-team prompts) of the tiny world, seeded like the recipe."""
    import random

    from align.config import RecipeConfig, load_config
    from align.constitution import load_constitution
    from align.worlds import load_world

    cfg = load_config(RecipeConfig, cfg_path)
    constitution = load_constitution(cfg.constitution)
    pool = load_world(cfg).split.prompts("train", "harmful")
    red = random.Random(cfg.seed).sample(pool, k=min(n, len(pool)))
    return cfg, constitution, red


def run_stage(cfg, constitution, red, policy, batch_size: int) -> tuple[list[dict], float]:
    """Critique and revise ``red`` with ``policy`` as policy and feedback model; (records, wall seconds)."""
    from align.feedback.critique_revise import critique_and_revise

    cr = replace(cfg.critique_revise, sampling=replace(cfg.critique_revise.sampling, batch_size=batch_size))
    start = time.perf_counter()
    records, _ = critique_and_revise(policy, policy, constitution, red, [], cr, cfg.seed)
    return records, time.perf_counter() - start


def generated_tokens(records: list[dict], tokenizer) -> tuple[int, int]:
    """(tokens, texts) over every response, critique and revision: one count for every backend."""
    texts = [r["initial_response"] for r in records]
    texts += [s[k] for r in records for s in r["rounds"] for k in ("critique", "revision")]
    return sum(len(tokenizer(t, add_special_tokens=False).input_ids) + 1 for t in texts), len(texts)  # + EOS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model_dir: str, log: Path) -> tuple[subprocess.Popen, str, str]:
    """Start `transformers serve` on a free loopback port; (process, its /v1 URL, served model name) once healthy.

    transformers serve samples only when the model's generation_config says ``do_sample: true`` (a request's
    temperature alone is ignored), so it serves a copy that does; temperature 0 still means greedy.
    """
    import httpx
    from transformers import GenerationConfig

    served = log.parent / "served-model"
    shutil.copytree(model_dir, served, dirs_exist_ok=True)
    gen = GenerationConfig.from_pretrained(served)
    gen.do_sample = True
    gen.save_pretrained(served)
    model_dir = str(served)

    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [exe, "serve", model_dir, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1", model_dir
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"transformers serve did not start (pip install -e '.[dev]'?):\n{log.read_text()[-2000:]}")


def worker(args) -> None:
    """Row (d): run under accelerate launch; the main process writes the totals to --out."""
    import torch

    from align.distributed import end_processes, process_state
    from align.generation import load_backend

    torch.set_num_threads(1)
    state = process_state()
    cfg, constitution, red = workload(args.config, args.prompts)
    policy = load_backend(args.model, name="tiny")
    best = None
    for _ in range(args.repeats):
        state.wait_for_everyone()  # time generation, not process start-up and loading
        records, seconds = run_stage(cfg, constitution, red, policy, cfg.critique_revise.sampling.batch_size)
        if best is None or seconds < best[1]:
            best = (records, seconds)
    records, seconds = best
    if state.is_main_process:
        tokens, texts = generated_tokens(records, policy.tokenizer)
        Path(args.out).write_text(json.dumps({"tokens": tokens, "texts": texts, "seconds": seconds}))
    # Every process waits for the others, then leaves the process group: exiting with it still up (process 1
    # used to exit while process 0 was still counting tokens) can abort at exit after all the work is done.
    end_processes()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/configs/cai_tiny.yaml")
    parser.add_argument("--prompts", type=int, default=64, help="red-team prompts (3 generations each)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight for (c)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the fastest counts")
    parser.add_argument("--model", help="a trained model directory to use instead of the config's base model")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    import torch

    from align.config import BackendSettings
    from align.generation import build_backend, load_backend
    from align.worlds import load_world

    torch.set_num_threads(1)
    cfg, constitution, red = workload(args.config, args.prompts)
    tmp = Path(tempfile.mkdtemp(prefix="bench-generation-"))
    model_dir = args.model or str(tmp / "model")
    if not args.model:
        load_world(cfg).train_base_model(Path(model_dir), "none")
    batch = cfg.critique_revise.sampling.batch_size
    rows = []

    def record(label: str, runs: list[tuple[list[dict], float]], tokenizer) -> None:
        records, seconds = min(runs, key=lambda r: r[1])
        tokens, texts = generated_tokens(records, tokenizer)
        rows.append((label, tokens, texts, seconds))
        print(f"[bench] {label}: {tokens} tokens, {texts} texts in {seconds:.2f} s (best of {len(runs)})", flush=True)

    local = load_backend(model_dir, name="tiny")
    one, batched = [], []
    for _ in range(args.repeats):
        one.append(run_stage(cfg, constitution, red, local, 1))
        batched.append(run_stage(cfg, constitution, red, local, batch))
    record("(a) one conversation at a time", one, local.tokenizer)
    record(f"(b) batched transformers (batch {batch})", batched, local.tokenizer)

    proc, url, served_name = serve(model_dir, tmp / "serve.log")
    try:
        settings = BackendSettings(kind="openai", base_url=url, max_concurrency=args.concurrency)
        served = build_backend(settings, served_name, name="tiny")
        runs = [run_stage(cfg, constitution, red, served, batch) for _ in range(args.repeats)]
        record(f"(c) openai -> transformers serve ({args.concurrency} in flight)", runs, local.tokenizer)
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    out = tmp / "dp.json"
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or "accelerate"
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    cmd += [__file__, "--worker", "--config", args.config, "--prompts", str(args.prompts)]
    cmd += ["--model", model_dir, "--out", str(out), "--repeats", str(args.repeats)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    dp = json.loads(out.read_text())
    rows.append((f"(d) 2 processes of (b) (batch {batch} each)", dp["tokens"], dp["texts"], dp["seconds"]))
    print(f"[bench] (d): {dp['tokens']} tokens, {dp['texts']} texts in {dp['seconds']:.2f} s", flush=True)

    base_rate = rows[0][1] / rows[0][3]
    print(f"\nCritique-and-revise on the tiny model: {len(red)} red-team prompts, 1 round, {os.cpu_count()} CPUs")
    print("| backend | texts | tokens | seconds | tokens/s | vs (a) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, tokens, texts, seconds in rows:
        rate = tokens / seconds
        print(f"| {label} | {texts} | {tokens} | {seconds:.2f} | {rate:.0f} | {rate / base_rate:.1f}x |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
