"""A tiny causal LM with random but varied weights, saved to disk, for the generation-backend tests."""

from pathlib import Path

import torch

from align.tiny.model import build_model, build_tokenizer


def convs(prompts):
    return [[{"role": "user", "content": p}] for p in prompts]


def save_tiny_lm(path: Path, texts: list[str]):
    """Build, widen and save a 2-layer model and its tokenizer; returns (model, tokenizer)."""
    torch.manual_seed(0)
    tok = build_tokenizer(texts, 300)
    model = build_model(tok, hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)
    with torch.no_grad():  # wider than the default init, so greedy replies differ from prompt to prompt
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, 0.3)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok
