"""`crl train -m` on Hydra's launchers (crl/commands/sweep.py): parallel jobs on one machine (joblib) each with
its own run directory and wandb run grouped by the sweep, cores shared between them, a failed job that leaves the
others running, and `crl compare` over a sweep's directory."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from crl.commands.sweep import Sweep, Tagged, cores, parse, threads_per_job
from crl.config.compose import check_command
from crl.logs import schema
from crl.logs.reader import load_run, sweep_jobs
from tests.analysis.synthetic import SyntheticSpec, write_run_dir
from tests.run.helpers import QUICK, crl

# The smallest run that trains and finishes: 1 update of 8 episodes, no val evaluations.
TINY = [
    *QUICK,
    "ppo.total_updates=1",
    "ppo.episodes_per_update=8",
    "ppo.num_envs=8",
    "sae.d_sae=16",
    "task.n_test=8",
    "run.eval_every=0",
    "run.select=last",
]


def test_parse_and_threads_per_job():
    assert parse(["seed=0,1"]) is None  # no -m: one run
    assert parse(["-m", "hydra/launcher=joblib", "seed=0,1", "steering.layer=3,6,9"]) == Sweep("joblib", None, 6)
    assert parse(["--multirun", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=range(4)"]) == Sweep(
        "joblib", 2, 4
    )
    assert parse(["-m", "seed=0,1"]) == Sweep("basic", None, 2)
    assert parse(["-m", "hydra/launcher=submitit_local", "task=glob(*)"]).size is None  # the sweeper decides
    # joblib: n_jobs=-1 (all cores) at most as many as there are jobs; each gets an equal share of the cores
    assert threads_per_job(Sweep("joblib", None, 2), 2) == 1
    assert threads_per_job(Sweep("joblib", None, 2), 16) == 8
    assert threads_per_job(Sweep("joblib", 4, 100), 16) == 4
    assert threads_per_job(Sweep("joblib", -2, 100), 9) == 1  # -2: all cores but one, 8 jobs at once
    assert threads_per_job(Sweep("joblib", None, None), 16) == 1
    assert threads_per_job(Sweep("submitit_local", None, 3), 16) == 5  # every job at once
    assert threads_per_job(Sweep("submitit_local", None, 64), 16) == 1
    for one_at_a_time in ("basic", "submitit_slurm"):  # sequential, or each job on its own allocation
        assert threads_per_job(Sweep(one_at_a_time, None, 8), 16) is None


def test_tagged_output_starts_every_line_with_the_job():
    out = io.StringIO()
    tagged = Tagged(out, "[job 3] ")
    for piece in ("a\nb", "c\n", "\n", "d\ne\n"):
        tagged.write(piece)
    assert out.getvalue() == "[job 3] a\n[job 3] bc\n[job 3] \n[job 3] d\n[job 3] e\n"


def test_the_slurm_sweep_composes_on_a_host_without_gpu_or_slurm(capsys):
    slurm = ["-m", "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=1"]
    check_command("train", [*slurm, "model.device=cuda", "seed=0,1,2", "steering.layer=6,15,24"])  # all 9 jobs
    # Without Slurm here: one line, before Hydra makes a directory.
    env = {k: v for k, v in os.environ.items() if k != "PATH"} | {"PATH": str(Path(sys.executable).parent)}
    out = subprocess.run(
        [sys.executable, "-m", "crl.cli", "train", *slurm, "seed=0,1", "hydra.sweep.dir=nope"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1].startswith("crl: error: hydra/launcher=subm")
    assert "no sbatch or srun" in out.stderr and not Path("nope").exists()


def test_joblib_sweep_runs_its_jobs_in_parallel_each_in_its_own_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "OMP_NUM_THREADS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "crl.cli", "train", "-m", "hydra/launcher=joblib", "seed=0,1", *TINY, "logger=wandb"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    # One sweep directory, named by the launching process (${crl_tag:}: its pid), which the jobs resolved as it did.
    (sweep,) = (tmp_path / "runs").iterdir()
    assert sweep.name.startswith("sweep-") and sweep.name.endswith(f"-{proc.pid:x}")
    jobs = sweep_jobs(sweep)
    assert [(j.name, problem) for j, problem in jobs] == [("0-planted-L1-s0", None), ("1-planted-L1-s1", None)]
    runs = [load_run(j) for j, _ in jobs]
    assert [r.info.seed for r in runs] == [0, 1]
    infos = [json.loads((j / schema.RUN_JSON).read_text()) for j, _ in jobs]
    assert {i["ran_on"]["cpu_threads"] for i in infos} == {max(1, cores() // 2)}  # the cores shared, not doubled
    # Both ran at once: each started (Hydra's .hydra/config.yaml) before the other finished (summary.json).
    starts = [(j / ".hydra" / "config.yaml").stat().st_mtime for j, _ in jobs]
    ends = [(j / schema.SUMMARY).stat().st_mtime for j, _ in jobs]
    assert max(starts) < min(ends), (starts, ends)
    for j, _ in jobs:  # a wandb run of its own, in the sweep's group
        assert yaml.safe_load((j / schema.CONFIG_YAML).read_text())["logger"]["group"] == sweep.name
        assert len(list((j / "wandb").glob("offline-run-*"))) == 1
    assert not list(sweep.glob("*/" + schema.FAILED))
    for n in (0, 1):  # the lines of parallel jobs can be told apart
        assert f"[job {n}] [crl] run dir: {jobs[n][0]}" in stdout

    # crl compare takes the sweep's directory for its runs
    assert crl("compare", f"dirs=[{sweep}]", f"out_dir={tmp_path / 'cmp'}", "n_boot=50") == 0
    assert (tmp_path / "cmp" / "report.html").exists()


def test_a_failed_job_leaves_the_other_jobs_running(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    # Job 0 fails after Hydra made its directory (the layer is checked against the loaded model); job 1 still runs.
    assert crl("train", "-m", "steering.layer=99,1", *TINY, f"hydra.sweep.dir={sweep}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "[job 0] crl: error: steering.layer=99 is out of range: tiny-llama-2x64-s0 has 2 layers (0..1)" in err
    assert err[-1] == "crl: error: steering.layer=99 is out of range: tiny-llama-2x64-s0 has 2 layers (0..1)"
    assert "HYDRA_FULL_ERROR" not in os.environ
    (failed, why), (done, ok) = sweep_jobs(sweep)
    assert why.startswith("failed (steering.layer=99 is out of range") and ok is None
    marker = json.loads((failed / schema.FAILED).read_text())
    assert marker["command"].startswith("crl train steering.layer=99 ") and "resume" not in marker  # nothing to resume
    assert yaml.safe_load((done / schema.CONFIG_YAML).read_text())["logger"]["group"] == "sweep"
    assert load_run(done).info.layer == 1


def test_compare_collects_the_finished_runs_of_a_sweep(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for i in range(2):
        write_run_dir(sweep / f"{i}-arith-L6-s{i}", SyntheticSpec(run=f"r{i}", seed=i, n_prompts=8))
    (sweep / "2-arith-L6-s2" / ".hydra").mkdir(parents=True)  # failed before it wrote anything
    (sweep / "2-arith-L6-s2" / schema.FAILED).write_text(json.dumps({"error": "steering.layer=99 is out of range"}))
    write_run_dir(sweep / "3-arith-L6-s3", SyntheticSpec(run="r3", seed=3, n_prompts=8))
    (sweep / "3-arith-L6-s3" / schema.SUMMARY).unlink()  # still running, or killed
    assert crl("compare", f"dirs=[{sweep}]", f"out_dir={tmp_path / 'out'}", "n_boot=50") == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "left out" in ln]
    assert warnings == [
        f"crl: warning: sweep {sweep}: left out 2-arith-L6-s2: failed (steering.layer=99 is out of range)",
        f"crl: warning: sweep {sweep}: left out 3-arith-L6-s3: incomplete (no summary.json: still running, or "
        f"stopped; `crl train resume={sweep / '3-arith-L6-s3'}`)",
    ]
    assert "2 runs" in (tmp_path / "out" / "report.html").read_text()

    (sweep / "1-arith-L6-s1" / schema.SUMMARY).unlink()  # one finished run is not a comparison
    assert crl("compare", f"dirs=[{sweep}]", f"out_dir={tmp_path / 'out2'}") == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("crl: error: compare needs at least two finished runs")
    assert crl("compare", f"dirs=[{tmp_path / 'empty'}]") == 2  # neither a run nor a sweep
    assert "does not exist" in capsys.readouterr().err
