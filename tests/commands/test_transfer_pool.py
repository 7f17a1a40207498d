"""`crl transfer run_dirs=[...]` (crl/commands/transfer.py) on run directories with a compare-family config.yaml, a
hand-written run.json and hand-written transfer results: it pools stored results that match the settings asked without
running a transfer, transfers first only the runs whose result is missing or was made otherwise, and refuses bad
input in one line before any transfer runs. No model loads: the transfer itself is tests/run/test_transfer.py's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from crl import cli
from crl.config import TransferConfig
from crl.config.compose import compose_config
from crl.envs.tasks.family import held_out_axes
from crl.logs.schema import RunInfo
from crl.run.components import POLICY_FILE
from crl.run.train import config_yaml
from crl.run.transfer import plan_transfer
from tests.analysis.offline.test_transfer_pool import N, write_result

FAMILY = ["task.name=compare", "task.family.enabled=true", "task.family.wordings=[plain]"]


def _run(root: Path, seed: int, task: str = "compare", direction: str = "larger") -> Path:
    """A run directory of the compare family (config.yaml, run.json; no policy, no logs)."""
    cfg = compose_config("train", [*FAMILY, f"task.family.directions=[{direction}]", f"seed={seed}"])
    run = root / f"s{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_bytes(config_yaml(cfg))
    RunInfo(
        run=run.name,
        model="smollm2",
        sae_identity="shipped:15",
        task=task,
        task_seed=0,
        layer=15,
        hook_name="blocks.15.hook_resid_post",
        d_sae=8,
        seed=seed,
        coef=1.0,
    ).write(run)
    return run


def _stored(run: Path, n: int = N, diffs: dict | None = None) -> Path:
    """The transfer result `crl transfer n=<n>` would have written (settings and variants from its plan), plain arm."""
    plan = plan_transfer(run, n=n, devices=False)
    variants = [
        {"variant": spec, "held_out": "+".join(held_out_axes(vs, plan.trained)), "describe": vs.describe()}
        for spec, vs in plan.parsed
    ]
    settings = {**plan.settings, "harm_margin": 0.02, "alpha": 0.05}
    return write_result(run, plan.settings["seed"], diffs, settings=settings, variants=variants, plain=True)


@pytest.fixture
def crl_run(monkeypatch, tmp_path, capsys):
    """`crl transfer` with these arguments: (exit code, stdout, stderr, the runs it transferred)."""
    monkeypatch.chdir(tmp_path)  # Hydra's job log
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    transferred: list[str] = []

    def fake_transfer(run_dir: Path, cfg: TransferConfig) -> None:
        transferred.append(run_dir.name)
        _stored(run_dir, cfg.n)

    monkeypatch.setattr("crl.commands.transfer.transfer_one", fake_transfer)

    def call(*args: str) -> tuple[int, str, str, list[str]]:
        capsys.readouterr()
        try:
            cli.main(["transfer", *args])
            code = 0
        except SystemExit as e:
            code = int(e.code)
        out, err = capsys.readouterr()
        return code, out, err, transferred

    return call


def test_stored_results_that_match_are_pooled_without_a_transfer(tmp_path, crl_run):
    runs = [_stored(_run(tmp_path / "runs", s), diffs={("wording:bigger", "crl"): 0.1}) for s in range(3)]
    code, out, err, transferred = crl_run(f"run_dirs=[{','.join(map(str, runs))}]", f"n={N}", "n_boot=200")
    assert code == 0 and transferred == [], err
    assert "transfer pooled over 3 runs (3 stored transfers reused, 0 run now)" in out
    assert "wording:bigger" in out and "+0.100|+0.100|+0.100" in out
    assert (
        "acceptance, crl (the policy): every held-out variant lo >= -0.02: yes; a held-out wording with a gain" in out
    )
    where = tmp_path / "runs"  # the default: the runs' common parent
    assert f"written: {where / 'transfer_pooled.csv'}" in out and (where / "transfer_pooled.png").exists()
    saved = json.loads((where / "transfer_pooled.json").read_text())
    assert [r["run"] for r in saved["runs"]] == ["s0", "s1", "s2"] and saved["acceptance"]["crl"]["met"]
    # another set of runs pooled into the same default folder is refused; out= puts it elsewhere
    code, _, err, _ = crl_run(f"run_dirs=[{runs[0]},{runs[1]}]", f"n={N}", "n_boot=200")
    assert code == 2 and "pools other runs (s0, s1, s2); pass out=" in err
    code, out, err, _ = crl_run(f"run_dirs=[{runs[0]},{runs[1]}]", f"n={N}", "n_boot=200", f"out={tmp_path / 'two'}")
    assert code == 0 and (tmp_path / "two" / "transfer_pooled.json").exists(), err


def test_runs_without_a_matching_result_are_transferred_first(tmp_path, crl_run):
    s0, s1, s2 = (_run(tmp_path / "runs", s) for s in range(3))
    _stored(s0)
    _stored(s1, n=100)
    for run in (s1, s2):
        (run / POLICY_FILE).write_bytes(b"")
    code, out, err, transferred = crl_run(f"run_dirs=[{s0},{s1},{s2}]", f"n={N}", "n_boot=200")
    assert code == 0 and transferred == ["s1", "s2"], err
    assert f"[crl] transfer 1/2: s1: its transfer has n=100, asked {N}; running it" in err
    assert "[crl] transfer 2/2: s2: no transfer result; running it" in err
    assert "(1 stored transfers reused, 2 run now)" in out


def test_bad_input_is_one_line_before_any_transfer(tmp_path, crl_run):
    root = tmp_path / "runs"
    s0, s1 = _stored(_run(root, 0)), _run(root, 1)  # s1: no result and no policy
    cases = {
        f"run_dirs=[{s0},{s1}]": f"{s1} has no trained policy (policy.pt or a checkpoint) to transfer (no transfer",
        f"run_dirs=[{s0},{tmp_path / 'nope'}]": f"run_dirs: {tmp_path / 'nope'} is not a CRL run directory",
        f"run_dirs=[{s0},{s0}]": f"run_dirs: {s0} is listed twice",
        f"run_dirs=[{s0}]": "run_dirs=[",
        f"run_dir={s0} run_dirs=[{s0},{s1}]": "run_dir= already names the one run to transfer",
        f"run_dir={s0} out={tmp_path}": "out= is where run_dirs= writes the pooled files",
    }
    for args, message in cases.items():
        code, _, err, transferred = crl_run(*args.split(), f"n={N}")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert "pooling needs two runs or more" in crl_run(f"run_dirs=[{s0}]")[2]
    other_task = _run(tmp_path / "arith", 2, task="arith")
    err = crl_run(f"run_dirs=[{s0},{other_task}]")[2]
    assert "are not comparable: task:" in err and "'compare'" in err and "'arith'" in err
    smaller = _run(tmp_path / "smaller", 3, direction="smaller")
    err = crl_run(f"run_dirs=[{s0},{smaller}]")[2]
    assert err.strip() == (
        "crl: error: cannot pool s3 with s0: trained=wording plain | direction smaller | range 2digit in s3, "
        "wording plain | direction larger | range 2digit in s0; pool seeds of one recipe (or set greedy_rule=, "
        "fit_abstain= for all)"
    )
    assert transferred == []
    code, _, err, _ = crl_run()
    assert err.strip() == (
        "crl: error: crl transfer needs run_dir=<a run directory>, or run_dirs=[<run directories>] to pool seeds"
    )
