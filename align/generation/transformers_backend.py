"""In-process generation with transformers: batched, left-padded, length-bucketed, KV-cached, seeded."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from align.chat import render
from align.config import SamplingSettings
from align.generation.base import Message, Progress
from align.models import eos_token_ids


class TransformersBackend:
    """Generation from a loaded causal LM.

        Prompts are sorted by length before batching so each batch pads to similar lengths (less wasted
        compute), then replies are put back in input order. Generation stops at any EOS id of the tokenizer or of the
    model's generation config. Batching
        is what makes this fast: one forward pass per new token serves a whole batch, so a CPU or GPU does
        ``batch_size`` conversations for little more than the price of one (``scripts/bench_generation.py``).
        Greedy replies do not depend on the batch size (left padding with an attention mask and matching
        position ids), which ``tests/test_generation_backends.py`` checks.
    """

    def __init__(self, model, tokenizer, name: str) -> None:
        if tokenizer.chat_template is None:
            raise ValueError(
                f"tokenizer of {name} has no chat template; set one (tokenizer.chat_template) before generating"
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name = name
        self.eos_ids = eos_token_ids(model, tokenizer)  # every end-of-turn id, e.g. Llama 3's <|eot_id|>
        self.tokens_generated = 0
        self.samples_generated = 0
        self.seconds = 0.0

    def render(self, conversation: Sequence[Message]) -> str:
        """The conversation through the model's chat template, fitted to it (no system turn where it has none)."""
        return render(self.tokenizer, conversation, add_generation_prompt=True)

    @torch.inference_mode()
    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        sampling: SamplingSettings,
        seed: int,
        desc: str = "generate",
    ) -> list[str]:
        texts = [self.render(c) for c in conversations]
        lengths = [len(self.tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        replies: list[str] = [""] * len(texts)
        device = next(self.model.parameters()).device
        greedy = sampling.temperature == 0
        start = time.perf_counter()
        progress = Progress(len(texts), desc)
        for b, lo in enumerate(range(0, len(order), sampling.batch_size)):
            idx = order[lo : lo + sampling.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            torch.manual_seed(seed * 100_003 + b)  # one seed per batch: reruns reproduce the same samples
            out = self.model.generate(
                **enc,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                eos_token_id=self.eos_ids,
                pad_token_id=self.tokenizer.pad_token_id,
            )
            new = out[:, enc.input_ids.shape[1] :]
            tokens = int((new != self.tokenizer.pad_token_id).sum())
            for i, row in zip(idx, new):
                replies[i] = self.tokenizer.decode(row, skip_special_tokens=True).strip()
            self.tokens_generated += tokens
            self.samples_generated += len(idx)
            progress.update(len(idx), tokens)
        progress.close()
        self.seconds += time.perf_counter() - start
        return replies


def load_backend(
    path: str, *, trust_remote_code: bool = False, dtype: str = "auto", name: str | None = None, field: str = "model"
) -> TransformersBackend:
    """Load a model and tokenizer with ``from_pretrained`` (a local path, a stage's output or a hub id).

    On a GPU, ``dtype="auto"`` means bfloat16: half the memory traffic of float32 per generated token,
    and the precision instruction-tuned models are trained in. On CPU the checkpoint's own dtype is kept.
    Under data parallelism each process takes its own GPU (accelerate's local process index).
    """
    from transformers import AutoModelForCausalLM

    from align.models import load_error, load_tokenizer, resolve

    source = resolve(path)
    on_gpu = torch.cuda.is_available()
    if dtype == "auto" and on_gpu:
        dtype = "bfloat16"
    tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code, field=field)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, trust_remote_code=trust_remote_code, dtype=dtype)
    except (OSError, ValueError) as err:
        raise load_error(field, source, err) from None
    if on_gpu:
        from align.distributed import process_state

        model = model.to(process_state().device)
    return TransformersBackend(model, tokenizer, name=name or str(path))
