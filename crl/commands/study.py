"""`crl study`: the whole study in one command, each cell an ordinary run directory.

crl study                                            # tasks=[compare] layers=[6,15,24] seeds=[0,1,2]
crl study tasks=[compare,bbq_offline] layers=[6,24] seeds=[0,1] out=runs/study-a
crl study out=runs/study-a resume=true               # only the missing, failed or unfinished cells
crl study launcher=joblib hydra.launcher.n_jobs=2    # cells in parallel (submitit_local; submitit_slurm on a cluster)
crl study experiment=planted tasks=[planted] layers=[0,1] seeds=[0,1] out=/tmp/s  # bare overrides: every cell
crl study 'tasks=[compare,compare_family]' 'task_train={compare_family:[experiment=compare_family]}'  # one task's
crl study 'tasks=[compare,compare_family]' task_train.compare_family=[experiment=compare_family]       # the same
crl study analyze.n_boot=500 analyze.causal=false   # analyze.<key>: every cell's `crl analyze env=true`
crl study out=runs/study-a report_only=true          # report.html, summary.txt and the summary again; no cell runs

Every (task, layer, seed) is one cell (crl.analysis.offline.study.Cell): `crl train task=T steering.layer=L seed=S`
into <out>/cells/<T>-L<L>-s<S> (the study's `train=` overrides and the bare ones on the command line first, then the
task's own, `task_train.<T>`; with baselines=true also run.analyze=false, as the next step writes the cell's report),
then with baselines=true
`crl analyze run_dir=<cell> env=true shared_baselines=<out>/shared` (every baseline, the coefficient sweep, the
causal check, the side effects off the task; `analyze=` and the analyze.<key> overrides), then the study's mark on the
cell (analysis/study.json). The plan goes to <out>/study.json first, the report to <out>/report.html last
(crl.analysis.report.study), then the same numbers as text to stdout and <out>/summary.txt (`summary_text`: per task
the verdict sentence, accuracy at equal budget and CRL minus each baseline, the held-out table, the per-layer table
and the layer claim; then the side effects), for a remote shell or the study's log.

Report only (`report_only=true out=<study>`): report.html and summary.txt written again from the cells on disk and the
summary printed, no cell run, resumed or checked (budget=, budgets=, n_boot=, split=, probe= apply; tasks=, layers=,
seeds= report that part of the grid; a cell's override, resume=true or launcher= is refused).

What the cells share and skip by default (StudyConfig.analyze, AnalyzeConfig.shared_baselines):
- shared: random, corr, prompting and letter_prior, the unsteered pass that ranks static's and corr's candidates and
  the scores of static's candidates by activation depend on neither the cell's seed nor its policy, so the first cell
  of a (task, layer) computes them into <out>/shared/<key>/ and the others copy their rows into their own logs
  ("[crl analyze] baselines: random, corr, prompting, letter_prior reused from <out>/shared (key ...)"). The key is a
  sha256 of the cell's config without seed, run, logger, policy, masking and ppo (but ppo.num_envs), its model, SAE,
  task (and task seed) and layer, the baseline settings (env_seeds, split, ...) and CRL's version and commit
  (crl/analysis/replay/shared.py). static stays each cell's own (its candidates by usage come from the policy);
  analyze.shared_baselines=null computes everything in every cell.
- skipped: branch points and the forced-feature and side effects (analyze branch_points=false forced_effects=false),
  which only a cell's own report.html shows; its sections say so and name `crl analyze run_dir=<cell> env=true`, which
  adds them. analyze.branch_points=true analyze.forced_effects=true computes them in every cell.

Resume (`resume=true`): a complete cell is left alone; one whose baselines are missing, or whose `crl analyze` ran
another coefficient sweep than the plan's analyze.coef_sweep (its mark records it), gets only `crl analyze`; one
with its identity (run.json, config.yaml) that did not finish or failed gets `crl train resume=<cell>` (from its
last checkpoint; a run killed before its first one starts again in place); one that holds something but no identity
is removed and run again; a missing one runs. The keys not given on the command line come from study.json, and the
cells' train overrides must be the same as when the study began (`train` and every task's `task_train` entry; a
task_train entry given on resume is added to the stored ones, so a task new to the study may bring its own).

Per-task overrides (`task_train`, a mapping task -> overrides): two tasks that need different training recipes in one
study, e.g. compare with its defaults and the compare family as experiment=compare_family. Hydra's grammar refuses an
unquoted `=` inside a value and a new key of a mapping without `+`, so the study escapes the inner `=` of its
override-list keys (train, task_train, analyze) and adds task_train's `++` itself: 'task_train={T:[a=1,b=2]}',
task_train.T=[a=1,b=2] and +task_train.T=[a=1,b=2] all work. An override that holds brackets or a comma needs quotes:
'task_train.T=["task.family.ranges=[1digit]"]'. Refused before any cell runs: a task not in tasks=, an override of a
grid key, and an experiment= that sets another task than its key (conf/experiment/*.yaml: `override /task`).

Where cells run: by default one after another in this process. With `launcher=`, the study is a Hydra multirun of
itself on that launcher (crl/commands/sweep.py: threads per job, `[job N]` lines, Slurm checks), one job per cell to
run (`cell=<name>`); a job runs the cell's `crl train` and `crl analyze` as child processes. A failed cell does not
stop the others: its line is printed, the report is written over the complete cells, and the study ends with one
error naming the failed cells (exit 2).
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import hydra
from omegaconf import DictConfig

from crl.commands import sweep
from crl.config import StudyConfig, load
from crl.errors import CRLError, exit_on_error
from crl.paths import CONF_DIR

# Keys each cell's `crl train` gets from its place in the grid; an override of one of them is refused.
GRID_KEYS = ("task", "steering.layer", "seed", "resume", "hydra.run.dir")
_HYDRA_FLAGS = {"-h", "--help", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "-p", "--package"}
SHARED_DIR = "shared"  # <out>/shared: the cells' shared baselines (crl/analysis/replay/shared.py)
Runner = Callable[[list[str]], tuple[int, str | None]]  # `crl <argv>` -> (exit status, its last error line)


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


@dataclasses.dataclass(frozen=True)
class Args:
    """A `crl study` command line, sorted by where each argument goes."""

    own: list[str]  # the study's keys (conf/study.yaml) and Hydra's flags
    launcher: list[str]  # hydra/launcher=..., hydra.launcher.*: the launcher's
    train: list[str]  # every other bare override: each cell's `crl train`
    analyze: list[str]  # analyze.<key>=<value>: each cell's `crl analyze env=true` gets <key>=<value>


# The study's keys whose values are lists of overrides: the `=` inside them is escaped for Hydra's grammar.
_OVERRIDE_LISTS = ("train", "task_train", "analyze")


def _escape_inner(arg: str) -> str:
    r"""`arg` with every `=` of its value escaped (`\=`) outside quotes, as Hydra's grammar needs inside a list.

    >>> print(_escape_inner("train=[experiment=planted,'a=b',c\\=d]"))
    train=[experiment\=planted,'a=b',c\=d]
    """
    key, sep, value = arg.partition("=")
    out: list[str] = []
    quote, prev = None, ""
    for ch in value:
        if quote:
            quote = None if ch == quote and prev != "\\" else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "=" and prev != "\\":
            out.append("\\")
        out.append(ch)
        prev = ch
    return key + sep + "".join(out)


def _study_arg(arg: str) -> str:
    """One of the study's own overrides as Hydra reads it: the inner `=` of an override list escaped, and task_train
    given `++`, so a new task's entry and the whole mapping are both accepted."""
    key = _key(arg)
    if arg.startswith("~") or "=" not in arg or key.split(".")[0] not in _OVERRIDE_LISTS:
        return arg
    arg = _escape_inner(arg)
    return "++" + arg.lstrip("+") if key.split(".")[0] == "task_train" else arg


def split_argv(argv: list[str]) -> Args:
    r"""Sort a command line (`Args`): an override whose top key is a StudyConfig field is the study's.

    >>> a = split_argv(["layers=[0,1]", "experiment=planted", "hydra.launcher.n_jobs=2", "analyze.n_boot=200"])
    >>> a.own, a.launcher, a.train, a.analyze
    (['layers=[0,1]'], ['hydra.launcher.n_jobs=2'], ['experiment=planted'], ['n_boot=200'])
    >>> split_argv(["task_train.compare_family=[experiment=compare_family]"]).own
    ['++task_train.compare_family=[experiment\\=compare_family]']
    """
    own_keys = {f.name for f in dataclasses.fields(StudyConfig)}
    args = Args([], [], [], [])
    flag_value = False
    for a in argv:
        key = _key(a)
        if flag_value:  # the value of --cfg job, --info defaults, ...
            args.own.append(a)
            flag_value = False
        elif a.startswith("-"):
            args.own.append(a)
            flag_value = a in ("--cfg", "-c", "--info", "-i", "-p", "--package") and "=" not in a
        elif key.startswith("hydra.launcher.") or key == "hydra/launcher":
            args.launcher.append(a)
        elif key.startswith("analyze.") and "=" in a:
            args.analyze.append(a.split(".", 1)[1])
        elif key.split(".")[0] in own_keys or key.startswith("hydra"):
            args.own.append(_study_arg(a))
        else:
            args.train.append(a)
    return args


def own_args(argv: list[str]) -> list[str]:
    """The arguments `crl.cli` checks against conf/study.yaml (the others are each cell's and the launcher's)."""
    return split_argv(argv).own


# -- one cell ------------------------------------------------------------------------------------------------------
ERROR_PREFIX = "crl: error: "


class _Errors:
    """A text stream passed through, keeping the last `crl: error: ...` line written to it."""

    def __init__(self, stream: TextIO):
        self._stream, self.last = stream, None

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip().startswith(ERROR_PREFIX):
                self.last = line.strip()[len(ERROR_PREFIX) :]
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty, encoding, ...
        return getattr(self._stream, name)


def in_process(argv: list[str]) -> tuple[int, str | None]:
    """`crl <argv>` in this process (outside any Hydra app): its exit status and its last error line."""
    from crl.cli import main as crl_main
    from crl.logs.lifecycle import one_line

    saved, errors = (sys.argv[:], sys.stderr), _Errors(sys.stderr)
    sys.stderr = errors  # type: ignore[assignment]
    try:
        crl_main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception as e:  # noqa: BLE001 - a bug in one cell must not stop the others; its line is kept
        print(ERROR_PREFIX + one_line(e), file=sys.stderr)
        code = 1
    finally:
        sys.argv, sys.stderr = saved
    return code, errors.last


def child_process(argv: list[str]) -> tuple[int, str | None]:
    """`crl <argv>` as a child process, its lines passed through this one's stdout (tagged inside a launcher job):
    its exit status and its last error line."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "crl.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    out = _Errors(sys.stdout)
    for line in proc.stdout:
        out.write(line)
    sys.stdout.flush()
    return proc.wait(), out.last


def task_overrides(plan: dict[str, Any], task: str) -> list[str]:
    """The `crl train` overrides of every cell of `task`: the study's, then the task's own (task_train)."""
    return [*plan["train"], *plan.get("task_train", {}).get(task, [])]


def train_argv(plan: dict[str, Any], cell: Any, path: Path) -> list[str]:
    """A new cell's `crl train`: the study's own defaults, then the plan's overrides (the study's, then its task's),
    then the cell's place."""
    defaults = [f"logger.group={Path(plan['out']).name}"] + (["run.analyze=false"] if plan["baselines"] else [])
    place = [f"task={cell.task}", f"steering.layer={cell.layer}", f"seed={cell.seed}", f"hydra.run.dir={path}"]
    return ["train", *defaults, *task_overrides(plan, cell.task), *place]


def shared_dir(out: Path) -> Path:
    """Where the cells' `crl analyze` share the baselines that depend on neither seed nor policy."""
    return out / SHARED_DIR


def analyze_sweep(plan: dict[str, Any]) -> list[float] | None:
    """The coefficient sweep every cell's `crl analyze` runs: the last coef_sweep= among the plan's analyze overrides,
    else AnalyzeConfig's; None without baselines. Read from the overrides (checked by `check_cells`), not composed: a
    launcher's job runs inside Hydra's app, where Hydra composes no other config.

    >>> analyze_sweep({"baselines": True, "analyze": ["n_boot=100", "coef_sweep=[0.5,1,2,4,8,16]"]})
    [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    >>> analyze_sweep({"baselines": True, "analyze": []}), analyze_sweep({"baselines": False, "analyze": []})
    ([0.5, 1.0, 2.0, 4.0], None)
    """
    if not plan["baselines"]:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from crl.config import AnalyzeConfig

    sweep = AnalyzeConfig().coef_sweep
    for o in OverridesParser.create().parse_overrides(list(plan["analyze"])):
        if o.key_or_group == "coef_sweep":
            sweep = AnalyzeConfig().coef_sweep if o.is_delete() else o.value()
    return [float(m) for m in sweep]


def run_cell(out: Path, plan: dict[str, Any], cell: Any, runner: Runner, label: str = "") -> str | None:
    """Bring one cell to complete (module docstring); None when it is, else its one-line problem. `label` goes
    before the cell's name in its progress line (e.g. "2/9 ")."""
    from crl.analysis.offline.study import cell_state, mark_analyzed, unmark

    path = cell.path(out)
    sweep = analyze_sweep(plan)
    state, why = cell_state(path, plan["baselines"], sweep)
    if state == "complete":
        return None
    if state == "running":
        return f"{cell.name}: {why}"
    print(f"[crl study] cell {label}{cell.name}: {state}" + (f" ({why})" if state != "new" else ""), flush=True)
    if state != "analyze":
        unmark(path)
        if state == "restart":
            shutil.rmtree(path)
        argv = ["train", f"resume={path}"] if state == "resume" else train_argv(plan, cell, path)
        code, error = runner(argv)
        if code != 0:
            return f"{cell.name}: crl train failed: {error or f'exit status {code}'}"
    if plan["baselines"]:
        argv = ["analyze", f"run_dir={path}", "env=true", f"shared_baselines={shared_dir(out)}", *plan["analyze"]]
        code, error = runner(argv)
        if code != 0:
            return f"{cell.name}: crl analyze env=true failed: {error or f'exit status {code}'}"
        mark_analyzed(path, shlex.join(["crl", *argv]), sweep)
    return None


# -- the launcher's jobs -------------------------------------------------------------------------------------------
@hydra.main(config_path=CONF_DIR, config_name="study", version_base=None)
def _app(raw: DictConfig) -> None:
    """Hydra's view of `crl study`: it prints the config (--cfg, --help) and, in the study's multirun on a
    launcher, runs one cell per job."""
    from crl.analysis.offline.study import Cell, read_plan

    cfg = load(StudyConfig, raw)
    job = sweep.current_job()
    if job is None or cfg.cell is None or cfg.out is None:
        raise CRLError("cell= is set by the study for its launcher's jobs; leave it out")
    out = Path(cfg.out)
    plan = read_plan(out)
    if plan is None:
        raise CRLError(f"{out} has no study.json; the study writes it before it launches its cells")
    with sweep.tagged_output(job):
        problem = run_cell(out, plan, Cell.parse(cfg.cell), child_process)
        if problem:  # the study reads every cell's state when the jobs are done; the other jobs go on
            print(f"[crl study] {problem}", file=sys.stderr)


def launch(out: Path, names: list[str], launcher: str, launcher_args: list[str]) -> None:
    """A multirun of `_app` on `launcher`, one job per cell (names), its folder <out>/launcher."""
    argv = [
        "-m",
        f"hydra/launcher={launcher}",
        *launcher_args,
        f"cell={','.join(names)}",
        f"out={out}",
        f"hydra.sweep.dir={out / 'launcher'}",
        "hydra.sweep.subdir=${hydra.job.num}",
    ]
    plan = sweep.parse(argv)
    assert plan is not None
    saved = sys.argv[:]
    sys.argv = ["crl study", *argv]
    try:
        with sweep.launching(plan):
            _app()
    finally:
        sys.argv = saved


# -- the study -----------------------------------------------------------------------------------------------------
def _given(own: list[str]) -> set[str]:
    return {_key(a).split(".")[0] for a in own if "=" in a and not a.startswith("-")}


def _refuse_grid_keys(overrides: list[str], where: str = "") -> None:
    clash = [a for a in overrides if _key(a) in GRID_KEYS or a.startswith("-")]
    if clash:
        raise CRLError(
            f"{where}{clash[0]} cannot go to the cells: tasks=, layers= and seeds= set each cell's task, layer and "
            "seed, and the study names their directories itself"
        )


def make_plan(cfg: StudyConfig, args: Args, command: str) -> tuple[Path, dict[str, Any]]:
    """The study's directory and plan: a new study's from `cfg`; a resumed one's from its study.json, with the keys
    given on the command line replacing it. One-line errors for a clash with what is on disk."""
    from crl.analysis.offline.study import read_plan

    given = _given(args.own) | ({"analyze"} if args.analyze else set())
    train, analyze = [*cfg.train, *args.train], [*cfg.analyze, *args.analyze]
    task_train = {task: list(overrides) for task, overrides in cfg.task_train.items()}
    _refuse_grid_keys(train)
    for task, overrides in task_train.items():
        _refuse_grid_keys(overrides, f"task_train.{task}: ")
    if cfg.cell is not None:
        raise CRLError("cell= is set by the study for its launcher's jobs; leave it out")
    if cfg.resume:
        if cfg.out is None:
            raise CRLError("resume=true needs out=<the study's directory>")
        out = Path(cfg.out)
        old = read_plan(out)
        if old is None:
            raise CRLError(f"resume=true: {out} holds no study (no study.json); start one with out={out}")
        if ("train" in given or args.train) and train != old["train"]:
            raise CRLError(
                f"the cells of {out} were trained with {old['train']}, not {train}; resume with the same overrides "
                "(or none, to use theirs), or start another study in another out="
            )
        plan = dict(old)
        for key in ("tasks", "layers", "seeds"):
            if key in given:
                plan[key] = list(getattr(cfg, key))
        stored = old.get("task_train", {})
        changed = [t for t in old["tasks"] if task_train.get(t, stored.get(t, [])) != stored.get(t, [])]
        if changed:
            t = changed[0]
            raise CRLError(
                f"the {t} cells of {out} were trained with task_train.{t}={stored.get(t, [])}, not {task_train[t]}; "
                "resume with the same overrides (or none, to use theirs), or start another study in another out="
            )
        plan["task_train"] = {**stored, **task_train}
        if "baselines" in given:
            plan["baselines"] = cfg.baselines
        if "analyze" in given:
            plan["analyze"] = analyze
    else:
        out = Path(cfg.out) if cfg.out else Path("runs") / f"study-{time.strftime('%Y%m%d-%H%M%S')}"
        if read_plan(out) is not None or (out / "cells").exists():
            raise CRLError(f"{out} already holds a study; resume=true continues it, or pass another out=")
        plan = {"train": train, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        plan.update(tasks=list(cfg.tasks), layers=list(cfg.layers), seeds=list(cfg.seeds))
        plan.update(task_train=task_train, baselines=cfg.baselines, analyze=analyze)
    unknown = [t for t in task_train if t not in plan["tasks"]]
    if unknown:
        raise CRLError(
            f"task_train.{unknown[0]} is not for a task of the study (tasks={','.join(plan['tasks'])}); name one of "
            "its tasks, or add the task to tasks="
        )
    plan.update(out=str(out), command=command)
    return out, plan


def check_cells(plan: dict[str, Any], devices: bool = True) -> None:
    """Compose and validate every (task, layer)'s `crl train` config before any cell runs (one line each); `devices`:
    also check that this host can use each device (not for Slurm jobs, which run on other hosts)."""
    from crl.config.compose import check_command, compose_config

    check = check_command if devices else compose_config
    seed = plan["seeds"][0]
    for task in plan["tasks"]:
        overrides = task_overrides(plan, task)
        _check_experiment_task(task, plan.get("task_train", {}).get(task, []), overrides)
        for layer in plan["layers"]:
            place = [f"task={task}", f"steering.layer={layer}", f"seed={seed}"]
            try:
                check("train", [*overrides, *place])
            except CRLError as e:
                raise CRLError(f"cell {task}-L{layer}: {e}") from None
    if plan["baselines"]:
        compose_config("analyze", ["run_dir=x", "env=true", *plan["analyze"]])


def _check_experiment_task(task: str, own: list[str], overrides: list[str]) -> None:
    """Refuse an experiment= among `task`'s own overrides (task_train) whose config picks another task (`override
    /task` in conf/experiment/), which the cell's task= would silently replace while keeping the experiment's task.*
    values. `overrides`: every override the task's cells get, composed without their task= to see the pick."""
    experiments = [a for a in own if _key(a) == "experiment"]
    if not experiments:
        return
    from hydra import compose, initialize_config_dir

    from crl.config.apps import register

    register()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
            picked = compose("train", overrides=overrides, return_hydra_config=True).hydra.runtime.choices.get("task")
    except Exception:  # noqa: BLE001 - a bad override: composing the cells says which, in one line
        return
    if picked != task:
        raise CRLError(
            f"task_train.{task}: {experiments[-1]} sets task={picked}, not {task}; give it to the {picked} cells "
            f"(tasks=[...,{picked}] task_train.{picked}=[...])"
        )


def write_report(cfg: StudyConfig, out: Path, cells: list[Any], baselines: bool) -> Path:
    """<out>/report.html, then the same numbers as text (crl.analysis.report.study.summary_text) on stdout and in
    <out>/summary.txt; returns report.html."""
    from crl.analysis.report.study import study_numbers, study_report, write_summary

    numbers = study_numbers(cfg, out, cells, baselines)
    html = study_report(cfg, out, cells, baselines, numbers).html
    print(f"[crl study] report: {html}")
    path, text = write_summary(numbers)
    print("\n" + text, end="")
    print(f"[crl study] summary: {path}", flush=True)
    return html


def report_only(cfg: StudyConfig, args: Args) -> Path:
    """`report_only=true`: the report and the summary of the cells on disk, running no cell (module docstring)."""
    from crl.analysis.offline.study import plan_cells, read_plan

    given = _given(args.own)
    extra = [*args.train, *args.launcher, *(f"analyze.{a}" for a in args.analyze)]
    extra += [k for k in ("train", "task_train", "analyze", "launcher") if k in given]
    if cfg.resume or extra:
        what = "resume=true" if cfg.resume else extra[0]
        raise CRLError(f"report_only=true runs no cell, so {what} has nothing to do; drop it (or report_only)")
    if cfg.out is None:
        raise CRLError("report_only=true needs out=<the study's directory>")
    out = Path(cfg.out)
    plan = read_plan(out)
    if plan is None:
        raise CRLError(f"report_only=true: {out} holds no study (no study.json)")
    for key in ("tasks", "layers", "seeds"):  # a part of the grid, when given
        if key in given:
            plan[key] = list(getattr(cfg, key))
    return write_report(cfg, out, plan_cells(plan), plan["baselines"])


def run_study(cfg: StudyConfig, args: Args, command: str) -> Path:
    """The study (module docstring); returns report.html. A CRLError at the end when a cell did not finish."""
    from crl.analysis.offline.study import PLAN_FILE, cell_state, plan_cells
    from crl.logs.atomic import atomic_write_json

    if cfg.report_only:
        return report_only(cfg, args)
    if args.launcher and cfg.launcher is None:
        raise CRLError(f"{args.launcher[0]} is an option of a launcher; pass launcher=joblib (or another) too")
    out, plan = make_plan(cfg, args, command)
    check_cells(plan, devices=cfg.launcher != "submitit_slurm")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PLAN_FILE, plan)
    cells = plan_cells(plan)
    sweep = analyze_sweep(plan)  # a cell analyzed with another coefficient sweep is analyzed again
    states = {c: cell_state(c.path(out), plan["baselines"], sweep)[0] for c in cells}
    todo = [c for c in cells if states[c] != "complete"]
    counts = {s: sum(v == s for v in states.values()) for s in dict.fromkeys(states.values())}
    print(f"[crl study] {out}: {len(cells)} cells (" + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
    problems: list[str] = []
    if todo and cfg.launcher is not None:
        launch(out, [c.name for c in todo], cfg.launcher, args.launcher)
    else:
        for i, c in enumerate(todo, 1):
            problem = run_cell(out, plan, c, in_process, f"{i}/{len(todo)} ")
            if problem:
                print(f"[crl study] {problem}", file=sys.stderr)
                problems.append(problem)
    left = [c for c in cells if cell_state(c.path(out), plan["baselines"], sweep)[0] != "complete"]
    html = write_report(cfg, out, cells, plan["baselines"]) if len(left) < len(cells) else None
    if left:
        first = (
            problems[0] if problems else f"{left[0].name}: {cell_state(left[0].path(out), plan['baselines'], sweep)[1]}"
        )
        raise CRLError(
            f"{len(left)} of {len(cells)} cells did not finish (first: {first}); `crl study out={out} resume=true` "
            "runs them again"
        )
    assert html is not None
    return html


@exit_on_error
def main() -> None:
    argv = sys.argv[1:]
    args = split_argv(argv)
    own = args.own
    if "-m" in own or "--multirun" in own:
        raise CRLError("crl study runs its cells itself; drop -m (launcher=joblib runs them in parallel)")
    if any(a.split("=", 1)[0] in _HYDRA_FLAGS for a in own):
        sys.argv = [sys.argv[0], *own]
        _app()  # Hydra prints the config or its help
        return
    from crl.config.compose import compose_config

    cfg = compose_config("study", own)
    run_study(cfg, args, shlex.join(["crl", "study", *argv]))


if __name__ == "__main__":
    main()
