"""Reward-model stage: the soft Bradley-Terry loss by hand, labels reaching the loss, training, saving, metrics."""

import math
import random

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import AutoModelForSequenceClassification
from trl import RewardConfig, RewardTrainer

import align.train.reward as reward
from align.config import LoraSettings, RewardStageConfig
from align.tiny.model import build_model, build_tokenizer
from align.train.reward import (
    SoftLabelRewardTrainer,
    _pair_ids,
    evaluate_reward,
    load_reward_model,
    score_pairs,
    soft_bradley_terry_loss,
    train_reward,
)

WORDS = ["apple", "bread", "chair", "door", "egg", "fish", "grape", "house", "ink", "jam", "kite", "lamp"]
GOOD, BAD = "kindly", "rudely"


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread


def tiny_reward_model(tmp_path, seed=0):
    """A tiny causal LM saved to disk and loaded back as a reward model, as the pipeline will do."""
    tok = build_tokenizer([f"tell me about {w} and {w}, {GOOD} or {BAD}" for w in WORDS], 300)
    lm = build_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    lm.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    return load_reward_model(str(tmp_path / "lm"), seed=seed), tok


def pairs(n, seed, label=1.0, good=GOOD, bad=BAD):
    """Chosen and rejected differ only in a marker word; the prompt varies so pairs are not all identical."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(WORDS, 2)
        rows.append(
            {
                "prompt": [{"role": "user", "content": f"tell me about {a} and {b}"}],
                "chosen": [{"role": "assistant", "content": f"{a} and {b}, {good}"}],
                "rejected": [{"role": "assistant", "content": f"{a} and {b}, {bad}"}],
                "label": label,
            }
        )
    return Dataset.from_list(rows)


def fast(**overrides):
    settings = dict(
        learning_rate=3e-3, max_steps=30, per_device_train_batch_size=16, logging_steps=10, warmup_ratio=0.0
    )
    return RewardStageConfig(**{**settings, **overrides})


# ---- the loss by hand ------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
def test_soft_loss_is_log2_when_rewards_tie(p):
    # sigma(0) = 1/2, so -(p log 1/2 + (1 - p) log 1/2) = log 2 whatever p is
    loss = soft_bradley_terry_loss(torch.tensor([1.5]), torch.tensor([1.5]), p)
    assert loss.item() == pytest.approx(math.log(2))


def test_soft_loss_hand_worked_value():
    # d = ln 3: sigma(d) = 3/(3+1) = 0.75 and sigma(-d) = 0.25, so with p = 0.8
    # loss = -(0.8 ln 0.75 + 0.2 ln 0.25) = 0.8 * 0.287682 + 0.2 * 1.386294 = 0.230146 + 0.277259 = 0.507405
    loss = soft_bradley_terry_loss(torch.tensor([math.log(3)]), torch.tensor([0.0]), 0.8)
    assert loss.item() == pytest.approx(0.507405, abs=1e-6)
    # a batch is averaged: with the tie above (log 2) the mean is (0.507405 + 0.693147) / 2
    batch = soft_bradley_terry_loss(torch.tensor([math.log(3), 0.0]), torch.zeros(2), torch.tensor([0.8, 0.3]))
    assert batch.item() == pytest.approx((0.507405 + math.log(2)) / 2, abs=1e-6)


def test_soft_loss_is_binary_cross_entropy_and_stays_finite():
    delta, p = torch.tensor([-200.0, -3.0, 0.5, 200.0]), torch.tensor([0.1, 0.5, 0.9, 1.0])
    loss = soft_bradley_terry_loss(delta, torch.zeros(4), p)
    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(F.binary_cross_entropy_with_logits(delta, p).item(), rel=1e-6)


@pytest.mark.parametrize(("p", "sign"), [(0.9, -1), (0.5, 0), (0.2, 1)], ids=["p>sigma", "p=sigma", "p<sigma"])
def test_soft_loss_gradient_pulls_sigma_toward_p(p, sign):
    # d loss / d r_c = sigma(d) - p, here with sigma(d) = 0.5: raise r_c when p is above it, lower it when below
    r_c = torch.tensor([0.7], requires_grad=True)
    soft_bradley_terry_loss(r_c, torch.tensor([0.7]), p).backward()
    assert r_c.grad.item() == pytest.approx(0.5 - p)
    assert torch.sign(r_c.grad).item() == sign


# ---- the label reaches the loss ----------------------------------------------------------------------------


def trainer_for(cls, model, tok, data, tmp_path, **args):
    config = RewardConfig(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        per_device_train_batch_size=4,
        bf16=False,  # TRL defaults to bf16 and checkpointing on, which a CPU run refuses or does not need
        activation_checkpointing=False,
        **args,
    )
    return cls(model=model, args=config, train_dataset=data, processing_class=tok)


def test_compute_loss_uses_the_label_and_matches_trl_at_p_1(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    data = pairs(4, seed=0).remove_columns("label").add_column("label", [0.8, 0.2, 1.0, 0.5])
    ours = trainer_for(SoftLabelRewardTrainer, model, tok, data, tmp_path, center_rewards_coefficient=0.1)
    assert "label" in ours.train_dataset.column_names  # kept through TRL's tokenisation
    batch = next(iter(ours.get_train_dataloader()))
    assert batch["label"].dtype == torch.float32 and sorted(batch["label"].tolist()) == pytest.approx(
        [0.2, 0.5, 0.8, 1]
    )
    with torch.no_grad():
        loss = ours.compute_loss(model, batch)
        r_c, r_r = (
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1).chunk(2)
        )
        expected = soft_bradley_terry_loss(r_c, r_r, batch["label"]) + 0.1 * ((r_c + r_r) ** 2).mean()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

        hard = {**batch, "label": torch.ones(4)}
        trl = trainer_for(RewardTrainer, model, tok, data.remove_columns("label"), tmp_path)
        trl_batch = {k: v for k, v in batch.items() if k != "label"}
        ours.args.center_rewards_coefficient = None
        assert ours.compute_loss(model, hard).item() == pytest.approx(trl.compute_loss(model, trl_batch).item())


def test_missing_label_column_means_chosen_is_better(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    trainer = trainer_for(SoftLabelRewardTrainer, model, tok, pairs(4, seed=0).remove_columns("label"), tmp_path)
    assert next(iter(trainer.get_train_dataloader()))["label"].tolist() == [1.0] * 4


def test_evaluation_tokenises_like_trl(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    chat = pairs(4, seed=0)
    text = Dataset.from_list(
        [{"prompt": "tell me about ink", "chosen": " ink, kindly", "rejected": " ink, rudely"}] * 2
    )
    for data in (chat, text):
        prepared = trainer_for(SoftLabelRewardTrainer, model, tok, data, tmp_path).train_dataset
        for row, trl_row in zip(data, prepared, strict=True):
            assert _pair_ids(tok, row) == (trl_row["chosen_ids"], trl_row["rejected_ids"])


# ---- training --------------------------------------------------------------------------------------------


def test_reward_model_learns_held_out_preferences_and_reloads_identically(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    good, bad = GOOD, BAD
    if evaluate_reward(model, tok, pairs(32, seed=1))["label_accuracy"] > 0.5:
        good, bad = bad, good  # make the random model start on the wrong side, so learning has to flip it
    train, held_out = pairs(64, seed=0, good=good, bad=bad), pairs(32, seed=1, good=good, bad=bad)
    before = evaluate_reward(model, tok, held_out)
    metrics = train_reward(model, tok, train, held_out, fast(), str(tmp_path / "rm"), seed=0)
    assert before["label_accuracy"] <= 0.5
    assert metrics["eval_label_accuracy"] >= 0.9 and metrics["steps"] == 30 and metrics["train_pairs"] == 64
    # the Trainer's evaluation loop ran compute_loss with the labels: its loss is the soft loss of our rewards
    r_c, r_r = score_pairs(model, tok, held_out)
    assert metrics["eval_loss"] == pytest.approx(soft_bradley_terry_loss(r_c, r_r, 1.0).item(), rel=1e-4)

    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert (tmp_path / "rm" / "model.safetensors").exists()
    assert all(torch.equal(a, b) for a, b in zip(score_pairs(loaded, tok, held_out), (r_c, r_r), strict=True))


@pytest.mark.parametrize(("label", "low", "high"), [(0.5, 0.45, 0.55), (0.8, 0.72, 0.88), (1.0, 0.95, 1.0)])
def test_soft_labels_set_the_learned_probability(tmp_path, label, low, high):
    # Hard labels would push sigma(r_c - r_r) toward 1 for every one of these; soft ones stop at the label.
    model, tok = tiny_reward_model(tmp_path)
    metrics = train_reward(model, tok, pairs(64, 0, label), pairs(32, 1, label), fast(), str(tmp_path / "rm"), seed=0)
    assert low <= metrics["eval_mean_prob"] <= high
    assert metrics["eval_ece"] < 0.1


def test_hard_labels_swap_pairs_below_half_and_drop_ties(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    # every pair says the BAD-marked "chosen" is worse (0.2) or ties; hardened, the model must prefer GOOD
    train = pairs(48, 0, label=0.2, good=BAD, bad=GOOD)
    train = Dataset.from_list(list(train) + list(pairs(16, 2, label=0.5)))
    held_out = pairs(32, 1, label=0.2, good=BAD, bad=GOOD)
    metrics = train_reward(model, tok, train, held_out, fast(soft_labels=False), str(tmp_path / "rm"), seed=0)
    assert metrics["train_pairs"] == 48  # the 16 ties are gone
    assert metrics["eval_label_accuracy"] == 1.0  # rejected wins, as the 0.2 labels say
    assert metrics["eval_mean_prob"] < 0.05 and metrics["eval_mean_label"] == pytest.approx(0.2)  # held out stays soft


def test_lora_trains_the_score_head_and_saves_a_merged_model(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    head = model.score.weight.detach().clone()
    keys = set(model.state_dict())
    cfg = fast(learning_rate=1e-2, lora=LoraSettings(enabled=True, r=4, alpha=8))
    held_out = pairs(16, 1)
    metrics = train_reward(model, tok, pairs(64, 0), held_out, cfg, str(tmp_path / "rm"), seed=0)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert set(loaded.state_dict()) == keys  # adapters merged, a plain model
    assert not torch.equal(loaded.score.weight, head)  # modules_to_save: the head itself was trained and saved
    # held-out metrics were measured on the PEFT model before merging; the merged one gives the same rewards
    assert evaluate_reward(loaded, tok, held_out)["mean_margin"] == pytest.approx(metrics["eval_mean_margin"], rel=1e-4)


# ---- evaluation metrics by hand --------------------------------------------------------------------------


def test_evaluate_reward_accuracy_and_calibration_by_hand(monkeypatch):
    # d = (ln 3, ln 3, -ln 3, 0) -> sigma = (.75, .75, .25, .5); labels (1, .5, .2, .9)
    # accuracy: row 1 is a tie label and left out; rows 0 and 2 have the label's sign, row 3 (d = 0) does not: 2/3
    # 4 bins: [.75, 1) holds rows 0, 1 (prob .75, label .75: error 0); [.25, .5) row 2 (.25 vs .2: .05);
    # [.5, .75) row 3 (.5 vs .9: .4). ECE = 2/4 * 0 + 1/4 * .05 + 1/4 * .4 = .1125
    d = math.log(3)
    monkeypatch.setattr(reward, "score_pairs", lambda *a: (torch.tensor([d, d, -d, 0.0]), torch.zeros(4)))
    data = Dataset.from_dict({"chosen": ["a"] * 4, "rejected": ["b"] * 4, "label": [1.0, 0.5, 0.2, 0.9]})
    m = evaluate_reward(None, None, data, n_bins=4)
    assert m["decisive_pairs"] == 3 and m["label_accuracy"] == pytest.approx(2 / 3)
    assert m["mean_prob"] == pytest.approx(0.5625) and m["mean_label"] == pytest.approx(0.65)
    assert m["ece"] == pytest.approx(0.1125)
    assert [(b["lo"], b["count"]) for b in m["calibration"]] == [(0.25, 1), (0.5, 1), (0.75, 2)]
    assert m["calibration"][2]["mean_label"] == pytest.approx(0.75)


def test_batched_scores_do_not_depend_on_padding(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    data = pairs(6, seed=3)
    assert len({len(_pair_ids(tok, row)[0]) for row in data}) > 1  # so the batch really is padded
    one_by_one = score_pairs(model, tok, data, batch_size=1)
    batched = score_pairs(model, tok, data, batch_size=6)  # rows differ in length: padded on the right
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(one_by_one, batched, strict=True))


# ---- errors ----------------------------------------------------------------------------------------------


def test_errors_name_the_problem(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    out = str(tmp_path / "rm")
    with pytest.raises(ValueError, match=r"missing columns \['chosen'\]"):
        train_reward(model, tok, pairs(4, 0).remove_columns("chosen"), None, fast(), out, seed=0)
    with pytest.raises(ValueError, match="not probabilities"):
        train_reward(model, tok, pairs(4, 0, label=1.5), None, fast(), out, seed=0)
    with pytest.raises(ValueError, match="only 0.5 labels"):
        train_reward(model, tok, pairs(4, 0, label=0.5), None, fast(soft_labels=False), out, seed=0)
    with pytest.raises(ValueError, match="longer than max_length=4"):
        train_reward(model, tok, pairs(4, 0), None, fast(max_length=4), out, seed=0)


def test_nan_loss_is_reported(tmp_path):
    model, tok = tiny_reward_model(tmp_path)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    # stopped at the first step by the crash-safety callback, before any NaN checkpoint is written
    from align.train.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="rm: loss is NaN or infinite at step 1"):
        train_reward(model, tok, pairs(8, 0), None, fast(max_steps=2), str(tmp_path / "rm"), seed=0)
