"""What a PPO step of align needs per GPU for a 7B policy on 8 x 80 GB with ZeRO-3: arithmetic, no GPU.

    python scripts/ppo_memory.py [--arch llama2-7b|mistral-7b] [--gpus 8] [--micro-batch 4] [--prompt 512]
                                 [--response 256] [--lora-r 16]

Each row is a policy (full fine-tuning or LoRA) x a critic (``ppo.value_model``: full, lora, shared). The reward
model has the policy's architecture (in CAI it starts from the SL-CAI model). Parameters are counted exactly from
the architecture built on the meta device (accelerate's ``init_empty_weights``; nothing is downloaded), LoRA
adapters from the shapes of every Linear but the output head.

What lives where (as align runs it under ``accelerate launch`` with a ZeRO-3 config):

* sharded over the GPUs (the module ``accelerator.prepare`` wraps: policy and critic; with ``value_model: lora``
  that includes the reward trunk the critic shares): bf16 weights, 2 B/param; for trained parameters also bf16
  gradients, 2 B, and Adam's fp32 master copy and two moments, 12 B (DeepSpeed's mixed precision: 16 B per
  trained parameter in all);
* on every GPU whole (``.to(device)``, not prepared): the frozen reference policy (full fine-tuning only; with
  LoRA it is the policy with its adapter off) and the reward model (unless the LoRA critic holds it), bf16;
* activations, per GPU (ZeRO shards states, not activations), for a micro-batch of b sequences of
  s = prompt + response tokens, hidden size h, L layers, vocabulary V, R response tokens:
  - kept for backward, per trained trunk pass: L * 34 * s * b * h bytes (Korthikanti et al. 2022, 16-bit
    activations, no tensor or sequence parallelism; their 5 * a * s / h attention-score term is left out because
    SDPA / flash attention never materialises the scores). ``full`` and ``lora`` critics run 2 trunks (policy and
    critic), ``shared`` 1;
  - with gradient checkpointing: each layer's input, L * 2 * s * b * h, plus one layer recomputed at a time,
    34 * s * b * h, per trunk;
  - the policy's logits on response tokens either way: R * b * V * 10 bytes (bf16 logits, their fp32 copy and
    the fp32 log-softmax kept for backward).

Not counted: the rollout's KV cache (generation is a separate phase; with ``rollout_backend: vllm`` it is vLLM's
``vllm_gpu_memory_utilization`` share), ZeRO-3's gathered-layer buffers and prefetch (a few hundred MB), CUDA
context and allocator fragmentation (budget 2-4 GB).

Cross-check with ``accelerate estimate-memory`` (which needs the hub; here its functions run on the meta model):
its parameter total (``calculate_maximum_sizes``, fp32 bytes / 4) must equal our count, and its float32 "Training
using Adam" figure, 4 x the fp32 model size = 16 B/param, equals our unsharded states for a fully trained model
(2 + 2 + 12 B/param). Its bfloat16 column (8 B/param) is the largest single component, not a sum.
"""

from __future__ import annotations

import argparse

GIB = 1024**3
ARCHS = {
    # Llama-2-7B and Mistral-7B-v0.1 shapes, from their published config.json files.
    "llama2-7b": dict(
        kind="llama",
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
    "mistral-7b": dict(
        kind="mistral",
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32000,
    ),
}


def meta_model(arch: str):
    """The architecture's causal LM on the meta device: exact shapes, no memory, no download."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

    spec = dict(ARCHS[arch])
    config = (LlamaConfig if spec.pop("kind") == "llama" else MistralConfig)(**spec, tie_word_embeddings=False)
    with init_empty_weights():
        return AutoModelForCausalLM.from_config(config)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def lora_parameters(model, r: int) -> int:
    """An r-rank adapter on every Linear of the trunk (peft's all-linear: the output head excluded)."""
    from torch import nn

    head = model.get_output_embeddings()
    return sum(
        r * (m.in_features + m.out_features) for m in model.modules() if isinstance(m, nn.Linear) and m is not head
    )


def accelerate_cross_check(model, params: int) -> dict[str, float]:
    """accelerate estimate-memory's own arithmetic on the meta model, next to ours."""
    from accelerate.commands.estimate import estimate_training_usage
    from accelerate.utils import calculate_maximum_sizes

    total_fp32, _ = calculate_maximum_sizes(model)  # parameters and buffers (the rotary tables), fp32 bytes
    fp32_training = max(estimate_training_usage(total_fp32, "float32").values())
    buffers = sum(b.numel() for b in model.buffers())
    if total_fp32 != 4 * (params + buffers):
        raise SystemExit(f"accelerate counts {total_fp32 // 4:,} elements, we count {params + buffers:,}")
    return {
        "elements": total_fp32 // 4,
        "buffers": buffers,
        "fp32_adam_gib": fp32_training / GIB,
        "ours_gib": 16 * (params + buffers) / GIB,
    }


def estimate(
    params: int, lora: int, hidden: int, layers: int, vocab: int, args: argparse.Namespace
) -> list[dict[str, object]]:
    """One row per (policy training, critic): GiB per GPU of each part."""
    trunk = params - vocab * hidden  # the reward model: the trunk without the LM head, plus a 1 x h score head
    reward = trunk + hidden
    s, b, resp = args.prompt + args.response, args.micro_batch, args.response
    act_full = layers * 34 * s * b * hidden
    act_ckpt = layers * 2 * s * b * hidden + 34 * s * b * hidden
    logits = resp * b * vocab * 10
    rows = []
    for policy_mode in ("full", "lora"):
        for critic in ("full", "lora", "shared"):
            trained = params if policy_mode == "full" else lora
            sharded = params  # the policy's weights
            replicated = params if policy_mode == "full" else 0  # the reference
            if critic == "full":
                sharded += reward
                trained += reward
                replicated += reward
            elif critic == "lora":
                sharded += reward + lora  # the reward model itself, inside the critic, plus the adapter
                trained += lora + hidden
            else:
                sharded += hidden + 1
                trained += hidden + 1
                replicated += reward
            if policy_mode == "lora":
                sharded += lora
            trunks = 1 if critic == "shared" else 2
            weights = 2 * sharded / args.gpus
            grads = 2 * trained / args.gpus
            adam = 12 * trained / args.gpus
            frozen = 2 * replicated
            act = trunks * act_full + logits
            act_gc = trunks * act_ckpt + logits
            base = weights + grads + adam + frozen
            rows.append(
                {
                    "policy": policy_mode,
                    "value_model": critic,
                    "trained_params": trained,
                    "weights": weights / GIB,
                    "grads": grads / GIB,
                    "adam": adam / GIB,
                    "frozen_whole": frozen / GIB,
                    "activations": act / GIB,
                    "activations_gc": act_gc / GIB,
                    "total": (base + act) / GIB,
                    "total_gc": (base + act_gc) / GIB,
                }
            )
    return rows


def print_table(rows: list[dict[str, object]], budget: float) -> None:
    cols = [
        ("policy", "policy", "{}"),
        ("value_model", "value_model", "{}"),
        ("trained params", "trained_params", "{:,}"),
        ("weights (sharded)", "weights", "{:.1f}"),
        ("grads", "grads", "{:.1f}"),
        ("Adam + fp32 master", "adam", "{:.1f}"),
        ("ref + reward (whole)", "frozen_whole", "{:.1f}"),
        ("activations", "activations", "{:.1f}"),
        ("activations, ckpt", "activations_gc", "{:.1f}"),
        ("total", "total", "{:.1f}"),
        ("total, ckpt", "total_gc", "{:.1f}"),
    ]
    print("| " + " | ".join(c[0] for c in cols) + " |")
    print("|---|---|" + "---:|" * (len(cols) - 2))
    for row in rows:
        cells = []
        for _, key, fmt in cols:
            cell = fmt.format(row[key])
            if key in ("total", "total_gc"):
                cell += " ok" if row[key] <= budget else " **no**"
            cells.append(cell)
        print("| " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(ARCHS), default="llama2-7b")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-gib", type=float, default=80 * 1e9 / GIB, help="usable memory per GPU (80 GB)")
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per GPU per forward/backward")
    parser.add_argument("--prompt", type=int, default=512, help="prompt tokens (ppo.max_prompt_length)")
    parser.add_argument("--response", type=int, default=256, help="response tokens (ppo.max_new_tokens)")
    parser.add_argument("--lora-r", type=int, default=16)
    args = parser.parse_args()
    model = meta_model(args.arch)
    params = count_parameters(model)
    lora = lora_parameters(model, args.lora_r)
    config = model.config
    check = accelerate_cross_check(model, params)
    print(
        f"{args.arch}: {params:,} parameters; accelerate's calculate_maximum_sizes: {check['elements']:,} elements "
        f"(the same plus {check['buffers']} rotary buffer entries). LoRA r={args.lora_r} on all linear layers: "
        f"{lora:,}. Unsharded Adam training of the whole model, 16 B/element: {check['ours_gib']:.2f} GiB here, "
        f"{check['fp32_adam_gib']:.2f} GiB by accelerate estimate-memory's float32 column."
    )
    print(
        f"{args.gpus} GPUs x {args.gpu_gib:.1f} GiB, ZeRO-3; micro-batch {args.micro_batch} x "
        f"({args.prompt} + {args.response}) tokens; GiB per GPU:\n"
    )
    rows = estimate(params, lora, config.hidden_size, config.num_hidden_layers, config.vocab_size, args)
    print_table(rows, args.gpu_gib)


if __name__ == "__main__":
    main()
