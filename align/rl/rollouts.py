"""Where PPO's rollouts are sampled: transformers' ``generate`` in-process, or a vLLM engine on the GPU.

On GPUs most of an RLHF step is generation, and OpenRLHF, verl and NeMo RL sample rollouts with vLLM. A
rollout generator answers left-padded prompt ids with sampled response ids and the log-probability of each
sampled token under the sampling distribution (logits / temperature): PPO's ratio needs the log-probs the
sample was drawn from. ``sync`` hands the engine the policy's current weights after each update; the in-process
generator samples from the policy itself and has nothing to sync.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn

from align.config import ConfigError, PPOStageConfig


class RolloutGenerator(Protocol):
    def generate(self, policy: nn.Module, query: Tensor, query_mask: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """(responses [batch, tokens] with ``pad_id`` after each end, log-prob of each response token)."""
        ...

    def sync(self, policy: nn.Module, step: int) -> None:
        """Make the engine sample from ``policy``'s current weights (called before a rollout after an update)."""
        ...


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float) -> Tensor:
    """log pi(token) under the sampling distribution (logits / temperature), as the rollout sampled it."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class TransformersRollouts:
    """``model.generate`` on the policy itself; the log-probs come from the logits it sampled from (no second
    pass). The global torch RNG is seeded per call, so a resumed run samples what an uninterrupted one did."""

    def __init__(self, cfg: PPOStageConfig, eos_id: int, pad_id: int) -> None:
        self.cfg, self.eos_id, self.pad_id = cfg, eos_id, pad_id

    @torch.no_grad()
    def generate(self, policy: nn.Module, query: Tensor, query_mask: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        cfg = self.cfg
        torch.manual_seed(seed)
        out = policy.generate(
            input_ids=query,
            attention_mask=query_mask,
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,  # the full distribution: log-probs in the loss must be those the sample was drawn from
            max_new_tokens=cfg.max_new_tokens,
            eos_token_id=self.eos_id,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
        )
        responses = out.sequences[:, query.shape[1] :]
        return responses, token_logprobs(torch.stack(out.logits, 1), responses, cfg.temperature)

    @torch.no_grad()
    def generate_with_states(
        self, policy: nn.Module, trunk: nn.Module, query: Tensor, query_mask: Tensor, seed: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`generate`, plus the trunk's last hidden state before each response token [batch, tokens, hidden].

        Those are the states a head on the policy's trunk (``value_model: shared``) reads, so the rollout's
        values need no second trunk pass. A hook keeps only the newest position of each decoding step, not every
        layer's states over the prompt as ``output_hidden_states`` would.
        """
        states: list[Tensor] = []
        hook = trunk.register_forward_hook(lambda _m, _i, out: states.append(out.last_hidden_state[:, -1]))
        try:
            responses, logprobs = self.generate(policy, query, query_mask, seed)
        finally:
            hook.remove()
        return responses, logprobs, torch.stack(states[: responses.shape[1]], 1)

    def sync(self, policy: nn.Module, step: int) -> None:
        """Nothing to do: it samples from the policy module itself."""


class VLLMRollouts:
    """A vLLM engine in this process (GPU), fed the policy's weights after each update.

    Full fine-tuning: the new weights are loaded in place (``load_weights``, no copy on disk). LoRA: the adapter is
    saved after each update and passed with each request as a new ``LoRARequest`` (vLLM keys its adapter cache by
    id). The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) so ``apply_model`` reaches the model
    without pickling its weights. Log-probs are vLLM's ``processed_logprobs`` (after temperature), so with
    ``top_p: 1`` they are the distribution the tokens were sampled from. Not run yet: it needs a GPU and vLLM,
    which this project's CI does not have; under ZeRO-3 the full-weights sync would first have to gather them.
    """

    def __init__(
        self, cfg: PPOStageConfig, policy: nn.Module, tokenizer, workdir: Path, eos_id: int, pad_id: int
    ) -> None:
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ConfigError("ppo.rollout_backend: vllm is not installed (pip install vllm, on a CUDA GPU)") from None
        from vllm import LLM

        from align.rl.ppo import unwrap_peft

        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.cfg, self.eos_id, self.pad_id = cfg, eos_id, pad_id
        self.workdir = Path(workdir)
        self.lora = hasattr(policy, "peft_config")
        base = unwrap_peft(policy)
        start = self.workdir / "start"
        if not (start / "config.json").exists():  # vLLM loads from a directory: the starting weights, once
            # with LoRA, the base weights under their own names: the adapter comes with each request
            state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
            base.save_pretrained(start, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(start)
        dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
        self.llm = LLM(
            model=str(start),
            dtype=dtype,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=cfg.max_prompt_length + cfg.max_new_tokens,
            enable_lora=self.lora,
            max_lora_rank=cfg.lora.r if self.lora else 16,
            logprobs_mode="processed_logprobs",
        )
        self.lora_request = None

    def sync(self, policy: nn.Module, step: int) -> None:
        from align.rl.ppo import unwrap_peft

        if self.lora:
            from vllm.lora.request import LoRARequest

            path = self.workdir / f"adapter-{step:06d}"
            policy.save_pretrained(path)
            self.lora_request = LoRARequest(f"policy-{step}", step + 1, str(path))
            return
        weights = list(unwrap_peft(policy).state_dict().items())
        self.llm.apply_model(lambda model: model.load_weights(weights))

    def generate(self, policy: nn.Module, query: Tensor, query_mask: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        cfg = self.cfg
        prompts = [TokensPrompt(prompt_token_ids=q[m.bool()].tolist()) for q, m in zip(query, query_mask)]
        params = [
            SamplingParams(
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                top_k=-1,
                max_tokens=cfg.max_new_tokens,
                logprobs=0,  # the sampled token's own log-prob
                stop_token_ids=[self.eos_id],
                seed=seed + i,
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate(prompts, params, lora_request=self.lora_request, use_tqdm=False)
        width = max(len(o.outputs[0].token_ids) for o in outs)
        responses = torch.full((len(outs), width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros(len(outs), width)
        for row, o in enumerate(outs):
            ids = list(o.outputs[0].token_ids)
            responses[row, : len(ids)] = torch.tensor(ids)
            logprobs[row, : len(ids)] = torch.tensor([lp[t].logprob for t, lp in zip(ids, o.outputs[0].logprobs)])
        return responses.to(query.device), logprobs.to(query.device)


def make_rollout_generator(
    cfg: PPOStageConfig, policy: nn.Module, tokenizer, workdir: Path, eos_id: int, pad_id: int
) -> RolloutGenerator:
    """The generator ``cfg.rollout_backend`` names; vLLM is imported only when asked for."""
    if cfg.rollout_backend == "vllm":
        return VLLMRollouts(cfg, policy, tokenizer, workdir, eos_id, pad_id)
    return TransformersRollouts(cfg, eos_id, pad_id)
