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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from crl.agent.ppo import PolicyAgent, ppo_update
from crl.envs.rollout import Episode, accuracy, run_episodes
from crl.envs.tasks.base import Example
from crl.errors import CRLError, exit_on_error
from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.logs.rows import episode_rows
from crl.logs.schema import Phase, RunInfo
from crl.logs.wandb import LoggerConfig, WandbLogger
from crl.logs.writer import RunWriter, atomic_write_bytes, atomic_write_json, load_checkpoint
from crl.paths import CONF_DIR
from crl.run.components import POLICY_FILE, Components, build, to_dataclass
from crl.run.evaluate import evaluate, feature_usage


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


def sample_batch(examples: list[Example], n_episodes: int, rng: np.random.Generator, group: int) -> list[Example]:
    """Prompts for one update; with group-relative advantages each prompt appears `group` times."""
    n_prompts = max(1, n_episodes // group)
    idx = rng.choice(len(examples), size=n_prompts, replace=n_prompts > len(examples))
    return [examples[i] for i in idx for _ in range(group)]


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
    run_name = run_dir.name
    if ckpt is not None:
        comps.check_identity(RunInfo.read(run_dir), run_dir)
    else:
        comps.run_info(run_name, seed).write(run_dir)
        atomic_write_bytes(run_dir / schema.CONFIG_YAML, OmegaConf.to_yaml(cfg, resolve=True).encode())

    masker = comps.masker()
    net = comps.new_policy()
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
            restore_rng(ckpt["rng"], batch_rng, mb_gen)
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
            inter, eps = episode_rows(before, run_name, Phase.baseline("none", split), 0, 0)
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
            global_step += len(chosen)
            metrics.update(charts(episodes, chosen, optimizer.param_groups[0]["lr"], masker.cap(), t_upd, t_roll))
            inter, eps = episode_rows(episodes, run_name, Phase.train(), update, episode_counter)
            episode_counter += len(episodes)
            writer.append(schema.INTERVENTIONS, inter)
            writer.append(schema.EPISODES, eps)
            writer.append(schema.METRICS, [{"update": update, "global_step": global_step, **metrics}])
            logger.log(metrics, step=update)
            bar.set_postfix(reward=f"{metrics['charts/mean_reward']:.2f}", kl=f"{metrics['losses/approx_kl']:.3f}")
            if (update + 1) % exp.checkpoint_every == 0 or update + 1 == ppo.total_updates:
                writer.save_checkpoint(
                    {
                        "policy": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "masking": masker.state_dict(),
                        "rng": rng_state(batch_rng, mb_gen),
                        "update": update + 1,
                        "episode": episode_counter,
                        "global_step": global_step,
                        "wandb_id": logger.id,
                        "identity": comps.identity(),
                    }
                )
        env.close()
        after = evaluate(comps, split, PolicyAgent(net, greedy=True), seed)
        inter, eps = episode_rows(after, run_name, Phase.eval(split), ppo.total_updates, 0)
        writer.append(schema.INTERVENTIONS, inter)
        writer.append(schema.EPISODES, eps)
        writer.flush()
        torch.save(net.state_dict(), run_dir / POLICY_FILE)
        summary = make_summary(run_dir, comps, exp, split, after, time.time() - t0)
        logger.log_feature_usage(summary["top_features"], step=ppo.total_updates)
        after_metrics = {f"eval/{k}": v for k, v in summary["after"].items() if isinstance(v, float)}
        logger.log(after_metrics, step=ppo.total_updates)
        logger.log_artifact(run_dir / schema.INTERVENTIONS, f"interventions-{run_name}", "dataset")
        logger.log_artifact(run_dir / POLICY_FILE, f"policy-{run_name}", "model")
    finally:
        writer.close()
        if logger is not None:
            logger.finish()
    return summary


def charts(
    episodes: list[Episode], chosen: torch.Tensor, lr: float, mask_cap: float, t_upd: float, t_roll: float
) -> dict[str, float]:
    """The per-update `charts/` metrics of one batch of training episodes."""
    acc = accuracy(episodes)
    n_dec = len(chosen)
    return {
        "charts/mean_reward": acc["mean_reward"],
        "charts/accuracy": acc["accuracy"],
        "charts/well_formed": acc["well_formed"],
        "charts/episode_len": n_dec / len(episodes),
        "charts/distinct_features": float(len(set(chosen.tolist()))),
        "charts/noop_share": float((chosen == schema.NO_STEER).float().mean()),
        "charts/learning_rate": lr,
        "charts/mask_cap": mask_cap,
        "charts/decisions_per_sec": n_dec / max(1e-9, t_roll),
        "charts/update_seconds": time.time() - t_upd,
    }


def rng_state(batch_rng: np.random.Generator, mb_gen: torch.Generator) -> dict[str, Any]:
    """Every random stream a resumed run must continue exactly where it stopped."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "batch": batch_rng.bit_generator.state,
        "minibatch": mb_gen.get_state(),
    }


def restore_rng(state: dict[str, Any], batch_rng: np.random.Generator, mb_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    batch_rng.bit_generator.state = state["batch"]
    mb_gen.set_state(state["minibatch"])


def make_summary(
    run_dir: Path, comps: Components, exp: RunConfig, split: str, after: list[Episode], seconds: float
) -> dict[str, Any]:
    none = str(Phase.baseline("none", split))
    before_rows = [r for r in read_jsonl(run_dir / schema.EPISODES) if r["phase"] == none]
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
