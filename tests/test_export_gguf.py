"""The GGUF export holds every weight unchanged under llama.cpp's names, and the tokenizer llama.cpp needs."""

import numpy as np
import pytest
from helpers.tiny_lm import save_tiny_lm

from align.config import ConfigError
from align.export_gguf import export_gguf, gguf_tensor_name

gguf = pytest.importorskip("gguf", reason="pip install 'align[llamacpp]'")


def field(reader, key):
    return reader.fields[key].contents()


def test_names_follow_llama_cpp():
    assert gguf_tensor_name("model.embed_tokens.weight") == "token_embd.weight"
    assert gguf_tensor_name("model.layers.3.self_attn.k_proj.bias") == "blk.3.attn_k.bias"
    assert gguf_tensor_name("model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight"
    assert gguf_tensor_name("lm_head.weight") == "output.weight"
    with pytest.raises(KeyError):
        gguf_tensor_name("model.layers.0.self_attn.q_norm.weight")


def test_round_trip_of_weights_and_tokenizer(tmp_path):
    model, tok = save_tiny_lm(tmp_path / "m", ["Which response is better? (A) yes (B) no"])
    reader = gguf.GGUFReader(str(export_gguf(model, tok, tmp_path / "m.gguf")))
    tensors = {t.name: np.asarray(t.data) for t in reader.tensors}
    state = model.state_dict()
    assert np.array_equal(tensors["token_embd.weight"], state["model.embed_tokens.weight"].numpy())
    assert np.array_equal(tensors["output.weight"], state["model.embed_tokens.weight"].numpy())  # tied
    assert np.array_equal(tensors["blk.1.attn_q.bias"], state["model.layers.1.self_attn.q_proj.bias"].numpy())
    assert np.array_equal(tensors["blk.0.ffn_up.weight"], state["model.layers.0.mlp.up_proj.weight"].numpy())
    layers = model.config.num_hidden_layers
    assert len(tensors) == 3 + 12 * layers  # embeddings, final norm, output; 12 per block
    assert field(reader, "general.architecture") == "qwen2"
    assert field(reader, "qwen2.block_count") == layers
    assert field(reader, "qwen2.attention.head_count_kv") == model.config.num_key_value_heads
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == len(tok) and tokens[tok.eos_token_id] == "<|im_end|>"
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[tok.eos_token_id] == 3 and types[tok.convert_tokens_to_ids("A")] == 1
    assert field(reader, "tokenizer.ggml.add_bos_token") is False
    assert field(reader, "tokenizer.ggml.merges")[0].count(" ") == 1


def test_other_architectures_are_refused(tmp_path):
    model, tok = save_tiny_lm(tmp_path / "m", ["x"])
    model.config.model_type = "llama"
    with pytest.raises(ConfigError, match="only Qwen2"):
        export_gguf(model, tok, tmp_path / "m.gguf")
