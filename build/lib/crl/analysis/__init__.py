"""Analyses over CRL run directories (format: `crl.logs.schema`).

Part A, no model needed: `rundir` (load/validate), `stats` (CIs, paired tests), `features` (usage, token
types, task specificity), `critic` (value trajectories, calibration), `layers` (layer sweeps), `plots`,
`report` (self-contained HTML, wandb), `pipeline` (`analyze_run`, `compare_runs`), `cli` (`crl analyze`,
`crl compare`), `synthetic` (run directories with known answers).
Part B, through the environment: `envrun` (shared plumbing), `baselines`, `branch_points`, `effects`,
`env_pipeline` (`run_env_analyses`: everything, written where `crl analyze` picks it up).
"""
