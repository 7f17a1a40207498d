"""`crl study` on tiny planted cells: the grid of ordinary run directories, each cell's baselines, resume filling only
the missing or unfinished cells, the launcher's jobs, a failed cell, and one-line errors before any cell runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import crl.commands.study as study
from crl.analysis.offline.study import MARK_FILE, Cell
from crl.logs.reader import load_run
from tests.run.helpers import crl

# Each cell: the planted task on the tiny model, 2 updates of 8 episodes, a val evaluation after each (seconds).
CELL = [
    "experiment=planted",
    "logger=disabled",
    "sae.d_sae=16",
    "ppo.total_updates=2",
    "ppo.episodes_per_update=8",
    "ppo.num_envs=8",
    "task.n_test=8",
    "task.n_val=20",
    "run.eval_every=1",
]
# Each cell's `crl analyze env=true`: every baseline, without the optional model measurements.
CHEAP_ANALYZE = [
    "analyze.n_boot=100",
    "analyze.causal=false",
    "analyze.offtask=false",
    "analyze.feature_effects=false",
    "analyze.env_seeds=[0]",
]


@pytest.fixture
def calls(monkeypatch) -> list[list[str]]:
    """Every `crl` command the study runs in this process, in order."""
    seen: list[list[str]] = []
    real = study.in_process

    def counted(argv: list[str]) -> tuple[int, str | None]:
        seen.append(argv)
        return real(argv)

    monkeypatch.setattr(study, "in_process", counted)
    return seen


def _cells(calls: list[list[str]]) -> list[tuple[str, str]]:
    """(command, cell) of each call, with `new` or `resume` for a train."""
    out = []
    for argv in calls:
        arg = next(a for a in argv if a.startswith(("hydra.run.dir=", "resume=", "run_dir=")))
        cell = Path(arg.split("=", 1)[1]).name
        out.append((argv[0] + (":resume" if arg.startswith("resume=") else ""), cell))
    return out


def test_study_runs_each_cell_then_resume_reruns_only_the_missing_ones(tmp_path, calls, capsys):
    out = tmp_path / "study"
    args = ["tasks=[planted]", "layers=[0,1,2]", "seeds=[0]", f"out={out}", "baselines=false", "n_boot=100"]
    assert crl("study", *args, "model.n_layers=3", "run.analyze=false", *CELL) == 0
    names = ["planted-L0-s0", "planted-L1-s0", "planted-L2-s0"]
    assert sorted(p.name for p in (out / "cells").iterdir()) == names
    assert _cells(calls) == [("train", n) for n in names]
    run = load_run(out / "cells" / "planted-L1-s0")
    assert (run.layer, run.info.seed, run.task) == (1, 0, "planted")
    plan = json.loads((out / "study.json").read_text())
    assert plan["train"] == ["model.n_layers=3", "run.analyze=false", *CELL] and plan["baselines"] is False
    html = (out / "report.html").read_text()
    assert "planted: layers" in html and re.search(r"Layer claim: (confirmed|refuted|inconclusive): ", html)
    assert ">syntactic_share</th>" in html and ">coef_tolerance</th>" in html and ">no_steer_share</th>" in html
    assert "planted: no baselines in its cells" in html  # the verdict says why there is nothing to compare
    printed, summary = capsys.readouterr().out, (out / "summary.txt").read_text()
    assert "planted: no baselines in its cells" in summary and summary in printed  # the same text, printed
    assert re.search(r"^  1 +1 +\d\.\d{3} ", summary, re.M) and "Layer claim: " in summary  # the per-layer row
    assert printed.rstrip().endswith(f"[crl study] summary: {out / 'summary.txt'}")

    # Damage: one cell deleted, one killed after its last checkpoint (no summary.json); the third is left alone.
    kept = out / "cells" / "planted-L0-s0"
    before = {f: (kept / f).stat().st_mtime_ns for f in ("run.json", "summary.json", "episodes.jsonl")}
    subprocess.run(["rm", "-rf", str(out / "cells" / "planted-L1-s0")], check=True)
    (out / "cells" / "planted-L2-s0" / "summary.json").unlink()
    calls.clear()
    capsys.readouterr()
    assert crl("study", f"out={out}", "resume=true", "n_boot=100") == 0  # the rest of the plan from study.json
    assert "3 cells (1 complete, 1 new, 1 resume)" in capsys.readouterr().out
    assert _cells(calls) == [("train", "planted-L1-s0"), ("train:resume", "planted-L2-s0")]
    assert before == {f: (kept / f).stat().st_mtime_ns for f in before}
    assert all((out / "cells" / n / "summary.json").exists() for n in names)
    calls.clear()
    assert crl("study", f"out={out}", "resume=true", "n_boot=100") == 0 and calls == []  # nothing left to run


def test_two_tasks_with_their_own_recipes_in_one_study(tmp_path, calls):
    """task_train: the planted cell is experiment=planted with one update, the compare cell the tiny model with an SAE
    on disk and the study's two updates; each cell's config.yaml says so, and the report shows each task's own."""
    import torch
    import yaml

    from crl.backends.hooks import HookPoint
    from crl.backends.model import tiny_model
    from crl.backends.sae import sae_from_decoder

    decoder = torch.randn(16, tiny_model().d_model, generator=torch.Generator().manual_seed(0))
    sae_from_decoder(decoder, HookPoint(1, "post"), "test").sae.save_model(str(tmp_path / "sae"))
    out = tmp_path / "study"
    planted = "planted:[experiment=planted,sae.d_sae=16,ppo.total_updates=1]"
    compare = f"compare:[model=tiny,sae=disk,sae.path={tmp_path / 'sae'},masking=none,policy.obs_stats_prompts=32]"
    args = ["tasks=[planted,compare]", "layers=[1]", "seeds=[0]", f"out={out}", "baselines=false", "n_boot=100"]
    shared = ["logger=disabled", "run.analyze=false", *CELL[2:]]  # ppo.total_updates=2 ... (no experiment=planted)
    shared.remove("sae.d_sae=16")
    assert crl("study", *args, f"task_train={{{planted},{compare}}}", *shared) == 0
    assert _cells(calls) == [("train", "planted-L1-s0"), ("train", "compare-L1-s0")]
    cfg = {
        c: yaml.safe_load((out / "cells" / f"{c}-L1-s0" / "config.yaml").read_text()) for c in ("planted", "compare")
    }
    assert (cfg["planted"]["ppo"]["total_updates"], cfg["compare"]["ppo"]["total_updates"]) == (1, 2)
    assert (cfg["planted"]["sae"]["source"], cfg["compare"]["sae"]["source"]) == ("planted", "disk")
    assert cfg["planted"]["model"]["source"] == cfg["compare"]["model"]["source"] == "tiny"
    assert (cfg["planted"]["task"]["name"], cfg["compare"]["task"]["name"]) == ("planted", "compare")
    assert cfg["planted"]["ppo"]["learning_rate"] == 0.001 != cfg["compare"]["ppo"]["learning_rate"]  # the experiment
    assert json.loads((out / "study.json").read_text())["task_train"]["planted"] == [
        "experiment=planted",
        "sae.d_sae=16",
        "ppo.total_updates=1",
    ]
    html = (out / "report.html").read_text()
    assert "this task&#x27;s own (task_train.planted): experiment=planted sae.d_sae=16 ppo.total_updates=1." in html
    assert "per task (task_train): planted: experiment=planted" in html


def test_launcher_jobs_baselines_and_a_failed_cell(tmp_path):
    """joblib runs one job per cell, each `crl train` then `crl analyze env=true` as child processes; the tiny model
    has no layer 5, so that cell fails, the other finishes with its baselines, the report covers it and the study
    ends with one line naming the failure."""
    out = tmp_path / "study"
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "OMP_NUM_THREADS")}
    argv = ["tasks=[planted]", "layers=[0,5]", "seeds=[0]", f"out={out}", "launcher=joblib", "hydra.launcher.n_jobs=2"]
    argv += ["n_boot=100", *CELL, *CHEAP_ANALYZE]
    proc = subprocess.run(
        [sys.executable, "-m", "crl.cli", "study", *argv], capture_output=True, text=True, env=env, timeout=300
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text
    assert "steering.layer=5 is out of range" in text and "[job 1] " in text
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("crl: error: 1 of 2 cells did not finish (first: planted-L5-s0")
    assert f"`crl study out={out} resume=true` runs them again" in last
    cell = out / "cells" / "planted-L0-s0"
    assert (cell / "summary.json").exists() and (cell / MARK_FILE).exists()
    assert json.loads((cell / MARK_FILE).read_text())["coef_sweep"] == [0.5, 1.0, 2.0, 4.0]  # read in a launcher job
    phases = set(load_run(cell).phases)
    assert {"baseline:none:test", "baseline:static:test", "baseline:prompting:test"} <= phases  # env=true ran
    assert (cell / "analysis" / "baseline_selection.csv").exists()
    assert (out / "shared").is_dir() and not (cell / "analysis" / "branch_points.csv").exists()  # study defaults
    html = (out / "report.html").read_text()
    assert "cell planted-L5-s0 is left out: not started" in html
    assert "planted: at " in html and "(L0 " in html and "(one seed: prompts only)" in html  # CRL vs each baseline
    assert "Not compared" not in html  # the real baselines kept per-prompt val outcomes, so every pair is by prompt
    assert (cell / "analysis" / "baseline_val_outcomes.csv").exists()


def test_a_new_cell_trains_with_the_study_defaults_first():
    plan = {"out": "runs/study-a", "baselines": True, "train": ["run.analyze=true", "experiment=planted"]}
    argv = study.train_argv(plan, Cell("planted", 1, 2), Path("runs/study-a/cells/planted-L1-s2"))
    assert argv == [
        "train",
        "logger.group=study-a",
        "run.analyze=false",  # `crl analyze env=true` writes the cell's report next; an explicit override still wins
        "run.analyze=true",
        "experiment=planted",
        "task=planted",
        "steering.layer=1",
        "seed=2",
        "hydra.run.dir=runs/study-a/cells/planted-L1-s2",
    ]


@pytest.mark.parametrize(
    "spelling",
    [
        ["task_train={compare_family:[experiment=compare_family,ppo.total_updates=1]}"],
        ["task_train.compare_family=[experiment=compare_family,ppo.total_updates=1]"],
        ["+task_train.compare_family=[experiment=compare_family,ppo.total_updates=1]"],
        ['task_train.compare_family=["experiment=compare_family","ppo.total_updates=1"]'],
    ],
)
def test_each_task_gets_its_own_train_overrides_after_the_studys(spelling, tmp_path):
    """task_train: the compare_family cells get experiment=compare_family (and their own budget), the compare cells
    only the study's overrides; the task's own come after the study's and before the cell's place. Every spelling on
    the command line gives the same plan, and the launcher's jobs, which read it from study.json, the same argv."""
    from crl.analysis.offline.study import read_plan
    from crl.config.compose import compose_config
    from crl.logs.atomic import atomic_write_json

    argv = ["tasks=[compare,compare_family]", f"out={tmp_path / 's'}", *spelling, "ppo.num_envs=4"]
    args = study.split_argv(argv)
    out, plan = study.make_plan(compose_config("study", args.own), args, "crl study")
    assert plan["train"] == ["ppo.num_envs=4"]
    assert plan["task_train"] == {"compare_family": ["experiment=compare_family", "ppo.total_updates=1"]}
    study.check_cells(plan)  # compare_family with its experiment composes; so does compare without it
    atomic_write_json(out / "study.json", plan)
    stored = read_plan(out)
    assert stored is not None
    for cell in (Cell("compare", 6, 0), Cell("compare_family", 6, 0)):
        argv = study.train_argv(stored, cell, cell.path(out))
        own = ["experiment=compare_family", "ppo.total_updates=1"] if cell.task == "compare_family" else []
        place = [f"task={cell.task}", "steering.layer=6", "seed=0", f"hydra.run.dir={cell.path(out)}"]
        assert argv == ["train", "logger.group=s", "run.analyze=false", "ppo.num_envs=4", *own, *place]
        cfg = compose_config("train", argv[1:])
        assert cfg.ppo.total_updates == (1 if own else 12) and cfg.task.family.enabled == bool(own)
        assert cfg.policy.greedy_rule == ("steer_if_likely" if own else "argmax")


def test_a_launcher_job_trains_its_cell_with_its_tasks_overrides(tmp_path, monkeypatch):
    """A launcher job (`crl study cell=<name> out=<out>` in the study's multirun) reads the plan from study.json."""
    import contextlib

    from crl.commands import sweep
    from crl.config.compose import compose_config
    from crl.logs.atomic import atomic_write_json

    argv = ["tasks=[planted,compare]", "layers=[1]", "seeds=[0]", f"out={tmp_path / 's'}", "baselines=false"]
    argv += ["task_train.planted=[experiment=planted]", "logger=disabled"]
    args = study.split_argv(argv)
    out, plan = study.make_plan(compose_config("study", args.own), args, "crl study")
    atomic_write_json(out / "study.json", plan)
    seen: list[list[str]] = []
    monkeypatch.setattr(study, "child_process", lambda a: (seen.append(a), (0, None))[1])
    monkeypatch.setattr(sweep, "current_job", lambda: sweep.Job(0, out / "launcher"))
    monkeypatch.setattr(sweep, "tagged_output", lambda job: contextlib.nullcontext())
    for name in ("planted-L1-s0", "compare-L1-s0"):
        monkeypatch.setattr(sys, "argv", ["crl study", f"cell={name}", f"out={out}"])
        study._app()
    assert [a[2:-4] for a in seen] == [["logger=disabled", "experiment=planted"], ["logger=disabled"]]
    assert seen[0][-4:-1] == ["task=planted", "steering.layer=1", "seed=0"]


def test_each_cells_analyze_shares_baselines_and_skips_the_per_cell_sections_by_default(tmp_path):
    """Every cell's `crl analyze` gets shared_baselines=<out>/shared, then branch_points=false forced_effects=false
    (StudyConfig.analyze), then the command line's analyze.<key> overrides, which win."""
    from crl.config.compose import compose_config
    from crl.logs.reader import REQUIRED_FILES

    cfg = compose_config("study", [f"out={tmp_path / 's'}"])
    out, plan = study.make_plan(cfg, study.split_argv(["analyze.branch_points=true"]), "crl study")
    assert plan["analyze"] == ["branch_points=false", "forced_effects=false", "branch_points=true"]
    cell = Cell("planted", 0, 1)
    path = cell.path(out)
    path.mkdir(parents=True)
    for name in REQUIRED_FILES:  # trained, no baselines yet: the cell gets only `crl analyze`
        (path / name).write_text("")
    seen: list[list[str]] = []
    assert study.run_cell(out, plan, cell, lambda argv: (seen.append(argv), (0, None))[1]) is None
    shared = f"shared_baselines={out / 'shared'}"
    assert seen == [["analyze", f"run_dir={path}", "env=true", shared, *plan["analyze"]]]
    analyze = compose_config("analyze", seen[0][1:])
    assert analyze.shared_baselines == str(out / "shared") and analyze.branch_points and not analyze.forced_effects
    assert (path / MARK_FILE).exists()


def test_resume_with_a_wider_coefficient_sweep_analyzes_the_complete_cells_again(tmp_path, capsys):
    """`crl study out=<s> resume=true 'analyze.coef_sweep=[...]'` (the layer claim's advice when every tolerance is at
    the sweep's ceiling): each cell whose mark records another sweep gets `crl analyze` again, with the new sweep."""
    from crl.analysis.offline.study import PLAN_FILE
    from crl.config.compose import compose_config
    from crl.logs.atomic import atomic_write_json
    from crl.logs.reader import REQUIRED_FILES

    out = tmp_path / "s"
    out, plan = study.make_plan(compose_config("study", [f"out={out}"]), study.split_argv([]), "crl study")
    atomic_write_json(out / PLAN_FILE, plan)
    cell = Cell("planted", 0, 1)
    path = cell.path(out)
    path.mkdir(parents=True)
    for name in REQUIRED_FILES:  # trained, no baselines yet
        (path / name).write_text("")
    seen: list[list[str]] = []
    runner = lambda argv: (seen.append(argv), (0, None))[1]  # noqa: E731
    assert study.run_cell(out, plan, cell, runner) is None and len(seen) == 1
    assert json.loads((path / MARK_FILE).read_text())["coef_sweep"] == [0.5, 1.0, 2.0, 4.0]
    assert study.run_cell(out, plan, cell, runner) is None and len(seen) == 1  # complete: left alone

    wide = "coef_sweep=[0.5,1,2,4,8,16]"
    resume = compose_config("study", [f"out={out}", "resume=true"])
    _, plan = study.make_plan(resume, study.split_argv([f"analyze.{wide}"]), "crl study")
    assert plan["analyze"][-1] == wide and study.analyze_sweep(plan) == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    capsys.readouterr()
    assert study.run_cell(out, plan, cell, runner) is None and len(seen) == 2
    assert "analyze (its coefficient sweep was [0.5,1,2,4], analyze.coef_sweep is [0.5,1,2,4,8,16])" in (
        capsys.readouterr().out
    )
    assert seen[1][-1] == wide and compose_config("analyze", seen[1][1:]).coef_sweep[-1] == 16.0
    assert json.loads((path / MARK_FILE).read_text())["coef_sweep"] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert study.run_cell(out, plan, cell, runner) is None and len(seen) == 2  # swept as asked: complete


@pytest.mark.parametrize(
    "argv,message",
    [
        (["OUT", "seed=3"], "seed=3 cannot go to the cells: tasks=, layers= and seeds= set each cell's"),
        (["OUT", "steering.layer=6"], "steering.layer=6 cannot go to the cells"),
        (["resume=true"], "resume=true needs out=<the study's directory>"),
        (["OUT", "-m", "seeds=[0]"], "crl study runs its cells itself; drop -m"),
        (
            ["OUT", "hydra.launcher.n_jobs=2"],
            "hydra.launcher.n_jobs=2 is an option of a launcher; pass launcher=joblib",
        ),
        (["OUT", "seeds=[0,0]"], "seeds=[0,0] is invalid: a value is listed twice"),
        (["OUT", "tasks=[nope]"], "cell nope-L6: task=nope is invalid: no such option in config group 'task'"),
        (["OUT", "ppo.num_envs=0"], "cell compare-L6: ppo.num_envs=0 is invalid: out of range"),
        (["OUT", "analyze.n_boot=0"], "n_boot=0 is invalid: out of range"),
        (["OUT", "analyze.coef_sweep=[-1]"], "coef_sweep=[-1.0] is invalid: out of range"),
        (["OUT", "analyze.coef_sweep=[]"], "coef_sweep=[] is invalid: out of range"),
        (["OUT", "launcher=slurm"], "launcher=slurm is invalid: unknown choice"),
        (["OUT", "task_train.bbq_offline=[ppo.num_envs=4]"], "task_train.bbq_offline is not for a task of the study"),
        (["OUT", "task_train.compare=[seed=3]"], "task_train.compare: seed=3 cannot go to the cells"),
        (["OUT", "task_train={compare:[task=bbq_offline]}"], "task_train.compare: task=bbq_offline cannot go to"),
        (["OUT", "task_train.compare=ppo.num_envs"], "task_train.compare=ppo.num_envs is invalid: not a list"),
        (["OUT", "task_train.compare=[ppo.num_envs=0]"], "cell compare-L6: ppo.num_envs=0 is invalid: out of range"),
        (
            ["OUT", "tasks=[compare,compare_family]", "task_train.compare=[experiment=compare_family]"],
            "task_train.compare: experiment=compare_family sets task=compare_family, not compare; give it to the "
            "compare_family cells",
        ),
        (
            ["OUT", "tasks=[compare,planted]", "task_train.compare=[experiment=planted]"],
            "task_train.compare: experiment=planted sets task=planted, not compare",
        ),
    ],
)
def test_bad_studies_are_one_line_before_any_cell_runs(argv, message, tmp_path, calls, capsys):
    assert crl("study", *(f"out={tmp_path / 's'}" if a == "OUT" else a for a in argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crl: error: ") and message in err[0], err
    assert calls == [] and not (tmp_path / "s" / "cells").exists()


def test_a_study_is_started_once_and_resumed_with_its_own_overrides(tmp_path, calls, capsys):
    out = tmp_path / "s"
    out.mkdir()
    plan = {"tasks": ["planted"], "layers": [0], "seeds": [0], "train": ["experiment=planted"], "baselines": False}
    (out / "study.json").write_text(json.dumps({**plan, "analyze": [], "out": str(out)}))
    assert crl("study", f"out={out}") == 2
    assert "already holds a study; resume=true continues it" in capsys.readouterr().err
    assert crl("study", f"out={out}", "resume=true", "experiment=planted", "sae.d_sae=8") == 2
    assert "were trained with ['experiment=planted'], not ['experiment=planted', 'sae.d_sae=8']" in (
        capsys.readouterr().err
    )
    assert crl("study", f"out={tmp_path / 'none'}", "resume=true") == 2
    assert "holds no study (no study.json)" in capsys.readouterr().err
    assert calls == []


def test_resume_refuses_a_changed_task_train_and_keeps_the_stored_one(tmp_path, calls, capsys):
    """The planted cells were trained with their own overrides: a resume gives the same (or none, and gets them), and
    a task new to the study may bring its own."""
    from crl.config.compose import compose_config

    out = tmp_path / "s"
    out.mkdir()
    plan = {"tasks": ["planted"], "layers": [0], "seeds": [0], "train": ["experiment=planted"], "baselines": False}
    plan["task_train"] = {"planted": ["ppo.total_updates=1"]}
    (out / "study.json").write_text(json.dumps({**plan, "analyze": [], "out": str(out)}))
    assert crl("study", f"out={out}", "resume=true", "task_train.planted=[ppo.total_updates=2]") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and (
            f"the planted cells of {out} were trained with task_train.planted=['ppo.total_updates=1'], not "
            "['ppo.total_updates=2']; resume with the same overrides (or none, to use theirs)"
        )
        in err[0]
    )
    assert crl("study", f"out={out}", "resume=true", "task_train={planted:[]}") == 2
    assert "were trained with task_train.planted=['ppo.total_updates=1'], not []" in capsys.readouterr().err
    assert calls == []

    def resumed(*argv: str) -> dict:
        args = study.split_argv([f"out={out}", "resume=true", *argv])
        return study.make_plan(compose_config("study", args.own), args, "crl study")[1]

    assert resumed()["task_train"] == plan["task_train"]
    assert resumed("task_train.planted=[ppo.total_updates=1]")["task_train"] == plan["task_train"]
    added = resumed("tasks=[planted,compare]", "task_train.compare=[model=tiny]")["task_train"]
    assert added == {"planted": ["ppo.total_updates=1"], "compare": ["model=tiny"]}


def test_cfg_job_prints_the_study_config(capsys):
    assert crl("study", "--cfg", "job", "layers=[0]") == 0
    out = capsys.readouterr().out
    assert "layers:\n- 0" in out and "tasks:\n- compare" in out
