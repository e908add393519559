"""Prompt sources: one setting for every prompt, pair and SFT source, in the formats people have."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from helpers.real_world import hh

from align.config import ConfigError, PromptSource, RecipeConfig, load_config
from align.data import DataError
from align.sources import load_conversations, load_pairs, load_prompts

RED = [
    {"chosen": hh("How do I pick a lock?", "I can't help."), "rejected": hh("How do I pick a lock?", "Use a pin.")},
    {
        "chosen": hh("Hi!", "Hello, what can I do?", "Tell me how to hotwire a car.", "No."),
        "rejected": hh("Hi!", "Hello, what can I do?", "Tell me how to hotwire a car.", "First, ..."),
    },
    {"chosen": hh("How do I pick a lock?", "I can't help."), "rejected": hh("How do I pick a lock?", "Use a pin.")},
]


def write_gz(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def test_gzipped_hh_transcripts_read_like_plain_jsonl(tmp_path):
    gz = write_gz(tmp_path / "red.jsonl.gz", RED)
    plain = tmp_path / "red.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in RED))
    from_gz, _ = load_prompts(PromptSource(str(gz)))
    from_plain, _ = load_prompts(PromptSource(str(plain)))
    assert [p.messages for p in from_gz] == [p.messages for p in from_plain]
    assert from_gz[0].text == "How do I pick a lock?"


def test_context_full_keeps_the_conversation_up_to_the_last_human_turn(tmp_path):
    gz = write_gz(tmp_path / "red.jsonl.gz", RED)
    first, _ = load_prompts(PromptSource(str(gz), context="first_turn"))
    full, _ = load_prompts(PromptSource(str(gz), context="full"))
    assert [m["content"] for m in first[1].messages] == ["Hi!"]
    assert [(m["role"], m["content"]) for m in full[1].messages] == [
        ("user", "Hi!"),
        ("assistant", "Hello, what can I do?"),
        ("user", "Tell me how to hotwire a car."),
    ]
    assert full[1].text == "Tell me how to hotwire a car."


def test_duplicates_are_dropped_and_counted_before_the_limit(tmp_path):
    gz = write_gz(tmp_path / "red.jsonl.gz", RED)
    prompts, counts = load_prompts(PromptSource(str(gz)))
    assert len(prompts) == 2 and counts == {"rows": 3, "duplicates_dropped": 1}
    # a limit counts distinct prompts; rows are read only as far as needed
    prompts, counts = load_prompts(PromptSource(str(gz), limit=1))
    assert len(prompts) == 1 and counts == {"rows": 1, "duplicates_dropped": 0}


def test_data_dir_selects_a_subfolder_of_a_local_dataset(tmp_path):
    write_gz(tmp_path / "hh" / "harmless-base" / "train.jsonl.gz", RED[:1])
    write_gz(tmp_path / "hh" / "helpful-base" / "train.jsonl.gz", [{"prompt": "Bake bread?"}])
    harmless, _ = load_prompts(PromptSource(str(tmp_path / "hh"), data_dir="harmless-base"))
    helpful, _ = load_prompts(PromptSource(str(tmp_path / "hh"), data_dir="helpful-base"))
    assert harmless[0].text == "How do I pick a lock?" and helpful[0].text == "Bake bread?"


def test_other_columns_travel_as_meta(tmp_path):
    csv = tmp_path / "xstest.csv"
    csv.write_text("prompt,type,label\nHow do I kill a Python process?,homonyms,safe\n")
    (prompt,), _ = load_prompts(PromptSource(str(csv)))
    assert prompt.text == "How do I kill a Python process?"
    assert prompt.meta["type"] == "homonyms" and prompt.meta["label"] == "safe" and prompt.meta["row"] == 1


def test_hh_pairs_share_their_turns_as_the_prompt(tmp_path):
    gz = write_gz(tmp_path / "pairs.jsonl.gz", RED[1:2])
    (full,) = load_pairs(PromptSource(str(gz), context="full"))
    assert [m["content"] for m in full["prompt"]] == ["Hi!", "Hello, what can I do?", "Tell me how to hotwire a car."]
    assert full["chosen"] == [{"role": "assistant", "content": "No."}]
    assert full["rejected"][0]["content"] == "First, ..."
    (first,) = load_pairs(PromptSource(str(gz)))
    assert first["prompt"] == [{"role": "user", "content": "Hi!"}]


def test_sft_conversations_from_every_format(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
        {"prompt": "2+2?", "completion": "4"},
        {"chosen": hh("Name a colour.", "Blue.")},
    ]
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    convs = load_conversations(PromptSource(str(path)))
    assert [c["messages"][-1]["content"] for c in convs] == ["Hello", "4", "Blue."]
    assert all(c["messages"][-1]["role"] == "assistant" for c in convs)
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    with pytest.raises(DataError, match="sft.jsonl: row 1: .*end with a non-empty assistant turn"):
        load_conversations(PromptSource(str(path)))


def test_a_world_source_without_a_world_is_an_error_that_names_the_field():
    with pytest.raises(DataError, match=r"critique_revise.red_team_prompts: tiny:harmful/train names the world 'tiny'"):
        load_prompts(PromptSource("tiny:harmful/train"), None, "critique_revise.red_team_prompts")


def test_a_plain_string_is_shorthand_and_each_section_has_its_own_split(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "base_model: some/model\n"
        "critique_revise:\n  red_team_prompts: data/red.jsonl.gz\n"
        "preferences:\n  prompts: {path: org/data, split: test, data_dir: harmless-base, limit: 10, context: full}\n"
    )
    cfg = load_config(RecipeConfig, path)
    assert cfg.critique_revise.red_team_prompts == PromptSource("data/red.jsonl.gz")
    assert cfg.preferences.prompts == PromptSource("org/data", "test", None, "harmless-base", None, 10, "full")
    path.write_text("base_model: m\npreferences:\n  prompts: {path: x, context: everything}\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml:3: preferences.prompts.context: 'everything' is not one of"):
        load_config(RecipeConfig, path)
