"""Reward-model stage: Bradley-Terry preference model over TRL's RewardTrainer, trained on soft labels.

RL-CAI (Bai et al. 2022, section 4.1) labels each pair with the feedback model's normalised probability that
the first response is better, and trains the preference model on those probabilities as targets rather than
on hard 0/1 choices: a 0.55 label says "barely better", and the reward model should learn that uncertainty
instead of being pushed to infinite margins on pairs the labeller could hardly tell apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import RewardConfig, RewardTrainer
from trl.data_utils import is_conversational

from align.config import ModelLoading, RewardStageConfig
from align.train.common import finish_tracking, peft_config, save_merged, train_resumable, trainer_kwargs

REQUIRED = ("chosen", "rejected")
LABEL = "label"  # probability that `chosen` is better than `rejected`; 1.0 where the column is missing


def soft_bradley_terry_loss(
    rewards_chosen: torch.Tensor, rewards_rejected: torch.Tensor, p: torch.Tensor | float
) -> torch.Tensor:
    """Cross-entropy between the target preference ``p`` and the Bradley-Terry probability sigma(r_c - r_r).

    -[p log sigma(d) + (1 - p) log sigma(-d)], averaged over the batch. RL-CAI uses the feedback model's
    normalised probabilities as targets (Bai et al. 2022, section 4.1); p = 1 gives the usual reward-model
    loss -log sigma(d). Its minimum is at sigma(d) = p, where it equals the entropy of p, not zero: a run
    on p = 0.5 labels never goes below log 2. logsigmoid keeps large margins finite, and the arithmetic is
    done in float32 so bf16 rewards do not lose the small differences that matter near p.
    """
    delta = (rewards_chosen - rewards_rejected).float()
    p = torch.as_tensor(p, dtype=delta.dtype, device=delta.device)
    return -(p * F.logsigmoid(delta) + (1 - p) * F.logsigmoid(-delta)).mean()


@dataclass
class SoftLabelCollator:
    """Wraps TRL's preference collator, which only knows token ids and margins, to carry the label along."""

    collate: Any

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(examples)
        batch[LABEL] = torch.tensor([float(e.get(LABEL, 1.0)) for e in examples], dtype=torch.float32)
        return batch


class SoftLabelRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer with the soft Bradley-Terry loss; tokenisation, metrics and saving are TRL's.

    The label travels as a dataset column that TRL would otherwise drop (its signature columns are the token
    ids and ``margin``), then through :class:`SoftLabelCollator` into the batch, where ``compute_loss`` takes
    it out before the model sees the inputs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_collator = SoftLabelCollator(self.data_collator)

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if LABEL not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, LABEL]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "margin" in inputs:
            raise ValueError("a 'margin' column cannot be combined with soft labels; drop one of them")
        inputs = dict(inputs)
        p = inputs.pop(LABEL)
        # TRL's loss runs for its reward and margin metrics (its "accuracy" counts r_c > r_r whatever the
        # label says; evaluate_reward has label_accuracy); the hard loss it returns is replaced here.
        _, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        rewards_chosen, rewards_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = soft_bradley_terry_loss(rewards_chosen, rewards_rejected, p)
        if self.args.center_rewards_coefficient is not None:  # same auxiliary term as TRL's
            loss = loss + self.args.center_rewards_coefficient * torch.mean((rewards_chosen + rewards_rejected) ** 2)
        return (loss, outputs) if return_outputs else loss


def check_pairs(data: Dataset, name: str) -> None:
    """Fail before tokenising, naming the problem, rather than deep inside TRL's map or the loss."""
    missing = [c for c in REQUIRED if c not in data.column_names]
    if missing:
        raise ValueError(f"reward {name} data is missing columns {missing}; it has {data.column_names}")
    if len(data) == 0:
        raise ValueError(f"reward {name} data has no preference pairs")
    if LABEL in data.column_names:
        bad = [i for i, p in enumerate(data[LABEL]) if p is None or not 0.0 <= float(p) <= 1.0]  # NaN fails too
        if bad:
            raise ValueError(
                f"reward {name} data: {len(bad)} labels are not probabilities in [0, 1], e.g. row {bad[0]}"
            )


def harden_labels(data: Dataset) -> Dataset:
    """Turn soft labels into the usual "chosen is better" pairs, for ``soft_labels: false``.

    A pair labelled below 0.5 prefers ``rejected``, so the two are swapped rather than trained the wrong way
    round; pairs at exactly 0.5 carry no preference and are dropped rather than given an invented one.
    """
    if LABEL not in data.column_names:
        return data
    data = data.filter(lambda row: row[LABEL] != 0.5)

    def orient(row: dict[str, Any]) -> dict[str, Any]:
        if row[LABEL] < 0.5:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        row[LABEL] = 1.0
        return row

    return data.map(orient)


def load_reward_model(
    path_or_causal_lm_dir: str,
    trust_remote_code: bool = False,
    *,
    seed: int | None = 0,
    loading: ModelLoading | None = None,
) -> PreTrainedModel:
    """A one-output sequence classifier from a causal-LM (or reward-model) directory.

    From a causal LM the ``score`` head is new and random, so it is drawn under ``seed`` without touching the
    global RNG. Without ``loading`` settings weights load in float32, as TRL does, so training can use bf16
    autocast over fp32 weights; a stage's settings (dtype, attention, 4-bit) apply when given.
    ``pad_token_id`` is set because the classifier reads the reward at the last non-pad token.
    """
    from trl.trainer.reward_trainer import suppress_seqcls_warning  # hides the expected "score.weight missing"

    from align.models import from_pretrained_kwargs, resolve

    path_or_causal_lm_dir = resolve(path_or_causal_lm_dir)
    tokenizer = AutoTokenizer.from_pretrained(path_or_causal_lm_dir, trust_remote_code=trust_remote_code)
    kwargs = (
        from_pretrained_kwargs(loading, trust_remote_code, "reward")
        if loading is not None
        else {"dtype": torch.float32, "trust_remote_code": trust_remote_code}
    )
    with torch.random.fork_rng(devices=[]), suppress_seqcls_warning():
        if seed is not None:
            torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(path_or_causal_lm_dir, num_labels=1, **kwargs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.config.get_text_config().pad_token_id = pad
    return model


def train_reward(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train_data: Dataset,
    eval_data: Dataset | None,
    cfg: RewardStageConfig,
    output_dir: str,
    *,
    seed: int,
    report_to: str = "none",
    run_name: str = "reward",
) -> dict[str, Any]:
    """Train a reward model on labelled pairs, evaluate it on ``eval_data`` and save it merged to ``output_dir``.

    ``eval_data`` keeps its soft labels even when ``cfg.soft_labels`` is off: it measures the model against
    the labeller. Pairs longer than ``cfg.max_length`` are dropped by TRL (not truncated) and counted here.
    Metrics: train_loss, steps, train_pairs, train_pairs_too_long and, with ``eval_data``, eval_loss (the soft
    loss from the Trainer's evaluation loop) and every :func:`evaluate_reward` key prefixed ``eval_``.
    """
    check_pairs(train_data, "train")
    if eval_data is not None:
        check_pairs(eval_data, "eval")
    if not cfg.soft_labels:
        train_data = harden_labels(train_data)
        if len(train_data) == 0:
            raise ValueError("reward train data has only 0.5 labels, which carry no preference once hardened")
    args = RewardConfig(
        **{
            **trainer_kwargs(cfg, output_dir, seed, report_to, run_name),
            "center_rewards_coefficient": cfg.center_rewards_coefficient,
            # Trainer's default swaps NaN step losses for the running mean (0.0 at the start), which hides
            # divergence from training_loss; off, one NaN step makes training_loss NaN and train_resumable stops.
            "logging_nan_inf_filter": False,
        }
    )
    trainer = SoftLabelRewardTrainer(
        model=model,
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        processing_class=tokenizer,
        # the score head is new: train and save all of it, LoRA only adapts the body
        peft_config=peft_config(cfg.lora, task_type="SEQ_CLS", modules_to_save=["score"]),
    )
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise ValueError(f"every reward train pair is longer than max_length={cfg.max_length} tokens")
    # from the newest valid checkpoint, if an attempt died; a non-finite loss raises TrainingDiverged
    _, trained = train_resumable(trainer, output_dir)
    metrics: dict[str, Any] = {
        **trained,
        "train_pairs": float(kept),
        "train_pairs_too_long": float(len(train_data) - kept),
    }
    if eval_data is not None:  # before merging: merge_and_unload changes the PEFT model in place
        metrics["eval_loss"] = float(trainer.evaluate()["eval_loss"])
        held_out = {f"eval_{k}": v for k, v in evaluate_reward(trainer.model, tokenizer, eval_data).items()}
        trainer.log({k: v for k, v in held_out.items() if isinstance(v, float)})
        metrics.update(held_out)
    save_merged(trainer, tokenizer, output_dir)
    finish_tracking(report_to)
    return metrics


def _pair_ids(tokenizer: PreTrainedTokenizerBase, row: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Token ids of prompt+chosen and prompt+rejected, exactly as TRL's RewardTrainer builds them."""
    prompt = row.get("prompt")
    if is_conversational(row):
        prompt = prompt or []
        return tuple(
            tokenizer.apply_chat_template(prompt + row[key], tokenize=True, return_dict=True)["input_ids"]
            for key in REQUIRED
        )
    eos = tokenizer.eos_token
    texts = [row[key] if row[key].endswith(eos) else row[key] + eos for key in REQUIRED]
    return tuple(tokenizer(text=(prompt or "") + text)["input_ids"] for text in texts)


@torch.no_grad()
def score_pairs(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, data: Dataset, batch_size: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of every chosen and rejected response, in row order, on the CPU.

    Sequences are padded on the right with the model's own pad id whatever the tokenizer's padding side, as
    TRL's collator does in training: the classifier reads the reward at the rightmost non-pad token, so
    padding with another id (say eos when pad != eos) would read it at the padding instead.
    """
    pad = model.config.get_text_config().pad_token_id
    if pad is None:
        raise ValueError("model.config.pad_token_id is not set; load the model with load_reward_model")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chosen, rejected = [], []
    try:
        for start in range(0, len(data), batch_size):
            rows = data.select(range(start, min(start + batch_size, len(data))))
            pairs = [_pair_ids(tokenizer, row) for row in rows]
            seqs = [c for c, _ in pairs] + [r for _, r in pairs]
            width = max(len(s) for s in seqs)
            input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
            rewards = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits.squeeze(-1)
            c, r = rewards.float().cpu().chunk(2)
            chosen.append(c)
            rejected.append(r)
    finally:
        model.train(was_training)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_reward(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, data: Dataset, *, batch_size: int = 32, n_bins: int = 10
) -> dict[str, Any]:
    """Held-out pairwise accuracy and calibration of sigma(r_c - r_r) against the labels.

    ``label_accuracy`` counts a pair as right when the reward difference has the sign of (label - 0.5); pairs
    at exactly 0.5 state no preference and are left out (TRL logs its own ``accuracy``, r_c > r_r whatever the
    label, hence the different name). Calibration asks whether the model's probabilities mean what the
    labeller's do: expected calibration error over ``n_bins`` equal-width bins of the predicted probability,
    with the per-bin table (non-empty bins only).
    """
    check_pairs(data, "eval")
    r_c, r_r = score_pairs(model, tokenizer, data, batch_size)
    labels = torch.tensor(data[LABEL], dtype=torch.float32) if LABEL in data.column_names else torch.ones(len(data))
    delta = r_c - r_r
    prob = torch.sigmoid(delta)
    decisive = labels != 0.5
    correct = torch.sign(delta) == torch.sign(labels - 0.5)
    bins = (prob * n_bins).long().clamp(max=n_bins - 1)
    table, ece = [], 0.0
    for b in range(n_bins):
        in_bin = bins == b
        count = int(in_bin.sum())
        if count:
            mean_prob, mean_label = float(prob[in_bin].mean()), float(labels[in_bin].mean())
            ece += count / len(data) * abs(mean_prob - mean_label)
            table.append(
                {
                    "lo": b / n_bins,
                    "hi": (b + 1) / n_bins,
                    "count": count,
                    "mean_prob": mean_prob,
                    "mean_label": mean_label,
                }
            )
    rewards = torch.cat([r_c, r_r])
    return {
        "pairs": float(len(data)),
        "decisive_pairs": float(decisive.sum()),
        "label_accuracy": float(correct[decisive].float().mean()) if decisive.any() else math.nan,
        "mean_prob": float(prob.mean()),
        "mean_label": float(labels.mean()),
        "mean_margin": float(delta.mean()),
        "reward_mean": float(rewards.mean()),
        "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
        "ece": ece,
        "calibration": table,
    }
