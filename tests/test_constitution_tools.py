from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from align.constitution import ConstitutionError, load_constitution, load_constitution_data
from align.constitution.diff import diff_constitutions, word_diff
from align.constitution.edit import bump_file, dump_constitution
from align.constitution.layouts import export_llm_swarm, import_anthropic, import_llm_swarm
from align.constitution.lint import lint
from align.constitution.render import render_markdown, render_text
from align.constitution.sources import check_file, load_at_revision, read_source, split_source
from align.constitution.versions import bump_version, version_change

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "constitutions"
SHIPPED = sorted((ROOT / "constitutions").glob("*.yaml"))

BASE: dict[str, Any] = {
    "name": "demo",
    "version": "1.0.0",
    "description": "For tests.",
    "principles": [
        {"id": "first", "critique": "Point out harm.", "revision": "Rewrite it safely.", "comparison": "Safer?"},
        {"id": "second", "critique": "Point out lies.", "revision": "Rewrite it honestly.", "tags": ["honest"]},
    ],
    "few_shot": [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}],
    "changelog": [{"version": "1.0.0", "message": "First."}],
}


def build(**changes: Any) -> Any:
    data = copy.deepcopy(BASE)
    data.update(changes)
    return load_constitution_data(data)


def with_principles(edit) -> Any:
    data = copy.deepcopy(BASE)
    edit(data["principles"])
    return load_constitution_data(data)


# ---------------------------------------------------------------------------------------------------
# Lint


def test_lint_reports_each_problem_with_its_line_and_field() -> None:
    c = load_constitution(FIXTURES / "lint-problems.yaml")
    found = {(w.code, w.field, w.line) for w in lint(c)}
    assert found == {
        ("near-duplicate", "principles[2]", 12),
        ("few-shot-shape", "few_shot[0].messages[2]", 22),
        ("few-shot-shape", "few_shot[1].messages[0]", 25),
        ("changelog", "changelog", 27),
    }
    near = next(w for w in lint(c) if w.code == "near-duplicate")
    assert "'honesty-again'" in near.message and "'honesty'" in near.message and "line 5" in near.message
    assert str(near).startswith(f"{FIXTURES / 'lint-problems.yaml'}:12: principles[2]: principle 'honesty-again'")


def test_missing_comparison_is_only_a_warning_for_rl_cai() -> None:
    c = load_constitution(FIXTURES / "lint-problems.yaml")
    assert not [w for w in lint(c) if w.code == "missing-comparison"]
    missing = [w for w in lint(c, rl_cai=True) if w.code == "missing-comparison"]
    assert [(w.field, w.line) for w in missing] == [("principles[1]", 9)]
    assert "'no-comparison'" in missing[0].message


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_constitutions_are_lint_clean(path: Path) -> None:
    assert lint(load_constitution(path), rl_cai=True) == []


@pytest.mark.parametrize(
    ("roles", "index", "fragment"),
    [
        (["user", "assistant"], None, None),
        (["system", "user", "assistant", "user", "assistant"], None, None),
        (["assistant", "user"], 0, "must start with a user turn"),
        (["system", "assistant"], 1, "must start with a user turn"),
        (["user", "user", "assistant"], 1, "two user turns in a row"),
        (["user", "assistant", "user"], 2, "ends with a user turn"),
        (["user", "system", "assistant"], 1, "system message may only come first"),
        (["system"], 0, "only a system message"),
    ],
)
def test_few_shot_conversation_shape(roles: list[str], index: int | None, fragment: str | None) -> None:
    c = build(few_shot=[{"messages": [{"role": r, "content": f"turn {i}"} for i, r in enumerate(roles)]}])
    found = [w for w in lint(c) if w.code == "few-shot-shape"]
    if index is None:
        assert found == []
    else:
        assert [w.field for w in found] == [f"few_shot[0].messages[{index}]"]
        assert fragment in found[0].message
        assert found[0].line is None, "data without a file has no lines"


def test_near_duplicates_need_very_similar_text() -> None:
    def near(critique: str) -> Any:
        return with_principles(
            lambda ps: ps.append({"id": "third", "critique": critique, "revision": "Rewrite it safely."})
        )

    assert [w.field for w in lint(near("Point out harm!")) if w.code == "near-duplicate"] == ["principles[2]"]
    assert not [w for w in lint(near("Point out anything rude or unkind.")) if w.code == "near-duplicate"]


# ---------------------------------------------------------------------------------------------------
# Versions


@pytest.mark.parametrize(
    ("version", "level", "expected"),
    [
        ("1.2.3", "patch", "1.2.4"),
        ("1.2.3", "minor", "1.3.0"),
        ("1.2.3", "major", "2.0.0"),
        ("1.2.3-rc.1+build.5", "patch", "1.2.4"),
        ("0.9.9", "none", "0.9.9"),
    ],
)
def test_bump_version(version: str, level: str, expected: str) -> None:
    assert bump_version(version, level) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("1.0.0", "1.0.0", "none"),
        ("1.0.0", "1.0.1", "patch"),
        ("1.0.9", "1.1.0", "minor"),
        ("1.4.2", "2.0.0", "major"),
        ("1.1.0", "1.0.5", "downgrade"),
        ("1.1.0-rc.1", "1.1.0-rc.2", "none"),
    ],
)
def test_version_change(old: str, new: str, expected: str) -> None:
    assert version_change(old, new) == expected


# ---------------------------------------------------------------------------------------------------
# Semantic diff


def test_word_diff_marks_changed_words_only() -> None:
    ops = word_diff("helps someone hurt a person.", "helps someone injure or threaten a person.")
    assert ops == (
        ("equal", "helps someone"),
        ("delete", "hurt"),
        ("insert", "injure or threaten"),
        ("equal", "a person."),
    )
    assert word_diff(None, "Which is safer?") == (("insert", "Which is safer?"),)


def test_diff_of_fixture_versions() -> None:
    v1 = load_constitution(FIXTURES / "harmless-v1.yaml")
    v2 = load_constitution(FIXTURES / "harmless-v2.yaml")
    d = diff_constitutions(v1, v2)
    assert [p.id for p in d.added] == ["kindness"]
    assert [p.id for p in d.removed] == ["privacy"]
    assert {ch.id: [f.field for f in ch.fields] for ch in d.changed} == {"violence": ["critique"], "theft": ["tags"]}
    assert [ch.id for ch in d.changed if ch.reworded] == ["violence"]
    assert not d.reordered
    assert d.metadata == ()
    assert d.changelog_added == (
        {"version": "1.1.0", "message": "Reword violence, retag theft, replace privacy with kindness."},
    )
    assert d.required_bump == "major"
    assert d.actual_bump == "minor"
    assert not d.sufficient
    assert d.suggested_version == "2.0.0"
    assert [level for level, _ in d.reasons] == ["major", "minor", "patch", "patch"]


def test_diff_of_reformatted_content_needs_no_bump(tmp_path: Path) -> None:
    a = load_constitution(FIXTURES / "harmless-v1.yaml")
    (tmp_path / "same.json").write_text(json.dumps(a.to_dict(), indent=1))
    d = diff_constitutions(a, load_constitution(tmp_path / "same.json"))
    assert not d.content_changed and not d.has_changes
    assert (d.added, d.removed, d.changed, d.metadata) == ((), (), (), ())
    assert (d.required_bump, d.actual_bump, d.sufficient) == ("none", "none", True)


def _reword(ps: list) -> None:
    ps[0]["critique"] = "Point out danger."


def _add(ps: list) -> None:
    ps.append({"id": "third", "critique": "Point out rudeness.", "revision": "Rewrite it kindly."})


def _rename(ps: list) -> None:
    ps[1]["id"] = "second-renamed"


def _retag(ps: list) -> None:
    ps[1]["tags"] = ["honest", "truth"]


def _reweight(ps: list) -> None:
    ps[0]["weight"] = 2


def _add_comparison(ps: list) -> None:
    ps[1]["comparison"] = "More honest?"


@pytest.mark.parametrize(
    ("new", "level"),
    [
        (lambda: with_principles(_reword), "patch"),
        (lambda: with_principles(_add_comparison), "patch"),
        (lambda: with_principles(_retag), "patch"),
        (lambda: with_principles(_reweight), "patch"),
        (lambda: with_principles(list.reverse), "patch"),
        (lambda: with_principles(_add), "minor"),
        (lambda: with_principles(lambda ps: ps.pop()), "major"),
        (lambda: with_principles(_rename), "major"),
        (lambda: build(name="demo-two"), "major"),
        (lambda: build(description="Changed."), "patch"),
        (lambda: build(few_shot=[]), "patch"),
        (
            lambda: build(
                few_shot=[{"messages": [{"role": "user", "content": "Hey"}, {"role": "assistant", "content": "Hello"}]}]
            ),
            "patch",
        ),
        (lambda: build(version="3.0.0", changelog=[{"version": "3.0.0", "message": "Only the version."}]), "none"),
    ],
    ids=[
        "reword",
        "add-comparison",
        "retag",
        "reweight",
        "reorder",
        "add",
        "remove",
        "rename-id",
        "rename",
        "description",
        "drop-few-shot",
        "few-shot-word",
        "version-only",
    ],
)
def test_bump_level_per_kind_of_change(new, level: str) -> None:
    d = diff_constitutions(build(), new())
    assert d.required_bump == level, d.reasons
    assert d.content_changed == (level != "none")


def test_version_bump_sufficiency() -> None:
    old = build()
    added = copy.deepcopy(BASE)
    _add(added["principles"])
    for version, ok in [("1.0.0", False), ("1.0.1", False), ("1.1.0", True), ("2.0.0", True)]:
        d = diff_constitutions(old, load_constitution_data({**added, "version": version}))
        assert d.sufficient is ok, version
    # A version that goes down is never sufficient, even without a content change.
    assert not diff_constitutions(build(version="1.2.0"), build()).sufficient


def test_few_shot_changes_are_listed_by_message() -> None:
    new = build(
        few_shot=[
            {"messages": [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello"}]},
            BASE["few_shot"][0],
        ]
    )
    d = diff_constitutions(build(), new)
    assert [f.field for f in d.metadata] == ["few_shot[0].messages[0].content", "few_shot[1]"]
    assert d.metadata[0].words == (("equal", "Hi"), ("insert", "there"))


def test_plain_text_rendering_uses_word_diff_markers() -> None:
    d = diff_constitutions(
        load_constitution(FIXTURES / "harmless-v1.yaml"), load_constitution(FIXTURES / "harmless-v2.yaml")
    )
    text = render_text(d)
    assert "\033[" not in text
    assert (
        "critique: Point out any way the last response helps someone [-hurt-]{+injure or threaten+} a person." in text
    )
    assert "removed principle privacy" in text
    assert "added principle kindness" in text
    assert "tags: [safety, crime] -> [safety, property]" in text
    assert "version: 1.0.0 -> 1.1.0 (minor bump)" in text
    assert "needed:  major bump, to at least 2.0.0 (removed principle 'privacy')" in text
    assert "NOT SUFFICIENT" in text


def test_colour_rendering_paints_deleted_red_and_inserted_green() -> None:
    d = diff_constitutions(
        load_constitution(FIXTURES / "harmless-v1.yaml"), load_constitution(FIXTURES / "harmless-v2.yaml")
    )
    text = render_text(d, color=True)
    assert "\033[31mhurt\033[0m\033[32minjure or threaten\033[0m" in text
    assert "[-" not in text and "{+" not in text


def test_json_form_has_stable_keys() -> None:
    d = diff_constitutions(
        load_constitution(FIXTURES / "harmless-v1.yaml"), load_constitution(FIXTURES / "harmless-v2.yaml")
    )
    data = json.loads(json.dumps(d.to_dict()))
    assert set(data) == {"old", "new", "content_changed", "principles", "metadata", "changelog_added", "bump"}
    assert set(data["principles"]) == {"added", "removed", "changed", "reordered"}
    assert data["bump"] == {
        "required": "major",
        "reasons": [
            {"level": "major", "reason": "removed principle 'privacy'"},
            {"level": "minor", "reason": "added principle 'kindness'"},
            {"level": "patch", "reason": "reworded 'violence' (critique)"},
            {"level": "patch", "reason": "changed 'theft' (tags)"},
        ],
        "actual": "minor",
        "sufficient": False,
        "suggested_version": "2.0.0",
    }
    violence = data["principles"]["changed"][0]
    assert violence["id"] == "violence" and violence["reworded"] is True
    assert {"op": "delete", "text": "hurt"} in violence["fields"][0]["words"]
    assert data["old"]["identity"].startswith("harmless-demo@1.0.0+sha256:")


def test_markdown_form() -> None:
    d = diff_constitutions(
        load_constitution(FIXTURES / "harmless-v1.yaml"), load_constitution(FIXTURES / "harmless-v2.yaml")
    )
    md = render_markdown(d)
    assert md.startswith("### Constitution `harmless-demo`: 1.0.0 → 1.1.0\n")
    assert "helps someone ~~hurt~~ **injure or threaten** a person." in md
    assert "#### Removed principles\n\n- `privacy`" in md
    assert "#### Added principles\n\n- `kindness` (tone)" in md
    assert "**not sufficient**" in md
    assert "- major: removed principle 'privacy'" in md


def test_markdown_escapes_text() -> None:
    new = with_principles(lambda ps: ps[0].update(critique="Point out *any* harm_here."))
    md = render_markdown(diff_constitutions(build(), new))
    assert r"\*any\*" in md and r"harm\_here." in md


# ---------------------------------------------------------------------------------------------------
# Sources


def test_split_source(tmp_path: Path) -> None:
    assert split_source("a.yaml@HEAD") == ("a.yaml", "HEAD")
    assert split_source("dir/a.json@v1.0.0") == ("dir/a.json", "v1.0.0")
    assert split_source("a.yaml@main@{1}") == ("a.yaml", "main@{1}")
    assert split_source("odd@name.yaml@HEAD~2") == ("odd@name.yaml", "HEAD~2")
    assert split_source("no-suffix@HEAD") == ("no-suffix@HEAD", None)
    real = tmp_path / "team@v2.yaml"
    shutil.copy(FIXTURES / "harmless-v1.yaml", real)
    assert split_source(str(real)) == (str(real), None), "an existing file is never split"
    assert read_source(str(real)).name == "harmless-demo"


def git(repo: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository with sub/harmless.yaml (= harmless-v1) committed."""
    root = tmp_path / "repo"
    (root / "sub").mkdir(parents=True)
    git(root, "init", "-q")
    shutil.copy(FIXTURES / "harmless-v1.yaml", root / "sub" / "harmless.yaml")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "v1")
    return root


def test_reading_a_git_revision_relative_to_cwd(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1 = load_constitution(FIXTURES / "harmless-v1.yaml")
    (repo / "sub" / "harmless.yaml").write_text((FIXTURES / "harmless-v2.yaml").read_text())
    monkeypatch.chdir(repo / "sub")
    at_head = read_source("harmless.yaml@HEAD")
    assert at_head == v1
    assert at_head.source == "harmless.yaml@HEAD"
    assert at_head.lines[("version",)] == 4, "line numbers survive reading from git"
    assert read_source("harmless.yaml").version == "1.1.0"
    monkeypatch.chdir(repo)
    assert read_source("sub/harmless.yaml@HEAD") == v1
    assert read_source(str(repo / "sub" / "harmless.yaml") + "@HEAD") == v1


def test_git_errors_are_clear(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    with pytest.raises(ConstitutionError, match=r"^sub/harmless\.yaml@nope: unknown git revision 'nope'$"):
        read_source("sub/harmless.yaml@nope")
    with pytest.raises(ConstitutionError, match=r"^sub/other\.yaml@HEAD: does not exist at revision 'HEAD'$"):
        read_source("sub/other.yaml@HEAD")
    assert load_at_revision("sub/other.yaml", "HEAD") is None
    outside = tmp_path / "outside"
    outside.mkdir()
    with pytest.raises(ConstitutionError, match="is not inside a git repository"):
        read_source(str(outside / "c.yaml") + "@HEAD")


def test_a_bad_file_at_a_revision_names_the_revision(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    (repo / "sub" / "harmless.yaml").write_text("name: x\nversion: 1\nprinciples: []\n")
    git(repo, "commit", "-qam", "broken")
    with pytest.raises(ConstitutionError, match=r"^sub/harmless\.yaml@HEAD:2: version: must be a semantic version"):
        read_source("sub/harmless.yaml@HEAD")


def test_check_fails_on_an_unbumped_change_and_passes_after_a_bump(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    path = "sub/harmless.yaml"
    assert check_file(path).ok
    v2 = (FIXTURES / "harmless-v2.yaml").read_text()
    # v2's content, but the version and changelog left as they were in v1.
    unbumped = v2.replace("version: 1.1.0\n", "version: 1.0.0\n", 1)
    unbumped = unbumped[: unbumped.index("  - version: 1.1.0")]
    Path(path).write_text(unbumped)
    result = check_file(path)
    assert not result.ok
    assert "needs a major bump to 2.0.0 or later" in result.message
    assert "removed principle 'privacy'" in result.message
    assert f"align constitution bump {path} --major" in result.message

    bump_file(path, "minor", "Not enough for a removal.")
    assert not check_file(path).ok
    git(repo, "checkout", "-q", "--", path)
    Path(path).write_text(unbumped)
    bump_file(path, "major", "Replace privacy with kindness.")
    result = check_file(path)
    assert result.ok, result.message
    assert "version 1.0.0 -> 2.0.0" in result.message


def test_check_accepts_new_files_and_unchanged_content(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo)
    shutil.copy(FIXTURES / "harmless-v2.yaml", repo / "sub" / "new.yaml")
    assert check_file("sub/new.yaml").ok
    assert "new since HEAD" in check_file("sub/new.yaml").message
    bump_file("sub/harmless.yaml", "patch", "Only the version moves.")
    result = check_file("sub/harmless.yaml")
    assert result.ok and "content unchanged since HEAD; version 1.0.0 -> 1.0.1" in result.message


# ---------------------------------------------------------------------------------------------------
# bump


def test_bump_keeps_comments_and_layout(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    before = (FIXTURES / "harmless-v1.yaml").read_text()
    path.write_text(before)
    old, new = bump_file(path, "minor", "Add a kinder tone.")
    after = path.read_text()
    assert (old.version, new.version) == ("1.0.0", "1.1.0")
    assert new.content_hash == old.content_hash
    assert new.changelog[-1] == {"version": "1.1.0", "message": "Add a kinder tone."}
    again = load_constitution(path)
    assert again == new
    # Only the version line changes; two lines are added at the end of the changelog, nothing else.
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert removed == ["version: 1.0.0"]
    assert added == ["version: 1.1.0", "  - version: 1.1.0", '    message: "Add a kinder tone."']
    assert after.startswith(before.split("version:")[0]), "leading comments are untouched"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # flow-style entries stay flow style
        (
            "name: d\nversion: '1.0.0'  # keep me\nprinciples:\n- {id: a, critique: C., revision: R.}\n"
            "changelog:\n- {version: 1.0.0, message: First.}\n# trailing comment\n",
            '- {version: 1.0.1, message: "Next."}\n# trailing comment\n',
        ),
        # a flow list
        (
            "name: d\nversion: 1.0.0\nprinciples: [{id: a, critique: C., revision: R.}]\nchangelog: []\n",
            'changelog: [{version: 1.0.1, message: "Next."}]\n',
        ),
        # no changelog yet
        (
            "name: d\nversion: 1.0.0\nprinciples:\n    - id: a\n      critique: C.\n      revision: R.\n",
            '\nchangelog:\n    - version: 1.0.1\n      message: "Next."\n',
        ),
        # a block scalar message, followed by a blank line and a comment
        (
            "name: d\nversion: 1.0.0\nprinciples:\n  - {id: a, critique: C., revision: R.}\nchangelog:\n"
            "  - version: 1.0.0\n    message: |\n      First.\n\n# about the changelog\n",
            '      First.\n  - version: 1.0.1\n    message: "Next."\n\n# about the changelog\n',
        ),
    ],
    ids=["flow-items", "flow-list", "no-changelog", "block-scalar"],
)
def test_bump_handles_changelog_layouts(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _, new = bump_file(path, "patch", "Next.")
    after = path.read_text()
    assert fragment in after, after
    assert new.version == "1.0.1" and new.changelog[-1] == {"version": "1.0.1", "message": "Next."}
    assert load_constitution(path) == new
    if "keep me" in text:
        assert "version: '1.0.1'  # keep me\n" in after


def test_bump_json_rewrites_the_data(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(BASE, indent=4) + "\n")
    _, new = bump_file(path, "major", "Big change.")
    data = json.loads(path.read_text())
    assert data["version"] == "2.0.0"
    assert data["changelog"][-1] == {"version": "2.0.0", "message": "Big change."}
    assert path.read_text().startswith('{\n    "name": "demo"')
    assert load_constitution(path) == new


def test_bump_refuses_what_it_cannot_do_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    flow = "{name: d, version: 1.0.0, principles: [{id: a, critique: C., revision: R.}]}\n"
    path.write_text(flow)
    with pytest.raises(ConstitutionError, match="nothing was written"):
        bump_file(path, "patch", "Next.")
    assert path.read_text() == flow
    assert [p.name for p in tmp_path.iterdir()] == ["c.yaml"], "no temporary file is left behind"
    shutil.copy(FIXTURES / "harmless-v1.yaml", path)
    with pytest.raises(ConstitutionError, match="message must not be empty"):
        bump_file(path, "patch", "  ")
    text = path.read_text().replace('message: "First', 'message: "Patch"\n  - version: 1.0.1\n    message: "First')
    path.write_text(text)
    with pytest.raises(ConstitutionError, match="already has an entry for 1.0.1"):
        bump_file(path, "patch", "Again.")


# ---------------------------------------------------------------------------------------------------
# Foreign layouts


def test_import_llm_swarm() -> None:
    imported = import_llm_swarm(FIXTURES / "llm-swarm.json", name="swarm")
    c = imported.constitution
    assert (c.name, c.version) == ("swarm", "1.0.0")
    assert [p.id for p in c.principles] == ["principle-1", "principle-2"]
    assert c.principles[1].critique == "Find any advice in the reply above that could get someone arrested."
    assert c.principles[1].revision == "Write the reply again so it steers the person away from breaking the law."
    assert all(p.comparison is None for p in c.principles)
    assert len(c.few_shot) == 1
    assert [m["role"] for m in c.few_shot[0]] == ["user", "assistant"] * 3
    assert lint(c) == []


@pytest.mark.parametrize(
    "system_chat",
    [
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
        [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}],
        [[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], []],
    ],
    ids=["flat", "wrapped", "nested-with-empty"],
)
def test_import_llm_swarm_few_shot_shapes(tmp_path: Path, system_chat: list) -> None:
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"constitutions": [{"critic": "C.", "revision": "R."}], "system_chat": system_chat}))
    c = import_llm_swarm(path, name="s").constitution
    assert c.few_shot == (({"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}),)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            '{"constitutions": [\n  {"critic": "C.", "revision": "R."},\n  {"revision": "R."}  <-\n]}',
            "constitutions[1].critic: missing required key 'critic'",
        ),
        (
            '{"constitutions": [\n  {"critic": "",  <-\n   "revision": "R."}]}',
            "constitutions[0].critic: must be a non-empty",
        ),
        ('{"system_chat": []}  <-', "constitutions: missing required key"),
        ('{"constitutions": {"critic": "C."}}  <-', "constitutions: must be a list"),
        (
            '{"constitutions": [{"critic": "C.", "revision": "R."}],\n'
            ' "system_chat": [[\n   {"role": "user", "content": "x"},\n   {"role": "bot", "content": "x"}  <-\n]]}',
            "system_chat[0][1].role: must be one of system, user, assistant",
        ),
    ],
)
def test_import_llm_swarm_errors_point_into_the_foreign_file(tmp_path: Path, text: str, where: str) -> None:
    """The marked line (``<-``, removed before writing) is where the error must point."""
    line = next(i for i, t in enumerate(text.splitlines(), 1) if t.endswith("<-"))
    path = tmp_path / "s.json"
    path.write_text(text.replace("  <-", ""))
    with pytest.raises(ConstitutionError) as info:
        import_llm_swarm(path, name="s")
    assert str(info.value).startswith(f"{path}:{line}: {where}"), str(info.value)


def test_llm_swarm_round_trip_keeps_principles_and_few_shot(tmp_path: Path) -> None:
    original = load_constitution(ROOT / "constitutions" / "harmless.yaml")
    data, notes = export_llm_swarm(original)
    assert set(data) == {"constitutions", "system_chat"}
    assert set(data["constitutions"][0]) == {"critic", "revision"}
    assert any("comparison" in n for n in notes)
    path = tmp_path / "swarm.json"
    path.write_text(json.dumps(data))
    back = import_llm_swarm(path, name="harmless").constitution
    assert [(p.critique, p.revision) for p in back.principles] == [
        (p.critique, p.revision) for p in original.principles
    ]
    assert back.few_shot == original.few_shot


def test_import_anthropic_with_matching_comparisons() -> None:
    imported = import_anthropic(FIXTURES / "anthropic.json", FIXTURES / "anthropic-comparisons.json", name="paper")
    c = imported.constitution
    assert [p.id for p in c.principles] == ["harmful0", "harmful1", "tone-check-2"]
    assert c.principles[1].critique == "Say whether the assistant's last reply was rude, and where."
    assert c.principles[1].revision == "Write a new reply that says the same thing politely."
    assert [p.comparison for p in c.principles] == json.loads((FIXTURES / "anthropic-comparisons.json").read_text())
    assert c.principles[2].critique.startswith("Say whether the assistant's last reply lectured")
    assert "Tone_Check 2: 2 critique phrasings; kept the first" in imported.notes
    assert imported.unpaired_comparisons == ()
    assert lint(c, rl_cai=True) == []


@pytest.mark.parametrize("count", [2, 5])
def test_import_anthropic_with_unequal_comparison_counts(tmp_path: Path, count: int) -> None:
    questions = [f"Which reply is better by rule {i}?" for i in range(count)]
    qpath = tmp_path / "q.json"
    qpath.write_text(json.dumps(questions))
    imported = import_anthropic(FIXTURES / "anthropic.json", qpath, name="paper")
    c = imported.constitution
    assert [p.comparison for p in c.principles] == [*questions, None][:3]
    assert list(imported.unpaired_comparisons) == questions[3:]
    if count == 2:
        assert any("without one: tone-check-2" in n for n in imported.notes)
        assert [w.field for w in lint(c, rl_cai=True) if w.code == "missing-comparison"] == ["principles[2]"]


def test_import_anthropic_ids_are_normalised_and_unique(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    entry = {"prompt": ["C."], "edit_request": "R."}
    path.write_text(json.dumps({"Be Kind": entry, "be-kind": entry, "!!!": {"prompt": "C2.", "edit_request": "R2."}}))
    c = import_anthropic(path, name="a").constitution
    assert [p.id for p in c.principles] == ["be-kind", "be-kind-2", "principle-3"]
    assert c.principles[2].critique == "C2."


def test_dump_constitution_round_trips(tmp_path: Path) -> None:
    c = load_constitution(FIXTURES / "harmless-v2.yaml")
    for suffix in (".yaml", ".json"):
        path = tmp_path / f"out{suffix}"
        path.write_text(dump_constitution(c, suffix, comments=["hello"], trailer=["bye"]))
        assert load_constitution(path) == c
    text = (tmp_path / "out.yaml").read_text()
    assert text.startswith("# hello\n") and text.endswith("# bye\n")
    assert "weight" not in text, "defaults are left out"
    assert re.search(r"^version: 1\.1\.0$", text, re.M)
