"""Analyses that re-run the model on a run's prompts: `runner` (shared plumbing), `baselines`,
`shared` (the seed-free baselines computed once and shared between runs), `branch_points`, `effects` (forced
features, side effects, coefficient sweep), and `precompute` (all of them, written where `crl analyze` reads them)."""
