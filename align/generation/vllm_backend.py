"""In-process generation with vLLM (``pip install 'align[vllm]'``, Linux with a CUDA GPU).

vLLM schedules all conversations itself (continuous batching, paged KV cache), so the whole list is
handed over in one call; ``sampling.batch_size`` does not apply. It is imported only when this backend is
built, so align works without it, and a missing install says how to get it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from align.config import BackendSettings, SamplingSettings
from align.generation.base import Message, Progress, is_main_local_process

INSTALL_HINT = (
    "backend.kind 'vllm' needs the vllm package, which runs on Linux with an NVIDIA GPU: "
    "pip install 'align[vllm]' (or pip install vllm). On CPU use backend.kind 'transformers', or run "
    "`vllm serve MODEL` elsewhere and use backend.kind 'openai'."
)


def import_vllm():
    """The vllm module, or an ImportError that explains how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} (import failed: {e})") from e
    return vllm


def engine_arguments(settings: BackendSettings) -> dict:
    """``vllm.LLM`` arguments from a stage's backend settings (a pure function, so it is tested without vLLM)."""
    return {
        "dtype": "bfloat16" if settings.dtype == "auto" else settings.dtype,
        "gpu_memory_utilization": settings.gpu_memory_utilization,
        "tensor_parallel_size": settings.tensor_parallel_size,
        "max_model_len": settings.max_model_len,
    }


class VLLMBackend:
    """A ``vllm.LLM`` behind the :class:`~align.generation.base.Backend` interface."""

    def __init__(
        self, path: str, settings: BackendSettings, *, name: str | None = None, trust_remote_code: bool = False
    ) -> None:
        vllm = import_vllm()
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(f"backend.kind 'vllm' needs a CUDA GPU and none is visible. {INSTALL_HINT}")
        self._vllm = vllm
        self.llm = vllm.LLM(model=path, **engine_arguments(settings), trust_remote_code=trust_remote_code)
        self.name = name or str(path)
        self.tokens_generated = 0
        self.samples_generated = 0
        self.seconds = 0.0

    def generate(
        self,
        conversations: Sequence[Sequence[Message]],
        sampling: SamplingSettings,
        seed: int,
        desc: str = "generate",
    ) -> list[str]:
        if not conversations:
            return []
        greedy = sampling.temperature == 0
        # One seed per conversation: a rerun reproduces every sample, whatever vLLM's batching did.
        params = [
            self._vllm.SamplingParams(
                max_tokens=sampling.max_new_tokens,
                temperature=0.0 if greedy else sampling.temperature,
                top_p=1.0 if greedy else sampling.top_p,
                seed=(seed * 100_003 + i) % 2**31,
            )
            for i in range(len(conversations))
        ]
        start = time.perf_counter()
        progress = Progress(len(conversations), desc)
        outputs = self.llm.chat([list(c) for c in conversations], params, use_tqdm=is_main_local_process())
        tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
        progress.update(len(outputs), tokens)
        progress.close()
        self.tokens_generated += tokens
        self.samples_generated += len(outputs)
        self.seconds += time.perf_counter() - start
        return [o.outputs[0].text.strip() for o in outputs]
