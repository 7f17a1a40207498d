"""GRPO on the model's own weights (`crl grpo`, crl/commands/grpo.py): TRL's GRPOTrainer on `crl train`'s task,
splits, prompts and verifier, tested with CRL's own evaluator so that its numbers compare with `crl train`'s.

The same as `crl train`: the train split's prompts, each rendered by the task exactly as CRL's env renders it
(`prompt_texts`: chat template included), the task's verifier on each completion, cut at the task's stop strings as
the env cuts it, and evaluation by `crl.run.evaluate.evaluate` with no steering (greedy, the task as configured), before
and after. What differs is what a rollout is: CRL steers one token of a frozen model; GRPO samples whole completions
(free text, `grpo.max_completion_length` tokens; with `grpo.constrained` one option-letter token, CRL's action space)
and trains the weights (LoRA by default). On a constrained task (compare: one option-letter token) the free generation
is evaluated too (`grpo.free_eval`), with its well-formed rate.

Budget: one completion is one episode; a round samples `grpo.batch_size` completions (`batch_size / num_generations`
prompts, `num_generations` each) and makes `grpo.minibatches` x `grpo.num_iterations` optimizer steps on them (as
PPO's minibatches x epochs). The defaults are `crl train`'s
budget in its shape: 12 rounds of 128 = 12 updates of 128 episodes, val every 4.

Selection (as `crl train`'s crl/run/selection.py): the greedy model is evaluated on val at round 0 (the base model) and
every `grpo.eval_every` rounds; with select=best_val the best (ties: the earlier round) is tested and saved as
<run>/model/, so a run whose tuning never beat the base model on val reports the base model.

Learning that never starts: a group whose completions all get the same reward has zero advantage, so a round where
every group does (TRL's `frac_reward_zero_std` = 1) moves nothing. metrics.jsonl logs it every step; a run in which
every step had it, or a zero gradient, is flagged in summary.json (`learning.started: false`) and on stderr.

The run directory (crl/logs conventions; `crl.logs.lifecycle` holds it):

  config.yaml            the resolved GRPOTrainConfig
  run.json               RunInfo (model, SAE at steering.layer for the evaluator, task, seed) + "method": "grpo"
  metrics.jsonl          one row per optimizer step: step, round, rollouts so far, TRL's metrics (reward,
                         reward_std, frac_reward_zero_std, grad_norm, loss, entropy, completions/*), the round's
                         train/accuracy and train/well_formed, speed, eval/val_* where val was evaluated
  episodes.jsonl         every training completion (phase train, update = round) and every evaluation
  interventions.jsonl    the evaluations' decisions (all "no steering"), as `crl train` writes them
  checkpoints/checkpoint-<step>/  TRL's checkpoint (adapter or weights, optimizer, RNG) + crl_state.json, written last:
                         only a checkpoint with it is resumed from
  checkpoints/best-<round>.safetensors  the trainable weights (LoRA, or all) of the best val round so far
  model/                 the selected weights: a LoRA adapter (peft) or full weights, + crl_weights.json;
                         `model.weights=<run>` loads them (crl/backends/model.py)
  summary.json           written last: before/after as `crl train` writes them, free generation, selection,
                         training (completions/s), learning
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from crl.backends.model import ADAPTER_CONFIG, FULL_WEIGHTS, TUNED_DIR, WEIGHTS_INFO, FrozenLM
from crl.config import (
    ConfigError,
    GRPOGroupConfig,
    GRPOTrainConfig,
    PPOConfig,
    RunConfig,
    TrainConfig,
    WandbConfig,
    load,
)
from crl.envs.rollout import Episode, accuracy
from crl.envs.steering_env import prompt_texts
from crl.envs.tasks.base import Example, Task
from crl.errors import CRLError
from crl.logs import lifecycle, schema
from crl.logs.atomic import atomic_write_bytes, atomic_write_json
from crl.logs.reader import read_jsonl
from crl.logs.schema import Phase, RunInfo
from crl.logs.wandb import WandbLogger
from crl.logs.writer import RunWriter
from crl.run.components import Components, build
from crl.run.evaluate import evaluate
from crl.run.selection import episode_stats

CHECKPOINTS = Path(schema.CHECKPOINT).parent.name  # checkpoints/, as `crl train`'s
CKPT_PREFIX = "checkpoint-"  # TRL's (transformers') checkpoint folders: checkpoints/checkpoint-<step>/
CRL_STATE = "crl_state.json"  # in each checkpoint folder, written last: what CRL needs to resume from it
BEST_PREFIX = "best-"  # checkpoints/best-<round>.safetensors: the best val round's trainable weights
METHOD = "grpo"
MIN_VAL_PROMPTS = RunConfig.min_val_prompts
# Phases of the evaluations of free generation (a constrained task): the base model, the tuned one.
FREE_BASE, FREE_TUNED = "free_base", "free_tuned"


# -- pure helpers ------------------------------------------------------------------------------------------------
def plan(g: GRPOGroupConfig) -> dict[str, int]:
    """Rounds, optimizer steps and gradient accumulation of a config (checked by `GRPOGroupConfig.check`).

    >>> plan(GRPOGroupConfig(minibatches=1))
    {'rounds': 12, 'steps': 12, 'steps_per_round': 1, 'prompts_per_round': 16, 'micro_batch': 32, 'accumulation': 4}
    >>> plan(GRPOGroupConfig(rollouts=64, batch_size=32, num_generations=4, micro_batch_size=None, num_iterations=2))
    {'rounds': 2, 'steps': 4, 'steps_per_round': 2, 'prompts_per_round': 8, 'micro_batch': 32, 'accumulation': 1}
    >>> plan(GRPOGroupConfig(minibatches=4, num_iterations=2))["steps"]
    96
    """
    step_batch = g.batch_size // g.minibatches  # completions per optimizer step
    micro = g.micro_batch_size or step_batch
    per_round = g.minibatches * g.num_iterations
    return {
        "rounds": g.rollouts // g.batch_size,
        "steps": g.rollouts // g.batch_size * per_round,
        "steps_per_round": per_round,
        "prompts_per_round": g.batch_size // g.num_generations,
        "micro_batch": micro,
        "accumulation": step_batch // micro,
    }


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The completion as CRL's env scores it: cut before the first stop string that occurs (in the task's order).

    >>> cut_at_stop("B\\nbecause 52 > 47", ["\\n"])
    ('B', True)
    >>> cut_at_stop("B", ["\\n"])
    ('B', False)
    """
    for s in stops:
        if s in text:
            return text[: text.index(s)], True
    return text, False


def learning_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether GRPO ever had a learning signal, from the metrics rows of its optimizer steps.

    A group whose completions all got the same reward has zero advantage; a step where every group did
    (frac_reward_zero_std = 1), or whose gradient norm is 0, changes nothing.

    >>> learning_verdict([{"frac_reward_zero_std": 1.0, "grad_norm": 0.0}] * 3)["started"]
    False
    >>> learning_verdict([{"frac_reward_zero_std": 1.0, "grad_norm": 0.0},
    ...                   {"frac_reward_zero_std": 0.5, "grad_norm": 0.3}])
    {'started': True, 'steps': 2, 'steps_with_signal': 1, 'mean_frac_reward_zero_std': 0.75, 'why': None}
    """
    steps = [r for r in rows if "frac_reward_zero_std" in r or "grad_norm" in r]
    signal = [
        r
        for r in steps
        if (r.get("frac_reward_zero_std") is None or r["frac_reward_zero_std"] < 1.0) and (r.get("grad_norm") or 0) > 0
    ]
    zero = [r["frac_reward_zero_std"] for r in steps if r.get("frac_reward_zero_std") is not None]
    why = None
    if steps and not signal:
        if zero and all(z >= 1.0 for z in zero):
            why = (
                "every group of completions got identical rewards at every step (frac_reward_zero_std=1), so every "
                "advantage was 0 and the weights never moved; raise grpo.temperature or grpo.num_generations, or use a "
                "task whose rewards vary between samples"
            )
        else:
            why = "the gradient norm was 0 at every step, so the weights never moved; check grpo.learning_rate and lora"
    return {
        "started": bool(signal) if steps else False,
        "steps": len(steps),
        "steps_with_signal": len(signal),
        "mean_frac_reward_zero_std": sum(zero) / len(zero) if zero else None,
        "why": why if steps else "no optimizer step ran",
    }


def by_val(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The runs of a sweep (run -> its summary.json), best val accuracy of the selected model first: pick the first,
    report its test accuracy. Ties keep the given order.

    >>> s = lambda val, test: {"selection": {"val_selected": val}, "after": {"accuracy": test}}
    >>> [r["run"] for r in by_val({"a": s(0.5, 0.9), "b": s(0.7, 0.6), "c": s(None, 1.0)})]
    ['b', 'a', 'c']
    """
    rows = [
        {"run": run, "val": s["selection"].get("val_selected"), "test": s["after"]["accuracy"]}
        for run, s in summaries.items()
    ]
    return sorted(rows, key=lambda r: (r["val"] is None, -(r["val"] or 0.0)))


def sweep_summaries(root: Path) -> dict[str, dict[str, Any]]:
    """The summary.json of every finished `crl grpo` run directly under `root` (a sweep's directory)."""
    out = {}
    for path in sorted(Path(root).glob(f"*/{schema.SUMMARY}")):
        summary = json.loads(path.read_text(encoding="utf-8"))
        if summary.get("method") == METHOD:
            out[str(path.parent)] = summary
    return out


# -- the run directory ---------------------------------------------------------------------------------------------
def config_yaml(cfg: GRPOTrainConfig) -> bytes:
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(asdict(cfg)).encode()


def saved_config(run_dir: Path) -> GRPOTrainConfig:
    """A `crl grpo` run's config.yaml as a validated config (settings added since take their defaults)."""
    from omegaconf import OmegaConf

    path = run_dir / schema.CONFIG_YAML
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    if not isinstance(raw, dict) or "grpo" not in raw:
        raise CRLError(f"{path} is not a `crl grpo` config (no grpo block); resume it with the command that made it")
    try:
        return load(GRPOTrainConfig, raw)
    except ConfigError as e:
        raise CRLError(f"{path}: {e}") from None


def resume_config(run_dir: Path, user_overrides: list[str] | None) -> GRPOTrainConfig:
    """`resume=<dir>` continues the run with its own saved config; other overrides are refused (one line)."""
    own = [o for o in (user_overrides or []) if not o.startswith(("resume=", "hydra."))]
    if own:
        raise CRLError(
            f"resume={run_dir} continues a run with its own config, so {own[0]} cannot apply; pass resume= alone, "
            "or start a new run"
        )
    return dataclasses.replace(saved_config(run_dir), resume=str(run_dir))


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints (with crl_state.json), oldest first."""
    root = run_dir / CHECKPOINTS
    out = []
    for p in root.glob(f"{CKPT_PREFIX}*") if root.is_dir() else []:
        step = p.name.removeprefix(CKPT_PREFIX)
        if step.isdigit() and (p / CRL_STATE).exists():
            out.append((int(step), p))
    return sorted(out)


def never_checkpointed(run_dir: Path) -> bool:
    """A run stopped before its first complete checkpoint, and not finished."""
    return not checkpoints(run_dir) and not (run_dir / schema.SUMMARY).exists()


def discard_progress(run_dir: Path) -> None:
    """Remove everything but the identity of a run that starts again from the beginning."""
    lifecycle.discard_progress(run_dir)
    shutil.rmtree(run_dir / TUNED_DIR, ignore_errors=True)


# -- scoring completions as CRL's env does ------------------------------------------------------------------------
class Verifier:
    """TRL's reward function: the task's verifier on each completion, cut at the task's stop strings; it also writes
    each completion to episodes.jsonl as one training episode and keeps the round's accuracy and format share."""

    def __init__(
        self,
        task: Task,
        examples: list[Example],
        writer: RunWriter,
        run: str,
        eos_ids: set[int],
        steps_per_round: int = 1,
        episodes: int = 0,
    ):
        self.task, self.writer, self.run, self.eos_ids = task, writer, run, eos_ids
        self.steps_per_round = steps_per_round
        self.by_id = {e.id: e for e in examples}
        self.episodes = episodes  # training completions so far (= rollouts)
        self.last: dict[str, float] = {}  # the last round's accuracy and well-formed share

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        example_id: list[str],
        completion_ids: list[list[int]] | None = None,
        trainer_state: Any = None,
        **_: Any,
    ) -> list[float]:
        ids = completion_ids or [[] for _ in completions]
        episodes = []
        for prompt, raw, eid, toks in zip(prompts, completions, example_id, ids, strict=True):
            ex = self.by_id[eid]
            text, stopped = cut_at_stop(raw, self.task.stop_strings())
            cols = {k: [v[0]] for k, v in self.task.columns([ex]).items()}
            reward = float(self.task.reward([prompt], [text], **cols)[0])
            reason = "stop_string" if stopped else "eos" if toks and toks[-1] in self.eos_ids else "max_new_tokens"
            episodes.append(Episode(ex, text, reward, reward >= 1.0, bool(self.task.well_formed(text)), reason, []))
        update = getattr(trainer_state, "global_step", 0) // self.steps_per_round  # the round, 0-based
        self.writer.append_episodes(episodes, self.run, Phase.train(), update, self.episodes)
        self.episodes += len(episodes)
        stats = accuracy(episodes)
        self.last = {"train/accuracy": stats["accuracy"], "train/well_formed": stats["well_formed"]}
        return [ep.reward for ep in episodes]


# -- selection on val -----------------------------------------------------------------------------------------------
def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True).contiguous() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


class ValSelection:
    """The val curve by round and the best round's trainable weights (checkpoints/best-<round>.safetensors; one per
    new best, the older ones removed once a checkpoint that no longer needs them is complete, so a run resumed from
    any complete checkpoint still finds the best weights its selection names)."""

    def __init__(self, run_dir: Path, rule: str):
        self.dir, self.rule = run_dir, rule
        self.curve: list[dict[str, float]] = []
        self.best_round: int | None = None
        self.best_accuracy = -1.0

    def record(self, round_: int, episodes: list[Episode], model: torch.nn.Module) -> dict[str, float]:
        from safetensors.torch import save

        stats = episode_stats(episodes)
        row = {"round": round_, **{k: stats[k] for k in ("accuracy", "well_formed", "mean_reward", "n")}}
        self.curve.append(row)
        if stats["accuracy"] > self.best_accuracy:  # strictly better: ties keep the earlier round
            self.best_round, self.best_accuracy = round_, stats["accuracy"]
            data = save(trainable_state(model), metadata={"round": str(round_)})
            atomic_write_bytes(self.path(round_), data)
        return {
            "eval/val_accuracy": stats["accuracy"],
            "eval/val_well_formed": stats["well_formed"],
            "eval/best_round": float(self.best_round),
        }

    def chosen(self, last_round: int) -> int:
        return self.best_round if self.rule == "best_val" and self.best_round is not None else last_round

    def path(self, round_: int | None) -> Path:
        return self.dir / CHECKPOINTS / f"{BEST_PREFIX}{round_}.safetensors"

    def drop_others(self) -> None:
        """Remove the best-weights files of every round but the current best."""
        keep = self.path(self.best_round)
        for p in (self.dir / CHECKPOINTS).glob(f"{BEST_PREFIX}*.safetensors"):
            if p != keep:
                p.unlink(missing_ok=True)

    def best_state(self) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        path = self.path(self.best_round)
        try:
            with safe_open(str(path), "pt") as f:
                saved_round = int((f.metadata() or {}).get("round", -1))
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception as e:  # noqa: BLE001 - missing or corrupt: either way the selection cannot be honoured
            raise CRLError(
                f"{path} is missing or corrupt ({type(e).__name__}); train again in a fresh run dir, or pass "
                "grpo.select=last"
            ) from None
        if saved_round != self.best_round:
            raise CRLError(f"{path} holds round {saved_round}, not the selected {self.best_round}; train again")
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve, "best_round": self.best_round, "best_accuracy": self.best_accuracy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curve = list(state.get("curve", []))
        self.best_round = state.get("best_round")
        self.best_accuracy = float(state.get("best_accuracy", -1.0))

    def summary(self, chosen: int, last_round: int) -> dict[str, Any]:
        val = {row["round"]: row for row in self.curve}
        return {
            "rule": self.rule,
            "selected_round": chosen,
            "last_round": last_round,
            "val_curve": self.curve,
            "val_before": val[0]["accuracy"] if 0 in val else None,
            "val_selected": val[chosen]["accuracy"] if chosen in val else None,
        }


# -- the trainer's hooks -------------------------------------------------------------------------------------------
def _callback_class() -> type:
    from transformers import TrainerCallback

    class Loop(TrainerCallback):
        """Val evaluations at round ends, one metrics row and one progress line per step, CRL's checkpoint state."""

        def __init__(self, run: GRPORun):
            self.run = run
            self.pending: dict[str, float] = {}
            self.t_step = time.time()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t_step = time.time()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            run = self.run
            seconds = time.time() - self.t_step
            run.train_seconds += seconds
            self.pending["speed/step_seconds"] = seconds
            per = run.plan["steps_per_round"]
            if state.global_step % per == 1 % per:  # the step that generated its round's completions
                self.pending["speed/completions_per_sec"] = run.cfg.grpo.batch_size / max(seconds, 1e-9)
            if state.global_step % per == 0:
                done = state.global_step // per
                every = run.cfg.grpo.eval_every
                if every and (done % every == 0 or done == run.plan["rounds"]):
                    self.pending.update(run.val_eval(done))

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:  # the end-of-training log (train_runtime, train_loss): not a step
                return
            self.run.log_step(state.global_step, logs, self.pending)
            self.pending = {}

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.run.on_checkpoint(state.global_step)

    return Loop


class GRPORun:
    """One `crl grpo` invocation's state: the components, the logs, the selection, the counters."""

    def __init__(self, cfg: GRPOTrainConfig, run_dir: Path, comps: Components, writer: RunWriter):
        self.cfg, self.dir, self.comps, self.writer = cfg, run_dir, comps, writer
        self.plan = plan(cfg.grpo)
        self.sel = ValSelection(run_dir, cfg.grpo.select)
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.model: torch.nn.Module = comps.lm.model
        self.verifier: Verifier | None = None
        self.logger: WandbLogger | None = None
        self.t_loop = time.time()
        self.start_step = 0

    @property
    def name(self) -> str:
        return self.dir.name

    def val_eval(self, round_: int) -> dict[str, float]:
        t = time.time()
        with evaluating(self.model):
            episodes = evaluate(self.comps, "val", None, self.cfg.seed, progress=f"val at round {round_}")
        self.writer.append_episodes(episodes, self.name, Phase.eval("val"), round_)
        out = self.sel.record(round_, episodes, self.model)
        self.eval_seconds += time.time() - t
        return out

    def log_step(self, step: int, logs: dict[str, Any], extra: dict[str, float]) -> None:
        round_ = -(-step // self.plan["steps_per_round"])
        verifier = self.verifier
        row: dict[str, Any] = {
            "step": step,
            "round": round_,
            "update": round_ - 1,  # crl train's 0-based update index
            "rollouts": verifier.episodes if verifier else 0,
            **{k: float(v) for k, v in logs.items() if isinstance(v, int | float) and not isinstance(v, bool)},
            **(verifier.last if verifier else {}),
            **extra,
        }
        self.writer.append(schema.METRICS, [row])
        if self.logger is not None:
            self.logger.log({k: v for k, v in row.items() if k != "step"}, step=step)
        print(self.progress_line(row), file=sys.stderr, flush=True)

    def progress_line(self, row: dict[str, Any]) -> str:
        steps, step = self.plan["steps"], int(row["step"])
        elapsed = time.time() - self.t_loop
        per = elapsed / max(1, step - self.start_step)
        eta = time.strftime("%H:%M:%S", time.gmtime(per * (steps - step)))

        def num(key: str, fmt: str = ".3f") -> str:
            v = row.get(key)
            return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

        val = f"  val {num('eval/val_accuracy')} (best {self.sel.best_accuracy:.3f} @ round {self.sel.best_round})"
        speed = (
            f"  {num('speed/completions_per_sec', '.1f')} completions/s" if "speed/completions_per_sec" in row else ""
        )
        return (
            f"[crl] grpo step {step}/{steps}  rollouts {int(row['rollouts'])}/{self.cfg.grpo.rollouts}"
            f"  reward {num('reward')}  zero-std groups {num('frac_reward_zero_std', '.2f')}"
            f"  grad-norm {num('grad_norm', '.3g')}  well-formed {num('train/well_formed', '.2f')}"
            f"{val if 'eval/val_accuracy' in row else ''}{speed}  ETA {eta}"
        )

    def on_checkpoint(self, step: int) -> None:
        """Write crl_state.json into the checkpoint TRL just saved (making it complete), then drop older ones."""
        folder = self.dir / CHECKPOINTS / f"{CKPT_PREFIX}{step}"
        state = {
            "step": step,
            "log_sizes": self.writer.flush(),
            "selection": self.sel.state_dict(),
            "episodes": self.verifier.episodes if self.verifier else 0,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "wandb_id": self.logger.id if self.logger is not None else None,
            "format_version": schema.FORMAT_VERSION,
        }
        atomic_write_json(folder / CRL_STATE, state)
        self.sel.drop_others()
        for old_step, path in checkpoints(self.dir):
            if old_step < step:
                shutil.rmtree(path, ignore_errors=True)
        for path in (self.dir / CHECKPOINTS).glob(f"{CKPT_PREFIX}*"):  # partial ones (a kill while TRL saved)
            if path != folder and not (path / CRL_STATE).exists():
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode for CRL's evaluator inside training; the previous mode afterwards."""
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """TRL's and transformers' warnings and info lines (deprecations, model cards) off while training."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


# -- building the pieces -------------------------------------------------------------------------------------------
def train_config(cfg: GRPOTrainConfig) -> TrainConfig:
    """The `crl train` config with the same model, SAE, task and steering: what CRL's evaluator builds from."""
    return load(
        TrainConfig,
        TrainConfig(
            model=cfg.model,
            sae=cfg.sae,
            task=cfg.task,
            steering=cfg.steering,
            ppo=PPOConfig(),
            logger=WandbConfig(mode="disabled"),
            seed=cfg.seed,
        ),
    )


def scoring_task(task: Task, g: GRPOGroupConfig) -> Task:
    """The task as GRPO's completions are scored: free text (a constrained task's free mode) of up to
    max_completion_length tokens; the same prompts, verifier and stop strings."""
    from crl.envs.tasks.registry import make_task

    if task.cfg.mode == "free" and task.cfg.max_new_tokens == g.max_completion_length:
        return task
    return make_task(dataclasses.replace(task.cfg, mode="free", max_new_tokens=g.max_completion_length))


def check_before_loading(cfg: GRPOTrainConfig) -> None:
    """What the task data alone can refute, before the model loads: a val split too small to select on."""
    from crl.envs.tasks.registry import make_task

    if cfg.grpo.select != "best_val":
        return
    n = len(make_task(cfg.task).load("val"))
    if n < MIN_VAL_PROMPTS:
        raise CRLError(
            f"the val split has {n} prompts, fewer than {MIN_VAL_PROMPTS}: too few to select on; enlarge it "
            "(task.n_val) or set grpo.select=last"
        )


def check_prompts(lm: FrozenLM, task: Task, examples: list[Example], max_completion_length: int) -> list[str]:
    """The train prompts as the env renders them; TRL must tokenize them as the env does and they must fit."""
    texts, special = prompt_texts(task, lm.tokenizer, examples)
    first = texts[0]
    if lm.tokenizer(first)["input_ids"] != lm.tokenizer(first, add_special_tokens=special)["input_ids"]:
        raise CRLError(
            f"TRL would tokenize the prompts of task '{task.name}' differently from CRL's env (special tokens); "
            "set task.chat_template to match the model"
        )
    longest = max(len(ids) for ids in lm.tokenizer(texts, add_special_tokens=special)["input_ids"])
    if longest + max_completion_length > lm.max_context:
        raise CRLError(
            f"grpo.max_completion_length={max_completion_length} does not fit: the longest prompt has {longest} tokens "
            f"and {lm.name} has a context of {lm.max_context}"
        )
    return texts


def letter_only(lm: FrozenLM, task: Task, examples: list[Example]) -> dict[str, Any]:
    """TRL generation kwargs that leave only the option-letter tokens CRL's env allows on `examples` (their union):
    every other token id is suppressed. A task that decodes freely has no letters to keep: one-line error."""
    keep: set[int] = set()
    for ex in examples:
        ids = task.allowed_token_ids(lm.tokenizer, ex)
        if ids is None:
            raise CRLError(
                f"grpo.constrained=true needs a constrained task (one option-letter token); task '{task.name}' "
                f"decodes freely (task.mode={task.cfg.mode}): set grpo.constrained=false"
            )
        keep.update(int(i) for i in ids)
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    return {"suppress_tokens": [i for i in range(vocab) if i not in keep]}


def trl_args(
    cfg: GRPOTrainConfig, run_dir: Path, device: torch.device, generation: dict[str, Any] | None = None
) -> Any:
    """TRL's GRPOConfig for a CPU (or one GPU) in fp32: TRL's GPU defaults (bf16, gradient checkpointing) off,
    logging every step, TRL's own reporting and printing off (CRL writes metrics.jsonl and progress lines).
    `generation`: extra generation kwargs (`letter_only` for grpo.constrained: one letter token a completion)."""
    from trl import GRPOConfig

    g, p = cfg.grpo, plan(cfg.grpo)
    return GRPOConfig(
        output_dir=str(run_dir / CHECKPOINTS),
        use_cpu=device.type == "cpu",
        bf16=False,
        fp16=False,
        gradient_checkpointing=g.gradient_checkpointing,
        learning_rate=g.learning_rate,
        lr_scheduler_type=g.lr_scheduler,
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=g.max_grad_norm,
        per_device_train_batch_size=p["micro_batch"],
        gradient_accumulation_steps=p["accumulation"],
        steps_per_generation=g.minibatches * p["accumulation"],  # in micro-batches: one round's completions
        num_generations=g.num_generations,
        max_completion_length=1 if g.constrained else g.max_completion_length,
        generation_kwargs=generation,
        temperature=g.temperature,
        top_p=g.top_p,
        beta=g.beta,
        epsilon=g.epsilon,
        num_iterations=g.num_iterations,
        loss_type=g.loss_type,
        scale_rewards=g.scale_rewards,
        max_steps=p["steps"],
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=g.checkpoint_every * p["steps_per_round"],
        save_total_limit=None,  # CRL drops older checkpoints once a newer one is complete (GRPORun.on_checkpoint)
        report_to="none",
        disable_tqdm=True,
        log_completions=False,
        dataloader_pin_memory=False,
        seed=cfg.seed,
    )


def lora_config(g: GRPOGroupConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=g.lora_r,
        lora_alpha=g.lora_alpha,
        lora_dropout=g.lora_dropout,
        target_modules=list(g.lora_target_modules) if g.lora_target_modules else "all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )


def eos_ids(lm: FrozenLM) -> set[int]:
    ids = getattr(lm.model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    return {int(i) for i in [*ids, lm.tokenizer.eos_token_id] if i is not None}


def save_weights(run: GRPORun, trainer: Any, selected_round: int) -> Path:
    """The selected weights as <run>/model/ (written beside, then moved into place): the LoRA adapter, or full."""
    g = run.cfg.grpo
    tmp = run.dir / f".{TUNED_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if g.lora:
        trainer.model.save_pretrained(str(tmp))
        (tmp / "README.md").unlink(missing_ok=True)  # peft's model card template
        if not (tmp / ADAPTER_CONFIG).exists():
            raise CRLError(f"peft wrote no {ADAPTER_CONFIG} into {tmp}; the adapter was not saved")
    else:
        from safetensors.torch import save_model

        save_model(run.model, str(tmp / FULL_WEIGHTS))
    info = {
        "kind": "lora" if g.lora else "full",
        "base_model": run.comps.lm.name,
        "method": METHOD,
        "run": run.name,
        "selected_round": selected_round,
        "task": run.comps.task.name,
        "seed": run.cfg.seed,
    }
    atomic_write_json(tmp / WEIGHTS_INFO, info)
    final = run.dir / TUNED_DIR
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


# -- the whole run ---------------------------------------------------------------------------------------------------
def grpo_train(cfg: GRPOTrainConfig | Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """Train `cfg.model`'s weights with GRPO into `run_dir` (or continue `cfg.resume`); returns the summary (also
    summary.json). Bad input is one CRLError before the model loads where the config or the task data show it."""
    t0 = time.time()
    cfg = load(GRPOTrainConfig, cfg)
    g = cfg.grpo
    run_dir = Path(cfg.resume or run_dir)
    resume_state: dict[str, Any] | None = None
    resume_from: Path | None = None
    if cfg.resume:
        if (run_dir / schema.SUMMARY).exists():
            raise CRLError(f"resume={run_dir}: the run finished (it has {schema.SUMMARY}); start a new run")
        found = checkpoints(run_dir)
        if not found:
            raise CRLError(f"resume={run_dir}: no complete checkpoint to resume from; start a new run")
        resume_from = found[-1][1]
        resume_state = json.loads((resume_from / CRL_STATE).read_text(encoding="utf-8"))
    check_before_loading(cfg)
    from crl.run.train import seed_everything

    seed_everything(cfg.seed)
    comps = build(train_config(cfg))
    lm = comps.lm
    task = scoring_task(comps.task, g)
    texts = check_prompts(lm, comps.task, comps.splits["train"], g.max_completion_length)
    if resume_state is not None:
        comps.check_identity(RunInfo.read(run_dir), run_dir)
    else:
        info = comps.run_info(run_dir.name, cfg.seed).to_dict()
        info.update(method=METHOD, lora=g.lora, weights_dir=TUNED_DIR)
        atomic_write_json(run_dir / schema.RUN_JSON, info)
        atomic_write_bytes(run_dir / schema.CONFIG_YAML, config_yaml(cfg))

    writer = RunWriter(run_dir)
    run = GRPORun(cfg, run_dir, comps, writer)
    split = g.eval_split
    constrained_free = g.free_eval and comps.task.cfg.mode == "constrained"
    free_comps = dataclasses.replace(comps, task=task) if constrained_free else None
    try:
        if resume_state is not None:
            writer.truncate_to(resume_state["log_sizes"])
            run.sel.load_state_dict(resume_state["selection"])
            run.sel.drop_others()  # a better round found after the checkpoint: it is trained again
            run.train_seconds = float(resume_state.get("train_seconds", 0.0))
            run.eval_seconds = float(resume_state.get("eval_seconds", 0.0))
            run.start_step = int(resume_state["step"])
            print(f"[crl] resuming {run_dir} from step {run.start_step}/{run.plan['steps']}")
        resume_id = resume_state.get("wandb_id") if resume_state else None
        run.logger = WandbLogger(cfg.logger, run_dir, run.name, asdict(cfg), resume_id=resume_id)
        if resume_state is None:
            before = evaluate(comps, split, None, cfg.seed, progress=f"{split} before training (base model)")
            writer.append_episodes(before, run.name, Phase.baseline("none", split))
            if free_comps is not None:
                phase = f"{split} before training (base model, free generation)"
                before_free = evaluate(free_comps, split, None, cfg.seed, progress=phase)
                writer.append_episodes(before_free, run.name, Phase.baseline(FREE_BASE, split))
        summary = _train_and_test(run, cfg, texts, task, free_comps, resume_from, resume_state)
    finally:
        writer.close()
        if run.logger is not None:
            run.logger.finish()
    summary["wall_seconds"] = time.time() - t0
    atomic_write_json(run_dir / schema.SUMMARY, summary)
    return summary


def _train_and_test(
    run: GRPORun,
    cfg: GRPOTrainConfig,
    texts: list[str],
    task: Task,
    free_comps: Components | None,
    resume_from: Path | None,
    resume_state: dict[str, Any] | None,
) -> dict[str, Any]:
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback
    from trl import GRPOTrainer

    g, comps, writer = cfg.grpo, run.comps, run.writer
    lm = comps.lm
    examples = comps.splits["train"]
    if not g.lora:  # full fine-tuning: every weight trains (load_model froze them)
        for p in lm.model.parameters():
            p.requires_grad_(True)
    episodes_so_far = int(resume_state.get("episodes", 0)) if resume_state else 0
    run.verifier = Verifier(task, examples, writer, run.name, eos_ids(lm), plan(g)["steps_per_round"], episodes_so_far)
    verifier = run.verifier

    def reward(prompts: list[str], completions: list[str], **columns: Any) -> list[float]:
        return verifier(prompts, completions, **columns)

    reward.__name__ = "verifier"  # TRL logs rewards/verifier/mean
    dataset = Dataset.from_dict({"prompt": texts, "example_id": [e.id for e in examples]})
    with quiet_libraries():
        trainer = GRPOTrainer(
            model=lm.model,
            reward_funcs=[reward],
            args=trl_args(cfg, run.dir, lm.device, letter_only(lm, comps.task, examples) if g.constrained else None),
            train_dataset=dataset,
            processing_class=lm.tokenizer,
            peft_config=lora_config(g) if g.lora else None,
            callbacks=[_callback_class()(run)],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)
        trainer.create_model_card = lambda *a, **k: None  # no README.md model cards in the run directory
        run.model = trainer.model  # the PeftModel around lm.model (LoRA is injected into lm.model's layers)
        if resume_state is None and g.eval_every:  # round 0: the base model (LoRA starts as a no-op)
            run.val_eval(0)
        run.t_loop = time.time()
        run.model.train()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    run.model.eval()
    last_round = run.plan["rounds"]
    chosen = run.sel.chosen(last_round)
    split = g.eval_split
    test_last = None
    if chosen != last_round:  # the last model too, so the summary shows what selection bought
        test_last = evaluate(comps, split, None, cfg.seed, progress=f"{split} last model (round {last_round})")
        writer.append_episodes(test_last, run.name, Phase.baseline("last", split), last_round)
        load_trainable(run.model, run.sel.best_state())
    after = evaluate(comps, split, None, cfg.seed, progress=f"{split} selected model (round {chosen})")
    writer.append_episodes(after, run.name, Phase.eval(split), chosen)
    after_free = None
    if free_comps is not None:
        phase = f"{split} selected model (round {chosen}, free generation)"
        after_free = evaluate(free_comps, split, None, cfg.seed, progress=phase)
        writer.append_episodes(after_free, run.name, Phase.baseline(FREE_TUNED, split), chosen)
    writer.flush()
    weights = save_weights(run, trainer, chosen)
    rows = read_jsonl(run.dir / schema.METRICS)
    summary = make_summary(run, split, after, after_free, test_last, chosen, last_round, rows, weights)
    if run.logger is not None:
        after_metrics = {f"eval/{k}": v for k, v in summary["after"].items() if isinstance(v, float)}
        run.logger.log(after_metrics, step=run.plan["steps"])
    return summary


def _phase_stats(rows: list[dict[str, Any]], phase: str) -> dict[str, float] | None:
    mine = [r for r in rows if r["phase"] == phase]
    if not mine:
        return None
    n = len(mine)
    return {
        "accuracy": sum(r["correct"] for r in mine) / n,
        "well_formed": sum(r["well_formed"] for r in mine) / n,
        "mean_reward": sum(r["reward"] for r in mine) / n,
        "n": n,
    }


def make_summary(
    run: GRPORun,
    split: str,
    after: list[Episode],
    after_free: list[Episode] | None,
    test_last: list[Episode] | None,
    chosen: int,
    last_round: int,
    metrics: list[dict[str, Any]],
    weights: Path,
) -> dict[str, Any]:
    g = run.cfg.grpo
    episodes = read_jsonl(run.dir / schema.EPISODES)
    train_rows = [r for r in episodes if r["phase"] == str(Phase.train())]
    by_round: dict[int, list[float]] = {}
    for r in train_rows:
        by_round.setdefault(int(r["update"]), []).append(float(r["reward"]))
    rounds = [sum(v) / len(v) for _, v in sorted(by_round.items())]
    learning = learning_verdict(metrics)
    free = None
    if after_free is not None:
        free = {
            "max_new_tokens": g.max_completion_length,
            "before": _phase_stats(episodes, str(Phase.baseline(FREE_BASE, split))),
            "after": {**accuracy(after_free), "n": len(after_free)},
        }
    return {
        "format_version": schema.FORMAT_VERSION,
        "run": run.name,
        "method": METHOD,
        "split": split,
        # As `crl train` writes them: the task as configured (constrained compare: one option-letter token), greedy.
        "before": _phase_stats(episodes, str(Phase.baseline("none", split))),
        "after": {**accuracy(after), "n": len(after)},
        "free": free,
        "selection": {
            **run.sel.summary(chosen, last_round),
            "test_last": episode_stats(test_last) if test_last else None,
        },
        "training": {
            "rollouts": len(train_rows),
            "rounds": len(by_round),
            "steps": len(metrics),
            "train_seconds": run.train_seconds,
            "eval_seconds": run.eval_seconds,
            "completions_per_sec": len(train_rows) / run.train_seconds if run.train_seconds else None,
            "mean_reward_by_round": rounds,
            "train_accuracy": sum(r["correct"] for r in train_rows) / max(1, len(train_rows)),
            "train_well_formed": sum(r["well_formed"] for r in train_rows) / max(1, len(train_rows)),
        },
        "learning": learning,
        "weights": {
            "dir": str(weights.relative_to(run.dir)),
            "kind": "lora" if g.lora else "full",
            "selected_round": chosen,
        },
        "config": {"grpo": asdict(g)},
    }
