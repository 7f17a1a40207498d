"""Training (`crl train`, crl/commands/train.py): learn which SAE feature to amplify at each token, and write
down everything it did.

One PPO update = collect `ppo.episodes_per_update` episodes with the sampling policy (lockstep batches of
`ppo.num_envs`), then `ppo_update`. Before training the unsteered model is evaluated on the held-out
split (phase `baseline:none:<split>`); after it, the greedy policy (phase `eval:<split>`).
"""

from __future__ import annotations

import dataclasses
import random
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crl.agent.ppo import PolicyAgent, ppo_update
from crl.config import MaskingConfig, RunConfig, TrainConfig, load
from crl.config.core import show
from crl.envs.rollout import Episode, accuracy, run_episodes
from crl.envs.tasks.base import Example
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.atomic import atomic_write_bytes, atomic_write_json
from crl.logs.reader import read_jsonl
from crl.logs.schema import Phase, RunInfo
from crl.logs.wandb import WandbLogger
from crl.logs.writer import RunWriter, load_checkpoint
from crl.progress import Progress
from crl.run.components import POLICY_FILE, Components, build, saved_config
from crl.run.evaluate import evaluate, feature_usage
from crl.run.init_from import InitSource, read_source, start_from
from crl.run.selection import Selection


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def sample_batch(examples: list[Example], n_episodes: int, rng: np.random.Generator, group: int) -> list[Example]:
    """Prompts for one update; with group-relative advantages each prompt appears `group` times."""
    n_prompts = max(1, n_episodes // group)
    idx = rng.choice(len(examples), size=n_prompts, replace=n_prompts > len(examples))
    return [examples[i] for i in idx for _ in range(group)]


def resume_config(cfg: TrainConfig, run_dir: Path, user_overrides: list[str] | None) -> TrainConfig:
    """A bare `resume=<dir>` continues with the run's saved config. With other overrides, the composed
    config is used, but it must name the same model, SAE, task and layer, and keep what the checkpoint's policy
    means (`resume_checks`: masking, the steering levels and no-op, the policy network), checked before any loading.
    Both are compared as loaded configs, so a setting added to CRL since the run was made (absent from its
    config.yaml, so at its default) is no difference."""
    saved = saved_config(run_dir)
    own = [o for o in (user_overrides or []) if not o.startswith(("resume=", "hydra."))]
    if not own:  # init_from is not applied again: the checkpoint holds the policy (and the source may be gone)
        return dataclasses.replace(saved, resume=str(run_dir), init_from=None)
    diffs = [k for k in ("model", "sae", "task") if getattr(cfg, k) != getattr(saved, k)]
    if cfg.steering.layer != saved.steering.layer:
        diffs.append("steering.layer")
    if diffs:
        raise CRLError(
            f"resume dir {run_dir} is incompatible with this config: {', '.join(diffs)} differ from the "
            "run's; resume with `crl train resume=<dir>` alone, or start a new run"
        )
    check_resume(run_dir, resume_checks(cfg, saved, run_dir))
    return cfg


# One group of settings a resume must keep: (its prefix, the asked group, the recorded group, the keys compared).
ResumeCheck = tuple[str, object, object, tuple[str, ...]]

# Action id = level * d_sae + feature, the no-op last: these fix how many ids there are and what each one does (the
# order of coef_levels too), so the checkpoint's logits would mean other actions.
RESUME_STEERING_KEYS = ("coef", "coef_mode", "coef_levels", "allow_noop")
# The checkpoint's tensors: their shapes (hidden, head, abstain's buffers) and what they mean (obs_norm: the saved
# statistics). Settings that only make the first values (init_scale, noop_init_bias, obs_stats_prompts,
# abstain_quantile) are replaced by the checkpoint's; greedy_rule and compact_min_d_sae change no weight.
RESUME_POLICY_KEYS = ("hidden", "head", "obs_norm", "abstain")


def resume_checks(cfg: TrainConfig, saved: TrainConfig, run_dir: Path) -> list[ResumeCheck]:
    """What a resume with overrides must keep of the recorded config: the masking (`masking_check`), the steering
    that defines the action ids and the policy network's settings (abstain_k too where the run abstains by knn:
    the saved threshold was fitted on that distance)."""
    knn = ("abstain_k",) if saved.policy.abstain == "knn" else ()
    return [
        masking_check(cfg.masking, saved.masking, run_dir),
        ("steering", cfg.steering, saved.steering, RESUME_STEERING_KEYS),
        ("policy", cfg.policy, saved.policy, (*RESUME_POLICY_KEYS, *knn)),
    ]


def masking_check(asked: MaskingConfig, saved: MaskingConfig, run_dir: Path) -> ResumeCheck:
    """A resume with overrides keeps the run's action set: a masking that differs from config.yaml's in its mode or
    in a setting the recorded mode reads is refused (the checkpoint's policy and its logs were made with the recorded
    one). masking=shortlist matches a run that recorded masking=fixed on the features of its own shortlist.json
    (`resolve` reuses it) and the same shortlist settings; without a shortlist.json it is refused here."""
    keys = ("mode", *saved.settings())
    if asked.mode == "shortlist":
        if not (run_dir / schema.SHORTLIST).exists():
            raise CRLError(
                f"resume={run_dir} has no {schema.SHORTLIST}: it was not trained with masking=shortlist; resume "
                f"with `crl train resume={run_dir}` alone"
            )
        keys = (*keys, *(k for k in asked.settings() if k not in keys))  # recorded too: only mode, features replaced
        asked = dataclasses.replace(asked, mode="fixed", features=saved.features)
    return "masking", asked, saved, keys


def check_resume(run_dir: Path, checks: list[ResumeCheck]) -> None:
    """Every asked setting of `checks` that differs from the recorded one, in one line before the model loads:
    each key with its asked and recorded value, and the overrides that match."""
    diffs = [
        (f"{prefix}.{k}", getattr(asked, k), getattr(saved, k))
        for prefix, asked, saved, keys in checks
        for k in keys
        if getattr(asked, k) != getattr(saved, k)
    ]
    if diffs:
        said = ", ".join(f"{k}={show(a)} (recorded: {show(s)})" for k, a, s in diffs)
        fix = " ".join(f"{k}={show(s)}" for k, _, s in diffs)
        raise CRLError(
            f"resume={run_dir} conflicts with the run's {schema.CONFIG_YAML}: {said}; resume with `crl train "
            f"resume={run_dir}` alone, or with `{fix}`, or start a new run"
        )


# masking=shortlist: (components, run dir, resuming) -> the features to train on. `crl train` passes
# crl.analysis.replay.shortlist.resolve (the oracle lives above this layer).
Shortlister = Callable[[Components, Path, bool], list[int]]


def train(
    cfg: TrainConfig | Mapping[str, Any],
    run_dir: Path,
    user_overrides: list[str] | None = None,
    shortlist: Shortlister | None = None,
) -> dict[str, Any]:
    """Train a policy into `run_dir` (or continue `cfg.resume`); returns the summary (also summary.json).
    With masking=shortlist, `shortlist` picks the features once the model is loaded, and the run is masking=fixed on
    them from then on (its config.yaml, the summary and every later reader see fixed)."""
    t0 = time.time()
    cfg = load(TrainConfig, cfg)
    resume = cfg.resume
    ckpt = None
    if resume:
        run_dir = Path(resume)
        if not (run_dir / schema.RUN_JSON).exists() or not (run_dir / schema.CONFIG_YAML).exists():
            raise CRLError(f"resume={resume} is not a CRL run directory (no {schema.RUN_JSON} / {schema.CONFIG_YAML})")
        cfg = resume_config(cfg, run_dir, user_overrides)
        ckpt = load_checkpoint(run_dir)  # fails fast on a missing or corrupt checkpoint
    # Checked against this config and read before the model loads (a resumed config has no init_from).
    init: InitSource | None = read_source(cfg) if cfg.init_from else None
    exp, ppo, seed = cfg.run, cfg.ppo, cfg.seed
    seed_everything(seed)
    comps = build(cfg, for_training=True)
    if cfg.masking.mode == "shortlist":
        if shortlist is None:
            raise CRLError("masking=shortlist needs `crl train`, which picks the features before training")
        features = shortlist(comps, run_dir, ckpt is not None)
        cfg = dataclasses.replace(cfg, masking=dataclasses.replace(cfg.masking, mode="fixed", features=features))
        comps = dataclasses.replace(comps, masking=cfg.masking)
    # Again: loading may draw random numbers (the first run on a machine converts the default model, which initialises
    # a model), and the policy's initialisation must not depend on whether the model cache was warm, nor on whether
    # a shortlist was computed (a masking=shortlist run trains as masking=fixed on its features would).
    seed_everything(seed)
    run_name = run_dir.name
    masker = comps.masker()  # before run.json: a masking.features id the SAE lacks leaves nothing behind
    net = comps.new_policy()
    if init is not None:  # before run.json is written: a source of another model or SAE leaves nothing behind
        start_from(init, comps, net)  # the optimizer below starts fresh
    if ckpt is not None:
        comps.check_identity(RunInfo.read(run_dir), run_dir)
    else:
        info = dataclasses.replace(comps.run_info(run_name, seed), init_from=init.record() if init else None)
        info.write(run_dir)
        atomic_write_bytes(run_dir / schema.CONFIG_YAML, config_yaml(cfg))

    optimizer = torch.optim.Adam(net.parameters(), lr=ppo.learning_rate, eps=1e-5)
    batch_rng = np.random.default_rng(seed)
    mb_gen = torch.Generator().manual_seed(seed)
    writer = RunWriter(run_dir)
    sel = Selection(run_dir, exp)
    unsteered: dict[str, float] = {}  # prompt id -> reward of its unsteered rollout (advantage=unsteered)
    start_update, episode_counter, global_step = 0, 0, 0
    logger = None
    try:
        if ckpt is not None:
            net.load_state_dict(ckpt["policy"], strict=False)
            optimizer.load_state_dict(ckpt["optimizer"])
            masker.load_state_dict(ckpt["masking"])
            restore_rng(ckpt["rng"], batch_rng, mb_gen)
            start_update, episode_counter, global_step = ckpt["update"], ckpt["episode"], ckpt["global_step"]
            sel.load_state_dict(ckpt.get("selection", {}))
            unsteered = dict(ckpt.get("unsteered", {}))
            writer.truncate_to(ckpt["log_sizes"])
            print(f"[crl] resuming {run_dir} from update {start_update}/{ppo.total_updates}")
        logger = WandbLogger(
            cfg.logger, run_dir, run_name, asdict(cfg), resume_id=ckpt.get("wandb_id") if ckpt else None
        )
        split = exp.eval_split
        if ckpt is None and exp.eval_before:
            before = evaluate(comps, split, None, seed, progress=f"{split} before training (no steering)")
            writer.append_episodes(before, run_name, Phase.baseline("none", split))
        # Resumed: the checkpoint carries them. init_from: they came with the source's policy, whose weights were
        # trained under them; statistics of the new task would change the function it learned.
        if ckpt is None and init is None and comps.policy.obs_norm == "standardize":
            n_obs = comps.policy.obs_stats_prompts
            sample = comps.observation_sample("train", n_obs, progress="observation statistics (train)")
            net.set_obs_stats(sample)
            if comps.policy.abstain != "off":  # the abstention rule (crl/agent/policy.py), fitted once, like the stats
                n_val = len(comps.splits[exp.val_split])
                val = comps.observation_sample(exp.val_split, n_val, progress="abstention (val)")
                net.fit_abstention(sample, val)
        # update 0: the untrained policy (no steering under its prior), or with init_from the source's policy
        if ckpt is None and exp.eval_every:
            logger.log(sel.evaluate(comps, net, 0, writer, run_name, seed), step=0)
        env = comps.env("train", masker, seed, reward=cfg.task.reward)  # task.reward: the training reward only
        agent = PolicyAgent(net)
        t_loop = time.time()
        for update in range(start_update, ppo.total_updates):
            if sel.stopped:
                break
            t_upd = time.time()
            if ppo.anneal_lr:
                optimizer.param_groups[0]["lr"] = ppo.learning_rate * (1.0 - update / ppo.total_updates)
            batch = sample_batch(comps.splits["train"], ppo.episodes_per_update, batch_rng, ppo.group_size)
            # A long update shows its rollouts too; the update's own line (below) ends it.
            rolling = Progress(f"[crl] update {update + 1}/{ppo.total_updates}", len(batch), "episodes", ends=False)
            episodes = run_episodes(env, batch, agent, keep_tensors=True, on_done=rolling.update)
            t_roll = time.time() - t_upd
            if ppo.advantage == "unsteered":
                unsteered_rewards(comps, batch, unsteered, seed)
            metrics = ppo_update(net, optimizer, episodes, ppo, mb_gen, unsteered)
            chosen = torch.tensor([f for ep in episodes for f in ep.features])
            masker.observe_update(chosen)
            global_step += len(chosen)
            metrics.update(charts(episodes, chosen, optimizer.param_groups[0]["lr"], masker.cap(), t_upd, t_roll))
            writer.append_episodes(episodes, run_name, Phase.train(), update, episode_counter)
            episode_counter += len(episodes)
            done = update + 1
            if exp.eval_every and (done % exp.eval_every == 0 or done == ppo.total_updates):
                metrics.update(sel.evaluate(comps, net, done, writer, run_name, seed))
            writer.append(schema.METRICS, [{"update": update, "global_step": global_step, **metrics}])
            logger.log(metrics, step=update)
            # One plain line per update, on stderr with the other progress lines (a terminal and a log alike).
            line = progress_line(done, ppo.total_updates, metrics, sel, time.time() - t_loop, start_update)
            print(line, file=sys.stderr, flush=True)
            if done % exp.checkpoint_every == 0 or done == ppo.total_updates or sel.stopped:
                writer.save_checkpoint(
                    {
                        "policy": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "masking": masker.state_dict(),
                        "rng": rng_state(batch_rng, mb_gen),
                        "update": done,
                        "episode": episode_counter,
                        "global_step": global_step,
                        "wandb_id": logger.id,
                        "identity": comps.identity(),
                        "selection": sel.state_dict(),
                        "unsteered": unsteered,
                    }
                )
        env.close()
        last_update = sel.stopped_at or ppo.total_updates
        chosen_update = sel.chosen(last_update)
        last = None
        if chosen_update != last_update:  # the last policy too, so the report can show what selection bought
            phase = f"{split} last policy (update {last_update})"
            last = evaluate(comps, split, PolicyAgent(net, greedy=True), seed, progress=phase)
            writer.append_episodes(last, run_name, Phase.baseline("last", split), last_update)
            net.load_state_dict(sel.best_state(), strict=False)
        torch.save(net.state_dict(), run_dir / POLICY_FILE)  # policy.pt is the selected policy
        phase = f"{split} selected policy (update {chosen_update})"
        after = evaluate(comps, split, PolicyAgent(net, greedy=True), seed, progress=phase)
        writer.append_episodes(after, run_name, Phase.eval(split), chosen_update)
        phase = f"train selected policy (update {chosen_update})"
        on_train = evaluate(comps, train_sample(comps, exp), PolicyAgent(net, greedy=True), seed, progress=phase)
        writer.append_episodes(on_train, run_name, Phase.eval("train"), chosen_update)
        writer.flush()
        selection = sel.summary(chosen_update, last_update, last, on_train)
        summary = make_summary(run_dir, comps, exp, split, after, time.time() - t0, selection)
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


def progress_line(done: int, total: int, m: dict[str, float], sel: Selection, elapsed: float, start: int) -> str:
    """One log line per update: reward, how much the policy steers, val accuracy, speed and ETA."""
    per = elapsed / max(1, done - start)
    eta = time.strftime("%H:%M:%S", time.gmtime(per * (total - done)))
    val = f"  val {m['eval/val_accuracy']:.3f}" if "eval/val_accuracy" in m else ""
    best = f" (best {sel.best_accuracy:.3f} @ update {sel.best_update})" if sel.best_update is not None else ""
    return (
        f"[crl] update {done}/{total}  reward {m['charts/mean_reward']:.3f}  no-steer {m['charts/noop_share']:.2f}"
        f"  kl {m['losses/approx_kl']:.3f}{val}{best if val else ''}  {per:.1f}s/update  ETA {eta}"
    )


def train_sample(comps: Components, exp: RunConfig) -> list[Example]:
    """As many train prompts as the val split has, for the train/val/test gap."""
    return comps.splits["train"][: max(1, len(comps.splits[exp.val_split]))]


def unsteered_rewards(comps: Components, batch: list[Example], cache: dict[str, float], seed: int) -> None:
    """Fill `cache` with the reward of each new prompt's unsteered greedy rollout (once per prompt), the training
    reward's kind (task.reward), so the advantage compares like with like."""
    todo = list({e.id: e for e in batch if e.id not in cache}.values())
    if todo:
        for ep in evaluate(comps, todo, None, seed, reward=comps.task.cfg.reward):
            cache[ep.example.id] = ep.reward


def config_yaml(cfg: TrainConfig) -> bytes:
    """config.yaml: the whole resolved config, in the schema's key order."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(asdict(cfg)).encode()


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
    run_dir: Path,
    comps: Components,
    exp: RunConfig,
    split: str,
    after: list[Episode],
    seconds: float,
    selection: dict[str, Any],
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
        "selection": selection,
    }
    atomic_write_json(run_dir / schema.SUMMARY, summary)
    return summary
