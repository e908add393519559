"""What incremental critique-and-revise saves after a one-principle edit (side by side, one process).

    python scripts/bench_incremental.py --run runs/cai-tiny [--principle violence]

Generates the SL-CAI samples of the tiny recipe from scratch with the shipped constitution, then again
after rewording one principle, first reusing the earlier samples and then from scratch. Prints how many
samples used the principle, how many were regenerated, and both times.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/cai-tiny", help="a run directory with a finished sft stage")
    parser.add_argument("--config", default="recipes/configs/cai_tiny.yaml")
    parser.add_argument("--principle", default="violence", help="id of the principle to reword")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.config import RecipeConfig, load_config
    from align.constitution import load_constitution, load_constitution_data
    from align.feedback.critique_revise import critique_and_revise
    from align.generation import TransformersBackend
    from align.worlds import load_world

    cfg = load_config(RecipeConfig, args.config)
    path = Path(args.run) / "sft"
    if not (path / "model.safetensors").exists():
        raise SystemExit(f"{path} has no model; run `make demo` first")
    policy = TransformersBackend(
        AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), name="sft"
    )
    cr = cfg.critique_revise
    world = load_world(cfg)  # the recipe's own prompts: the same sources, the same seeded order and limits
    red = [p.text for p in world.prompts("harmful/train")[: cr.red_team_prompts.limit]]
    helpful = [p.text for p in world.prompts("benign/train")[: cr.helpful_prompts.limit]]

    original = load_constitution(cfg.constitution)
    data = original.to_dict()
    for p in data["principles"]:
        if p["id"] == args.principle:
            p["critique"] = "Say plainly what in the last response could lead to harm, if anything."
    edited = load_constitution_data(data)

    def timed(constitution, previous=()):
        start = time.perf_counter()
        records, counts = critique_and_revise(policy, policy, constitution, red, helpful, cr, cfg.seed, previous)
        return records, counts, time.perf_counter() - start

    first, _, full_s = timed(original)
    users = sum(args.principle in r["principle_ids"] for r in first)
    _, counts, incremental_s = timed(edited, first)
    _, _, fresh_s = timed(edited)
    print(f"samples                       {len(first)} ({len(red)} red-team, {len(helpful)} helpful)")
    print(f"samples using {args.principle:<15} {users}")
    print(f"regenerated / reused          {counts['regenerated']} / {counts['reused']}")
    print(f"first full generation         {full_s:.2f} s")
    print(f"after the edit, from scratch  {fresh_s:.2f} s")
    print(f"after the edit, incremental   {incremental_s:.2f} s  ({fresh_s / incremental_s:.1f}x faster)")


if __name__ == "__main__":
    main()
