"""The analysis report: `analyze` (one run) and `compare` (several) orchestrate the section modules
(`accuracy`, `usage`, `value`, `replayed`, `sweeps`) over a `document.Report` with `plots`."""
