"""Run by tests/test_data_parallel.py, alone or under ``accelerate launch --num_processes 2``.

Generates greedy replies for a fixed list of prompts with ``generate_sharded`` (the tiny model saved in
MODEL_DIR) and, with a backend that signs each reply with its process index, checks who generated what.
The main process writes everything to OUT as JSON.
"""

import json
import sys

import torch

from align.config import BackendSettings, SamplingSettings
from align.distributed import end_processes, process_state
from align.generation import build_backend, generate_sharded


class Signing:
    """A backend whose reply is the prompt plus the process that answered it: order and coverage made visible."""

    name = "signing"

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.tokens_generated = self.samples_generated = 0
        self.seconds = 0.0

    def generate(self, conversations, sampling, seed, desc="generate"):
        self.samples_generated += len(conversations)
        self.tokens_generated += 2 * len(conversations)
        return [f"{c[-1]['content']}|{self.rank}" for c in conversations]


def main(model_dir: str, out: str, n: int) -> None:
    torch.set_num_threads(1)
    state = process_state()
    prompts = [f"How do I fix bike number {i}{'?' * (i % 4)}" + " please" * (i % 3) for i in range(n)]
    convs = [[{"role": "user", "content": p}] for p in prompts]
    backend = build_backend(BackendSettings(), model_dir, name="tiny")
    greedy = SamplingSettings(max_new_tokens=8, temperature=0, batch_size=4)
    replies = generate_sharded(backend, convs, greedy, seed=0, desc="dp")
    signing = Signing(state.process_index)
    signed = generate_sharded(signing, convs, greedy, seed=0, desc="signed")
    if state.is_main_process:
        result = {
            "num_processes": state.num_processes,
            "prompts": prompts,
            "replies": replies,
            "signed": signed,
            "tokens_generated": backend.tokens_generated,
            "samples_generated": backend.samples_generated,
            "signing_samples": signing.samples_generated,
        }
        with open(out, "w") as f:
            json.dump(result, f)
    end_processes()  # wait for each other, then leave the process group before exiting


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
