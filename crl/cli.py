"""The `crl` command. Each subcommand is a Hydra app and takes Hydra overrides.

crl train                               # the embedded offline default, end to end
crl train -m seed=0,1 steering.layer=3,6  # a multirun sweep
crl train -m hydra/launcher=joblib seed=0,1  # its jobs in parallel (submitit_local; submitit_slurm on a cluster)
crl grpo                                # GRPO (TRL) on the model's weights, same task and budget as crl train
crl eval run_dir=runs/... split=test
crl transfer run_dir=runs/... [variants=[wording:pick,range:3digit]] [n=400]
crl transfer 'run_dirs=[runs/a,runs/b,runs/c]' [out=runs/pooled]  # seeds pooled, issue #19's acceptance
crl transfer 'committee=[runs/a,runs/b,runs/c]' [quorum=majority]  # steers only where the seeds' policies agree
crl probe task=compare [layers=[6,15,24]]  # before training: can steering help at each layer?
crl rl-compare crl_run=runs/... grpo_run=runs/...  # which SAE features GRPO moved, and did CRL pick them?
crl curves 'crl_runs=[runs/crl-*]' 'grpo_runs=[runs/grpo-*]'  # CRL's share of GRPO's gain at equal budget
crl sae build sae.layer=6 ; crl sae info ; crl sae export sae.layer=6
crl bench rollout ; crl bench policy  # env decoding speed ; the policy at 16k-131k features
crl analyze run_dir=runs/... ; crl compare 'dirs=[runs/a,runs/b]'
crl study tasks=[compare] layers=[6,15,24] seeds=[0,1,2] out=runs/study-a  # every cell, baselines, one report
crl soak                                # the run directory's reliability soak (kills, damage, full disk)
crl features show 1398 ; crl features build ; crl features index ; crl features export 1398
"""

from __future__ import annotations

import importlib
import re
import sys

from crl.config.compose import check_command
from crl.errors import CRLError

# "words" -> "module:function"; each function is a Hydra app (@hydra.main) in crl/commands/.
COMMANDS: dict[tuple[str, ...], str] = {
    ("train",): "crl.commands.train:main",
    ("grpo",): "crl.commands.grpo:main",
    ("eval",): "crl.commands.evaluate:main",
    ("transfer",): "crl.commands.transfer:main",
    ("probe",): "crl.commands.probe:main",
    ("rl-compare",): "crl.commands.rl_compare:main",
    ("curves",): "crl.commands.curves:main",
    ("sae", "build"): "crl.commands.sae:build",
    ("sae", "info"): "crl.commands.sae:info",
    ("sae", "export"): "crl.commands.sae:export",
    ("bench", "rollout"): "crl.commands.bench:rollout",
    ("bench", "policy"): "crl.commands.bench:policy",
    ("analyze",): "crl.commands.report:analyze",
    ("compare",): "crl.commands.report:compare",
    ("study",): "crl.commands.study:main",
    ("soak",): "crl.commands.soak:main",
    ("features", "show"): "crl.commands.features:show",
    ("features", "build"): "crl.commands.features:build",
    ("features", "index"): "crl.commands.features:index",
    ("features", "export"): "crl.commands.features:export",
}
# Commands that take one bare value, and its key: `crl features show 1398` = `crl features show feature=1398`
# (Hydra reads only key=value overrides).
POSITIONAL: dict[tuple[str, ...], str] = {("features", "show"): "feature", ("features", "export"): "feature"}
# Commands that pass the overrides their config lacks on to another command, and the function that picks out their
# own for the check (`crl study experiment=planted`: every cell's `crl train` gets experiment=planted).
OWN_ARGS: dict[tuple[str, ...], str] = {("study",): "crl.commands.study:own_args"}


def _positional(words: tuple[str, ...], args: list[str]) -> list[str]:
    key = POSITIONAL.get(words)
    return [f"{key}={a}" if key and re.fullmatch(r"-?\d+", a) else a for a in args]


def _own_args(words: tuple[str, ...], args: list[str]) -> list[str]:
    if words not in OWN_ARGS:
        return args
    module, func = OWN_ARGS[words].split(":")
    return getattr(importlib.import_module(module), func)(args)


def _usage() -> str:
    return "usage: crl " + " | ".join(" ".join(words) for words in COMMANDS) + " [hydra overrides...]"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    for words, target in sorted(COMMANDS.items(), key=lambda kv: -len(kv[0])):
        if tuple(argv[: len(words)]) == words:
            module, func = target.split(":")
            args = _positional(words, argv[len(words) :])
            sys.argv = [f"crl {' '.join(words)}", *args]
            try:
                if words[0] == "bench":  # sets OMP_WAIT_POLICY, which must precede torch: the device
                    importlib.import_module("crl.run.bench")  # check below imports torch for a non-cpu device
                # Bad config values fail here, in one line, before the command (so torch, the model) is imported.
                # Each command composes conf/<its words joined by "_">.yaml (`crl sae build`: sae_build.yaml).
                check_command("_".join(words), _own_args(words, args))
                getattr(importlib.import_module(module), func)()
            except CRLError as e:
                print(f"crl: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            return
    print(_usage(), file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
