"""The soak's own checks can fail: a lost, a repeated or a changed row, a changed summary, a second error line."""

from __future__ import annotations

import json
import shutil
import subprocess

from crl.commands.soak.harness import Tally, clear_error, diff_rows, same_run, same_summary
from crl.logs import schema
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


def _lines(path):
    return path.read_text().splitlines(keepends=True)


def test_row_diff_counts_lost_repeated_and_reordered_rows(tmp_path):
    ref = write_run_dir(tmp_path / "ref", SyntheticSpec(n_prompts=4, random_seeds=(0,)))
    got = tmp_path / "got"
    shutil.copytree(ref, got)
    assert diff_rows(ref, got).equal
    rows = _lines(got / schema.EPISODES)
    (got / schema.EPISODES).write_text("".join(rows[1:] + rows[-1:]))  # first row lost, last one repeated
    diff = diff_rows(ref, got)
    assert (diff.lost, diff.extra) == (1, 1) and not diff.equal
    (got / schema.EPISODES).write_text("".join(rows[1:2] + rows[:1] + rows[2:]))  # same rows, another order
    assert diff_rows(ref, got).reordered == [f"{schema.EPISODES}/{json.loads(rows[0])['phase']}"]


def test_timing_keys_are_ignored_and_everything_else_compared(tmp_path):
    ref = write_run_dir(tmp_path / "ref", SyntheticSpec(n_prompts=4, random_seeds=(0,)))
    got = tmp_path / "got"
    shutil.copytree(ref, got)
    summary = json.loads((got / schema.SUMMARY).read_text())
    (got / schema.SUMMARY).write_text(json.dumps({**summary, "wall_seconds": 1e9}))
    assert same_summary(ref, got)
    (got / schema.SUMMARY).write_text(json.dumps({**summary, "split": "val"}))
    tally = Tally()
    assert not same_run(tally, ref, got, "changed") and tally.problems == [
        "changed: summary.json differs from the uninterrupted run's"
    ]


def test_a_clear_error_is_exit_2_and_exactly_one_line():
    def proc(code, err):
        return subprocess.CompletedProcess([], code, "", err)

    assert clear_error(proc(2, "a warning\ncrl: error: layer 9 is out of range\n"), "layer 9")
    assert not clear_error(proc(1, "crl: error: x\n"))
    assert not clear_error(proc(2, "crl: error: x\ncrl: error: y\n"))
    assert not clear_error(proc(2, "Traceback (most recent call last):\ncrl: error: x\n"))
