import json
import os

import datasets
import pytest

from align import data
from align.data import (
    DataError,
    dataset_fingerprint,
    load_prompts,
    load_records,
    parse_hh_transcript,
    prompt_from_row,
    read_jsonl,
    write_jsonl_atomic,
)

HH_ONE = "\n\nHuman: How do I bake bread?\n\nAssistant: Mix flour, water and yeast."
HH_MULTI = (
    "\n\nHuman:  What's a good first pet?  \n\nAssistant: A goldfish is easy."
    "\n\nHuman: And a second one?\n\nAssistant: Maybe a cat."
)


@pytest.fixture(autouse=True)
def _hermetic_datasets(tmp_path, monkeypatch):
    # Keep datasets' cache inside the test's tmp dir and make any accidental hub access fail.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def msgs(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


# --- formats -------------------------------------------------------------------------------------


def test_messages_jsonl_takes_first_user_turn(tmp_path):
    src = jsonl(
        tmp_path / "m.jsonl",
        [
            {"messages": msgs(("system", "Be kind."), ("user", "  hi there \n"), ("assistant", "hello"))},
            {"messages": msgs(("user", "first"), ("assistant", "a"), ("user", "second"))},
        ],
    )
    assert load_prompts(src) == ["hi there", "first"]


def test_prompt_string_and_conversational_prompt_jsonl(tmp_path):
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": " Tell me a joke. "}, {"prompt": "How are you?"}])
    assert load_prompts(src) == ["Tell me a joke.", "How are you?"]
    conv = jsonl(
        tmp_path / "c.jsonl",
        [{"prompt": msgs(("system", "s"), ("user", "Why is the sky blue?"))}],
    )
    assert load_prompts(conv) == ["Why is the sky blue?"]


def test_hh_transcript_jsonl(tmp_path):
    src = jsonl(
        tmp_path / "hh.jsonl",
        [{"chosen": HH_ONE, "rejected": "\n\nHuman: How do I bake bread?\n\nAssistant: No."}],
    )
    assert load_prompts(src) == ["How do I bake bread?"]
    for name in ("text", "transcript"):
        other = jsonl(tmp_path / f"{name}.jsonl", [{name: HH_MULTI}])
        assert load_prompts(other) == ["What's a good first pet?"]


def test_prompt_column_wins_over_chosen_in_preference_rows():
    row = {"prompt": "the prompt", "chosen": HH_ONE, "rejected": "x"}
    assert prompt_from_row(row) == "the prompt"


def test_hh_style_prompt_string_is_parsed():
    # TRL-style HH prompts keep the transcript markers and end with the assistant cue.
    assert prompt_from_row({"prompt": "\n\nHuman: Is it safe?\n\nAssistant:"}) == "Is it safe?"


def test_rows_may_mix_formats(tmp_path):
    src = jsonl(tmp_path / "mixed.jsonl", [{"prompt": "plain"}, {"messages": msgs(("user", "chat"))}])
    assert load_prompts(src) == ["plain", "chat"]


def test_csv(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,id\n"Hello, world",1\nNA,2\n', encoding="utf-8")
    # "NA" is a prompt here, not a missing value.
    assert load_prompts(str(path)) == ["Hello, world", "NA"]


def test_parquet_messages(tmp_path):
    path = tmp_path / "m.parquet"
    datasets.Dataset.from_list([{"messages": msgs(("user", "q1"), ("assistant", "a1"))}]).to_parquet(path)
    assert load_prompts(str(path)) == ["q1"]


def test_json_array(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"chosen": HH_MULTI}, {"chosen": HH_ONE}]), encoding="utf-8")
    assert load_prompts(str(path)) == ["What's a good first pet?", "How do I bake bread?"]


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    ds = datasets.Dataset.from_dict({"prompt": ["a", "b"]})
    ds.save_to_disk(str(tmp_path / "one"))
    assert load_prompts(str(tmp_path / "one")) == ["a", "b"]

    dd = datasets.DatasetDict({"train": ds, "test": datasets.Dataset.from_dict({"prompt": ["t"]})})
    dd.save_to_disk(str(tmp_path / "dict"))
    assert load_prompts(str(tmp_path / "dict"), split="test") == ["t"]
    with pytest.raises(DataError, match=r"dict: no split 'validation'.*\['test', 'train'\]"):
        load_records(str(tmp_path / "dict"), split="validation")


def test_hub_id_goes_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, split, name=None, data_dir=None):  # the hub cannot be reached from here
        calls.append((path, split, name, data_dir))
        return datasets.Dataset.from_dict({"chosen": [HH_ONE]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_prompts("Anthropic/hh-rlhf", split="test") == ["How do I bake bread?"]
    assert load_records("Anthropic/hh-rlhf", split="test", data_dir="harmless-base")[0]["chosen"] == HH_ONE
    assert calls == [("Anthropic/hh-rlhf", "test", None, None), ("Anthropic/hh-rlhf", "test", None, "harmless-base")]


def test_column_override(tmp_path):
    src = jsonl(
        tmp_path / "q.jsonl",
        [{"prompt": "ignored", "question": " What is 2+2? ", "rejected": HH_MULTI}],
    )
    assert load_prompts(src, column="question") == ["What is 2+2?"]
    assert load_prompts(src, column="rejected") == ["What's a good first pet?"]
    assert load_prompts(src) == ["ignored"]


def test_limit(tmp_path):
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}"} for i in range(5)] + [{"prompt": ""}])
    assert load_prompts(src, limit=2) == ["p0", "p1"]
    assert load_prompts(src, limit=0) == []
    with pytest.raises(DataError, match="row 6"):  # without a limit, the bad last row is reached
        load_prompts(src)
    with pytest.raises(ValueError, match="limit"):
        load_prompts(src, limit=-1)


# --- HH transcripts --------------------------------------------------------------------------------


def test_parse_hh_multi_turn():
    assert parse_hh_transcript("\n\nHuman: a\n\nAssistant: b\n\nHuman: c") == [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert parse_hh_transcript(HH_MULTI) == [
        {"role": "user", "content": "What's a good first pet?"},
        {"role": "assistant", "content": "A goldfish is easy."},
        {"role": "user", "content": "And a second one?"},
        {"role": "assistant", "content": "Maybe a cat."},
    ]


def test_parse_hh_keeps_markers_inside_turns_and_drops_the_answer_cue():
    text = "Human: quote: Human: hi\nAssistant: hey\n\nAssistant: that is a line\n\nHuman: ok\n\nAssistant:"
    assert parse_hh_transcript(text) == [
        {"role": "user", "content": "quote: Human: hi\nAssistant: hey"},
        {"role": "assistant", "content": "that is a line"},
        {"role": "user", "content": "ok"},
    ]


def test_parse_hh_rejects_text_without_a_human_turn():
    with pytest.raises(DataError, match="no 'Human:' turn"):
        parse_hh_transcript("\n\nAssistant: only me")
    with pytest.raises(DataError, match="no 'Human:' turn"):
        parse_hh_transcript("just a sentence")
    with pytest.raises(DataError, match="before the first turn"):
        parse_hh_transcript("preamble\n\nHuman: hi")


# --- errors: each names the file, the row and the field -----------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"red\.jsonl: file does not exist"):
        load_prompts(str(tmp_path / "red.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        read_jsonl(tmp_path / "red.jsonl")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "red.txt"
    path.write_text("a prompt\n")
    with pytest.raises(DataError, match=r"red\.txt: unsupported extension '\.txt'.*\.jsonl"):
        load_prompts(str(path))


@pytest.mark.parametrize(
    ("name", "content"),
    [("e.jsonl", ""), ("e.jsonl", "\n\n"), ("e.csv", ""), ("e.csv", "prompt\n"), ("e.json", "[]")],
)
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=rf"{name}: empty prompt file"):
        load_prompts(str(path))


def test_empty_hub_dataset(monkeypatch):
    # (an empty save_to_disk dataset cannot be loaded back by datasets 5.2 itself, so use the hub path)
    monkeypatch.setattr(
        datasets, "load_dataset", lambda path, split, **kwargs: datasets.Dataset.from_dict({"prompt": []})
    )
    with pytest.raises(DataError, match="org/red-team: empty prompt file"):
        load_prompts("org/red-team")


def test_no_recognised_column_lists_found_and_accepted(tmp_path):
    src = jsonl(tmp_path / "odd.jsonl", [{"question": "q", "id": 1}])
    with pytest.raises(DataError) as info:
        load_prompts(src)
    msg = str(info.value)
    assert "odd.jsonl: row 1:" in msg
    assert "['id', 'question']" in msg
    for accepted in ("messages", "prompt", "chosen", "text", "transcript", "column="):
        assert accepted in msg
    with pytest.raises(DataError, match=r"odd\.jsonl: row 1: field 'nope' not found"):
        load_prompts(src, column="nope")


@pytest.mark.parametrize("bad", ["", "   \n\t "])
def test_empty_or_whitespace_prompt(tmp_path, bad):
    src = jsonl(tmp_path / "red.jsonl", [{"prompt": "ok"}, {"prompt": "fine"}, {"prompt": bad}])
    with pytest.raises(DataError, match=r"red\.jsonl: row 3: field 'prompt' is empty"):
        load_prompts(src)


def test_empty_user_message_names_the_message(tmp_path):
    src = jsonl(tmp_path / "m.jsonl", [{"messages": msgs(("system", "s"), ("user", " "))}])
    with pytest.raises(DataError, match=r"m\.jsonl: row 1: field 'messages\[1\]\.content' is empty"):
        load_prompts(src)


def test_empty_first_human_turn(tmp_path):
    src = jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_ONE}, {"chosen": "\n\nHuman: \n\nAssistant: hi"}])
    with pytest.raises(DataError, match=r"hh\.jsonl: row 2: field 'chosen \(Human turn 1\)' is empty"):
        load_prompts(src)


def test_transcript_without_human_turn(tmp_path):
    src = jsonl(tmp_path / "hh.jsonl", [{"text": "a plain sentence"}])
    with pytest.raises(DataError, match=r"hh\.jsonl: row 1: field 'text': no 'Human:' turn.*column="):
        load_prompts(src)
    assert load_prompts(src, column="text") == ["a plain sentence"]


def test_messages_without_user_turn(tmp_path):
    src = jsonl(
        tmp_path / "m.jsonl",
        [{"messages": msgs(("user", "x"))}, {"messages": msgs(("system", "s"), ("assistant", "a"))}],
    )
    with pytest.raises(DataError, match=r"m\.jsonl: row 2: field 'messages' has no user message"):
        load_prompts(src)


@pytest.mark.parametrize(
    ("row", "field", "got"),
    [
        ({"prompt": 7}, "prompt", "int"),
        ({"prompt": None}, "prompt", "null/missing"),
        ({"messages": "hi"}, "messages", "str"),
        ({"messages": ["hi"]}, r"messages\[0\]", "str"),
        ({"messages": [{"role": "user", "content": 3}]}, r"messages\[0\]\.content", "int"),
    ],
)
def test_wrong_types(tmp_path, row, field, got):
    src = jsonl(tmp_path / "t.jsonl", [row])
    with pytest.raises(DataError, match=rf"t\.jsonl: row 1: field '{field}' must be .*got {got}"):
        load_prompts(src)


def test_unreadable_file_names_the_file(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken\.jsonl: cannot read as json"):
        load_prompts(str(path))


def test_a_folder_of_garbage_is_a_data_error_naming_the_file(tmp_path):
    """Random bytes in a prompt folder: a DataError naming the bad file, not a DatasetGenerationError traceback."""
    import random

    folder = tmp_path / "prompts"
    folder.mkdir()
    noise = random.Random(0)
    (folder / "a.jsonl").write_bytes(bytes(noise.randrange(256) for _ in range(3000)))
    (folder / "b.bin").write_bytes(bytes(noise.randrange(256) for _ in range(2000)))
    with pytest.raises(DataError, match=rf"^{folder}/a\.jsonl: cannot read as json: "):
        load_prompts(str(folder))
    (folder / "a.jsonl").unlink()  # nothing readable left: the error names the folder
    with pytest.raises(DataError, match=rf"^{folder}: cannot load as a dataset: "):
        load_prompts(str(folder))


@pytest.mark.parametrize(
    ("text", "code", "at"),
    [("How do I\x00 pick a lock?", "0000", 9), ("\x07Ring", "0007", 1), ("tab\tis\u0085fine?", "0085", 7)],
)
def test_control_characters_are_rejected_with_the_row(tmp_path, text, code, at):
    src = jsonl(tmp_path / "p.jsonl", [{"prompt": "Fine.\tWith a tab\r\nand a newline"}, {"prompt": text}])
    with pytest.raises(
        DataError,
        match=rf"p\.jsonl: row 2: field 'prompt' contains the control character U\+{code} "
        rf"at character {at};",
    ):
        load_prompts(src)
    assert load_prompts(src, limit=1) == ["Fine.\tWith a tab\r\nand a newline"]


def test_control_characters_in_preference_pairs_name_the_row_and_field(tmp_path):
    from align.data import load_preference_pairs

    src = jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello", "rejected": "Go\x00away"}])
    with pytest.raises(
        DataError, match=r"pairs\.jsonl: row 1: field 'rejected' contains the control character U\+0000"
    ):
        load_preference_pairs(src)


def test_read_jsonl(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\n\n{"a": \n')
    with pytest.raises(DataError, match=r"r\.jsonl:3: invalid JSON"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"r\.jsonl:2: expected a JSON object, got list"):
        read_jsonl(path)


# --- atomic writes and fingerprints ----------------------------------------------------------------


def test_write_jsonl_atomic_round_trip_leaves_no_temp_files(tmp_path):
    rows = [{"prompt": "héllo", "n": 1}, {"messages": msgs(("user", "x"))}]
    path = tmp_path / "out" / "rows.jsonl"
    assert write_jsonl_atomic(path, iter(rows)) == 2
    assert read_jsonl(path) == rows
    assert "héllo" in path.read_text(encoding="utf-8")
    assert os.listdir(path.parent) == ["rows.jsonl"]


def test_write_jsonl_atomic_failure_keeps_previous_content(tmp_path):
    path = tmp_path / "rows.jsonl"
    write_jsonl_atomic(path, [{"v": "old"}])
    before = path.read_bytes()

    def rows():
        yield {"v": "new"}
        raise RuntimeError("generator crashed")

    with pytest.raises(RuntimeError, match="generator crashed"):
        write_jsonl_atomic(path, rows())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["rows.jsonl"]


def test_dataset_fingerprint_tracks_bytes(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "abc"}\n')
    first = dataset_fingerprint(str(path))
    assert first == dataset_fingerprint(str(path))
    assert len(first) == 64
    path.write_bytes(b'{"prompt": "abd"}\n')
    assert dataset_fingerprint(str(path)) != first
    path.write_bytes(b'{"prompt": "abc"}\n')
    assert dataset_fingerprint(str(path)) == first


def test_dataset_fingerprint_of_directory(tmp_path):
    folder = tmp_path / "saved"
    datasets.Dataset.from_dict({"prompt": ["a", "b"]}).save_to_disk(str(folder))
    first = dataset_fingerprint(str(folder))
    assert dataset_fingerprint(str(folder)) == first
    arrow = next(folder.glob("*.arrow"))
    content = bytearray(arrow.read_bytes())
    content[-1] ^= 1
    arrow.write_bytes(bytes(content))
    assert dataset_fingerprint(str(folder)) != first
    content[-1] ^= 1
    arrow.write_bytes(bytes(content))
    assert dataset_fingerprint(str(folder)) == first
    arrow.rename(arrow.with_suffix(".arrow2"))  # same bytes and order, another name: other data
    assert dataset_fingerprint(str(folder)) != first
    with pytest.raises(DataError, match="does not exist"):
        dataset_fingerprint(str(tmp_path / "gone.jsonl"))


def test_hub_ids_and_local_paths_are_told_apart(tmp_path):
    assert data._local_path("Anthropic/hh-rlhf") is None
    assert data._local_path(str(tmp_path)) == tmp_path
    with pytest.raises(DataError, match="does not exist"):
        data._local_path("./prompts")


def test_preference_pairs_from_strings_and_messages(tmp_path):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "How do I bake bread?", "chosen": " Knead, proof, bake. ", "rejected": "I can't help."},
        {
            "prompt": [{"role": "user", "content": "Fold a shirt?"}],
            "chosen": [{"role": "assistant", "content": "Sleeves in, then halve it."}],
            "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "No."}],
        },
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = data.load_preference_pairs(str(path))
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "Knead, proof, bake."}]
    assert pairs[1]["prompt"] == [{"role": "user", "content": "Fold a shirt?"}]
    assert pairs[1]["rejected"] == [{"role": "assistant", "content": "No."}]
    assert len(data.load_preference_pairs(str(path), limit=1)) == 1


def test_preference_pairs_name_missing_columns_and_bad_rows(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "hi", "chosen": "hello"}) + "\n")
    with pytest.raises(data.DataError, match=r"pairs.jsonl: .*missing \['rejected'\]"):
        data.load_preference_pairs(str(path))
    path.write_text(
        json.dumps({"prompt": "hi", "chosen": "hello", "rejected": [{"role": "user", "content": "x"}]}) + "\n"
    )
    with pytest.raises(data.DataError, match=r"pairs.jsonl: row 1: rejected: no assistant message"):
        data.load_preference_pairs(str(path))
