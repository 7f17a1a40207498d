"""Analyses that read run directories only (no model): `stats` (CIs, paired tests), `features` (usage,
token types, task specificity), `critic` (value trajectories, calibration), `layers` (layer sweeps)."""
