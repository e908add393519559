from __future__ import annotations

import hashlib
import json
import pickle
import random
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

from align.constitution import (
    Constitution,
    ConstitutionError,
    Principle,
    load_constitution,
    load_constitution_data,
)

CONSTITUTIONS = Path(__file__).resolve().parent.parent / "constitutions"
SHIPPED = sorted(p for p in CONSTITUTIONS.iterdir() if p.suffix in (".yaml", ".yml", ".json"))

# Lines are referred to by number in the tests below: keep this text's layout stable.
VALID = """\
name: demo
version: 1.0.0
description: A small constitution for tests.
principles:
  - id: first
    critique: Point out harm.
    revision: Rewrite it safely.
    comparison: Which response is safer?
    tags: [safety]
  - id: second
    critique: Point out lies.
    revision: Rewrite it honestly.
few_shot:
  - messages:
      - {role: user, content: Hi}
      - {role: assistant, content: Hello}
changelog:
  - {version: 1.0.0, message: First.}
"""

DESCRIPTION = "description: A small constitution for tests.\n"
PRINCIPLES = VALID[VALID.index("principles:") : VALID.index("few_shot:")]
SECOND = "  - id: second\n    critique: Point out lies.\n    revision: Rewrite it honestly.\n"
COMPARISON = "    comparison: Which response is safer?\n"
FEW_SHOT = VALID[VALID.index("few_shot:") : VALID.index("changelog:")]
CHANGELOG_ENTRY = "  - {version: 1.0.0, message: First.}\n"

# The same content as VALID: other key order, comments, quoting, block scalars, flow style, explicit
# default weight.
REFORMATTED = """\
# a comment that must not matter
few_shot:
- messages:
  - content: "Hi"
    role: user
  - role: 'assistant'
    content: >
      Hello
principles:
- critique: |
    Point out harm.
  tags:
  - safety
  comparison: "Which response is safer?"
  id: first
  revision: Rewrite it safely.
  weight: 1
- {revision: "Rewrite it honestly.", id: second, critique: Point out lies.}
description: "A small constitution for tests."   # trailing comment
version: "1.0.0"
changelog:
- message: "First."
  version: 1.0.0
name: demo
"""


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, name: str = "c.yaml") -> Constitution:
    return load_constitution(write(tmp_path, text, name))


# ---------------------------------------------------------------------------------------------------
# Shipped constitutions


def test_shipped_folder_has_constitutions() -> None:
    names = {p.stem for p in SHIPPED}
    assert {"harmless", "concise"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_constitution_loads_and_round_trips(path: Path) -> None:
    c = load_constitution(path)
    assert c.name == path.stem, "a constitution's name should match its file name"
    assert re.fullmatch(rf"{re.escape(c.name)}@\d+\.\d+\.\d+\S*\+sha256:[0-9a-f]{{12}}", c.identity)
    assert c.source == str(path)
    assert c.changelog and c.changelog[-1]["version"] == c.version, "the changelog should cover this version"
    again = load_constitution_data(json.loads(json.dumps(c.to_dict())))
    assert again == c
    assert again.content_hash == c.content_hash


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_prompts_are_short_and_uniform(path: Path) -> None:
    """The tiny default model learns these exact strings, so they must stay short and in one style."""
    c = load_constitution(path)
    for p in c.principles:
        assert p.comparison is not None, f"{p.id}: RL-CAI labelling needs a comparison question"
        for text in (p.critique, p.revision, p.comparison):
            assert len(text.split()) <= 20, f"{p.id}: too long for the tiny model: {text!r}"
            assert "\n" not in text
        assert p.critique.startswith("Point out") and "last response" in p.critique, p.id
        assert p.revision.startswith("Rewrite the response"), p.id
        assert p.comparison.startswith("Which response") and p.comparison.endswith("?"), p.id
    for conversation in c.few_shot:
        for message in conversation:
            assert len(message["content"].split()) <= 25, message


def test_harmless_covers_harm_areas_and_has_a_worked_example() -> None:
    c = load_constitution(CONSTITUTIONS / "harmless.yaml")
    assert c.version == "1.0.0"
    assert len(c.principles) >= 12
    ids = {p.id for p in c.principles}
    for area in ["violence", "weapons", "hacking", "theft", "self-harm", "privacy", "child-safety"]:
        assert area in ids
    assert len(c.few_shot) == 1
    conversation = c.few_shot[0]
    assert [m["role"] for m in conversation] == ["user", "assistant"] * 3
    # The example must use a real principle's requests, or it teaches strings never asked later.
    critique_request, revision_request = conversation[2]["content"], conversation[4]["content"]
    matching = [p for p in c.principles if p.critique == critique_request]
    assert len(matching) == 1
    assert matching[0].revision == revision_request


def test_concise_is_a_different_constitution() -> None:
    harmless = load_constitution(CONSTITUTIONS / "harmless.yaml")
    concise = load_constitution(CONSTITUTIONS / "concise.yaml")
    assert len(concise.principles) >= 4
    assert {"helpful", "concise", "honest"} <= {t for p in concise.principles for t in p.tags}
    assert concise.content_hash != harmless.content_hash
    assert not {p.critique for p in concise.principles} & {p.critique for p in harmless.principles}


# ---------------------------------------------------------------------------------------------------
# Parsed content


def test_valid_file_is_parsed_into_typed_fields(tmp_path: Path) -> None:
    c = load_text(tmp_path, VALID)
    assert c.name == "demo"
    assert c.version == "1.0.0"
    assert c.description == "A small constitution for tests."
    assert [p.id for p in c.principles] == ["first", "second"]
    first, second = c.principles
    assert first == Principle("first", "Point out harm.", "Rewrite it safely.", "Which response is safer?", ("safety",))
    assert second.comparison is None
    assert second.tags == ()
    assert second.weight == 1.0
    assert c.few_shot == (({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}),)
    assert c.changelog == ({"version": "1.0.0", "message": "First."},)


def test_constitutions_are_hashable_and_equal_regardless_of_source(tmp_path: Path) -> None:
    a = load_text(tmp_path, VALID, "a.yaml")
    b = load_text(tmp_path, VALID, "b.yaml")
    assert a.source != b.source
    assert a == b
    assert len({a, b}) == 1
    assert a != load_text(tmp_path, VALID.replace("version: 1.0.0", "version: 2.0.0"), "c.yaml")


def test_principle_lookup(tmp_path: Path) -> None:
    c = load_text(tmp_path, VALID)
    assert c.principle("second").critique == "Point out lies."
    with pytest.raises(KeyError) as info:
        c.principle("missing")
    assert "missing" in str(info.value)
    assert "first, second" in str(info.value)


def test_to_dict_round_trips_through_yaml_file(tmp_path: Path) -> None:
    c = load_text(tmp_path, VALID)
    data = c.to_dict()
    assert "comparison" not in data["principles"][1]
    path = write(tmp_path, yaml.safe_dump(data), "dumped.yaml")
    again = load_constitution(path)
    assert again == c
    assert again.identity == c.identity
    data["principles"][0]["critique"] = "changed"
    assert c.principles[0].critique == "Point out harm.", "to_dict must not share state with the object"


def test_anchors_and_merge_keys_are_supported(tmp_path: Path) -> None:
    text = VALID.replace(
        "  - id: second\n    critique: Point out lies.\n    revision: Rewrite it honestly.\n",
        "  - &second {id: second, critique: Point out lies., revision: Rewrite it honestly.}\n"
        "  - {<<: *second, id: third}\n",
    )
    c = load_text(tmp_path, text)
    assert [p.id for p in c.principles] == ["first", "second", "third"]
    assert c.principle("third").critique == "Point out lies."


# ---------------------------------------------------------------------------------------------------
# Hashes and identity


def test_formatting_key_order_and_json_do_not_change_the_hash(tmp_path: Path) -> None:
    base = load_text(tmp_path, VALID, "a.yaml")
    reformatted = load_text(tmp_path, REFORMATTED, "b.yaml")
    as_json = load_text(tmp_path, json.dumps(yaml.safe_load(VALID), indent=4), "c.json")
    assert reformatted == base
    assert as_json == base
    assert {c.content_hash for c in (base, reformatted, as_json)} == {base.content_hash}
    assert re.fullmatch(r"[0-9a-f]{64}", base.content_hash)


def test_content_hash_is_sha256_of_canonical_json(tmp_path: Path) -> None:
    """Run manifests store this hash, so its definition must not drift silently."""
    c = load_text(tmp_path, VALID)
    content = {
        "name": "demo",
        "description": "A small constitution for tests.",
        "principles": [
            {
                "id": "first",
                "critique": "Point out harm.",
                "revision": "Rewrite it safely.",
                "comparison": "Which response is safer?",
                "tags": ["safety"],
                "weight": 1.0,
            },
            {
                "id": "second",
                "critique": "Point out lies.",
                "revision": "Rewrite it honestly.",
                "comparison": None,
                "tags": [],
                "weight": 1.0,
            },
        ],
        "few_shot": [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]],
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert c.content_hash == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert c.identity == f"demo@1.0.0+sha256:{c.content_hash[:12]}"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("name: demo", "name: demo2"),
        ("description: A small", "description: A tiny"),
        ("critique: Point out harm.", "critique: Point out danger."),
        ("revision: Rewrite it honestly.", "revision: Rewrite it truthfully."),
        ("comparison: Which response is safer?", "comparison: Which response is kinder?"),
        ("tags: [safety]", "tags: [care]"),
        ("tags: [safety]", "tags: [safety]\n    weight: 2"),
        ("content: Hello}", "content: Hey}"),
        ("  - id: first", "  - id: first-one"),
    ],
)
def test_changing_one_word_changes_the_hash(tmp_path: Path, old: str, new: str) -> None:
    assert old in VALID
    base = load_text(tmp_path, VALID, "a.yaml")
    changed = load_text(tmp_path, VALID.replace(old, new, 1), "b.yaml")
    assert changed.content_hash != base.content_hash
    assert changed.identity != base.identity


def test_principle_order_is_part_of_the_content() -> None:
    data = yaml.safe_load(VALID)
    swapped = yaml.safe_load(VALID)
    swapped["principles"].reverse()
    assert load_constitution_data(data).content_hash != load_constitution_data(swapped).content_hash


def test_version_and_changelog_change_identity_but_not_content_hash(tmp_path: Path) -> None:
    base = load_text(tmp_path, VALID, "a.yaml")
    bumped_text = VALID.replace("version: 1.0.0\n", "version: 1.1.0\n", 1).replace(
        "changelog:\n", "changelog:\n  - {version: 1.1.0, message: Bump.}\n"
    )
    bumped = load_text(tmp_path, bumped_text, "b.yaml")
    assert bumped.version == "1.1.0"
    assert len(bumped.changelog) == 2
    assert bumped.content_hash == base.content_hash
    assert bumped.identity != base.identity
    assert bumped.identity.startswith("demo@1.1.0+sha256:")


def test_principle_hash_covers_only_the_generated_text() -> None:
    p = Principle("a", "Point out harm.", "Rewrite it.", "Which response is safer?", ("x",), 1.0)
    assert re.fullmatch(r"[0-9a-f]{12}", p.content_hash)
    expected = hashlib.sha256(
        json.dumps(
            {"critique": p.critique, "revision": p.revision, "comparison": p.comparison},
            sort_keys=True,
            separators=(",", ":"),
        ).encode()
    ).hexdigest()[:12]
    assert p.content_hash == expected
    assert Principle("b", p.critique, p.revision, p.comparison, ("y", "z"), 5.0).content_hash == p.content_hash
    assert Principle("a", "Point out danger.", p.revision, p.comparison).content_hash != p.content_hash
    assert Principle("a", p.critique, "Rewrite it now.", p.comparison).content_hash != p.content_hash
    assert Principle("a", p.critique, p.revision, None).content_hash != p.content_hash


# ---------------------------------------------------------------------------------------------------
# Sampling


def weighted(weights: dict[str, float]) -> Constitution:
    return load_constitution_data(
        {
            "name": "w",
            "version": "0.1.0",
            "principles": [
                {"id": pid, "critique": f"Point out {pid}.", "revision": f"Fix {pid}.", "weight": w}
                for pid, w in weights.items()
            ],
        }
    )


def test_sampling_is_deterministic_for_a_seeded_rng() -> None:
    c = weighted({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    first = [c.sample_principle(random.Random(7)).id for _ in range(3)]
    assert len(set(first)) == 1, "a fresh rng with the same seed must give the same draw"
    rng1, rng2 = random.Random(123), random.Random(123)
    run1 = [c.sample_principle(rng1).id for _ in range(200)]
    run2 = [c.sample_principle(rng2).id for _ in range(200)]
    assert run1 == run2
    assert set(run1) == {"a", "b", "c", "d"}, "equal weights must reach every principle"


def test_different_seeds_give_different_sequences() -> None:
    c = weighted({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0})
    rng1, rng2 = random.Random(1), random.Random(2)
    assert [c.sample_principle(rng1).id for _ in range(50)] != [c.sample_principle(rng2).id for _ in range(50)]


def test_sampling_respects_weights() -> None:
    c = weighted({"common": 3.0, "usual": 1.0, "rare": 0.001})
    rng = random.Random(0)
    counts = Counter(c.sample_principle(rng).id for _ in range(20_000))
    assert counts["rare"] < 40  # expected about 5
    assert 2.7 < counts["common"] / counts["usual"] < 3.3  # expected 3


# ---------------------------------------------------------------------------------------------------
# Validation errors: file, line and field path


def marked_line(text: str) -> int:
    """Line of the ``# <-`` marker: the line the error must point to."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if "# <-" in line)


def case(old: str, new: str, field: str, fragment: str):
    assert old in VALID, old
    return pytest.param(VALID.replace(old, new, 1), field, fragment, id=field + ":" + fragment[:30])


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        case("name: demo\n", "", "name", "missing required key 'name'"),
        case("version: 1.0.0\n", "", "version", "missing required key 'version'"),
        case("name: demo\n", "name: demo\nauthors: [me]  # <-\n", "authors", "unknown key 'authors'"),
        case("name: demo\n", "name: demo\nprinciple: []  # <-\n", "principle", "did you mean 'principles'"),
        case("name: demo\n", "name: 'my demo!'  # <-\n", "name", "not a valid name"),
        case("name: demo\n", "name: ''  # <-\n", "name", "must be a non-empty string"),
        case("version: 1.0.0", 'version: "1.0"  # <-', "version", "'1.0' is not a semantic version"),
        case("version: 1.0.0", "version: 1.0  # <-", "version", "quote it"),
        case("version: 1.0.0", "version: v1.0.0  # <-", "version", "not a semantic version"),
        case(DESCRIPTION, "description: [a, b]  # <-\n", "description", "must be a string"),
        case(PRINCIPLES, "principles: {}  # <-\n", "principles", "must be a list"),
        case(
            "  - id: second\n",
            "  - id: second\n    critque: typo  # <-\n",
            "principles[1].critque",
            "'critique'",
        ),
        case(
            SECOND,
            "  - id: second  # <-\n    critique: Point out lies.\n",
            "principles[1].revision",
            "missing required key 'revision'",
        ),
        case(SECOND, "  - Dangerous_Help  # <-\n", "principles[1]", "must be a mapping"),
        case(
            "  - id: second",
            "  - id: Dangerous_Help  # <-",
            "principles[1].id",
            "lowercase letters and digits",
        ),
        case("  - id: second", "  - id: second--two  # <-", "principles[1].id", "lowercase letters and digits"),
        case("  - id: second", "  - id: 42  # <-", "principles[1].id", "a number (42)"),
        case("critique: Point out lies.", 'critique: ""  # <-', "principles[1].critique", "non-empty string"),
        case("critique: Point out lies.", "critique: '   '  # <-", "principles[1].critique", "non-empty string"),
        case("critique: Point out lies.", "critique: [a, b]  # <-", "principles[1].critique", "got a list"),
        case("revision: Rewrite it safely.", "revision: 3  # <-", "principles[0].revision", "non-empty string"),
        case(COMPARISON, "    comparison:  # <-\n", "principles[0].comparison", "got nothing"),
        case("tags: [safety]", "tags: safety  # <-", "principles[0].tags", "must be a list"),
        case("tags: [safety]", "tags: [safety, '']  # <-", "principles[0].tags[1]", "non-empty string"),
        case("tags: [safety]", "tags: [safety]\n    weight: 0  # <-", "principles[0].weight", "> 0"),
        case("tags: [safety]", "tags: [safety]\n    weight: -1.5  # <-", "principles[0].weight", "> 0"),
        case("tags: [safety]", "tags: [safety]\n    weight: .nan  # <-", "principles[0].weight", "finite"),
        case("tags: [safety]", "tags: [safety]\n    weight: heavy  # <-", "principles[0].weight", "a number"),
        case("tags: [safety]", "tags: [safety]\n    weight: true  # <-", "principles[0].weight", "a number"),
        case(
            "    critique: Point out lies.\n",
            "    critique: Point out lies.\n    critique: Again.  # <-\n",
            "principles[1].critique",
            "duplicate key 'critique' (first on line 11)",
        ),
        case(FEW_SHOT, "few_shot: hello  # <-\n", "few_shot", "must be a list"),
        case(
            "  - messages:\n      - {role: user, content: Hi}\n      - {role: assistant, content: Hello}\n",
            "  - - {role: user, content: Hi}  # <-\n",
            "few_shot[0]",
            "must be a mapping with keys messages",
        ),
        case(
            "  - messages:\n      - {role: user, content: Hi}\n      - {role: assistant, content: Hello}\n",
            "  - messages: Hi  # <-\n",
            "few_shot[0].messages",
            "must be a list",
        ),
        case(
            "  - messages:\n      - {role: user, content: Hi}\n      - {role: assistant, content: Hello}\n",
            "  - messages: []  # <-\n",
            "few_shot[0].messages",
            "at least one message",
        ),
        case(
            "{role: user, content: Hi}",
            "{role: robot, content: Hi}  # <-",
            "few_shot[0].messages[0].role",
            "robot",
        ),
        case("{role: user, content: Hi}", "{role: user}  # <-", "few_shot[0].messages[0].content", "missing"),
        case(
            "{role: user, content: Hi}",
            "{role: user, content: ''}  # <-",
            "few_shot[0].messages[0].content",
            "empty",
        ),
        case(
            "{role: user, content: Hi}",
            "{role: user, text: Hi}  # <-",
            "few_shot[0].messages[0].text",
            "unknown",
        ),
        case(
            "{role: assistant, content: Hello}",
            "{role: assistant, content: Hello, extra: 1}  # <-",
            "few_shot[0].messages[1].extra",
            "valid keys are: role, content",
        ),
        case(CHANGELOG_ENTRY, "  - {version: one, message: x}  # <-\n", "changelog[0].version", "semantic"),
        case("message: First.}", "message: ''}  # <-", "changelog[0].message", "non-empty string"),
        case("changelog:\n", "changelog:\n  - 1.0.0  # <-\n", "changelog[0]", "must be a mapping"),
    ],
)
def test_validation_error_names_file_line_and_field(tmp_path: Path, text: str, field: str, fragment: str) -> None:
    path = write(tmp_path, text)
    line = marked_line(text) if "# <-" in text else 1
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    err = info.value
    assert str(err).startswith(f"{path}:{line}: {field}: "), str(err)
    assert fragment in str(err)
    assert (err.source, err.line, err.field) == (str(path), line, field)
    assert isinstance(err, ValueError)


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = write(tmp_path, VALID.replace("    tags: [safety]", "    tag: [safety]"))
    with pytest.raises(ConstitutionError, match=r"bad\.yaml:9: principles\[0\]\.tag: unknown key 'tag'") as info:
        load_constitution(path)
    assert "valid keys are: id, critique, revision, comparison, tags, weight" in str(info.value)


def test_duplicate_principle_id_names_both_lines(tmp_path: Path) -> None:
    text = VALID.replace("  - id: second", "  - id: first")
    with pytest.raises(ConstitutionError) as info:
        load_constitution(write(tmp_path, text))
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'bad.yaml'}:10: principles[1].id: duplicate principle id 'first'")
    assert "principles[0] on line 5" in message


def test_empty_principles(tmp_path: Path) -> None:
    text = VALID.split("principles:")[0] + "principles: []\n"
    with pytest.raises(ConstitutionError) as info:
        load_constitution(write(tmp_path, text))
    assert str(info.value) == f"{tmp_path / 'bad.yaml'}:4: principles: a constitution needs at least one principle"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("name: demo\nversion: 1.0.0\nprinciples:\n  - id: x\n    critique: a: b\n", 5, "not allowed here"),
        ("name: demo\nversion: 1.0.0\nprinciples:\n\t- id: x\n", 4, "found character '\\t'"),
        ("name: demo\nversion: 1.0.0\nprinciples: [a, b\nfew_shot: []\n", 4, "flow sequence on line 3"),
        ("name: demo\ndescription: 'oops\nversion: 1.0.0\n", 4, "quoted scalar on line 2"),
        ("name: demo\nname: again\nversion: 1.0.0\n", 2, "duplicate key 'name' (first on line 1)"),
    ],
)
def test_bad_yaml_gives_its_line(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    assert str(info.value).startswith(f"{path}:{line}: "), str(info.value)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "the top level must be a mapping"),
        ("# only a comment\n", "got nothing"),
        ("- name: demo\n", "got a list"),
        ("just words\n", "got the string 'just words'"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConstitutionError) as info:
        load_constitution(path)
    assert str(info.value).startswith(str(path))
    assert "must be a mapping" in str(info.value)
    assert fragment in str(info.value)


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    text = VALID.replace("name: demo", "name: !!python/object/apply:os.getcwd []")
    with pytest.raises(ConstitutionError, match=r"bad\.yaml:1: invalid YAML: could not determine a constructor"):
        load_constitution(write(tmp_path, text))


def test_missing_file_and_wrong_suffix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConstitutionError) as info:
        load_constitution(missing)
    assert str(info.value) == f"{missing}: file not found"
    with pytest.raises(ConstitutionError, match=r"c\.txt: unsupported file type '\.txt'"):
        load_constitution(write(tmp_path, VALID, "c.txt"))


def test_json_errors(tmp_path: Path) -> None:
    data = yaml.safe_load(VALID)
    with pytest.raises(ConstitutionError, match=r"c\.json:4: invalid JSON: Expecting value"):
        load_constitution(write(tmp_path, '{\n  "name": "demo",\n  "version": \n}', "c.json"))
    with pytest.raises(ConstitutionError, match=r"c\.json: duplicate key 'name'"):
        load_constitution(write(tmp_path, '{"name": "a", "name": "b"}', "c.json"))
    data["principles"][1]["weight"] = 0
    text = json.dumps(data, indent=2)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if '"weight": 0' in t)
    with pytest.raises(ConstitutionError) as info:
        load_constitution(write(tmp_path, text, "c.json"))
    assert str(info.value).startswith(f"{tmp_path / 'c.json'}:{line}: principles[1].weight: ")


def test_data_errors_have_field_paths_without_lines() -> None:
    data = yaml.safe_load(VALID)
    data["principles"][0]["weight"] = -1
    with pytest.raises(ConstitutionError) as info:
        load_constitution_data(data)
    assert str(info.value) == "<data>: principles[0].weight: must be a finite number > 0; got -1"
    assert info.value.line is None
    with pytest.raises(ConstitutionError, match=r"^cfg: the top level must be a mapping"):
        load_constitution_data(["not", "a", "mapping"], source="cfg")  # type: ignore[arg-type]


def test_error_survives_pickling() -> None:
    """Errors cross process boundaries under accelerate; the message must survive intact."""
    err = ConstitutionError("bad", source="f.yaml", line=3, field="name")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "f.yaml:3: name: bad"
