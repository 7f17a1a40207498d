"""`crl bench rollout` (crl/commands/bench.py): what the steering environment costs over plain batched greedy
generation.

    crl bench rollout                                   # offline default model, arith prompts
    crl bench rollout model=tiny 'bench.batch_sizes=[1,4]' bench.new_tokens=8

Three ways to produce the same number of new tokens for the same left-padded prompts:
- plain: ``model.generate(do_sample=False, min_new_tokens=T, max_new_tokens=T)`` with the KV cache;
- steered: `SteeringVecEnv` with a random feature action per row per token (coef != 0), KV cache,
  EOS and stop strings disabled so every row runs exactly T tokens;
- naive: the same env with ``use_cache=False``, re-running the whole prefix at every token.

Each is warmed up once, then timed `repeats` times (plain and steered interleaved, so load from other
processes hits both alike); the median is reported. Prints ONE JSON line on stdout: per batch size,
``overhead_ratio`` = plain time / steered time (1.0 = no overhead), tokens/s of each, and
``naive_speedup`` = naive time / steered time where the naive run was measured.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from crl.config import BenchConfig, BenchRolloutConfig, SAEConfig, validate
from crl.errors import CRLError

# OpenMP reads this once, when torch loads it, so it is set before anything here imports torch. With the
# default active spin-wait, the main thread's 2-thread team slows down ~10x on a machine shared with other
# processes while the env's worker-thread team does not: the bench would time the scheduler, not the env.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    from crl.backends.model import FrozenLM
    from crl.backends.sae import LoadedSAE
    from crl.envs.steering_env import SteeringVecEnv
    from crl.envs.tasks.base import Example, Task


def random_sae(d_model: int, d_sae: int, layer: int, seed: int = 0, device: str = "cpu") -> LoadedSAE:
    """A sae-lens StandardSAE with random unit decoder rows: the bench measures speed, not features."""
    import torch

    from crl.backends.hooks import HookPoint
    from crl.backends.sae import sae_from_decoder

    w = torch.randn(d_sae, d_model, generator=torch.Generator().manual_seed(seed))
    return sae_from_decoder(w, HookPoint(layer, "post"), f"random:layer{layer}:d_sae{d_sae}:seed{seed}", device)


def _check(cfg: BenchConfig, lm: FrozenLM, n_examples: int) -> None:
    validate(cfg, "bench.")
    if n_examples < 1:
        raise CRLError("the bench task gave no prompts; check task.n_* and bench.split")
    if not 0 <= cfg.layer < lm.n_layers:
        raise CRLError(f"bench.layer={cfg.layer} is out of range: {lm.name} has {lm.n_layers} layers")


def _timed(fn: Callable[[], int], expect: int, sync: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    n = fn()
    sync()
    elapsed = time.perf_counter() - t0
    if n != expect:  # a run that stopped early would flatter its speed
        raise CRLError(f"bench run produced {n} new tokens, expected {expect}")
    return elapsed


def bench_rollout(
    lm: FrozenLM, sae: LoadedSAE, task: Task, examples: list[Example], cfg: BenchConfig
) -> dict[str, Any]:
    """Time plain / steered / naive decoding at each batch size; returns the JSON-ready result."""
    import numpy as np
    import torch

    from crl.config import MaskingConfig, PolicyConfig, PPOConfig, SteeringConfig
    from crl.run.components import Components

    _check(cfg, lm, len(examples))
    tok, model, T = lm.tokenizer, lm.model, int(cfg.new_tokens)
    add_special = not (task.cfg.chat_template and getattr(tok, "chat_template", None))
    rng = np.random.default_rng(cfg.seed)
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
    steer = SteeringConfig(
        coef=cfg.coef, coef_mode=cfg.coef_mode, allow_noop=False, max_new_tokens=T, fixed_length=True
    )
    # No masking, no policy: the envs get masker=None and random actions.
    comps = Components(lm, sae, task, {}, steer, MaskingConfig(mode="none"), PolicyConfig(), PPOConfig())

    def batch_of(b: int) -> list[Example]:
        return [examples[i % len(examples)] for i in range(b)]  # cycle when the split is small

    def plain(batch: list[Example]) -> int:
        prompts = [task.format_prompt(e, tok) for e in batch]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special).to(lm.device)
        with torch.no_grad():
            out = model.generate(
                **enc, do_sample=False, min_new_tokens=T, max_new_tokens=T, pad_token_id=tok.pad_token_id
            )
        return int(out[:, enc["input_ids"].shape[1] :].numel())

    def steered(env: SteeringVecEnv, batch: list[Example]) -> int:
        env.reset(options={"examples": batch})
        n = 0
        while True:
            _, _, term, _, info = env.step(rng.integers(0, sae.d_sae, size=env.num_envs))
            n += sum(r is not None for r in info["records"])
            if term[: len(batch)].all():
                return n

    def median(fn: Callable[[], int], n: int, expect: int) -> float:
        return statistics.median(_timed(fn, expect, sync) for _ in range(n))

    results: dict[str, dict[str, Any]] = {}
    for b in sorted({int(x) for x in cfg.batch_sizes}):
        batch = batch_of(b)
        env = comps.env(batch, seed=cfg.seed, num_envs=b)
        plain(batch)  # warm-up: allocator, caches, lazy imports
        steered(env, batch)
        plain_t, steered_t = [], []
        for _ in range(cfg.repeats):  # interleaved, so background load hits both alike
            plain_t.append(_timed(lambda batch=batch: plain(batch), b * T, sync))
            steered_t.append(_timed(lambda env=env, batch=batch: steered(env, batch), b * T, sync))
        env.close()
        p, s = statistics.median(plain_t), statistics.median(steered_t)
        results[str(b)] = {
            "plain_s": p,
            "steered_s": s,
            "plain_tok_s": b * T / p,
            "steered_tok_s": b * T / s,
            "overhead_ratio": p / s,
        }
    for b in sorted({int(x) for x in cfg.naive_batch_sizes}):
        batch = batch_of(b)
        env = comps.env(batch, seed=cfg.seed, num_envs=b, use_cache=False)
        naive = median(lambda env=env, batch=batch: steered(env, batch), cfg.naive_repeats, b * T)
        env.close()
        row = results.get(str(b))
        if row is None:  # a naive-only size still needs its cached steered time to compare against
            env = comps.env(batch, seed=cfg.seed, num_envs=b)
            steered(env, batch)
            s = median(lambda env=env, batch=batch: steered(env, batch), cfg.repeats, b * T)
            env.close()
            row = results[str(b)] = {"steered_s": s, "steered_tok_s": b * T / s}
        row.update(naive_s=naive, naive_tok_s=b * T / naive, naive_speedup=naive / row["steered_s"])
    return {
        "bench": "rollout",
        "model": lm.name,
        "sae": sae.source,
        "layer": sae.hook.layer,
        "d_sae": sae.d_sae,
        "task": task.name,
        "new_tokens": T,
        "repeats": cfg.repeats,
        "naive_repeats": cfg.naive_repeats,
        "coef": cfg.coef,
        "coef_mode": cfg.coef_mode,
        "device": str(lm.device),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "results": dict(sorted(results.items(), key=lambda kv: int(kv[0]))),
    }


def _sae_for(cfg: BenchConfig, lm: FrozenLM, device: str, default_model: bool) -> LoadedSAE:
    from crl.backends.sae import load_sae

    if cfg.sae in ("auto", "default") and default_model:
        from crl.backends.sae_store import default_sae_dir

        if (default_sae_dir(cfg.layer) / "cfg.json").exists():
            return load_sae(SAEConfig(source="default", layer=cfg.layer, device=device))
    if cfg.sae == "default":
        raise CRLError(
            f"bench.sae=default needs the built default SAE for layer {cfg.layer} on the default "
            f"model; run `crl sae build sae.layer={cfg.layer}` or use bench.sae=random"
        )
    sae = random_sae(lm.d_model, cfg.d_sae, cfg.layer, cfg.seed)
    sae.sae.to(lm.device)
    return sae


def run_bench(cfg: BenchRolloutConfig) -> dict[str, Any]:
    """Load the model, the task's prompts and an SAE as `cfg` says, then `bench_rollout`."""
    import torch

    from crl.backends.model import load_model
    from crl.envs.tasks.registry import make_task

    task = make_task(cfg.task)
    examples = task.load(cfg.bench.split)
    lm = load_model(cfg.model)
    _check(cfg.bench, lm, len(examples))
    sae = _sae_for(cfg.bench, lm, cfg.model.device, cfg.model.source == "default")
    torch.manual_seed(cfg.bench.seed)
    return bench_rollout(lm, sae, task, examples, cfg.bench)
