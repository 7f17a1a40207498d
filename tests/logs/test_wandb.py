"""wandb: one `init_run` for training and reports; with mode=disabled wandb is never imported."""

from __future__ import annotations

import os
import subprocess
import sys
import types

from crl.config import AnalyzeConfig, CompareConfig, TrainConfig, WandbConfig
from crl.logs.wandb import init_run


def test_disabled_never_imports_wandb(tmp_path):
    code = f"""
import sys
from pathlib import Path
from crl.analysis.report.common import publish
from crl.analysis.report.document import Report
from crl.config import AnalyzeConfig, WandbConfig
from crl.logs.wandb import WandbLogger, init_run

out = Path({str(tmp_path)!r})
log = WandbLogger(WandbConfig(mode="disabled"), out, "run", {{"seed": 0}})
log.log({{"charts/accuracy": 1.0}}, step=0)
log.log_feature_usage([{{"feature": 3, "share": 1.0}}], step=0)
log.log_artifact(out, "interventions-run", "dataset")
log.finish()
assert log.id is None and init_run(WandbConfig(mode="disabled"), "run") is None
report = Report("r")
report.section("Summary")
publish(report, out, AnalyzeConfig().wandb, "analyze-run", [])  # a report's default: no wandb
print("wandb" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_reports_default_to_disabled_and_training_to_offline():
    assert AnalyzeConfig().wandb.mode == CompareConfig().wandb.mode == "disabled"
    assert TrainConfig().logger == WandbConfig(mode="offline")


def test_other_modes_start_one_run_from_the_config(monkeypatch, tmp_path):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(kw) or types.SimpleNamespace(id="abc"))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = WandbConfig(mode="offline", project="p", tags=["t"])
    assert init_run(cfg, "name", {"a": 1}, tmp_path, job_type="analysis").id == "abc"
    assert calls == [
        dict(
            project="p",
            entity=None,
            group=None,
            tags=["t"],
            name="name",
            config={"a": 1},
            dir=str(tmp_path),
            job_type="analysis",
            mode="offline",
            id=None,
            resume=None,
            reinit="finish_previous",
        )
    ]


def test_crl_train_with_logger_disabled_never_initialises_wandb(tmp_path):
    # End to end through `crl train` (training, then the analysis report), with nothing in the environment
    # turning wandb off: every way into a wandb run refuses. sae-lens imports wandb when the SAE is built, so
    # the module may be loaded; no run may be started and nothing written for one.
    from tests.run.helpers import QUICK

    args = [a for a in QUICK if a not in ("logger=disabled", "run.analyze=false")]
    args += ["logger.mode=disabled", "run.analyze=true", "ppo.total_updates=1", f"hydra.run.dir={tmp_path / 'run'}"]
    code = f"""
import wandb
calls = []
def refuse(*args, **kwargs):
    calls.append(1)
    raise RuntimeError("wandb was initialised")
wandb.init = wandb.setup = refuse
from crl.cli import main
try:
    main(["train", *{args!r}])
finally:
    print("wandb calls:", len(calls))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "wandb calls: 0" in out.stdout
    assert (tmp_path / "run" / "analysis" / "report.html").exists()  # the report ran too
    assert not list(tmp_path.rglob("wandb")) and not list(tmp_path.rglob("wandb-*"))
