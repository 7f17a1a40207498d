"""The replay tests' world: a tiny random model with a hand-built SAE whose planted features are the
unembedding rows of the class targets: forcing planted[k] at step 0 answers a class-k prompt correctly,
nothing else does, and only step 0 matters (the reward reads the first token)."""

from __future__ import annotations

import json

import numpy as np
import torch

PLANTED = [5, 9]
D_SAE = 16


def planted_components():
    """Tiny random model + hand-built SAE (see the module docstring); test split of 8 prompts."""
    from crl.backends.hooks import HookPoint
    from crl.backends.model import tiny_model
    from crl.backends.sae import sae_from_decoder
    from crl.config import MaskingConfig, PolicyConfig, PPOConfig, SteeringConfig, TaskConfig
    from crl.envs.tasks.planted import PlantedTask, _target_ids
    from crl.run.components import Components

    lm = tiny_model("llama", n_layers=2, d_model=64, seed=0)
    task = PlantedTask(
        TaskConfig(name="planted", n_train=8, n_val=8, n_test=8, max_new_tokens=2, chat_template=False),
        n_classes=2,
    )
    w = torch.randn(D_SAE, 64, generator=torch.Generator().manual_seed(0))
    unembed = lm.model.lm_head.weight.detach()
    for k, t in enumerate(_target_ids(lm.tokenizer, 2)):
        w[PLANTED[k]] = unembed[t]
    loaded = sae_from_decoder(w, HookPoint(1, "post"), "test:planted")
    splits = {s: task.load(s) for s in ("train", "val", "test")}
    return Components(
        lm,
        loaded,
        task,
        splits,
        SteeringConfig(coef=4.0, coef_levels=[1.0]),  # one level: action = feature, no-op = D_SAE
        MaskingConfig(mode="none"),
        PolicyConfig(),
        PPOConfig(num_envs=8),
    )


class CuePolicy:
    """Picks the prompt's planted feature at step 0 (the wrong one on `wrong` prompts), then no steering.
    Logs a value (1 when it will be right) and the other planted feature as the next-best alternative."""

    def __init__(self, comps, wrong: set[str] = frozenset()):
        self.cls = {e.id: e.meta["cls"] for split in comps.splits.values() for e in split}
        self.wrong = wrong

    def act(self, obs, info):
        n = len(obs)
        actions, values, alts = np.full(n, D_SAE), np.zeros(n, np.float32), [[3]] * n
        for r in np.flatnonzero(info["active"]):
            pid = info["prompt_id"][r].split("#")[0]
            k = self.cls[pid] ^ (pid in self.wrong)
            right, other = PLANTED[k], PLANTED[1 - k]
            if info["step"][r] == 0:
                actions[r] = right
                alts[r] = [other, 3]
            values[r] = float(pid not in self.wrong)
        return actions, {"value": values, "logprob": np.zeros(n, np.float32), "top_alternatives": alts}


def write_real_run(d, comps, policy):
    """A run directory whose eval/baseline rows come from real rollouts (what `crl train` would log)."""
    from crl.analysis.replay.runner import append_rows, rollout
    from crl.logs.rows import episode_rows

    d.mkdir()
    info = {
        "format_version": 1,
        "run": "planted-run",
        "model": comps.lm.name,
        "sae_identity": comps.sae.identity,
        "hook_name": comps.sae.hook_name,
        "layer": 1,
        "d_sae": D_SAE,
        "neuronpedia_id": None,
        "task": "planted",
        "seed": 0,
        "coef": comps.steering.coef,
        "planted": PLANTED,
    }
    (d / "run.json").write_text(json.dumps(info))
    (d / "config.yaml").write_text("seed: 0\n")
    (d / "metrics.jsonl").write_text("")
    (d / "summary.json").write_text("{}")
    test = comps.splits["test"]
    i1, e1 = episode_rows(rollout(comps, test, None), "planted-run", "baseline:none:test")
    i2, e2 = episode_rows(rollout(comps, test, policy), "planted-run", "eval:test", update=5)
    append_rows(d, i1 + i2, e1 + e2)
    return d


def check_val_outcomes(selection, val, n: int) -> None:
    """Every val row (stage `...@val`) carries one [prompt id, correct, well-formed] per prompt it scored, the first
    `n` val prompts in order, whose mean correct is its accuracy; no other row has outcomes."""
    from crl.analysis.replay.runner import base_id

    is_val = selection["stage"].str.endswith("@val")
    assert is_val.any()
    for _, r in selection[is_val].iterrows():
        outs = r["outcomes"]
        assert r["rollouts"] == len(outs) == n
        assert [o[0] for o in outs] == [base_id(e.id) for e in val[:n]]
        assert all(o[1] in (0, 1) and o[2] in (0, 1) for o in outs)
        assert abs(np.mean([o[1] for o in outs]) - r["accuracy"]) <= 1e-12
        assert abs(np.mean([o[2] for o in outs]) - r["well_formed"]) <= 1e-12
    if "outcomes" in selection.columns:
        assert selection.loc[~is_val, "outcomes"].isna().all()
