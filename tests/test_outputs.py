"""minift.pipeline.outputs: a run's paths are checked before any work and nothing half-written
is left behind. The command line reaches these through its options (tests/test_cli.py); here
each promise is held on its own."""

import pytest

from minift.pipeline.outputs import removed_on_failure, writable_dir, writable_file


def _tree(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_writable_directory_is_proved_without_creating_anything(tmp_path):
    (tmp_path / "old").mkdir()
    before = _tree(tmp_path)
    assert writable_dir(tmp_path / "old", "--out") == tmp_path / "old"  # exists
    assert writable_dir(str(tmp_path / "new"), "--out") == tmp_path / "new"  # may be made
    assert _tree(tmp_path) == before  # not even the probe's temporary file stays


def test_a_missing_parent_or_a_file_in_the_way_is_named_with_the_option(tmp_path):
    with pytest.raises(ValueError, match=r"^--out: cannot write to .*: its parent .*no does not"):
        writable_dir(tmp_path / "no" / "run", "--out")
    (tmp_path / "blocker").write_text("a file")
    with pytest.raises(ValueError, match=r"^--save: cannot write to .*blocker is not a directory"):
        writable_dir(tmp_path / "blocker" / "run", "--save")
    assert _tree(tmp_path) == ["blocker"]


def test_a_writable_file_is_not_a_directory_and_its_folder_exists(tmp_path):
    assert writable_file(tmp_path / "log.jsonl", "--log") == tmp_path / "log.jsonl"
    assert not (tmp_path / "log.jsonl").exists()  # checked, not created
    with pytest.raises(ValueError, match=r"^--log: .* is a directory, expected a file"):
        writable_file(tmp_path, "--log")
    with pytest.raises(ValueError, match=r"^--log: cannot write .*: .*missing is not a directory"):
        writable_file(tmp_path / "missing" / "log.jsonl", "--log")


def test_a_failed_write_removes_the_directories_it_made_and_nothing_else(tmp_path):
    new = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError, match="disk full"):
        with removed_on_failure(new) as directory:
            directory.mkdir(parents=True)
            (directory / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")
    assert _tree(tmp_path) == []  # a, a/b and a/b/run were all made by the body: all gone

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "earlier.json").write_text("{}")
    with pytest.raises(KeyboardInterrupt):
        with removed_on_failure(kept):
            (kept / "new.json").write_text("{")
            raise KeyboardInterrupt  # an interruption too
    assert (kept / "earlier.json").read_text() == "{}"  # what existed before stays
    assert (kept / "new.json").exists()  # only the directories the body made are removed


def test_a_write_that_succeeds_keeps_everything(tmp_path):
    with removed_on_failure(tmp_path / "run") as directory:
        directory.mkdir()
        (directory / "results.json").write_text("[]")
    assert _tree(tmp_path) == ["run", "run/results.json"]
