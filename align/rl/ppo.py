"""PPO against a reward model, on accelerate + transformers + peft (Ouyang et al. 2022; Huang et al. 2024).

One step:
1. rollout: the policy answers ``rollout_batch_size`` prompts per process (sampled, seeded by step);
2. score: the reward model reads each whole conversation (its own chat template, as in its training);
   answers cut at ``max_new_tokens`` without EOS lose ``missing_eos_penalty``;
3. shape: per-token reward = -beta * (log pi - log pi_ref), plus the score on the last token; GAE gives
   advantages (whitened) and returns;
4. update: ``ppo_epochs`` passes over shuffled minibatches, clipped policy and value losses, one optimiser
   over the policy and the value model.

Kill it at any point and run it again: it resumes from the newest complete checkpoint. Prompts are drawn
and sampling is seeded by step number, so a resumed run takes the same path as an uninterrupted one.

Speed comes from not doing work twice or on padding: the rollout's log-probabilities are those of the logits
it sampled from (no second policy pass), and with ``value_model: shared`` its values are read from the states
generation computed (no second trunk pass); each pass is cut to its rows' longest prompt and answer, optionally in
groups of rows of similar answer length (``length_groups``); the policy's vocabulary projection runs on answer
positions only, and the optimiser is fused.

What fits on a GPU is set by ``value_model`` (a full critic, a LoRA adapter on the reward model's trunk, or a
head on the policy's trunk) and ``gradient_checkpointing``; ``scripts/ppo_memory.py`` does the arithmetic for a
7B policy. Checkpoints hold the trainable parameters only (adapters and heads with LoRA): the frozen weights
come back from the models a run starts from.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import shutil
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from align.config import PPOStageConfig
from align.rl.losses import (
    KLController,
    explained_variance,
    gae,
    kl_per_token,
    masked_mean,
    masked_whiten,
    policy_loss,
    shaped_rewards,
    value_loss,
)
from align.rl.rollouts import token_logprobs
from align.train.checkpoints import (
    diverged,
    files_problem,
    newest_valid_checkpoint,
    publish_checkpoint,
    write_failure,
)

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2
CHECKPOINT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json")
Message = dict[str, str]
# A reward in code instead of a model: (prompt conversations, answer texts) -> one score per answer.
RewardFn = Callable[[list[list[Message]], list[str]], Sequence[float]]


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (its LoRA layers stay in place and active), else the model."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def trunk_of(model: nn.Module) -> nn.Module:
    """The transformer body of a ``*ForCausalLM`` / ``*ForSequenceClassification`` model (no head)."""
    base = unwrap_peft(model)
    return getattr(base, base.base_model_prefix)


class LoraCritic(nn.Module):
    """``value_model: lora``: the reward model's own trunk with a LoRA adapter, and a trainable copy of its head.

    The trunk is not copied: the reward model scores through the same layers with the adapter switched off
    (:meth:`reward_view`), so a 7B critic costs its adapter and one head, not a second 7B model and its Adam
    state. The head starts as the reward head (Huang et al. 2024: the critic starts as the reward model).
    """

    def __init__(self, reward_model: nn.Module, lora) -> None:
        from peft import get_peft_model

        super().__init__()
        head = getattr(reward_model, "score", None)
        if not isinstance(head, nn.Module):
            raise TypeError("value_model: lora needs a sequence classifier with a `score` head as the reward model")
        reward_model.requires_grad_(False)
        self.trunk = get_peft_model(trunk_of(reward_model), lora)  # injects the adapter in place; base frozen
        self.score = copy.deepcopy(head).requires_grad_(True)

    def reward_view(self) -> contextlib.AbstractContextManager:
        """Inside it the shared trunk is the reward model's, untouched by the adapter."""
        return self.trunk.disable_adapter()


class PolicyAndValue(nn.Module):
    """The policy and the critic as one module, so DDP/FSDP sync both in a single backward pass.

    The critic is a sequence classifier (``value_model: full``), a :class:`LoraCritic`, or, with ``value_head``
    (``value_model: shared``), a scalar head on the policy's own trunk: then one trunk pass gives both the
    logits and the values.
    """

    def __init__(
        self, policy: nn.Module, value_model: nn.Module | None = None, value_head: nn.Module | None = None
    ) -> None:
        super().__init__()
        if (value_model is None) == (value_head is None):
            raise ValueError("PolicyAndValue: pass a value_model or a value_head (shared), not both")
        self.policy = policy
        self.value_model = value_model
        self.value_head = value_head
        if value_model is not None and not isinstance(getattr(value_model, "score", None), nn.Module):
            raise TypeError(
                f"value model {type(value_model).__name__} has no `score` head; load it with "
                "AutoModelForSequenceClassification(num_labels=1), e.g. from the reward model"
            )
        if value_head is not None:
            config = unwrap_peft(policy).config.get_text_config()
            rescaling = ("final_logit_softcapping", "logit_scale", "logits_scaling")
            scaled = [k for k in rescaling if getattr(config, k, None) not in (None, 1, 1.0)]
            if scaled:  # the shared pass applies the output embedding itself, so it must be the whole head
                raise ValueError(f"value_model: shared does not support models that rescale logits ({scaled[0]})")

    @staticmethod
    def _hidden(trunk: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        return trunk(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False
        ).last_hidden_state

    def forward(self, input_ids: Tensor, attention_mask: Tensor, response_length: int) -> tuple[Tensor, Tensor]:
        """Logits that predict each response token, and the value of the state before it."""
        start = input_ids.shape[1] - response_length - 1
        if self.value_head is not None:  # shared: one trunk pass, two heads on the same positions
            hidden = self._hidden(trunk_of(self.policy), input_ids, attention_mask)[:, start:-1]
            logits = unwrap_peft(self.policy).get_output_embeddings()(hidden)
            return logits, self.value_head(hidden).squeeze(-1)
        positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
        logits = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=False,
            logits_to_keep=response_length + 1,  # the vocabulary projection only where it is needed
        ).logits[:, :-1]
        return logits, self.values(input_ids, attention_mask, response_length)

    def values(self, input_ids: Tensor, attention_mask: Tensor, response_length: int) -> Tensor:
        """The critic's estimate at each state before a response token (no vocabulary projection)."""
        start = input_ids.shape[1] - response_length - 1
        if self.value_head is not None:
            trunk, head = trunk_of(self.policy), self.value_head
        elif isinstance(self.value_model, LoraCritic):
            trunk, head = unwrap_peft(self.value_model.trunk), self.value_model.score
        else:
            trunk, head = trunk_of(self.value_model), self.value_model.score
        return head(self._hidden(trunk, input_ids, attention_mask)[:, start:-1]).squeeze(-1)


def shared_value_head(policy: nn.Module) -> nn.Linear:
    """``value_model: shared``'s Linear(hidden, 1) in the trunk's dtype, all zeros: every state starts at value 0,
    and no random draw is spent, so runs and resumed runs stay seeded exactly as before."""
    base = unwrap_peft(policy)
    weight = base.get_output_embeddings().weight
    head = nn.Linear(base.config.get_text_config().hidden_size, 1, device=weight.device, dtype=weight.dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer's activations in backward instead of keeping them (non-reentrant)."""
    base = unwrap_peft(model)
    kwargs = {"use_reentrant": False}  # no enable_input_require_grads needed, frozen embeddings or not (peft)
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.2x renamed it
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def checkpointing_active(layers: Sequence[nn.Module]):
    """Let ``layers`` checkpoint during the update only.

    transformers checkpoints a layer only while ``layer.training`` is set, and PPO runs in eval mode (no dropout,
    Huang et al. 2024). So the flag is raised on the decoder layers themselves, not recursively (their dropout
    and attention modules stay in eval mode), and only around the update: during rollouts a checkpointing layer
    would turn generation's KV cache off.
    """
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False


def trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """The parameters the optimiser updates, by name: all a checkpoint needs (frozen weights come from the
    models the run starts from)."""
    return {name: p.detach().contiguous() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """Copy a checkpoint's trainable parameters into ``module``; names must match, or the run's settings changed.

    Keys of frozen parameters are accepted and skipped (checkpoints of older versions held the whole module).
    """
    params = dict(module.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    missing = sorted(trainable - state.keys())
    unknown = sorted(state.keys() - params.keys())
    if missing or unknown:
        raise ValueError(
            f"PPO: {source} does not match this run's trainable parameters (missing {missing[:3]}, unknown "
            f"{unknown[:3]}); was it made with other value_model / lora settings? Use a new output directory "
            "or the settings it was made with"
        )
    with torch.no_grad():
        for name in trainable:
            params[name].copy_(state[name])


def checkpoint_problem(path: Path) -> str | None:
    """Why a ``step-N`` checkpoint cannot be resumed from (the shared checks, with PPO's files), or None."""
    return files_problem(path, required=CHECKPOINT_FILES)


def response_mask(responses: Tensor, eos_id: int) -> tuple[Tensor, Tensor]:
    """1 on each response's tokens up to and including its first EOS; and whether it had an EOS at all."""
    is_eos = responses == eos_id
    has_eos = is_eos.any(1)
    length = torch.where(has_eos, is_eos.int().argmax(1) + 1, responses.shape[1])
    positions = torch.arange(responses.shape[1], device=responses.device)
    return (positions[None, :] < length[:, None]).long(), has_eos


def _trim(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Cut the columns that are padding for every row: left of the prompts, right of the responses."""
    lead = int((batch["query_mask"].sum(0) == 0).sum())  # prompts are left-padded
    width = max(int(batch["mask"].sum(1).max()), 1)
    out = {k: v for k, v in batch.items()}
    out["query"], out["query_mask"] = batch["query"][:, lead:], batch["query_mask"][:, lead:]
    for key in ("response", "mask", "logprobs", "ref_logprobs", "values", "advantages", "returns"):
        if key in batch:
            out[key] = batch[key][:, :width]
    return out


# Rows a length group keeps at least: splitting further makes passes too small to keep a GPU busy.
MIN_GROUP_ROWS = 4


def length_groups(mask: Tensor, query_mask: Tensor, groups: int) -> list[Tensor]:
    """Row indices of a micro-batch in up to ``groups`` equal groups, sorted by answer then prompt length.

    Each group is cut to its own longest prompt and answer (:func:`_trim`), so a few answers that run to
    ``max_new_tokens`` no longer make every row pay for their length: on the smoke recipe's rollouts 37% fewer
    tokens per pass with four groups, on the demo model's, whose answers are all about 20 tokens long, 7%. Each
    extra pass pays every op's fixed cost again, so on CPU neither was faster than one pass (at two threads one
    pass was 18% faster on the smoke model, and the demo's update took 1.1 s instead of 1.7 s): the default is one
    group. Groups keep at least ``MIN_GROUP_ROWS`` rows.
    """
    answer, prompt = mask.sum(1), query_mask.sum(1)
    order = torch.argsort(answer * (query_mask.shape[1] + 1) + prompt, stable=True)
    n_groups = max(1, min(groups, len(order) // MIN_GROUP_ROWS))
    return list(torch.tensor_split(order, n_groups))


class PPO:
    """State and loop of one PPO run; :func:`train_ppo` is the entry point."""

    def __init__(
        self,
        policy: nn.Module,
        tokenizer,
        reward_model: nn.Module | RewardFn,
        prompts: Sequence[Sequence[Message]],
        cfg: PPOStageConfig,
        output_dir: str | Path,
        *,
        seed: int,
        reward_tokenizer=None,
        value_model: nn.Module | None = None,
        ref_model: nn.Module | None = None,
        report_to: str = "none",
    ) -> None:
        from accelerate import Accelerator

        self.cfg, self.seed, self.report_to = cfg, seed, report_to
        self.output_dir = Path(output_dir)
        self.accelerator = Accelerator()
        self.device = self.accelerator.device
        self.tokenizer = tokenizer
        self.reward_tokenizer = reward_tokenizer or tokenizer
        if tokenizer.chat_template is None:
            raise ValueError("PPO: the policy's tokenizer has no chat template; prompts are conversations")
        if tokenizer.eos_token_id is None:
            raise ValueError("PPO: the policy's tokenizer has no EOS token; answers could never end")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_id = tokenizer.eos_token_id
        self.conversations, self.queries, self.dropped = self._encode(prompts)
        if not self.queries:
            raise ValueError(f"PPO: no usable prompts ({self.dropped} longer than max_prompt_length dropped)")

        from align.train.common import peft_config

        lora = peft_config(cfg.lora)
        if lora is not None:
            from peft import get_peft_model

            policy = get_peft_model(policy, lora)
            ref_model = None  # the reference is the policy with its adapter switched off: no second copy
        elif ref_model is None:
            ref_model = copy.deepcopy(policy)
        self.lora = lora is not None
        for frozen in (ref_model, reward_model):
            if isinstance(frozen, nn.Module):
                frozen.eval().requires_grad_(False).to(self.device)
        self.ref_model, self.reward_model = ref_model, reward_model
        self.reward_view: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
        value_head = None
        if cfg.value_model == "shared":
            if value_model is not None:
                raise ValueError("PPO: value_model: shared puts the value head on the policy; pass no value_model")
            value_head = shared_value_head(policy)
        else:
            if value_model is None and not isinstance(reward_model, nn.Module):
                raise ValueError("PPO: with a reward function instead of a reward model, pass a value_model")
            if cfg.value_model == "lora":
                settings = dataclasses.replace(cfg.value_lora or cfg.lora, enabled=True)
                base = reward_model if value_model is None else value_model.eval().to(self.device)
                value_model = LoraCritic(base, peft_config(settings, task_type=None))
                if base is reward_model:  # one trunk: the reward model scores with the critic's adapter off
                    self.reward_view = value_model.reward_view
            elif value_model is None:
                value_model = copy.deepcopy(reward_model).requires_grad_(True)  # the critic starts as the reward model
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(policy)
            if value_model is not None:
                enable_gradient_checkpointing(value_model.trunk if cfg.value_model == "lora" else value_model)
        self.module = PolicyAndValue(policy, value_model, value_head).eval()  # eval: no dropout (Huang et al. 2024)
        from transformers.modeling_layers import GradientCheckpointingLayer

        self.checkpointed_layers = [
            m for m in self.module.modules() if isinstance(m, GradientCheckpointingLayer) and m.gradient_checkpointing
        ]
        params = [p for p in self.module.parameters() if p.requires_grad]
        # fused: one kernel over all parameters instead of a loop of small ones (CPU and GPU alike)
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, eps=cfg.adam_eps, weight_decay=0.0, fused=True)
        # Learning rate annealed linearly to 0 over the run (Huang et al. 2024).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1 - s / cfg.steps)
        self.kl_ctl = KLController(cfg.kl_coef, cfg.adaptive_kl, cfg.target_kl, cfg.kl_horizon)
        self.reward_norm: tuple[float, float] | None = None
        self.history: list[dict[str, float]] = []
        self.step = 0
        self.checkpoint_dir = self.output_dir / CHECKPOINTS
        self._resume()
        self.module, self.optimizer = self.accelerator.prepare(self.module, self.optimizer)
        self._perms: dict[int, list[int]] = {}
        self.pass_tokens = 0  # of the newest rollout (logged)
        from align.rl.rollouts import make_rollout_generator

        policy = self.accelerator.unwrap_model(self.module).policy
        rollout_dir = self.output_dir / "rollout-engine"
        self.rollouts = make_rollout_generator(cfg, policy, tokenizer, rollout_dir, self.eos_id, self.pad_id)
        self.rollouts_stale = self.step > 0  # resumed: the engine starts from the run's starting weights

    # ---- data ---------------------------------------------------------------------------------------

    def _encode(self, prompts: Sequence[Sequence[Message]]) -> tuple[list[list[Message]], list[list[int]], int]:
        """Token ids of each prompt with the generation prompt; those over ``max_prompt_length`` are dropped."""
        conversations, queries, dropped = [], [], 0
        for i, conversation in enumerate(prompts):
            if not conversation or not any(m.get("content", "").strip() for m in conversation):
                raise ValueError(f"PPO: prompt {i} is empty")
            ids = self.tokenizer.apply_chat_template(
                list(conversation), tokenize=True, add_generation_prompt=True, return_dict=True
            )["input_ids"]
            if len(ids) > self.cfg.max_prompt_length:
                dropped += 1
                continue
            conversations.append(list(conversation))
            queries.append(list(ids))
        return conversations, queries, dropped

    def _prompt_indices(self, step: int) -> list[int]:
        """This process's prompts for ``step``: consecutive slices of per-epoch seeded permutations."""
        n, b = len(self.queries), self.cfg.rollout_batch_size
        start = (step * self.accelerator.num_processes + self.accelerator.process_index) * b
        out = []
        for pos in range(start, start + b):
            epoch = pos // n
            if epoch not in self._perms:
                perm = list(range(n))
                random.Random(f"{self.seed}-{epoch}").shuffle(perm)
                self._perms[epoch] = perm
            out.append(self._perms[epoch][pos % n])
        return out

    def _left_pad(self, seqs: list[list[int]]) -> tuple[Tensor, Tensor]:
        width = max(len(s) for s in seqs)
        ids = torch.tensor([[self.pad_id] * (width - len(s)) + s for s in seqs], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
        return ids, mask

    # ---- rollout ------------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, step: int) -> dict[str, Tensor]:
        cfg = self.cfg
        indices = self._prompt_indices(step)
        query, query_mask = self._left_pad([self.queries[i] for i in indices])
        module = self.accelerator.unwrap_model(self.module)
        if self.rollouts_stale:  # an engine with its own copy of the weights gets the updated ones
            self.rollouts.sync(module.policy, step)
            self.rollouts_stale = False
        seed = self.seed * 1_000_003 + step * 1_009 + self.accelerator.process_index
        generation_values = None
        if module.value_head is not None and hasattr(self.rollouts, "generate_with_states"):
            # shared critic: its head reads the states generation computed anyway (no second trunk pass)
            responses, logprobs, states = self.rollouts.generate_with_states(
                module.policy, trunk_of(module.policy), query, query_mask, seed
            )
            generation_values = module.value_head(states).squeeze(-1).float()
        else:
            responses, logprobs = self.rollouts.generate(module.policy, query, query_mask, seed)
        mask, has_eos = response_mask(responses, self.eos_id)
        responses = torch.where(mask.bool(), responses, self.pad_id)
        logprobs = torch.where(mask.bool(), logprobs, 0.0)
        batch = {"query": query, "query_mask": query_mask, "response": responses, "mask": mask}
        ref_logprobs = torch.zeros(responses.shape, device=self.device)
        values = torch.zeros(responses.shape, device=self.device) if generation_values is None else generation_values
        pass_tokens = 0  # what one forward pass over the rollout computes, padding included
        for lo in range(0, len(query), cfg.mini_batch_size):
            rows = torch.arange(lo, min(lo + cfg.mini_batch_size, len(query)), device=self.device)
            for group in length_groups(mask[rows], query_mask[rows], cfg.length_groups):
                mb = _trim({k: v[rows[group]] for k, v in batch.items()})
                ids, attn, width = self._sequence(mb)
                pass_tokens += ids.numel()
                if generation_values is None:
                    values[rows[group], :width] = module.values(ids, attn, width).float()
                ref_logprobs[rows[group], :width] = self._ref_logprobs(ids, attn, mb["response"], width)
        batch.update(
            logprobs=logprobs,
            ref_logprobs=ref_logprobs * mask,
            values=values,
            scores=self.score([self.conversations[i] for i in indices], responses, mask),
            has_eos=has_eos,
        )
        self.pass_tokens = pass_tokens
        return batch

    def _sequence(self, mb: dict[str, Tensor]) -> tuple[Tensor, Tensor, int]:
        ids = torch.cat([mb["query"], mb["response"]], 1)
        attn = torch.cat([mb["query_mask"], mb["mask"]], 1)
        return ids, attn, mb["response"].shape[1]

    def _ref_logprobs(self, ids: Tensor, attn: Tensor, response: Tensor, width: int) -> Tensor:
        positions = (attn.cumsum(1) - 1).clamp(min=0)
        kwargs = dict(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False)
        if self.lora:
            policy = self.accelerator.unwrap_model(self.module).policy
            with policy.disable_adapter():
                logits = policy(**kwargs, logits_to_keep=width + 1).logits[:, :-1]
        else:
            logits = self.ref_model(**kwargs, logits_to_keep=width + 1).logits[:, :-1]
        return token_logprobs(logits, response, self.cfg.temperature)

    @torch.no_grad()
    def score(self, conversations: list[list[Message]], responses: Tensor, mask: Tensor) -> Tensor:
        """Reward-model scores of whole conversations, rendered with the reward model's chat template.

        Going through text costs little and scores exactly as the reward model was trained, whatever
        tokenizer the policy has. Sequences are right-padded with the reward model's pad id, where its
        classifier looks for the last token.
        """
        answers = [
            a.strip()
            for a in self.tokenizer.batch_decode(
                [r[m.bool()].tolist() for r, m in zip(responses, mask)], skip_special_tokens=True
            )
        ]
        if not isinstance(self.reward_model, nn.Module):
            return torch.tensor([float(x) for x in self.reward_model(conversations, answers)], device=self.device)
        pad = self.reward_model.config.get_text_config().pad_token_id
        conversations = [[*c, {"role": "assistant", "content": a}] for c, a in zip(conversations, answers)]
        seqs = self.reward_tokenizer.apply_chat_template(conversations, tokenize=True, return_dict=True)["input_ids"]
        scores = torch.zeros(len(seqs), device=self.device)
        by_length = torch.argsort(torch.tensor([len(x) for x in seqs]), stable=True)
        n_groups = max(1, min(self.cfg.length_groups, len(seqs) // MIN_GROUP_ROWS))
        for group in torch.tensor_split(by_length, n_groups):  # less padding
            rows = [seqs[i] for i in group.tolist()]
            width = max(len(x) for x in rows)
            ids = torch.tensor([x + [pad] * (width - len(x)) for x in rows], device=self.device)
            attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in rows], device=self.device)
            with self.reward_view():  # value_model: lora shares this trunk; the reward model reads it adapter-free
                logits = self.reward_model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            scores[group.to(self.device)] = logits[:, 0].float()
        return scores

    # ---- advantages and update ------------------------------------------------------------------------

    def advantages(self, batch: dict[str, Tensor]) -> dict[str, float]:
        cfg, mask = self.cfg, batch["mask"]
        scores = batch["scores"]
        if cfg.normalize_reward:
            if self.reward_norm is None:  # the initial policy's scores set the scale (Ziegler et al. 2019)
                every = self.accelerator.gather(scores)
                std = float(every.std()) if every.numel() > 1 else 0.0
                self.reward_norm = (float(every.mean()), std if std > 1e-6 else 1.0)
            scores = (scores - self.reward_norm[0]) / self.reward_norm[1]
        if cfg.missing_eos_penalty is not None:
            scores = torch.where(batch["has_eos"], scores, scores - cfg.missing_eos_penalty)
        kl, k3 = kl_per_token(batch["logprobs"], batch["ref_logprobs"], mask)
        rewards = shaped_rewards(scores, kl, mask, self.kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        batch.update(advantages=advantages, returns=returns)
        return {
            "kl": float(kl.sum(1).mean()),
            "kl_k3": float(k3.sum(1).mean()),
            "score_shaped": float(scores.mean()),
            "explained_variance": float(explained_variance(batch["values"], returns, mask)),
        }

    def update(self, batch: dict[str, Tensor], step: int) -> dict[str, float]:
        cfg = self.cfg
        n = len(batch["query"])
        micro = cfg.mini_batch_size // cfg.gradient_accumulation_steps
        stats: dict[str, list[float]] = defaultdict(list)
        generator = torch.Generator().manual_seed(self.seed * 7_919 + step)
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(n, generator=generator)
            for lo in range(0, n, cfg.mini_batch_size):
                self.optimizer.zero_grad(set_to_none=True)
                chunks = [order[i : i + micro] for i in range(lo, min(lo + cfg.mini_batch_size, n), micro)]
                for k, idx in enumerate(chunks):
                    last = k == len(chunks) - 1
                    s = self.backward_micro_batch(batch, idx, step, 1 / len(chunks), epoch == 0, sync=last)
                    for key, value in s.items():
                        stats[key].append(value)
                self.accelerator.clip_grad_norm_(self.module.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
        self.scheduler.step()
        self.rollouts_stale = True
        return {k: sum(v) / len(v) for k, v in stats.items()}

    def backward_micro_batch(
        self, batch: dict[str, Tensor], idx: Tensor, step: int, scale: float, entropy: bool, sync: bool = True
    ) -> dict[str, float]:
        """Gradients of ``scale`` x the micro-batch ``idx``'s loss, accumulated; its statistics.

        The rows go through in length groups (``length_groups``): each group's token-mean losses are weighted by
        its share of the micro-batch's tokens, which sums to the token means over the whole micro-batch. Gradients
        are synchronised across processes (DDP) on the last group only, and only when ``sync``.
        """
        groups = length_groups(batch["mask"][idx], batch["query_mask"][idx], self.cfg.length_groups)
        tokens = float(batch["mask"][idx].sum())
        stats: dict[str, float] = defaultdict(float)
        for j, group in enumerate(groups):
            mb = _trim({key: v[idx[group]] for key, v in batch.items()})
            weight = float(mb["mask"].sum()) / tokens if tokens else 1 / len(groups)
            last = sync and j == len(groups) - 1
            no_sync = self.accelerator.no_sync(self.module) if not last else contextlib.nullcontext()
            with no_sync, checkpointing_active(self.checkpointed_layers):
                loss, s = self._loss(mb, step, entropy=entropy)
                self.accelerator.backward(loss * (weight * scale))
            for key, value in s.items():
                stats[key] += weight * value
        return dict(stats)

    def _loss(self, mb: dict[str, Tensor], step: int, entropy: bool = True) -> tuple[Tensor, dict[str, float]]:
        """The PPO loss of a micro-batch; the policy's entropy (a statistic only) when ``entropy``."""
        cfg, mask = self.cfg, mb["mask"]
        ids, attn, width = self._sequence(mb)
        logits, values = self.module(ids, attn, width)
        log_p = torch.log_softmax(logits.float() / cfg.temperature, dim=-1)
        logprobs = log_p.gather(-1, mb["response"].unsqueeze(-1)).squeeze(-1)
        pg_loss, pg = policy_loss(logprobs, mb["logprobs"], mb["advantages"], mask, cfg.cliprange)
        vf_loss, vf_clipfrac = value_loss(values.float(), mb["values"], mb["returns"], mask, cfg.cliprange_value)
        loss = pg_loss + cfg.vf_coef * vf_loss
        if not torch.isfinite(loss):  # before any update with it: the newest checkpoint stays the last good one
            detail = f"policy loss {pg_loss.item()}, value loss {vf_loss.item()}"
            raise diverged(self.output_dir, step + 1, detail, problem=checkpoint_problem)
        stats = {}
        if entropy:  # of the rollout policy: the first epoch sees it before any update
            with torch.no_grad():
                stats["entropy"] = masked_mean(-(log_p.exp() * log_p).sum(-1), mask).item()
        return loss, {
            **stats,
            "policy_loss": pg_loss.item(),
            "value_loss": vf_loss.item(),
            "clipfrac": pg["clipfrac"].item(),
            "approx_kl": pg["approx_kl"].item(),
            "value_clipfrac": vf_clipfrac.item(),
        }

    # ---- the loop --------------------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        bar = tqdm(
            total=self.cfg.steps,
            initial=self.step,
            desc="ppo",
            unit="step",
            disable=not self.accelerator.is_main_process,
        )
        while self.step < self.cfg.steps:
            row = self.train_step()
            bar.update(1)
            bar.set_postfix(reward=f"{row['reward_mean']:.3f}", kl=f"{row['kl']:.3f}")
        bar.close()
        self.save_final()
        first = self.history[: max(1, min(5, len(self.history)))]
        last = self.history[-max(1, min(5, len(self.history))) :]
        return {
            "steps": float(self.step),
            "reward_start": sum(r["reward_mean"] for r in first) / len(first),
            "reward_end": sum(r["reward_mean"] for r in last) / len(last),
            "kl_end": sum(r["kl"] for r in last) / len(last),
            "prompts_dropped_overlong": float(self.dropped),
            "seconds_per_step": sum(r["seconds"] for r in self.history) / max(len(self.history), 1),
        }

    def train_step(self) -> dict[str, float]:
        """Rollout, advantages, update; then log, and checkpoint every ``save_steps``."""
        cfg, acc = self.cfg, self.accelerator
        started = time.perf_counter()
        batch = self.rollout(self.step)
        rollout_seconds = time.perf_counter() - started
        shaping = self.advantages(batch)
        learning_rate = self.scheduler.get_last_lr()[0]
        losses = self.update(batch, self.step)
        seconds = time.perf_counter() - started
        tokens = int(batch["mask"].sum()) * acc.num_processes
        raw = acc.gather(batch["scores"])
        row = {
            "step": self.step + 1,
            "reward_mean": float(raw.mean()),
            "reward_std": float(raw.std()) if raw.numel() > 1 else 0.0,
            **shaping,
            "kl_coef": self.kl_ctl.value,
            **losses,
            "response_length": float(batch["mask"].sum(1).float().mean()),
            "eos_fraction": float(batch["has_eos"].float().mean()),
            "learning_rate": learning_rate,
            "seconds": round(seconds, 4),
            "rollout_seconds": round(rollout_seconds, 4),
            "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
            # per process: what each pass over the rollout computes, and the share of it that is padding
            "pass_tokens": self.pass_tokens,
            "padding": round(1 - int(batch["mask"].sum() + batch["query_mask"].sum()) / self.pass_tokens, 4),
        }
        self.kl_ctl.update(shaping["kl"], cfg.rollout_batch_size * acc.num_processes)
        self.history.append(row)
        self.step += 1
        self._log(row)
        if cfg.save_steps and self.step % cfg.save_steps == 0 and self.step < cfg.steps:
            self.save_checkpoint()
        return row

    def _log(self, row: dict[str, float]) -> None:
        if self.report_to == "wandb" and self.accelerator.is_main_process:
            import wandb

            if wandb.run is not None:
                wandb.log({f"ppo/{k}": v for k, v in row.items() if k != "step"}, step=int(row["step"]))
        if self.cfg.logging_steps and row["step"] % self.cfg.logging_steps == 0:
            self.accelerator.print(
                f"[align] ppo step {row['step']}: reward {row['reward_mean']:.3f} kl {row['kl']:.3f} "
                f"clipfrac {row['clipfrac']:.3f} value_loss {row['value_loss']:.4f} "
                f"{row['tokens_per_second']:.0f} tok/s"
            )

    # ---- checkpoints ----------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Policy, value model, optimiser, scheduler, RNG and step, published by one atomic rename."""
        from safetensors.torch import save_file

        final = self.checkpoint_dir / f"step-{self.step:06d}"
        tmp = self.checkpoint_dir / f".tmp-step-{self.step:06d}"
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            try:
                state = trainable_state(self.accelerator.unwrap_model(self.module))
                save_file(state, str(tmp / "model.safetensors"), metadata={"value_model": self.cfg.value_model})
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
                torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
                state = {
                    "step": self.step,
                    "kl_coef": self.kl_ctl.value,
                    "reward_norm": self.reward_norm,
                    "history": self.history,
                }
                (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
            except Exception as err:  # a full disk or read-only filesystem: name the file, not a traceback
                if (failure := write_failure(err, tmp)) is not None:
                    raise failure from err
                raise
            # tests can SIGKILL right after the rename (ALIGN_FAULT_AFTER=ppo:<n>)
            publish_checkpoint(tmp, final, keep=KEEP_CHECKPOINTS)
        self.accelerator.wait_for_everyone()
        return final

    def _resume(self) -> None:
        """Load the newest complete checkpoint; broken ones are skipped with a warning (and deleted)."""
        from safetensors.torch import load_file

        if self.accelerator.is_main_process:  # saves that never finished
            for stale in self.checkpoint_dir.glob(".tmp-step-*"):
                shutil.rmtree(stale, ignore_errors=True)
        main = self.accelerator.is_main_process  # only one process deletes broken checkpoints
        path = newest_valid_checkpoint(self.output_dir, problem=checkpoint_problem, delete_invalid=main)
        if path is None:
            return
        state = json.loads((path / "state.json").read_text())
        weights = path / "model.safetensors"
        load_trainable_state(self.module, load_file(str(weights), device=str(self.device)), weights)
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
        self.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True)["torch"])
        self.step = int(state["step"])
        self.kl_ctl.value = float(state["kl_coef"])
        self.reward_norm = tuple(state["reward_norm"]) if state["reward_norm"] else None
        self.history = list(state["history"])
        print(f"[align] ppo: resumed from {path} (step {self.step} of {self.cfg.steps})", flush=True)

    def save_final(self) -> None:
        """A plain model directory (LoRA merged) that later stages load with ``from_pretrained``."""
        policy = self.accelerator.unwrap_model(self.module).policy
        if self.lora:
            policy = policy.merge_and_unload()
        if self.accelerator.is_main_process:
            shutil.rmtree(self.output_dir / "rollout-engine", ignore_errors=True)  # vLLM's weights and adapters
            policy.save_pretrained(self.output_dir, safe_serialization=True)
            self.tokenizer.save_pretrained(self.output_dir)
            (self.output_dir / "log_history.json").write_text(json.dumps(self.history, indent=1) + "\n")
        self.accelerator.wait_for_everyone()


def train_ppo(
    policy: nn.Module,
    tokenizer,
    reward_model: nn.Module | RewardFn,
    prompts: Sequence[Sequence[Message]],
    cfg: PPOStageConfig,
    output_dir: str,
    *,
    seed: int,
    reward_tokenizer=None,
    value_model: nn.Module | None = None,
    ref_model: nn.Module | None = None,
    report_to: str = "none",
    run_name: str = "ppo",
) -> dict[str, float]:
    """Optimise ``policy`` against ``reward_model`` on conversational ``prompts``; save it to ``output_dir``.

    ``reward_model`` is a sequence classifier (one logit) or a plain function of the prompts and answers.
    ``ref_model`` defaults to a frozen copy of the starting policy (with LoRA: the policy with its adapter
    off) and ``value_model`` to a copy of the reward model. Checkpoints go to ``output_dir/checkpoints``
    and a re-run resumes from the newest one; per-step logs go to ``output_dir/log_history.json``.
    """
    del run_name  # the W&B run is the pipeline stage's; kept for symmetry with the TRL-backed stages
    if not math.isfinite(cfg.learning_rate):
        raise ValueError("PPO: learning_rate is not finite")
    trainer = PPO(
        policy,
        tokenizer,
        reward_model,
        prompts,
        cfg,
        output_dir,
        seed=seed,
        reward_tokenizer=reward_tokenizer,
        value_model=value_model,
        ref_model=ref_model,
        report_to=report_to,
    )
    return trainer.train()


__all__ = ["PPO", "LoraCritic", "PolicyAndValue", "response_mask", "token_logprobs", "train_ppo"]
