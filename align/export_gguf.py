"""Write a transformers Qwen2 checkpoint as a GGUF file for llama.cpp's server (``pip install 'align[llamacpp]'``).

Why: llama.cpp's server returns next-token log-probabilities on CPU, so a served critic's RL-CAI labels can be
checked against in-process labels without a GPU. Tensors are written in float32, unquantised, so the served
model computes what the checkpoint computes; the tokenizer goes in as a byte-level BPE ("gpt2" in llama.cpp's
terms) with its merges, special tokens and chat template, and no BOS is added (the chat template has none).

Only Qwen2 is handled (the tiny world's architecture): its rotary embedding halves the head dimension the way
llama.cpp's NEOX rope does, so the attention weights go in unchanged. Other architectures raise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from align.config import ConfigError

# transformers parameter name (after "model.layers.N.") -> llama.cpp tensor name (after "blk.N.")
_BLOCK_TENSORS = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_TENSORS = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}


def gguf_tensor_name(name: str) -> str:
    """llama.cpp's name for a Qwen2 parameter; KeyError for one it has no place for."""
    if name in _TOP_TENSORS:
        return _TOP_TENSORS[name]
    if name == "lm_head.weight":
        return "output.weight"
    parts = name.split(".", 3)  # model, layers, N, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"]:
        return f"blk.{int(parts[2])}.{_BLOCK_TENSORS[parts[3]]}"
    raise KeyError(name)


def _token_types(tokenizer) -> list[int]:
    """llama.cpp token types: 1 normal, 3 control (special tokens), 4 user-defined (other added tokens)."""
    types = [1] * len(tokenizer)
    for token_id, added in tokenizer.added_tokens_decoder.items():
        types[token_id] = 3 if added.special else 4
    return types


def _merges(tokenizer) -> list[str]:
    """The BPE merges as "left right" strings, whichever of the two forms tokenizer.json stores them in."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if model.get("type") != "BPE":
        raise ConfigError(f"export_gguf: only byte-level BPE tokenizers are handled, not {model.get('type')}")
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def export_gguf(model: Any, tokenizer: Any, path: str | Path) -> Path:
    """Write ``model`` (a transformers Qwen2ForCausalLM) and ``tokenizer`` to the GGUF file ``path``."""
    import gguf

    cfg = model.config
    if cfg.model_type != "qwen2":
        raise ConfigError(f"export_gguf: only Qwen2 checkpoints are handled, not {cfg.model_type!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_name(str(getattr(cfg, "_name_or_path", "") or "align-export"))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    rope = getattr(cfg, "rope_parameters", None) or {}
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))

    vocab = tokenizer.get_vocab()
    tokens = [""] * len(tokenizer)
    for text, token_id in vocab.items():
        tokens[token_id] = text
    writer.add_tokenizer_model("gpt2")
    # the tiny tokenizer pre-splits text with GPT-2's regex (pre_tokenizers.ByteLevel's default)
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(_token_types(tokenizer))
    writer.add_token_merges(_merges(tokenizer))
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_add_bos_token(False)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    state = {k: v for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")}
    if "lm_head.weight" not in state or getattr(cfg, "tie_word_embeddings", False):
        state["lm_head.weight"] = state["model.embed_tokens.weight"]  # tied: llama.cpp reads its own output.weight
    for name, tensor in state.items():
        writer.add_tensor(gguf_tensor_name(name), tensor.detach().to(torch.float32).cpu().numpy().copy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
