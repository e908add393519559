"""Run directory semantics: skip when done, redo on change, --force cascades, no half-written output."""

import json

import pytest

from align.pipeline import Run

ORDER = ["a", "b", "c"]


def run_chain(root, force=(), config_a=None, calls=None):
    """Three stages, each writing a file and depending on the previous stage's output id."""
    calls = [] if calls is None else calls
    run = Run(root, force=set(force), order=ORDER)
    upstream = ""
    for name in ORDER:
        config = config_a if (name == "a" and config_a is not None) else {"x": 1}
        with run.stage(name, config=config, inputs={"up": upstream}) as st:
            if not st.done:
                calls.append(name)
                (st.work_dir / "out.txt").write_text(name)
                st.metrics = {"n": 1}
        upstream = st.output_id
    return calls


def test_second_run_skips_everything(tmp_path):
    assert run_chain(tmp_path) == ORDER
    assert run_chain(tmp_path) == []
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["metrics"] == {"n": 1}
    assert (tmp_path / "b" / "out.txt").read_text() == "b"
    assert not (tmp_path / "b.partial").exists()


def test_force_redoes_stage_and_downstream_only(tmp_path):
    run_chain(tmp_path)
    assert run_chain(tmp_path, force={"b"}) == ["b", "c"]


def test_changed_config_redoes_downstream(tmp_path):
    run_chain(tmp_path)
    assert run_chain(tmp_path, config_a={"x": 2}) == ["a", "b", "c"]


def test_unknown_force_stage_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['z'\]"):
        Run(tmp_path, force={"z"}, order=ORDER)


def test_failed_stage_leaves_nothing_half_written_and_keeps_previous_result(tmp_path):
    run = Run(tmp_path, order=ORDER)
    with pytest.raises(RuntimeError), run.stage("a", config={}, inputs={}) as st:
        (st.work_dir / "half.txt").write_text("partial")
        raise RuntimeError("bad input")
    assert not (tmp_path / "a").exists() and not (tmp_path / "a.partial").exists()
    with run.stage("a", config={}, inputs={}) as st:
        (st.work_dir / "out.txt").write_text("v1")
    # a failing redo (changed inputs) keeps the last finished output in place
    with pytest.raises(RuntimeError), run.stage("a", config={"changed": 1}, inputs={}) as st:
        assert not st.done
        raise RuntimeError("bad input")
    assert (tmp_path / "a" / "out.txt").read_text() == "v1"
    assert not (tmp_path / "a.partial").exists()


def test_failed_stage_keeps_resumable_state_for_the_same_inputs_only(tmp_path):
    run = Run(tmp_path, order=ORDER)
    with pytest.raises(RuntimeError), run.stage("a", config={}, inputs={}) as st:
        assert not st.resumed
        (st.work_dir / "shards").mkdir()
        (st.work_dir / "shards" / "00000.jsonl").write_text("{}\n")
        (st.work_dir / "half.txt").write_text("partial")
        raise RuntimeError("killed")
    # the shard survives, the half-written file does not
    assert (tmp_path / "a.partial" / "shards" / "00000.jsonl").exists()
    assert not (tmp_path / "a.partial" / "half.txt").exists()
    with run.stage("a", config={}, inputs={}) as st:
        assert st.resumed and (st.work_dir / "shards" / "00000.jsonl").exists()
        (st.work_dir / "out.txt").write_text("v1")
    # resume state is not part of the published output
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["manifest.json", "out.txt"]
    with pytest.raises(RuntimeError), run.stage("b", config={}, inputs={}) as st:
        (st.work_dir / "checkpoints").mkdir()
        raise RuntimeError("killed")
    with run.stage("b", config={"changed": 1}, inputs={}) as st:  # other inputs: start from scratch
        assert not st.resumed and not (st.work_dir / "checkpoints").exists()


def test_stage_with_a_broken_output_is_not_published_and_keeps_its_resume_state(tmp_path):
    run = Run(tmp_path, order=ORDER)
    broken = r"a: outputs failed verification.*out.jsonl: line 2 is not JSON"
    with pytest.raises(RuntimeError, match=broken), run.stage("a", config={}, inputs={}) as st:
        (st.work_dir / "shards").mkdir()
        (st.work_dir / "shards" / "00000.jsonl").write_text("{}\n")
        (st.work_dir / "out.jsonl").write_text('{"ok": 1}\n{"half": \n')
    assert not (tmp_path / "a").exists()
    assert sorted(p.name for p in (tmp_path / "a.partial").iterdir()) == [".input_hash", "shards"]


def test_published_stage_whose_files_changed_is_redone_with_downstream(tmp_path):
    assert run_chain(tmp_path) == ORDER
    (tmp_path / "b" / "out.txt").unlink()
    assert run_chain(tmp_path) == ["b", "c"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["files"] == {"out.txt": 1}
