"""One invocation's hold on its run directory (crl.logs.lifecycle): leave nothing or mark it failed, refuse a
non-empty directory for a new run, one writer at a time, a full disk in one line."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest

from crl.errors import CRLError
from crl.logs import lifecycle, schema
from crl.logs.atomic import atomic_write_bytes
from crl.logs.reader import load_run
from crl.logs.writer import RunWriter
from tests.analysis.synthetic import SyntheticSpec, write_run_dir

CMD = "crl train seed=1"


def _hydra_files(run_dir):
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
    (run_dir / "train.log").write_text("")


def test_a_failure_that_wrote_nothing_useful_leaves_nothing(tmp_path):
    run = tmp_path / "runs" / "r"
    _hydra_files(run)  # Hydra made the directory before our code ran
    with pytest.raises(CRLError, match="bad layer"), lifecycle.claim(run, new=True, command=CMD):
        (run / schema.RUN_JSON).write_text("{}")  # identity alone is not worth keeping
        raise CRLError("bad layer")
    assert not run.exists() and (tmp_path / "runs").exists()


def test_a_failure_after_rows_were_logged_is_marked_and_the_reader_refuses_it(tmp_path):
    done = write_run_dir(tmp_path / "done", SyntheticSpec(n_prompts=4))
    run = tmp_path / "r"
    with pytest.raises(RuntimeError), lifecycle.claim(run, new=True, command=CMD):
        shutil.copytree(done, run, dirs_exist_ok=True)
        raise RuntimeError("boom\nsecond line")
    failed = json.loads((run / schema.FAILED).read_text())
    assert failed["error"] == "RuntimeError: boom" and failed["command"] == CMD
    assert failed["resume"] == f"crl train resume={run}"
    with pytest.raises(CRLError, match=r"failed \(RuntimeError: boom\); fix that, then `crl train resume="):
        load_run(run)
    with lifecycle.claim(run, new=False, command=CMD):  # a resume that succeeds removes the mark
        pass
    assert not (run / schema.FAILED).exists()
    assert len(load_run(run).episodes) > 0


def test_a_new_run_refuses_a_non_empty_directory_and_touches_nothing(tmp_path):
    run = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(CRLError, match="not empty .*resume="), lifecycle.claim(run, new=True, command=CMD):
        pytest.fail("must not run")
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != lifecycle.LOCK} == before
    assert lifecycle.foreign_entries(tmp_path / "missing") == []


def test_a_resume_that_changed_nothing_is_not_marked(tmp_path):
    run = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    with pytest.raises(CRLError), lifecycle.claim(run, new=False, command=CMD):
        raise CRLError("checkpoint is corrupt")
    assert not (run / schema.FAILED).exists()
    with pytest.raises(KeyboardInterrupt), lifecycle.claim(run, new=False, command=CMD):
        with (run / schema.METRICS).open("a") as fh:
            fh.write('{"update": 99}\n')
        raise KeyboardInterrupt
    assert json.loads((run / schema.FAILED).read_text())["error"] == "KeyboardInterrupt"


def test_one_process_at_a_time(tmp_path):
    run = tmp_path / "r"
    with lifecycle.claim(run, new=True, command=CMD):
        refused = pytest.raises(CRLError, match="in use by another crl process")
        with refused, lifecycle.claim(run, new=False, command=""):
            pass
        assert run.exists()  # the refused claim removed nothing
    with lifecycle.claim(run, new=True, command=CMD):  # released: a lock file alone is a fresh directory
        pass


def test_a_full_disk_is_one_line_and_says_how_to_go_on(tmp_path):
    run = tmp_path / "r"
    full = pytest.raises(CRLError, match="no space left .*free some space, then run it again")
    with full, lifecycle.claim(run, new=True, command=CMD):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not run.exists()  # nothing useful was written
    full = pytest.raises(CRLError, match="free some space, then `crl train resume=.*` continues the run")
    with full, lifecycle.claim(run, new=True, command=CMD):
        (run / schema.EPISODES).write_text('{"episode": 0}\n')
        (run / schema.CHECKPOINT).parent.mkdir()
        (run / schema.CHECKPOINT).write_bytes(b"ckpt")
        raise RuntimeError("[enforce fail] file write failed") from OSError(errno.ENOSPC, "full")
    assert "no space left" in json.loads((run / schema.FAILED).read_text())["error"]


def test_never_checkpointed_runs_restart_from_scratch(tmp_path):
    run = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    assert not lifecycle.never_checkpointed(run)  # finished: it has a summary
    (run / schema.SUMMARY).unlink()
    assert lifecycle.never_checkpointed(run)
    (run / "policy.pt").write_bytes(b"x")
    lifecycle.discard_progress(run, extra=("policy.pt",))
    assert sorted(p.name for p in run.iterdir()) == [schema.CONFIG_YAML, schema.RUN_JSON]


def test_atomic_write_on_a_full_disk_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"] and target.read_bytes() == b"old"


def test_writer_close_closes_every_log_when_one_fails(tmp_path):
    w = RunWriter(tmp_path)
    broken = w._files[schema.EPISODES]
    broken.write("x")
    os.close(broken.fileno())  # its final flush will fail
    with pytest.raises(OSError):
        w.close()
    assert all(f.closed for name, f in w._files.items() if name != schema.EPISODES)
