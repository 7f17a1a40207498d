"""`crl train`: learn which SAE feature to amplify at each token, and write down everything it did.

    crl train                                    # offline default: SmolLM2-135M + CRL's SAE, arith task
    crl train experiment=planted                 # planted diagnostic task on a tiny model (seconds)
    crl train -m seed=0,1 steering.layer=3,6     # a sweep: one run directory per job
    crl train resume=runs/<run>                  # continue from the last checkpoint

One PPO update = collect `ppo.episodes_per_update` episodes with the sampling policy (lockstep batches of
`ppo.num_envs`), then `ppo_update`. Before training the unsteered model is evaluated on the held-out
split (phase `baseline:none:<split>`); after it, the greedy policy (phase `eval:<split>`).
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from crl.components import Components, build, to_dataclass
from crl.envs.rollout import Episode, NoSteer, run_episodes
from crl.envs.tasks.base import Example
from crl.errors import CRLError, exit_on_error
from crl.logs import schema
from crl.logs.run_dir import RunWriter, atomic_write_bytes, atomic_write_json, load_checkpoint
from crl.logs.wandb_logger import LoggerConfig, WandbLogger
from crl.paths import CONF_DIR
from crl.policy import ActorCritic
from crl.ppo import PolicyAgent, ppo_update

IDENTITY_KEYS = ("model", "sae_identity", "task", "task_seed", "layer")


@dataclass
class RunConfig:
    name: str = "default"
    eval_split: str = "test"
    eval_before: bool = True
    checkpoint_every: int = 1
    analyze: bool = True
    top_features: int = 10


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def episode_rows(
    episodes: list[Episode], run: str, phase: str, update: int, first_episode: int, seed: int | None = None
) -> tuple[list[dict], list[dict]]:
    """Intervention rows (one per steered token) and episode rows, in the schema of `crl.logs.schema`."""
    inter, eps = [], []
    for j, ep in enumerate(episodes):
        eid = first_episode + j
        for s in ep.steps:
            inter.append(
                schema.InterventionRow(
                    run=run,
                    phase=phase,
                    update=update,
                    episode=eid,
                    prompt_id=ep.example.id,
                    step=s["step"],
                    position=s["position"],
                    token_id=s["token_id"],
                    token=s["token"],
                    feature=s["feature"],
                    coef=s["coef"],
                    logprob=float(s.get("logprob", 0.0)),
                    value=float(s.get("value", 0.0)),
                    feature_act=s["feature_act"],
                    resid_norm=s["resid_norm"],
                    top_alternatives=list(s.get("top_alternatives", [])),
                    reward=ep.reward,
                    correct=ep.correct,
                    well_formed=ep.well_formed,
                ).to_dict()
            )
        meta = {**ep.example.meta, **({"seed": seed} if seed is not None else {})}
        eps.append(
            schema.EpisodeRow(
                run,
                phase,
                update,
                eid,
                ep.example.id,
                ep.completion,
                ep.example.answer,
                ep.reward,
                ep.correct,
                ep.well_formed,
                len(ep.steps),
                meta,
            ).to_dict()
        )
    return inter, eps


def accuracy(episodes: list[Episode]) -> dict[str, float]:
    n = max(1, len(episodes))
    return {
        "accuracy": sum(e.correct for e in episodes) / n,
        "well_formed": sum(e.well_formed for e in episodes) / n,
        "mean_reward": sum(e.reward for e in episodes) / n,
    }


def feature_usage(episodes: list[Episode], comps: Components, top: int) -> list[dict[str, Any]]:
    counts: Counter[int] = Counter()
    rewards: dict[int, list[float]] = {}
    for ep in episodes:
        for f in ep.features:
            counts[f] += 1
            rewards.setdefault(f, []).append(ep.reward)
    total = max(1, sum(counts.values()))
    return [
        {
            "feature": f,
            "count": c,
            "share": c / total,
            "mean_reward": float(np.mean(rewards[f])),
            "neuronpedia_url": comps.sae.neuronpedia_url(f) if f >= 0 else None,
        }
        for f, c in counts.most_common(top)
    ]


def sample_batch(examples: list[Example], n_episodes: int, rng: np.random.Generator, group: int) -> list[Example]:
    """Prompts for one update; with group-relative advantages each prompt appears `group` times."""
    n_prompts = max(1, n_episodes // group)
    idx = rng.choice(len(examples), size=n_prompts, replace=n_prompts > len(examples))
    return [examples[i] for i in idx for _ in range(group)]


def evaluate(comps: Components, split: str, agent: Any, seed: int) -> list[Episode]:
    env = comps.env(split, comps.masker(for_eval=True), seed)
    try:
        return run_episodes(env, comps.splits[split], agent if agent is not None else NoSteer(env))
    finally:
        env.close()


def run_identity(cfg: DictConfig, comps: Components) -> dict[str, Any]:
    return {
        "model": comps.lm.name,
        "sae_identity": comps.sae.identity,
        "task": comps.task.name,
        "task_seed": int(cfg.task.seed),
        "layer": comps.sae.hook.layer,
    }


def resume_config(cfg: DictConfig, run_dir: Path, user_overrides: list[str] | None) -> DictConfig:
    """A bare `resume=<dir>` continues with the run's saved config. With other overrides, the composed
    config is used, but it must name the same model, SAE, task and layer (checked before any loading)."""
    saved = OmegaConf.load(run_dir / schema.CONFIG_YAML)
    own = [o for o in (user_overrides or []) if not o.startswith(("resume=", "hydra."))]
    if not own:
        saved.resume = str(run_dir)
        return saved
    diffs = [
        k
        for k in ("model", "sae", "task")
        if OmegaConf.to_container(cfg[k], resolve=True) != OmegaConf.to_container(saved[k], resolve=True)
    ]
    if int(cfg.steering.layer) != int(saved.steering.layer):
        diffs.append("steering.layer")
    if diffs:
        raise CRLError(
            f"resume dir {run_dir} is incompatible with this config: {', '.join(diffs)} differ from the "
            "run's; resume with `crl train resume=<dir>` alone, or start a new run"
        )
    return cfg


def train(cfg: DictConfig, run_dir: Path, user_overrides: list[str] | None = None) -> dict[str, Any]:
    t0 = time.time()
    resume = cfg.get("resume")
    ckpt = None
    if resume:
        run_dir = Path(resume)
        if not (run_dir / schema.RUN_JSON).exists() or not (run_dir / schema.CONFIG_YAML).exists():
            raise CRLError(f"resume={resume} is not a CRL run directory (no {schema.RUN_JSON} / {schema.CONFIG_YAML})")
        cfg = resume_config(cfg, run_dir, user_overrides)
        ckpt = load_checkpoint(run_dir)  # fails fast on a missing or corrupt checkpoint
    exp = to_dataclass(RunConfig, cfg.run, "run")
    log_cfg = to_dataclass(LoggerConfig, cfg.logger, "logger")
    seed = int(cfg.seed)
    seed_everything(seed)
    comps = build(cfg)
    ppo = comps.ppo
    ident = run_identity(cfg, comps)
    run_name = run_dir.name
    if ckpt is not None:
        import json

        saved = json.loads((run_dir / schema.RUN_JSON).read_text())
        diff = {k: (saved.get(k), ident[k]) for k in IDENTITY_KEYS if saved.get(k) != ident[k]}
        if diff:
            raise CRLError(
                f"resume dir {run_dir} is incompatible with this config: "
                + "; ".join(f"{k}: run has {a!r}, config gives {b!r}" for k, (a, b) in diff.items())
            )
    else:
        atomic_write_json(
            run_dir / schema.RUN_JSON,
            {
                "format_version": schema.FORMAT_VERSION,
                "run": run_name,
                **ident,
                "hook_name": comps.sae.hook_name,
                "d_sae": comps.sae.d_sae,
                "neuronpedia_id": comps.sae.neuronpedia_id,
                "seed": seed,
                "coef": comps.steering.coef,
                "coef_mode": comps.steering.coef_mode,
                "planted": comps.planted,
                "allow_noop": comps.steering.allow_noop,
            },
        )
        atomic_write_bytes(run_dir / schema.CONFIG_YAML, OmegaConf.to_yaml(cfg, resolve=True).encode())

    masker = comps.masker()
    net = ActorCritic(comps.lm.d_model, comps.sae.directions(), comps.steering.allow_noop, comps.policy)
    optimizer = torch.optim.Adam(net.parameters(), lr=ppo.learning_rate, eps=1e-5)
    batch_rng = np.random.default_rng(seed)
    mb_gen = torch.Generator().manual_seed(seed)
    writer = RunWriter(run_dir)
    start_update, episode_counter, global_step = 0, 0, 0
    logger = None
    try:
        if ckpt is not None:
            net.load_state_dict(ckpt["policy"], strict=False)
            optimizer.load_state_dict(ckpt["optimizer"])
            masker.load_state_dict(ckpt["masking"])
            torch.set_rng_state(ckpt["rng"]["torch"])
            np.random.set_state(ckpt["rng"]["numpy"])
            random.setstate(ckpt["rng"]["python"])
            batch_rng.bit_generator.state = ckpt["rng"]["batch"]
            mb_gen.set_state(ckpt["rng"]["minibatch"])
            start_update, episode_counter, global_step = ckpt["update"], ckpt["episode"], ckpt["global_step"]
            writer.truncate_to(ckpt["log_sizes"])
            print(f"[crl] resuming {run_dir} from update {start_update}/{ppo.total_updates}")
        logger = WandbLogger(
            log_cfg,
            run_dir,
            run_name,
            OmegaConf.to_container(cfg, resolve=True),
            resume_id=ckpt.get("wandb_id") if ckpt else None,
        )
        split = exp.eval_split
        if ckpt is None and exp.eval_before:
            before = evaluate(comps, split, None, seed)
            inter, eps = episode_rows(before, run_name, f"baseline:none:{split}", 0, 0)
            writer.append(schema.INTERVENTIONS, inter)
            writer.append(schema.EPISODES, eps)
        env = comps.env("train", masker, seed)
        agent = PolicyAgent(net)
        from tqdm.auto import tqdm

        bar = tqdm(
            range(start_update, ppo.total_updates),
            desc="crl train",
            initial=start_update,
            total=ppo.total_updates,
            disable=None,
        )
        for update in bar:
            t_upd = time.time()
            if ppo.anneal_lr:
                optimizer.param_groups[0]["lr"] = ppo.learning_rate * (1.0 - update / ppo.total_updates)
            group = ppo.group_size if ppo.advantage == "group" else 1
            batch = sample_batch(comps.splits["train"], ppo.episodes_per_update, batch_rng, group)
            episodes = run_episodes(env, batch, agent, keep_tensors=True)
            t_roll = time.time() - t_upd
            metrics = ppo_update(net, optimizer, episodes, ppo, mb_gen)
            chosen = torch.tensor([f for ep in episodes for f in ep.features])
            masker.observe_update(chosen)
            n_dec = len(chosen)
            global_step += n_dec
            acc = accuracy(episodes)
            metrics.update(
                {
                    "charts/mean_reward": acc["mean_reward"],
                    "charts/accuracy": acc["accuracy"],
                    "charts/well_formed": acc["well_formed"],
                    "charts/episode_len": n_dec / len(episodes),
                    "charts/distinct_features": float(len(set(chosen.tolist()))),
                    "charts/noop_share": float((chosen == schema.NO_STEER).float().mean()),
                    "charts/learning_rate": optimizer.param_groups[0]["lr"],
                    "charts/mask_cap": masker.cap(),
                    "charts/decisions_per_sec": n_dec / max(1e-9, t_roll),
                    "charts/update_seconds": time.time() - t_upd,
                }
            )
            inter, eps = episode_rows(episodes, run_name, "train", update, episode_counter)
            episode_counter += len(episodes)
            writer.append(schema.INTERVENTIONS, inter)
            writer.append(schema.EPISODES, eps)
            writer.append(schema.METRICS, [{"update": update, "global_step": global_step, **metrics}])
            logger.log(metrics, step=update)
            bar.set_postfix(reward=f"{acc['mean_reward']:.2f}", kl=f"{metrics['losses/approx_kl']:.3f}")
            if (update + 1) % exp.checkpoint_every == 0 or update + 1 == ppo.total_updates:
                writer.save_checkpoint(
                    {
                        "policy": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "masking": masker.state_dict(),
                        "rng": {
                            "torch": torch.get_rng_state(),
                            "numpy": np.random.get_state(),
                            "python": random.getstate(),
                            "batch": batch_rng.bit_generator.state,
                            "minibatch": mb_gen.get_state(),
                        },
                        "update": update + 1,
                        "episode": episode_counter,
                        "global_step": global_step,
                        "wandb_id": logger.id,
                        "identity": ident,
                    }
                )
        env.close()
        after = evaluate(comps, split, PolicyAgent(net, greedy=True), seed)
        inter, eps = episode_rows(after, run_name, f"eval:{split}", ppo.total_updates, 0)
        writer.append(schema.INTERVENTIONS, inter)
        writer.append(schema.EPISODES, eps)
        writer.flush()
        torch.save(net.state_dict(), run_dir / "policy.pt")
        summary = make_summary(run_dir, comps, exp, split, after, time.time() - t0)
        logger.log_feature_usage(summary["top_features"], step=ppo.total_updates)
        after_metrics = {f"eval/{k}": v for k, v in summary["after"].items() if isinstance(v, float)}
        logger.log(after_metrics, step=ppo.total_updates)
        logger.log_artifact(run_dir / schema.INTERVENTIONS, f"interventions-{run_name}", "dataset")
        logger.log_artifact(run_dir / "policy.pt", f"policy-{run_name}", "model")
    finally:
        writer.close()
        if logger is not None:
            logger.finish()
    return summary


def make_summary(
    run_dir: Path, comps: Components, exp: RunConfig, split: str, after: list[Episode], seconds: float
) -> dict[str, Any]:
    from crl.logs.run_dir import read_jsonl

    before_rows = [r for r in read_jsonl(run_dir / schema.EPISODES) if r["phase"] == f"baseline:none:{split}"]
    n = max(1, len(before_rows))
    before = {
        "accuracy": sum(r["correct"] for r in before_rows) / n,
        "well_formed": sum(r["well_formed"] for r in before_rows) / n,
        "n": len(before_rows),
    }
    summary = {
        "format_version": schema.FORMAT_VERSION,
        "run": run_dir.name,
        "split": split,
        "before": before,
        "after": {**accuracy(after), "n": len(after)},
        "top_features": feature_usage(after, comps, exp.top_features),
        "planted": comps.planted,
        "wall_seconds": seconds,
        "config": {"steering": asdict(comps.steering), "masking": asdict(comps.masking), "ppo": asdict(comps.ppo)},
    }
    atomic_write_json(run_dir / schema.SUMMARY, summary)
    return summary


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    b, a = summary["before"], summary["after"]
    print(f"\n[crl] run dir: {run_dir}   ({summary['wall_seconds']:.0f}s)")
    print(f"[crl] {summary['split']} accuracy   before {b['accuracy']:.3f}  after {a['accuracy']:.3f}   (n={a['n']})")
    print(f"[crl] well-formed rate  before {b['well_formed']:.3f}  after {a['well_formed']:.3f}")
    print(
        "[crl] top features (eval, greedy):  "
        + ", ".join(
            f"{'no-steer' if r['feature'] < 0 else r['feature']} {r['share']:.0%}" for r in summary["top_features"][:8]
        )
    )


def _hydra_argv() -> None:
    """`resume=<dir>` writes into that run directory instead of a new one."""
    for arg in sys.argv[1:]:
        if arg.startswith("resume=") and arg.split("=", 1)[1] not in ("", "null"):
            sys.argv.append(f"hydra.run.dir={arg.split('=', 1)[1]}")


@hydra.main(config_path=CONF_DIR, config_name="train", version_base=None)
@exit_on_error
def _main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    summary = train(cfg, run_dir, list(hc.overrides.task))
    print_summary(summary, Path(cfg.get("resume") or run_dir))
    if cfg.run.get("analyze", False):
        from crl.analysis.cli import analyze_run

        try:
            print(f"[crl] report: {analyze_run(Path(cfg.get('resume') or run_dir))}")
        except CRLError as e:  # training succeeded; a report problem must not turn that into a failure
            print(f"[crl] warning: the analysis report failed: {e}", file=sys.stderr)


def main() -> None:
    _hydra_argv()
    _main()
