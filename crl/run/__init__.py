"""Run orchestration as plain functions: a run's parts (`components`), `train`, `evaluate_run`, `bench` (the commands
are in crl/commands/)."""
