"""`crl bench rollout` (crl/commands/bench.py): what the steering environment costs over plain batched greedy
generation.

    crl bench rollout                                   # offline default model, arith prompts
    crl bench rollout model=tiny 'bench.batch_sizes=[1,4]' bench.new_tokens=8

Three ways to produce the same number of new tokens for the same left-padded prompts:
- plain: ``model.generate(do_sample=False, min_new_tokens=T, max_new_tokens=T)`` with the KV cache;
- steered: `SteeringVecEnv` in the mode training uses (on_device on an accelerator, host on a CPU) with a random
  feature action per row per token (coef != 0, drawn on the model's device), KV cache, EOS and stop strings
  disabled so every row runs exactly T tokens;
- naive: the same env with ``use_cache=False``, re-running the whole prefix at every token.

And one way to learn from them, the training path: a fresh policy (`PolicyAgent`, sampling) with adaptive masking and
the no-op, one batch of T-token episodes with the tensors PPO keeps, then one `ppo_update` (advantage gae).
``train_decisions_s`` = decisions / (rollout + update time), the figure to compare with `crl train`'s
``charts/decisions_per_sec`` (which leaves the update out).

Each is warmed up once, then timed `repeats` times (plain and steered interleaved, so load from other processes hits
both alike; then the training path); the median is reported. Prints ONE JSON line on stdout: per batch size,
``overhead_ratio`` = plain time / steered time (1.0 = no overhead), tokens/s of each, the training figures, and
``naive_speedup`` = naive time / steered time where the naive run was measured. On CUDA also, per batch size: the peak
memory allocated by generation (``peak_mem_mib``) and by training (``train_peak_mem_mib``), and the GPU utilisation
(percent, ``gpu_util_plain`` / ``_steered`` / ``_train``): the mean of readings taken every 50 ms while those runs
ran, from `torch.cuda.utilization` (pynvml) or else ``nvidia-smi``; the driver averages each reading over its own
window (1/6 s to 1 s), so short runs blur into what ran before them. On the CPU, or with neither source, they are
null.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
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
    import torch

    from crl.backends.model import FrozenLM
    from crl.backends.sae import LoadedSAE
    from crl.envs.steering_env import SteeringVecEnv
    from crl.envs.tasks.base import Example, Task
    from crl.run.components import Components


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


def gpu_utilization_reader(device: torch.device) -> tuple[Callable[[], float | None] | None, str | None]:
    """(a function reading the GPU's current utilisation in percent, its source), or (None, None) on the CPU or when
    neither pynvml (`torch.cuda.utilization`) nor ``nvidia-smi`` can read it."""
    import torch

    if device.type != "cuda":
        return None, None
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:
        torch.cuda.utilization(index)
        return (lambda: float(torch.cuda.utilization(index))), "pynvml"
    except Exception:  # noqa: BLE001 - no pynvml, or NVML unusable: try nvidia-smi
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None, None
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid).removeprefix("GPU-")
    except Exception:  # noqa: BLE001 - an older torch without uuid
        uuid = ""

    def read() -> float | None:
        query = [smi, "--query-gpu=uuid,utilization.gpu", "--format=csv,noheader,nounits"]
        try:
            lines = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError):
            return None
        rows = [[part.strip() for part in line.split(",")] for line in lines if "," in line]
        mine = [r for r in rows if uuid and r[0].removeprefix("GPU-") == uuid] or (rows if len(rows) == 1 else [])
        try:
            return float(mine[0][1]) if mine else None
        except ValueError:
            return None

    return (read, "nvidia-smi") if read() is not None else (None, None)


class UtilizationSampler:
    """Readings of `read` every `interval` seconds in a thread, while inside ``with sampler:`` (reusable: the
    readings of every entry add up); `mean()` is None without a reader or a reading."""

    def __init__(self, read: Callable[[], float | None] | None, interval: float = 0.05):
        self.read, self.interval = read, interval
        self.readings: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilizationSampler:
        if self.read is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def _poll(self) -> None:
        while True:
            value = self.read()
            if value is not None:
                self.readings.append(value)
            if self._stop.wait(self.interval):
                return

    def mean(self) -> float | None:
        return statistics.fmean(self.readings) if self.readings else None


class _TrainingStep:
    """One update's work on a batch, as `crl train` does it: rollouts with the sampling policy (keeping what PPO needs),
    then one PPO update and the masking's share update. Returns the number of decisions; `update_s` collects the
    update's own times."""

    def __init__(self, comps: Components, batch: list[Example], num_envs: int, seed: int, sync: Callable[[], None]):
        import torch

        from crl.agent.ppo import PolicyAgent

        self.comps, self.batch, self.sync = comps, batch, sync
        self.net = comps.new_policy()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=comps.ppo.learning_rate, eps=1e-5)
        self.masker, self.agent = comps.masker(), PolicyAgent(self.net)
        self.env = comps.env(batch, self.masker, seed=seed, num_envs=num_envs)
        self.minibatches = torch.Generator().manual_seed(seed)
        self.update_s: list[float] = []

    def __call__(self) -> int:
        import torch

        from crl.agent.ppo import ppo_update
        from crl.envs.rollout import run_episodes

        episodes = run_episodes(self.env, self.batch, self.agent, keep_tensors=True)
        self.sync()
        t0 = time.perf_counter()
        ppo_update(self.net, self.optimizer, episodes, self.comps.ppo, self.minibatches)
        self.masker.observe_update(torch.tensor([f for ep in episodes for f in ep.features]))
        self.sync()
        self.update_s.append(time.perf_counter() - t0)
        return sum(len(ep.steps) for ep in episodes)


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
    """Time plain / steered / naive decoding and the training path at each batch size; returns the JSON-ready
    result."""
    import torch

    from crl.config import MaskingConfig, PolicyConfig, PPOConfig, SteeringConfig
    from crl.run.components import Components

    _check(cfg, lm, len(examples))
    tok, model, T = lm.tokenizer, lm.model, int(cfg.new_tokens)
    add_special = not (task.cfg.chat_template and getattr(tok, "chat_template", None))
    cuda = lm.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    actions = torch.Generator(device=lm.device).manual_seed(cfg.seed)  # random actions, drawn on the device
    read_util, util_source = gpu_utilization_reader(lm.device)
    steer = SteeringConfig(
        coef=cfg.coef, coef_mode=cfg.coef_mode, allow_noop=False, max_new_tokens=T, fixed_length=True
    )
    # No masking, no policy: the envs get masker=None and random actions.
    comps = Components(lm, sae, task, {}, steer, MaskingConfig(mode="none"), PolicyConfig(), PPOConfig())
    # Training: the policy, adaptive masking and the no-op, as `crl train` has them (gae: no extra rollouts).
    learn = SteeringConfig(coef=cfg.coef, coef_mode=cfg.coef_mode, max_new_tokens=T, fixed_length=True)
    trainer = Components(lm, sae, task, {}, learn, MaskingConfig(), PolicyConfig(), PPOConfig(advantage="gae"))

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
        from crl.envs.rollout import device_mode

        on_device = device_mode(lm.device)
        env.reset(options={"examples": batch, "on_device": on_device})  # as training runs
        n = 0
        while True:
            a = torch.randint(0, sae.d_sae, (env.num_envs,), generator=actions, device=lm.device)
            _, _, term, _, info = env.step(a if on_device else a.numpy())
            n += sum(f["n_steps"] for f in info["final"][: len(batch)] if f is not None)
            if term[: len(batch)].all():
                return n

    def peak_mib() -> float | None:
        return torch.cuda.max_memory_allocated(lm.device) / 2**20 if cuda else None

    def reset_peak() -> None:
        if cuda:
            sync()
            torch.cuda.reset_peak_memory_stats(lm.device)

    def median(fn: Callable[[], int], n: int, expect: int) -> float:
        return statistics.median(_timed(fn, expect, sync) for _ in range(n))

    results: dict[str, dict[str, Any]] = {}
    for b in sorted({int(x) for x in cfg.batch_sizes}):
        batch = batch_of(b)
        env = comps.env(batch, seed=cfg.seed, num_envs=b)
        train = _TrainingStep(trainer, batch, b, cfg.seed, sync)
        plain(batch)  # warm-up: allocator, caches, lazy imports
        steered(env, batch)
        train()
        train.update_s.clear()
        utils = {k: UtilizationSampler(read_util) for k in ("plain", "steered", "train")}
        plain_t, steered_t, train_t = [], [], []
        reset_peak()
        for _ in range(cfg.repeats):  # interleaved, so background load hits them alike
            with utils["plain"]:
                plain_t.append(_timed(lambda batch=batch: plain(batch), b * T, sync))
            with utils["steered"]:
                steered_t.append(_timed(lambda env=env, batch=batch: steered(env, batch), b * T, sync))
        peak = peak_mib()
        reset_peak()
        for _ in range(cfg.repeats):
            with utils["train"]:
                train_t.append(_timed(train, b * T, sync))
        train_peak = peak_mib()
        env.close()
        train.env.close()
        p, s, t = statistics.median(plain_t), statistics.median(steered_t), statistics.median(train_t)
        results[str(b)] = {
            "plain_s": p,
            "steered_s": s,
            "plain_tok_s": b * T / p,
            "steered_tok_s": b * T / s,
            "overhead_ratio": p / s,
            "train_s": t,
            "train_update_s": statistics.median(train.update_s),
            "train_decisions_s": b * T / t,
            "peak_mem_mib": peak,
            "train_peak_mem_mib": train_peak,
            **{f"gpu_util_{k}": u.mean() for k, u in utils.items()},
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
        "device_name": torch.cuda.get_device_name(lm.device) if cuda else None,
        "model_dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."),
        "gpu_util_source": util_source,
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
