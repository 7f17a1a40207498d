"""`crl train`: learn which SAE feature to amplify at each token (crl.run.train), then write the report.

crl train                                    # offline default: SmolLM2-135M + CRL's SAE, arith task
crl train experiment=planted                 # planted diagnostic task on a tiny model (seconds)
crl train -m seed=0,1 steering.layer=3,6     # a sweep: one run directory per job
crl train -m hydra/launcher=joblib seed=0,1  # its jobs in parallel (crl/commands/sweep.py; also submitit_local,
                                             # submitit_slurm)
crl train resume=runs/<run>                  # continue from the last checkpoint
crl train task=compare_family init_from=runs/<run>  # a curriculum: start from that run's trained policy
crl train experiment=compare_xor_shortlist steering.layer=6  # masking=shortlist: the features picked from the
                                             # train prompts first (crl/analysis/replay/shortlist.py)

The run directory's lifecycle (crl.logs.lifecycle): a failed invocation leaves nothing, or a directory marked
FAILED.json; a new run never writes into a non-empty directory; `resume=` of a run killed before its first
checkpoint starts it again from the beginning, in place.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from crl.cards.label import HEURISTIC_MARK
from crl.commands import sweep
from crl.config import TrainConfig, load
from crl.errors import CRLError, exit_on_error
from crl.logs import lifecycle, schema
from crl.paths import CONF_DIR


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    from crl.analysis.offline.variants import SUMMARY_KEY, format_lines

    b, a = summary["before"], summary["after"]
    print(f"\n[crl] run dir: {run_dir}   ({summary['wall_seconds']:.0f}s)")
    sel = summary.get("selection")
    if sel and sel["val_curve"]:
        curve = "  ".join(f"{r['update']}:{r['accuracy']:.3f}" for r in sel["val_curve"])
        print(f"[crl] val accuracy by update   {curve}")
        first = _update_0(run_dir)
        why = f"best val (ties go to the earlier update; 0 is {first})" if sel["rule"] == "best_val" else "last"
        stop = ", stopped early: val did not improve for run.patience evals" if sel["stopped_early"] else ""
        print(f"[crl] selected update {sel['selected_update']} of {sel['last_update']} ({why}{stop})")
    print(f"[crl] {summary['split']} accuracy   before {b['accuracy']:.3f}  after {a['accuracy']:.3f}   (n={a['n']})")
    for line in format_lines(summary.get(SUMMARY_KEY) or []):  # a task family: the same per variant
        print(line)
    print(f"[crl] well-formed rate  before {b['well_formed']:.3f}  after {a['well_formed']:.3f}")
    print_top_features(summary["top_features"][:8])


def _update_0(run_dir: Path) -> str:
    """What update 0 of the val curve is: no steering, or with init_from the source run's policy (run.json)."""
    try:
        init = json.loads((run_dir / schema.RUN_JSON).read_text(encoding="utf-8")).get("init_from")
    except (OSError, ValueError, AttributeError):
        init = None
    return f"the init_from run's policy ({init['run']})" if isinstance(init, dict) else "no steering"


def _feature_text(row: dict[str, Any]) -> tuple[str, str]:
    """(``no-steer``, ``1398 ≈'minimum' → 'less'`` with the heuristic label marked, or the bare ``1398``; ``23%``)."""
    f, label = int(row["feature"]), row.get("label")
    what = "no-steer" if f < 0 else f"{f} {HEURISTIC_MARK}{label}" if label else str(f)
    return what, f"{row['share']:.0%}"


def print_top_features(rows: list[dict[str, Any]], width: int = 120) -> None:
    """The eval's top features on one line when it fits in `width`, else one line per feature under a header."""
    head = "[crl] top features (eval, greedy):"
    items = [_feature_text(r) for r in rows]
    line = f"{head}  " + ", ".join(f"{what} {share}" for what, share in items)
    if len(line) <= width:
        print(line)
        return
    labelled = any(r.get("label") and int(r["feature"]) >= 0 for r in rows)
    print(head + (f"  (share, feature {HEURISTIC_MARK} heuristic label of its card)" if labelled else ""))
    for what, share in items:
        print(f"[crl]   {share:>4}  {what}")


@hydra.main(config_path=CONF_DIR, config_name="train", version_base=None)
def _main(raw: DictConfig) -> None:
    job = sweep.current_job()
    if job is None:
        exit_on_error(_train)(raw, None)
        return
    with sweep.tagged_output(job):
        try:
            _train(raw, job)
        except CRLError as e:  # no SystemExit in a job: it would stop the other jobs (joblib: the whole pool)
            print(f"crl: error: {e}", file=sys.stderr)
            raise  # Hydra marks the job failed; the sweep raises the first such error when every job is done


def _train(raw: DictConfig, job: sweep.Job | None) -> None:
    from hydra.core.hydra_config import HydraConfig

    from crl.analysis.offline.variants import SUMMARY_KEY, record_variants
    from crl.analysis.replay.shortlist import resolve as resolve_shortlist
    from crl.run.components import POLICY_FILE, saved_config
    from crl.run.train import resume_config, train

    hc = HydraConfig.get()
    cfg = load(TrainConfig, raw)
    overrides = list(hc.overrides.task)
    run_dir = Path(cfg.resume or hc.runtime.output_dir)
    # A job's own command line: a launcher's worker process has its own sys.argv.
    command = shlex.join(["crl", "train", *(overrides if job else sys.argv[1:])])
    if job is not None and cfg.logger.group is None:  # one wandb group per sweep
        cfg = dataclasses.replace(cfg, logger=dataclasses.replace(cfg.logger, group=job.group))
    with lifecycle.claim(run_dir, new=not cfg.resume, command=command, keep=job is not None):
        if cfg.resume:  # the run's own config (a bare resume=), or the composed one if compatible
            cfg = resume_config(cfg, run_dir, overrides)
            if lifecycle.never_checkpointed(run_dir):  # from the beginning: from the run's init_from too, if any
                cfg = dataclasses.replace(cfg, resume=None, init_from=saved_config(run_dir).init_from)
                lifecycle.discard_progress(run_dir, extra=(POLICY_FILE,))
                print(f"[crl] {run_dir} stopped before its first checkpoint: starting it again from the beginning")
        summary = train(cfg, run_dir, overrides, shortlist=resolve_shortlist)  # masking=shortlist: picked here
    try:  # a task family: accuracy per variant, into summary.json (after the run is complete: it cannot fail it)
        summary = {**summary, SUMMARY_KEY: record_variants(run_dir, summary["split"])}
    except CRLError as e:
        print(f"[crl] warning: accuracy per task variant failed: {e}", file=sys.stderr)
    print_summary(summary, run_dir)
    if cfg.run.analyze:
        from crl.analysis.api import analyze_run

        try:
            print(f"[crl] report: {analyze_run(run_dir)}")
        except CRLError as e:  # training succeeded; a report problem must not turn that into a failure
            print(f"[crl] warning: the analysis report failed: {e}", file=sys.stderr)


@exit_on_error
def main() -> None:
    sys.argv += lifecycle.preflight(sys.argv[1:], "crl train")
    plan = sweep.parse(sys.argv[1:])
    if plan is None:
        _main()
        return
    with sweep.launching(plan):  # threads per job; a failed job's CRLError reaches exit_on_error
        _main()


if __name__ == "__main__":
    main()
