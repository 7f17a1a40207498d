"""`crl bench policy` (crl/commands/bench.py): the policy head and the masking at large dictionary widths.

    crl bench policy                                   # Gemma Scope widths 16k, 65k, 131k at d_model 2304, CPU
    crl bench policy 'bench.widths=[65536]' 'bench.batch_sizes=[64]' device=cuda

For each width in `bench.widths`, in a fresh Python process (so one width's peak memory is not another's), on a random
SAE of that width (`random_sae`) and a fresh policy (the policy/masking/ppo/steering groups, as `crl train` builds
them):

- decisions: `bench.repeats` episodes (after one warm-up) of `bench.steps` decisions for each batch size, each decision
  as the environment and the rollout make it: the masking (`FeatureMasker`, its running means reset per episode) on
  synthetic SAE activations, the mask repeated over the levels, then `PolicyAgent.act` (sampling, alternatives).
  ``decisions_per_s`` = decisions / (masking + policy time), the median episode; ``encode_ms``, the SAE encoder on the
  same batch, is the environment's share, reported beside it and left out of the rate. The activations: `bench.l0`
  features per token, drawn from a Zipf law over the dictionary (feature i of a random order fires with probability
  proportional to 1 / rank), so tokens share their frequent features as real SAE activations do and the masking's
  candidate sets overlap; ``valid_per_row`` and ``scored_features`` (their union over the batch: the decoder rows the
  compact path scores) say how large they were at the last step.
- the every-action path (what every width used before `policy.compact_min_d_sae`): the same last decision's
  observations and mask through a copy of the policy that scores all d_sae * levels + 1 actions, `bench.full_repeats`
  times, interleaved with the compact path on the same input: ``full_policy_ms`` and ``policy_speedup``. Left out
  (null) for a width below policy.compact_min_d_sae, where the policy itself is that path.
- PPO: a synthetic buffer of `bench.ppo_episodes` episodes from the same decisions (random 0/1 rewards), then one
  `ppo_update` with the ppo group's settings: ``update_s`` and ``step_s`` (per minibatch step), with the size of the
  buffer's masks as the rollout keeps them (dense bools) and as PPO keeps them (``buffer_compact_mib``).
- memory: the peak of each phase above what was resident when it began (``*_peak_mib``; on the CPU the resident set,
  VmHWM, reset through /proc/self/clear_refs, else getrusage's maxrss, which never falls: ``peak_resets`` says which;
  on CUDA torch's allocator peak), and the process's peak resident set (``peak_rss_mib``).

Prints a table on stdout and writes the JSON (`out`; default runs/bench/policy-<timestamp>.json). Timings on a machine
shared with other processes move with their load: the result records the load average at the start.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.config import BenchPolicyConfig, load
from crl.errors import CRLError

# As in crl.run.bench: OpenMP reads this once, when torch loads it (a spin-waiting team times the scheduler).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

if TYPE_CHECKING:
    import torch

MIB = 2**20


def default_out() -> Path:
    return Path("runs") / "bench" / f"policy-{time.strftime('%Y%m%d-%H%M%S')}.json"


# -- memory ------------------------------------------------------------------------------------------------------------
def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _maxrss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / MIB if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


class PhasePeak:
    """The peak memory of a phase above what was resident when it began: the host's resident set (VmHWM, reset at the
    start through /proc/self/clear_refs where Linux allows; else maxrss, which never falls, so an earlier phase's
    higher peak hides this one's) or, on CUDA, torch's allocator peak."""

    def __init__(self, device: torch.device):
        self.device = device
        self.max_rss = self._hwm()  # the process's peak resident set so far (resetting VmHWM loses it otherwise)
        self.resets = device.type == "cuda" or self._reset()

    @staticmethod
    def _hwm() -> float:
        hwm = _status_kib("VmHWM")
        return hwm / 1024 if hwm is not None else _maxrss_mib()

    def peak_rss(self) -> float:
        """The process's peak resident set (MiB) over its whole life, across the resets."""
        self.max_rss = max(self.max_rss, self._hwm())
        return self.max_rss

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current VmRSS
        except OSError:
            return False
        return _status_kib("VmHWM") is not None

    def start(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device) / MIB
            return
        if self.resets:
            self.peak_rss()
            self._reset()
        self._base = (_status_kib("VmRSS") or 0) / 1024 if self.resets else _maxrss_mib()

    def stop(self) -> float:
        """MiB above the phase's starting point."""
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / MIB - self._base
        hwm = self._hwm()  # since start() where it resets; else the life's peak, as _base
        self.max_rss = max(self.max_rss, hwm)
        return max(0.0, hwm - self._base)


# -- one width ---------------------------------------------------------------------------------------------------------
class ZipfActivations:
    """Sparse SAE-like activations: `l0` features per token, feature of rank r firing with probability ~ 1 / r (a
    random order of the dictionary), values |N(0, 1)| + 0.1."""

    def __init__(self, d_sae: int, l0: int, seed: int, device: torch.device):
        import torch

        self.gen = torch.Generator().manual_seed(seed)
        rank = torch.randperm(d_sae, generator=self.gen) + 1
        self.p = 1.0 / rank.double()
        self.d_sae, self.l0, self.device = d_sae, min(l0, d_sae), device

    def __call__(self, n: int) -> torch.Tensor:
        import torch

        idx = torch.multinomial(self.p.float().expand(n, -1), self.l0, replacement=False, generator=self.gen)
        vals = torch.randn(n, self.l0, generator=self.gen).abs() + 0.1
        return torch.zeros(n, self.d_sae).scatter_(1, idx, vals).to(self.device)


def measure_width(cfg: BenchPolicyConfig, d_sae: int) -> dict[str, Any]:
    """Everything measured for one width (call it in a fresh process for its memory figures)."""

    import numpy as np
    import torch

    from crl.agent.masking import FeatureMasker
    from crl.agent.policy import ActorCritic
    from crl.agent.ppo import PolicyAgent, ppo_update
    from crl.envs.rollout import Episode
    from crl.envs.tasks.base import Example
    from crl.run.bench import random_sae

    b = cfg.bench
    device = torch.device(cfg.device)
    cuda = device.type == "cuda"
    sync: Callable[[], None] = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    torch.manual_seed(b.seed)
    rng = np.random.default_rng(b.seed)
    peak = PhasePeak(device)
    levels, allow_noop = len(cfg.steering.coef_levels), cfg.steering.allow_noop

    import sae_lens  # noqa: F401  (loaded before the setup phase: its import is not the SAE's memory)

    peak.start()
    sae = random_sae(b.d_model, d_sae, 0, b.seed, str(device))
    decoder = sae.directions()
    net = ActorCritic(b.d_model, decoder, allow_noop, cfg.policy, levels).to(device)
    masker = FeatureMasker(cfg.masking, d_sae, allow_noop)
    agent = PolicyAgent(net)
    setup_peak = peak.stop()
    acts_of = ZipfActivations(d_sae, b.l0, b.seed, device)
    full = None
    if net.compact:  # the every-action path on the same weights (the decoder is shared, not copied)
        full_cfg = dataclasses.replace(cfg.policy, compact_min_d_sae=d_sae + 1)
        full = ActorCritic(b.d_model, decoder, allow_noop, full_cfg, levels).to(device)
        full.load_state_dict(net.state_dict())

    def decision(n: int, step: int) -> tuple[dict[str, Any], float, float, float]:
        """One decision of n rows: (its tensors and extras, masking s, policy s, encode s)."""
        obs = torch.randn(n, b.d_model, device=device)
        acts = acts_of(n)
        rows = torch.arange(n, device=device)
        sync()
        t0 = time.perf_counter()
        sae.encode(obs)
        sync()
        t1 = time.perf_counter()
        m = masker(acts, rows, torch.full((n,), step, device=device))
        m = torch.cat([m[:, :d_sae]] * levels + [m[:, d_sae:]], dim=1)  # every level where the feature is valid
        if not cuda:  # the environment's host mode hands numpy over; its device mode, tensors
            mask, o = m.numpy(), obs.numpy()
        else:
            mask, o = m, obs
        sync()
        t2 = time.perf_counter()
        action, extras = agent.act(o, {"action_mask": mask})
        sync()
        t3 = time.perf_counter()
        out = {"obs": obs, "mask": torch.as_tensor(mask), "action": torch.as_tensor(action), "extras": extras}
        return out, t2 - t1, t3 - t2, t1 - t0

    def episode(n: int, keep: bool = False) -> tuple[list[dict[str, Any]], float, float, float]:
        """One episode of n rows: its decisions (every one with `keep`, as a rollout keeps them for PPO; else only
        the last) and its masking, policy and encode seconds."""
        masker.begin(n)
        steps, mask_s, policy_s, encode_s = [], 0.0, 0.0, 0.0
        for t in range(b.steps):
            d, ms, ps, es = decision(n, t)
            steps = [*steps, d] if keep else [d]
            mask_s, policy_s, encode_s = mask_s + ms, policy_s + ps, encode_s + es
        return steps, mask_s, policy_s, encode_s

    batches: dict[str, dict[str, Any]] = {}
    for n in sorted(set(b.batch_sizes)):
        episode(n)  # warm-up
        peak.start()
        runs = [episode(n) for _ in range(b.repeats)]
        decide_peak = peak.stop()
        order = sorted(range(len(runs)), key=lambda i: runs[i][1] + runs[i][2])
        _, mask_s, policy_s, encode_s = runs[order[len(order) // 2]]
        last = runs[-1][0][-1]
        cand = net.candidates(last["mask"].to(device))
        steer = cand.ids[:, : cand.ids.shape[1] - int(cand.noop)]
        row: dict[str, Any] = {
            "decisions_per_s": n * b.steps / (mask_s + policy_s),
            "mask_ms": 1e3 * mask_s / b.steps,
            "policy_ms": 1e3 * policy_s / b.steps,
            "encode_ms": 1e3 * encode_s / b.steps,
            "valid_per_row": float(cand.valid.sum(-1).float().mean()),
            "scored_features": int(torch.unique(steer[steer >= 0] % d_sae).numel()),
            "decide_peak_mib": decide_peak,
            "full_policy_ms": None,
            "compact_policy_ms": None,
            "policy_speedup": None,
            "full_peak_mib": None,
        }
        if full is not None and b.full_repeats:
            o, m = last["obs"], last["mask"].to(device)
            full_t, compact_t = [], []
            peak.start()
            with torch.no_grad():
                for _ in range(b.full_repeats):  # interleaved: load from other processes hits both alike
                    for net_, times in ((full, full_t), (net, compact_t)):
                        sync()
                        t0 = time.perf_counter()
                        net_.get_action_and_value(o, m)
                        sync()
                        times.append(time.perf_counter() - t0)
            row["full_peak_mib"] = peak.stop()
            f, c = statistics.median(full_t), statistics.median(compact_t)
            row.update(full_policy_ms=1e3 * f, compact_policy_ms=1e3 * c, policy_speedup=f / c)
        batches[str(n)] = row

    # PPO: a synthetic buffer from the same decisions, then one update.
    n_envs = min(cfg.ppo.num_envs, b.ppo_episodes)
    episodes: list[Episode] = []
    n_steer = d_sae * levels
    for start in range(0, b.ppo_episodes, n_envs):
        n = min(n_envs, b.ppo_episodes - start)
        steps = episode(n, keep=True)[0]
        for r in range(n):
            i = start + r
            recs = []
            for s in steps:
                a = int(s["action"][r])
                lp, v = s["extras"]["logprob"][r], s["extras"]["value"][r]
                recs.append({"logprob": float(lp), "value": float(v), "feature": a % d_sae if a < n_steer else -1})
            reward = float(rng.integers(0, 2))
            ex = Example(id=f"p{i // cfg.ppo.group_size}", prompt="", answer="")
            ep = Episode(ex, "", reward, reward > 0, True, "length", recs)
            ep.obs = torch.stack([s["obs"][r].cpu() for s in steps])
            ep.masks = torch.stack([s["mask"][r].cpu() for s in steps])
            ep.actions = torch.tensor([int(s["action"][r]) for s in steps])
            episodes.append(ep)
    unsteered = {ep.example.id: 0.0 for ep in episodes}
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.ppo.learning_rate, eps=1e-5)
    buffer_dense = sum(ep.masks.numel() * ep.masks.element_size() for ep in episodes) / MIB
    compact = [net.candidates(ep.masks) for ep in episodes] if net.compact else []
    buffer_compact = sum(c.ids.numel() * 8 + c.valid.numel() for c in compact) / MIB if compact else None
    del compact
    peak.start()
    sync()
    t0 = time.perf_counter()
    stats = ppo_update(net, optimizer, episodes, cfg.ppo, torch.Generator().manual_seed(b.seed), unsteered)
    sync()
    update_s = time.perf_counter() - t0
    ppo_peak = peak.stop()
    n_dec = int(stats["charts/decisions"])
    mb = max(1, n_dec // cfg.ppo.num_minibatches)
    n_steps = cfg.ppo.update_epochs * -(-n_dec // mb) if n_dec else 0

    params = sum(p.numel() for p in net.parameters())
    return {
        "d_sae": d_sae,
        "n_actions": net.n_actions,
        "compact": net.compact,
        "params": params,
        "params_mib": sum(p.numel() * p.element_size() for p in net.parameters()) / MIB,
        "decoder_mib": decoder.numel() * decoder.element_size() / MIB,  # the policy's by reference: the SAE's own
        "sae_mib": sum(p.numel() * p.element_size() for p in sae.sae.parameters()) / MIB,
        "setup_peak_mib": setup_peak,
        "batches": batches,
        "ppo": {
            "episodes": len(episodes),
            "decisions": n_dec,
            "minibatch": mb,
            "steps": n_steps,
            "update_s": update_s,
            "step_s": update_s / max(1, n_steps),
            "peak_mib": ppo_peak,
            "buffer_masks_mib": buffer_dense,
            "buffer_compact_mib": buffer_compact,
        },
        "peak_resets": peak.resets,
        "peak_rss_mib": peak.peak_rss(),
        "cuda_peak_mib": torch.cuda.max_memory_allocated(device) / MIB if cuda else None,
    }


# -- all widths --------------------------------------------------------------------------------------------------------
def bench_policy(cfg: BenchPolicyConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Each width in a fresh process (`python -m crl.run.bench_policy`); returns the JSON-ready result."""
    import torch

    from crl.config.device import check_devices

    load(BenchPolicyConfig, cfg)
    check_devices(cfg)
    payload = json.dumps(dataclasses.asdict(cfg))
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other processes' load, before we add ours
    widths = []
    for w in cfg.bench.widths:
        if log is not None:
            log(f"[crl] bench policy: d_sae={w:,} d_model={cfg.bench.d_model} ...")
        proc = subprocess.run(
            [sys.executable, "-m", "crl.run.bench_policy", str(w)],
            input=payload,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")},
        )
        if proc.returncode:
            why = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
            raise CRLError(f"bench policy at d_sae={w} failed with exit code {proc.returncode}{why}; see stderr above")
        widths.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {
        "bench": "policy",
        "d_model": cfg.bench.d_model,
        "levels": len(cfg.steering.coef_levels),
        "allow_noop": cfg.steering.allow_noop,
        "head": cfg.policy.head,
        "hidden": cfg.policy.hidden,
        "compact_min_d_sae": cfg.policy.compact_min_d_sae,
        "masking": cfg.masking.mode,
        "masking_features": cfg.masking.features,  # mode=fixed: the candidates at every decision; else null
        "top_k": cfg.masking.top_k,
        "l0": cfg.bench.l0,
        "steps": cfg.bench.steps,
        "repeats": cfg.bench.repeats,
        "device": cfg.device,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_avg_1m": load1,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
        "widths": {str(r["d_sae"]): r for r in widths},
    }


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _masking(result: dict[str, Any]) -> str:
    """The masking as an override names it: `fixed` with its features."""
    features = result.get("masking_features")
    return result["masking"] + (f" features=[{','.join(map(str, features))}]" if features else "")


def format_table(result: dict[str, Any]) -> str:
    """The result as a plain table: one line per width and batch size, then one per width for PPO and memory."""
    head = (
        f"crl bench policy: d_model={result['d_model']} levels={result['levels']} head={result['head']} "
        f"masking={_masking(result)} l0={result['l0']} device={result['device']} threads={result['threads']} "
        f"load={_fmt(result['load_avg_1m'], '.2f')}"
    )
    cols = ["d_sae", "batch", "dec/s", "mask ms", "policy ms", "encode ms", "valid/row", "scored", "full ms", "speedup"]
    cols += ["decide MiB"]
    lines = [head, "  ".join(f"{c:>10}" for c in cols)]
    for w, r in result["widths"].items():
        for n, row in r["batches"].items():
            vals = [
                w,
                n,
                _fmt(row["decisions_per_s"], ".1f"),
                _fmt(row["mask_ms"], ".1f"),
                _fmt(row["policy_ms"], ".1f"),
                _fmt(row["encode_ms"], ".1f"),
                _fmt(row["valid_per_row"], ".0f"),
                str(row["scored_features"]),
                _fmt(row["full_policy_ms"], ".0f"),
                _fmt(row["policy_speedup"], ".1f"),
                _fmt(row["decide_peak_mib"], ".0f"),
            ]
            lines.append("  ".join(f"{v:>10}" for v in vals))
    cols = ["d_sae", "params", "params MiB", "SAE MiB", "PPO dec", "update s", "step s", "PPO MiB", "masks MiB"]
    cols += ["compact MiB", "peak RSS"]
    lines += ["", "  ".join(f"{c:>11}" for c in cols)]
    for w, r in result["widths"].items():
        p = r["ppo"]
        vals = [
            w,
            f"{r['params']:,}",
            _fmt(r["params_mib"], ".1f"),
            _fmt(r["sae_mib"], ".0f"),
            str(p["decisions"]),
            _fmt(p["update_s"], ".2f"),
            _fmt(p["step_s"], ".3f"),
            _fmt(p["peak_mib"], ".0f"),
            _fmt(p["buffer_masks_mib"], ".1f"),
            _fmt(p["buffer_compact_mib"], ".2f"),
            _fmt(r["cuda_peak_mib"] if r["cuda_peak_mib"] is not None else r["peak_rss_mib"], ".0f"),
        ]
        lines.append("  ".join(f"{v:>11}" for v in vals))
    return "\n".join(lines)


def main() -> None:
    """The child process: the config as JSON on stdin, the width as the argument; one JSON line on stdout."""
    cfg = load(BenchPolicyConfig, json.loads(sys.stdin.read()))
    print(json.dumps(measure_width(cfg, int(sys.argv[1]))))


if __name__ == "__main__":
    main()
