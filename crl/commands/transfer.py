"""`crl transfer run_dir=runs/<run> [variants=[wording:pick,range:3digit]] [n=400]`: does the policy's gain, and its
do-no-harm, hold on task variants held out of its training?

Re-runs the policy (crl.run.transfer), builds the table (crl.analysis.offline.transfer) and, with an abstention rule,
the offline ablation of its threshold (crl.analysis.offline.abstention), prints them on stdout and writes
<run_dir>/analysis/transfer.csv, transfer.json and transfer_prompts.csv; `crl analyze` then shows them as a report
section. Progress lines go to stderr.
"""

from __future__ import annotations

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
    from crl.analysis.offline.abstention import ablation_json, format_ablation, threshold_ablation
    from crl.analysis.offline.stats import StatsConfig
    from crl.analysis.offline.transfer import format_table, transfer_table, write_transfer
    from crl.run.transfer import transfer_outcomes

    cfg = load(TransferConfig, raw)
    if not cfg.run_dir:
        raise CRLError("crl transfer needs run_dir=<a run directory>")
    run_dir = Path(cfg.run_dir)
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


if __name__ == "__main__":
    main()
