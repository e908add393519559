"""How fast RL-CAI labelling is on the tiny world, and how much batching buys (side by side, one process).

    python scripts/bench_labelling.py --run runs/cai-tiny [--pairs 1000] [--principles 4]

Uses a finished run's helpful SFT model (the feedback model) and SL-CAI model: 1,000 training requests,
one response from each model, then every pair labelled with 4 principles in both orders (8 forward
passes of the feedback model per pair). Prints the labelling time (target: under 2 minutes on 2 cores),
agreement with the reference judge, and the speed-up of batched scoring over one prompt at a time.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cai-tiny", help="a finished run directory of recipes/cai.py")
    parser.add_argument("--config", default="recipes/configs/cai_tiny.yaml", help="the config that made it")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--principles", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--unbatched-sample", type=int, default=200, help="prompts scored one at a time")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.config import RecipeConfig, SamplingSettings, load_config
    from align.constitution import load_constitution
    from align.feedback import prompts
    from align.feedback.preferences import OptionScorer, Pair, label_pairs
    from align.generation import TransformersBackend
    from align.tiny.judge import prefers_first
    from align.worlds import load_world

    cfg = load_config(RecipeConfig, args.config)
    run = Path(args.run)
    for stage in ("sft", "sft_cai"):
        if not (run / stage / "model.safetensors").exists():
            raise SystemExit(f"{run / stage} has no model; run `make demo` (or recipes/cai.py) first")
    constitution = load_constitution(cfg.constitution)
    split = load_world(cfg).split
    requests = random.Random(0).sample(list(split.train), k=min(args.pairs * 2, len(split.train)))

    def backend(stage: str) -> TransformersBackend:
        path = str(run / stage)
        return TransformersBackend(
            AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), name=stage
        )

    helpful, sl_cai = backend("sft"), backend("sft_cai")
    sampling = SamplingSettings(max_new_tokens=48, temperature=0.7, batch_size=64)
    convs = [[prompts.user(r.text)] for r in requests]
    t0 = time.perf_counter()
    first, second = helpful.generate(convs, sampling, 0), sl_cai.generate(convs, sampling, 1)
    generate_s = time.perf_counter() - t0
    # Keep pairs that differ (identical responses carry no preference), up to --pairs of them.
    keep = [i for i in range(len(requests)) if first[i].strip() != second[i].strip()][: args.pairs]
    pairs = [Pair(requests[i].text, first[i], second[i]) for i in keep]

    scorer = OptionScorer(helpful.model, helpful.tokenizer, args.batch_size, name="sft")
    t0 = time.perf_counter()
    rows = label_pairs(pairs, constitution, scorer, num_principles=args.principles, seed=0)
    label_s = time.perf_counter() - t0
    queries = len(pairs) * args.principles * 2

    # The same kind of prompt, one at a time, on a sample: the cost per query without batching.
    one = OptionScorer(helpful.model, helpful.tokenizer, 1, name="sft")
    render = helpful.tokenizer.apply_chat_template
    texts = [
        render(
            prompts.comparison_messages(p.prompt, p.response_1, p.response_2, "Which is better?"),
            tokenize=False,
            add_generation_prompt=True,
        )
        for p in pairs[: args.unbatched_sample]
    ]
    t0 = time.perf_counter()
    one.prob_a(texts)
    per_query_unbatched = (time.perf_counter() - t0) / max(len(texts), 1)

    judged = [(prefers_first(requests[i], first[i], second[i]), row) for i, row in zip(keep, rows)]
    decided = [(j, row["p_first_better"] > 0.5) for j, row in judged if j is not None]
    agree = sum(j == a for j, a in decided) / max(len(decided), 1)
    print(f"pairs labelled          {len(pairs)} ({args.principles} principles x 2 orders = {queries} queries)")
    print(f"generation (2 x {len(requests)})  {generate_s:.1f} s")
    print(f"labelling               {label_s:.1f} s  ({len(pairs) / label_s:.0f} pairs/s; target < 120 s)")
    print(f"judge agreement         {agree:.1%} of {len(decided)} pairs where the judge has a preference")
    print(f"batched vs one-by-one   {per_query_unbatched / (label_s / queries):.1f}x faster per query")


if __name__ == "__main__":
    main()
