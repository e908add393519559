"""Train the tiny world's helpful-only base model, cached on disk by a hash of everything that shapes it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from align.config import SFTStageConfig
from align.tiny.corpus import as_completions, build_corpus
from align.tiny.model import build_model, build_tokenizer
from align.tiny.settings import TinyWorldConfig
from align.tiny.world import Split, make_split

CACHE_ENV = "ALIGN_CACHE"


def split_for(cfg: TinyWorldConfig) -> Split:
    return make_split(
        cfg.seed,
        cfg.holdout_fraction,
        cfg.n_verbs,
        cfg.n_objects,
        cfg.n_phrasings,
        tuple(cfg.attack_styles),
        tuple(cfg.seen_styles),
        cfg.lookalikes,
    )


def corpus_for(cfg: TinyWorldConfig, constitution, few_shot: bool = True) -> list[list[dict[str, str]]]:
    split = split_for(cfg)
    return build_corpus(
        split.train + split.pretrain,
        constitution,
        seed=cfg.seed,
        few_shot=few_shot,
        feedback_fraction=cfg.feedback_fraction,
        comparison_fraction=cfg.comparison_fraction,
        demonstrated=lambda request: split.style_group(request) != "heldout",
    )


def cache_key(cfg: TinyWorldConfig, sft: SFTStageConfig, constitution, seed: int, few_shot: bool) -> str:
    """Everything that changes the trained weights: world, training settings, constitution content, code."""
    names = ("world.py", "corpus.py", "model.py", "base.py")
    code = "".join((Path(__file__).parent / f).read_text() for f in names)
    blob = json.dumps(
        {
            "tiny": {**asdict(cfg), "constitution": None},  # its content is keyed below, not its path
            # how often checkpoints are written does not change the weights
            "sft": {k: v for k, v in asdict(sft).items() if k not in ("save_steps", "save_total_limit")},
            "constitution": constitution.content_hash,
            "seed": seed,
            "few_shot": few_shot,
        },
        sort_keys=True,
    )
    return hashlib.sha256((blob + code).encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "align")) / "tiny-models"


def train_base_model(
    cfg: TinyWorldConfig,
    sft: SFTStageConfig,
    constitution,
    output_dir: str | Path,
    *,
    seed: int,
    few_shot: bool = True,
    report_to: str = "none",
) -> dict:
    """Build corpus, tokenizer and model, train with SFT and save to ``output_dir`` (reusing the cache)."""
    from accelerate import PartialState
    from datasets import Dataset

    from align.train.sft import train_sft

    state = PartialState()
    output_dir = Path(output_dir)
    key = cache_key(cfg, sft, constitution, seed, few_shot)
    cached = cache_dir() / key
    if (cached / "model.safetensors").exists():
        if state.is_main_process:
            shutil.copytree(cached, output_dir, dirs_exist_ok=True)
        state.wait_for_everyone()
        return {"cache": "hit", "cache_key": key}

    corpus = corpus_for(cfg, constitution, few_shot)
    texts = [m["content"] for conversation in corpus for m in conversation]
    texts += [m["content"] for conversation in constitution.few_shot for m in conversation]
    tokenizer = build_tokenizer(texts, cfg.vocab_size)
    model = build_model(
        tokenizer,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        seed=seed,
    )
    dataset = Dataset.from_list(as_completions(corpus, constitution.few_shot if few_shot else ()))
    metrics = train_sft(model, tokenizer, dataset, sft, str(output_dir), seed=seed, report_to=report_to, run_name="sft")
    if state.is_main_process:  # publish to the cache atomically: copy to a temp dir, then rename
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=f".{key}-"))
        for name in os.listdir(output_dir):
            src = output_dir / name
            if src.is_file():
                shutil.copy2(src, tmp / name)
        try:
            tmp.rename(cached)
        except OSError:  # another run published it first
            shutil.rmtree(tmp, ignore_errors=True)
    state.wait_for_everyone()
    n_params = sum(p.numel() for p in model.parameters())
    return {
        **metrics,
        "cache": "miss",
        "cache_key": key,
        "parameters": float(n_params),
        "corpus": len(corpus),
    }
