"""One place that turns a stage's ``BackendSettings`` into a backend, so recipes never name an engine."""

from __future__ import annotations

from align.config import BackendSettings
from align.generation.base import Backend


def build_backend(
    settings: BackendSettings,
    model: str,
    *,
    name: str | None = None,
    trust_remote_code: bool = False,
    run_model: bool = False,
) -> Backend:
    """A backend for ``model``: a path or hub id in-process, or a served model name for ``openai``.

    ``run_model`` marks a checkpoint the run itself trained (a local directory). A server only knows it if
    the user serves it and names it in ``settings.model``; otherwise it is generated in-process with
    transformers, so ``kind: openai`` can point at a remote feedback model while the run's policy stays local.
    """
    if settings.kind == "openai" and run_model and settings.model is None:
        from dataclasses import replace

        settings = replace(settings, kind="transformers")
    if settings.kind == "transformers":
        from align.generation.transformers_backend import load_backend

        return load_backend(model, trust_remote_code=trust_remote_code, dtype=settings.dtype, name=name)
    if settings.kind == "vllm":
        from align.generation.vllm_backend import VLLMBackend

        return VLLMBackend(model, settings, name=name, trust_remote_code=trust_remote_code)
    if settings.kind == "openai":
        from align.generation.openai_backend import OpenAIBackend

        served = settings.model if run_model else model
        render = None
        if settings.endpoint == "completions":
            render = _chat_renderer(model if run_model else served, trust_remote_code)
        return OpenAIBackend(settings, served, name=name, render=render)
    raise ValueError(f"unknown backend kind {settings.kind!r}")


def _chat_renderer(tokenizer_source: str, trust_remote_code: bool):
    """Render conversations with the model's own chat template, for the plain completions endpoint."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ValueError(
            f"endpoint 'completions' renders the chat template locally and needs the tokenizer of "
            f"{tokenizer_source!r} (a local directory or hub id); use endpoint 'chat' otherwise ({e})"
        ) from None
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer of {tokenizer_source!r} has no chat template to render the conversations")

    def render(conversation) -> str:
        return tokenizer.apply_chat_template(list(conversation), tokenize=False, add_generation_prompt=True)

    return render
