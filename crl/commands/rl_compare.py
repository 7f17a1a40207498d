"""`crl rl-compare crl_run=<CRL run> grpo_run=<GRPO run>`: which SAE features a GRPO fine-tune moved at the CRL run's
layer, and whether CRL picked them.

Checks both runs before anything loads (crl.analysis.diffing.runs), diffs the base and the tuned model on the CRL run's
prompts (crl.analysis.diffing), writes the tables (CSV), rl_compare.json and report.html into the out dir
(crl.analysis.report.diffing), and prints the verdict on stdout. Progress lines go to stderr.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from crl.config import RLCompareConfig, load
from crl.errors import exit_on_error
from crl.paths import CONF_DIR


@hydra.main(config_path=CONF_DIR, config_name="rl-compare", version_base=None)
@exit_on_error
def main(raw: DictConfig) -> None:
    from crl.analysis.diffing.runs import check_runs, compare_runs, default_out

    cfg = load(RLCompareConfig, raw)
    pair = check_runs(cfg.crl_run, cfg.grpo_run, cfg.split)  # bad input: one line before torch is imported

    from crl.analysis.diffing.diff import write_result
    from crl.analysis.report.diffing import diffing_report

    result, pair, refs = compare_runs(cfg, pair=pair)
    out = Path(cfg.out_dir) if cfg.out_dir else default_out(pair)
    write_result(result, out)
    report = diffing_report(result, refs, out)
    print(
        f"rl-compare: GRPO run {pair.grpo.run} vs CRL run {pair.crl.name} ({result.summary['settings']['n_prompts']} "
        f"{cfg.split} prompts, {result.summary['settings']['hook']})"
    )
    for line in result.verdict:
        print(f"- {line}")
    print(f"written: {out} (report: {report})")


if __name__ == "__main__":
    main()
