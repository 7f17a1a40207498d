"""Model diffing through an SAE (`crl rl-compare`): which features a fine-tune (GRPO) moved, and whether CRL picked
them. Re-runs models, like `replay/`.

- `forward`: teacher-forced passes at the decision position (prefix cached, last token per intervention), answer
  options and margins, the control-text pass;
- `measure`: the first pass over base and tuned (residuals, SAE codes, margin gradients, patch ceilings);
- `rankings`: the global shift, the SAE's fit on both models, the three feature rankings (torch-free);
- `concordance`: CRL's usage against the rankings, density-matched nulls (torch-free);
- `causal`: steering, clamping, random sets of matched norm, the letter prior, the patch ceilings;
- `verdict`: the plain-language verdict (torch-free);
- `diff`: `diff_models`, everything in one call, and the files it writes.
"""
