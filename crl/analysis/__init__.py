"""Analyses over CRL run directories (read with `crl.logs.reader`; format in `crl.logs.schema`).

- `offline/`: reads run directories only (statistics, feature usage, critic, layers); no model, no torch.
- `replay/`: re-runs the model through the environment (baselines, branch points, forced-feature
  effects, side effects, coefficient sweep); `replay.precompute` writes their tables into the run dir.
- `diffing/`: a base and a fine-tuned model (GRPO) teacher-forced side by side, read through the SAE: which
  features the fine-tune moved, whether CRL picked them, causal checks (`crl rl-compare`).
- `report/`: PNG plots and the self-contained HTML report: `report.analyze.analyze_run` (one run) and
  `report.compare.compare_runs` (several), built from one module per section family.
- `api`: `analyze_run(path)` and `compare_runs(paths)`, the analyses in one call (the `crl analyze` and
  `crl compare` commands are in crl/commands/report.py).
"""
