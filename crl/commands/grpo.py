"""`crl grpo`: GRPO (TRL) on the default model's weights, on `crl train`'s task, splits, prompts and verifier, at its
rollout budget; tested unsteered with CRL's own evaluator (crl.run.grpo has what is the same and what differs).

crl grpo                                         # LoRA on SmolLM2-135M, compare, 1536 completions (crl train's budget)
crl grpo grpo.lora=false grpo.learning_rate=1e-5 # full fine-tuning
crl grpo -m grpo.learning_rate=1e-5,3e-5,1e-4 grpo.temperature=1.0,1.5 grpo.num_generations=4,8
                                                 # a sweep: one run directory per job; compare their val (summary.json)
crl grpo resume=runs/<run>                       # continue from the last complete checkpoint
model.weights=runs/<run>                         # any command that loads the model: the tuned weights on top of it

The run directory's lifecycle is `crl train`'s (crl.logs.lifecycle): a failed invocation leaves nothing, or a directory
marked FAILED.json; a new run never writes into a non-empty directory; `resume=` of a run stopped before its first
checkpoint starts it again from the beginning, in place.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from crl.config import GRPOTrainConfig, load
from crl.errors import exit_on_error
from crl.logs import lifecycle
from crl.paths import CONF_DIR


def _pct(d: dict[str, Any] | None, key: str) -> str:
    return "-" if not d or d.get(key) is None else f"{d[key]:.3f}"


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    """The result in `crl train`'s terms (stdout); a run that never learned also says so on stderr."""
    b, a, sel, tr = summary["before"], summary["after"], summary["selection"], summary["training"]
    print(f"\n[crl] run dir: {run_dir}   ({summary['wall_seconds']:.0f}s)")
    if sel["val_curve"]:
        curve = "  ".join(f"{r['round']}:{r['accuracy']:.3f}" for r in sel["val_curve"])
        print(f"[crl] val accuracy by round   {curve}")
        why = "best val (ties go to the earlier round; 0 is the base model)" if sel["rule"] == "best_val" else "last"
        print(f"[crl] selected round {sel['selected_round']} of {sel['last_round']} ({why})")
    split = summary["split"]
    print(f"[crl] {split} accuracy   before {_pct(b, 'accuracy')}  after {_pct(a, 'accuracy')}   (n={a['n']})")
    print(f"[crl] well-formed rate  before {_pct(b, 'well_formed')}  after {_pct(a, 'well_formed')}")
    free = summary.get("free")
    if free:
        fb, fa = free["before"], free["after"]
        print(
            f"[crl] free generation ({free['max_new_tokens']} tokens, as GRPO samples)   accuracy before "
            f"{_pct(fb, 'accuracy')}  after {_pct(fa, 'accuracy')}   well-formed before {_pct(fb, 'well_formed')}  "
            f"after {_pct(fa, 'well_formed')}"
        )
    rate = tr["completions_per_sec"]
    rewards = tr["mean_reward_by_round"]
    trend = f"{rewards[0]:.3f} -> {rewards[-1]:.3f}" if rewards else "-"
    zero = summary["learning"]["mean_frac_reward_zero_std"]
    print(
        f"[crl] training: {tr['rollouts']} completions in {tr['train_seconds']:.0f}s"
        f" ({'-' if rate is None else f'{rate:.2f}'} completions/s), mean reward by round {trend}, groups with "
        f"identical rewards {'-' if zero is None else f'{zero:.0%}'}"
    )
    w = summary["weights"]
    kind = "LoRA adapter, merged on load" if w["kind"] == "lora" else "full weights"
    print(f"[crl] tuned weights: {run_dir / w['dir']} ({kind}); load them with model.weights={run_dir}")
    learning = summary["learning"]
    if not learning["started"]:
        print(f"crl: warning: GRPO never learned in {run_dir}: {learning['why']}", file=sys.stderr)


@hydra.main(config_path=CONF_DIR, config_name="grpo", version_base=None)
@exit_on_error
def _main(raw: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from crl.run import grpo as run_grpo

    hc = HydraConfig.get()
    cfg = load(GRPOTrainConfig, raw)
    run_dir = Path(cfg.resume or hc.runtime.output_dir)
    command = shlex.join(["crl", "grpo", *sys.argv[1:]])
    with lifecycle.claim(run_dir, new=not cfg.resume, command=command):  # FAILED.json names `crl grpo resume=`
        if cfg.resume:
            cfg = run_grpo.resume_config(run_dir, list(hc.overrides.task))
            if run_grpo.never_checkpointed(run_dir):
                cfg = dataclasses.replace(cfg, resume=None)
                run_grpo.discard_progress(run_dir)
                print(f"[crl] {run_dir} stopped before its first checkpoint: starting it again from the beginning")
        summary = run_grpo.grpo_train(cfg, run_dir)
    print_summary(summary, run_dir)


@exit_on_error
def main() -> None:
    sys.argv += lifecycle.preflight(sys.argv[1:], "crl grpo")
    _main()


if __name__ == "__main__":
    main()
