"""Loading any Hugging Face causal LM the same way in every stage: dtype, attention, 4-bit, clear errors.

A stage's model is a hub id, a local directory, or an earlier stage's output. An output may stand for another
model instead of holding weights (the ``sft`` stage without ``sft.dataset`` stands for the base model as it
is), which it says in ``model.json``; :func:`resolve` follows that pointer, so a 7B base model is never copied.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from align.config import ConfigError, ModelLoading

POINTER = "model.json"


def write_pointer(directory: str | Path, model: str) -> None:
    """Make ``directory`` (a stage's output) stand for ``model``, a hub id or path, without copying weights."""
    from align.data import write_text_atomic

    write_text_atomic(Path(directory) / POINTER, json.dumps({"model": model}) + "\n")


def resolve(model: str | Path) -> str:
    """The model a stage directory stands for (following ``model.json``), or ``model`` itself."""
    pointer = Path(os.path.expanduser(str(model))) / POINTER
    if pointer.is_file():
        return str(json.loads(pointer.read_text())["model"])
    return str(model)


def is_local(model: str) -> bool:
    return Path(os.path.expanduser(model)).exists()


def looks_like_path(model: str) -> bool:
    """A string meant as a local path ("./m", "/models/x", "a/b/c"), as opposed to a hub id ("org/name")."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1


def load_error(field: str, model: str, err: Exception) -> ConfigError:
    """The error a user can act on: a missing local path, or a hub id that cannot be fetched (no network)."""
    if is_local(model) or looks_like_path(model):
        where = "does not exist" if not is_local(model) else f"cannot be loaded ({str(err).splitlines()[0][:300]})"
        return ConfigError(f"{field}: model path {model} {where}")
    return ConfigError(
        f"{field}: cannot load {model!r} from the Hugging Face hub ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200]}); with no network, download the model elsewhere "
        "(`huggingface-cli download ...`) and pass its local path"
    )


def load_tokenizer(model: str, *, trust_remote_code: bool = False, field: str = "model"):
    """The model's tokenizer; it must have a chat template, since every prompt is a conversation."""
    from transformers import AutoTokenizer

    model = resolve(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise load_error(field, model, err) from None
    if tokenizer.chat_template is None:
        raise ConfigError(
            f"{field}: the tokenizer of {model} has no chat template; add one (tokenizer.chat_template in "
            "tokenizer_config.json) or use a chat/instruct model"
        )
    if tokenizer.pad_token is None:  # batches need padding; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def choose_dtype(name: str, *, cuda: bool, bf16_supported: bool) -> torch.dtype:
    """The dtype a ``torch_dtype`` setting means on a machine (pure, so every case is unit-tested).

    ``auto`` is bfloat16 on a CUDA GPU that supports it and float32 elsewhere: CPU bfloat16 matmuls are slow, and
    float16 without a loss scaler is not safe to train in. An explicit dtype is taken as asked.
    """
    if name == "auto":
        return torch.bfloat16 if cuda and bf16_supported else torch.float32
    return getattr(torch, name)


def torch_dtype(name: str) -> torch.dtype:
    """``choose_dtype`` for this machine."""
    cuda = torch.cuda.is_available()
    return choose_dtype(name, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())


def from_pretrained_kwargs(loading: ModelLoading | None, trust_remote_code: bool, field: str) -> dict[str, Any]:
    """``from_pretrained`` arguments for a stage's loading settings (QLoRA: NF4 weights, bf16 compute)."""
    loading = loading or ModelLoading()
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": torch_dtype(loading.torch_dtype)}
    if loading.attn_implementation:
        kwargs["attn_implementation"] = loading.attn_implementation
    if loading.load_in_4bit:
        if not torch.cuda.is_available():
            raise ConfigError(f"{field}.load_in_4bit: 4-bit QLoRA needs a CUDA GPU (bitsandbytes); turn it off on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise ConfigError(f"{field}.load_in_4bit: needs bitsandbytes: pip install 'align[qlora]'") from None
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",  # Dettmers et al. 2023
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    return kwargs


def load_causal_lm(
    model: str, loading: ModelLoading | None = None, *, trust_remote_code: bool = False, field: str = "model"
):
    """(model, tokenizer) for training or scoring; with 4-bit weights, prepared for k-bit training."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code, field=field)
    model = resolve(model)
    kwargs = from_pretrained_kwargs(loading, trust_remote_code, field)
    try:
        lm = AutoModelForCausalLM.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as err:
        raise load_error(field, model, err) from None
    if loading is not None and loading.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm)
    return lm, tokenizer


def eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id that ends a reply: the tokenizer's EOS and all of ``generation_config.eos_token_id``.

    Llama 3 instruct models end a turn with ``<|eot_id|>``, which only their generation config lists; stopping
    at the tokenizer's ``<|end_of_text|>`` alone would let them talk on past their answer.
    """
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, configured):
        for token in value if isinstance(value, (list, tuple)) else [value]:
            if token is not None and int(token) not in ids:
                ids.append(int(token))
    return ids
