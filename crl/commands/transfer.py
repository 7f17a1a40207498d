"""`crl transfer run_dir=runs/<run> [variants=[wording:pick,range:3digit]] [n=400]`: does the policy's gain, and its
do-no-harm, hold on task variants held out of its training?

Re-runs the policy (crl.run.transfer), builds the table (crl.analysis.offline.transfer) and, with an abstention rule,
the offline ablation of its threshold (crl.analysis.offline.abstention), prints them on stdout and writes
<run_dir>/analysis/transfer.csv, transfer.json and transfer_prompts.csv; `crl analyze` then shows them as a report
section. Progress lines go to stderr.

`crl transfer 'run_dirs=[a,b,c]' [out=<dir>]` pools seeds of one recipe (crl.analysis.offline.transfer_pool): every
check first (run directories, one model/SAE/task/layer, one trained distribution, variant list and rules, a policy
where a transfer must run), then the transfer above on each run whose stored result was not made with these settings,
then the pooled table and issue #19's acceptance lines on stdout, and <out>/transfer_pooled.{csv,json,png} (out:
default the runs' common parent folder; there a transfer_pooled.json of other runs is not replaced).

`crl transfer 'committee=[a,b,c]' [quorum=all|majority] [agree=action|answer] [out=<dir>]` scores a seed committee
as one policy (crl/agent/committee.py: it steers only where the quorum of the members' greedy policies pick the same
action, or with agree=answer reach the same answer on their own episodes): every
check first (run directories, one model/SAE/task/layer, one steering and masking: crl.run.transfer_committee), then
the transfer's rollouts with the arm `committee`, the table with each variant's member agreement and issue #19's
acceptance line on stdout, and <out>/transfer_committee.{csv,json} and transfer_committee_prompts.csv (out: default
<the runs' common parent>/committee-<quorum>; there a committee of other runs is not replaced).
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import pandas as pd
from omegaconf import DictConfig

from crl.config import TransferConfig, load
from crl.errors import CRLError, exit_on_error
from crl.paths import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="transfer", version_base=None)
@exit_on_error
def main(raw: DictConfig) -> None:
    cfg = load(TransferConfig, raw)
    if cfg.committee:
        committee(cfg)
        return
    if cfg.run_dirs:
        pooled(cfg)
        return
    if not cfg.run_dir:
        raise CRLError("crl transfer needs run_dir=<a run directory>, or run_dirs=[<run directories>] to pool seeds")
    transfer_one(Path(cfg.run_dir), cfg)


def transfer_one(run_dir: Path, cfg: TransferConfig) -> None:
    """The transfer of one run with `cfg`'s settings: its table (and ablation) on stdout, its files in the run."""
    from crl.analysis.offline.abstention import ablation_json, format_ablation, threshold_ablation
    from crl.analysis.offline.stats import StatsConfig
    from crl.analysis.offline.transfer import format_table, transfer_table, write_transfer
    from crl.run.transfer import transfer_outcomes

    outcomes, variants, settings = transfer_outcomes(
        run_dir, cfg.variants, cfg.n, cfg.seed, cfg.fit_abstain, cfg.greedy_rule
    )
    frame = pd.DataFrame(outcomes)
    stats_cfg = StatsConfig(n_boot=cfg.n_boot, seed=cfg.boot_seed)
    table = transfer_table(frame, variants, stats_cfg)
    ablation, note = threshold_ablation(frame, variants, cfg=stats_cfg)
    settings = {**settings, "n_boot": cfg.n_boot, "boot_seed": cfg.boot_seed}
    saved = ablation_json(ablation, note) if len(ablation) or note else None
    paths = write_transfer(run_dir / "analysis", table, frame, settings, saved)
    print(f"transfer of {settings['run']} (trained on {settings['trained']})")
    print(format_table(table))
    if len(ablation):
        print()
        print(format_ablation(ablation))
    elif note:
        print(note)
    print(f"written: {paths['csv']}, {paths['json']}")


def pooled(cfg: TransferConfig) -> None:
    """`crl transfer run_dirs=[...]` (module docstring)."""
    from crl.analysis.offline import transfer_pool as tp
    from crl.analysis.offline.stats import StatsConfig
    from crl.analysis.report.transfer import forest_plot
    from crl.run.components import policy_file, saved_config
    from crl.run.transfer import plan_transfer

    dirs = _run_dirs(cfg.run_dirs or [], "run_dirs")
    out = Path(cfg.out) if cfg.out else tp.default_out(dirs)
    if not cfg.out:
        tp.check_out(out, dirs)
    plans = [plan_transfer(d, cfg.variants, cfg.n, cfg.seed, cfg.fit_abstain, cfg.greedy_rule, False) for d in dirs]
    hint = "pool seeds of one recipe (or set greedy_rule=, fit_abstain= for all)"
    tp.check_same([(d.name, p.settings, p.specs) for d, p in zip(dirs, plans, strict=True)], tp.PLAN_KEYS, hint)
    stale = {d: why for d, p in zip(dirs, plans, strict=True) if (why := tp.stale_reason(d, p.settings, p.specs))}
    for d, why in stale.items():  # before any transfer runs
        if policy_file(d) is None:
            raise CRLError(f"{d} has no trained policy (policy.pt or a checkpoint) to transfer ({why})")
        saved_config(d)  # a device this host cannot use: one line now
    for i, (d, why) in enumerate(stale.items(), 1):
        print(f"[crl] transfer {i}/{len(stale)}: {d.name}: {why}; running it", file=sys.stderr, flush=True)
        transfer_one(d, cfg)
        print()
    result = tp.pool_transfer([tp.read_run_transfer(d) for d in dirs], StatsConfig(cfg.n_boot, seed=cfg.boot_seed))
    paths = tp.write_pooled(out, result)
    png = forest_plot(result, out / tp.PNG)
    reused = len(dirs) - len(stale)
    print(f"transfer pooled over {len(dirs)} runs ({reused} stored transfers reused, {len(stale)} run now)")
    print(tp.format_pooled(result))
    print()
    print("\n".join(tp.acceptance_lines(result)))
    print(f"written: {paths['csv']}, {paths['json']}, {png}")


def _run_dirs(given: list[str], key: str) -> list[Path]:
    """`given` as paths, each a run directory listed once, of one model, SAE, task, task seed and layer (run.json);
    else one CRLError line naming `key`."""
    from crl.analysis.diffing.runs import check_comparable
    from crl.logs import schema
    from crl.logs.schema import RunInfo

    dirs = [Path(d).expanduser() for d in given]
    seen: set[Path] = set()
    for d in dirs:
        if not (d / schema.RUN_JSON).exists() or not (d / schema.CONFIG_YAML).exists():
            raise CRLError(f"{key}: {d} is not a CRL run directory (needs {schema.CONFIG_YAML} and {schema.RUN_JSON})")
        if d.resolve() in seen:
            raise CRLError(f"{key}: {d} is listed twice")
        seen.add(d.resolve())
    check_comparable({str(d): RunInfo.read(d) for d in dirs})
    return dirs


def committee(cfg: TransferConfig) -> None:
    """`crl transfer committee=[...]` (module docstring)."""
    from crl.analysis.offline import transfer_committee as tc
    from crl.analysis.offline import transfer_pool as tp
    from crl.analysis.offline.stats import StatsConfig
    from crl.analysis.offline.transfer import format_table
    from crl.run.transfer_committee import committee_name, committee_outcomes, plan_committee

    dirs = _run_dirs(cfg.committee or [], "committee")
    plan = plan_committee(dirs, cfg.quorum, cfg.variants, cfg.n, cfg.seed, cfg.greedy_rule, cfg.agree)  # no model yet
    out = Path(cfg.out) if cfg.out else tp.default_out(dirs) / committee_name(cfg.quorum, cfg.agree)
    if not cfg.out:
        tp.check_out(out, dirs, tc.JSON, "is a committee of")
    names = ", ".join(d.name for d in dirs)
    k = plan.quorum
    what = "the same action" if cfg.agree == "action" else "the same answer, each on its own episode"
    print(
        f"[crl] committee of {len(dirs)} runs ({names}): steers where {k} of {len(dirs)} agree on {what}",
        file=sys.stderr,
    )
    outcomes, variants, settings = committee_outcomes(plan)
    frame = pd.DataFrame(outcomes)
    table = tc.committee_table(frame, variants, len(dirs), StatsConfig(n_boot=cfg.n_boot, seed=cfg.boot_seed))
    acceptance = tc.committee_acceptance(table)
    settings = {**settings, "n_boot": cfg.n_boot, "boot_seed": cfg.boot_seed}
    paths = tc.write_committee(out, table, frame, settings, acceptance)
    rule = f"quorum {cfg.quorum} ({k} of {len(dirs)}), agree on {cfg.agree}"
    print(f"transfer of a committee of {len(dirs)} runs ({names}), {rule}")
    print(f"trained on {settings['trained']}")
    print(format_table(table))
    print()
    print(tc.format_agreement(table, len(dirs), k, cfg.agree))
    print()
    print(acceptance[1])
    print(f"written: {paths['csv']}, {paths['json']}, {paths['prompts']}")


if __name__ == "__main__":
    main()
