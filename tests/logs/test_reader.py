"""The run-directory reader: JSONL rows (torn last line vs a corrupt line) and `load_run` validation."""

from __future__ import annotations

import json

import pytest

from crl.errors import CRLError
from crl.logs.reader import load_run, read_jsonl
from crl.logs.schema import Phase
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(write_run_dir(tmp_path_factory.mktemp("runs") / "synth", SyntheticSpec()))


def test_load_run_reads_phases_and_seeds(run):
    assert run.phases == ["baseline:none:test", "baseline:random:test", "eval:test"]
    assert run.eval_phase() == "eval:test"
    assert run.baseline_phases("test") == {"none": "baseline:none:test", "random": "baseline:random:test"}
    assert sorted(run.episodes_of("baseline:random:test")["seed"].unique()) == [0, 1, 2]
    steps = run.steps_of("eval:test")
    assert len(steps) == 40 * 5 and set(steps["seed"]) == {0}
    assert Phase.parse("baseline:static:val").method == "static"


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(CRLError, match="does not exist"):
        load_run(tmp_path / "nope")
    with pytest.raises(CRLError, match="no run.json"):
        load_run(tmp_path)


def test_incomplete_run_names_missing_files(tmp_path):
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    (d / "summary.json").unlink()
    (d / "metrics.jsonl").unlink()
    with pytest.raises(CRLError, match=r"incomplete: missing metrics.jsonl, summary.json"):
        load_run(d)


def test_other_format_version_says_rerun_or_convert(tmp_path):
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    info = json.loads((d / "run.json").read_text())
    info["format_version"] = 0
    (d / "run.json").write_text(json.dumps(info))
    with pytest.raises(CRLError, match=r"format_version=0 .*reads version 1.*re-run.*convert"):
        load_run(d)


def test_corrupt_jsonl_line_is_named(tmp_path):
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    with (d / "episodes.jsonl").open("a") as fh:
        fh.write('{"truncated": \n')
    with pytest.raises(CRLError, match=r"episodes.jsonl line \d+ .*not valid JSON"):
        load_run(d)


def test_torn_final_line_is_skipped_like_the_writer_does(tmp_path):
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    n = len(load_run(d).episodes)
    with (d / "episodes.jsonl").open("a") as fh:
        fh.write('{"run": "synth", "phase": "eval:te')  # killed mid-write: no newline
    assert len(load_run(d).episodes) == n


def test_read_jsonl_skips_only_a_torn_last_line(tmp_path, capsys):
    path = tmp_path / "log.jsonl"
    assert read_jsonl(path) == []  # not written yet
    path.write_text('{"a": 1}\n\n{"a": 2}\n{"a": 3}')  # blank lines are skipped; the last row is complete
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert capsys.readouterr().err == ""
    path.write_text('{"a": 1}\n{"a": 2, "b": [1,')  # killed mid-write
    assert read_jsonl(path) == [{"a": 1}]
    err = capsys.readouterr().err
    assert "warning" in err and "line 2 is incomplete" in err and err.count("\n") == 1
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')  # damaged in the middle
    with pytest.raises(CRLError, match=r"log.jsonl line 2 is not valid JSON") as e:
        read_jsonl(path)
    assert "\n" not in str(e.value)


def test_phases_are_accepted_as_phase_objects(run):
    assert run.episodes_of(Phase.eval("test")).equals(run.episodes_of("eval:test"))
    assert len(run.steps_of(Phase.baseline("none", "test"))) == 40 * 5
    assert {str(Phase.parse(p)) for p in run.phases} == set(run.phases)
