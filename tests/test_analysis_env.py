"""Part-B analyses through the real environment, on a tiny random model with a hand-built SAE whose
planted features are the unembedding rows of the class targets: forcing planted[k] at step 0 answers a
class-k prompt correctly, nothing else does, and only step 0 matters (the reward reads the first token)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crl.analysis.baselines import BaselineConfig, correlation_ranking, run_baselines, write_baselines
from crl.analysis.branch_points import BranchConfig, aggregate, branch_points, find_branch_points
from crl.analysis.effects import (
    EffectConfig,
    coef_sweep,
    forced_feature_effects,
    side_effects,
    write_coef_sweep,
)
from crl.analysis.envrun import episode_frames, rollout
from crl.analysis.rundir import load_run
from crl.analysis.stats import StatsConfig, method_table
from crl.analysis.synthetic import SyntheticSpec, write_run_dir
from crl.errors import CRLError

PLANTED = [5, 9]
D_SAE = 16


@pytest.fixture(scope="module")
def comps():
    from crl.backends.hooks import HookPoint
    from crl.backends.model import tiny_model
    from crl.backends.sae import sae_from_decoder
    from crl.components import Components
    from crl.envs.steering_env import SteeringConfig
    from crl.envs.tasks.base import TaskConfig
    from crl.envs.tasks.planted import PlantedTask, _target_ids
    from crl.masking import MaskingConfig
    from crl.policy import PolicyConfig
    from crl.ppo import PPOConfig

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
        SteeringConfig(coef=4.0),
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


def test_forcing_the_planted_feature_is_the_known_answer(comps):
    test = comps.splits["test"]
    none = rollout(comps, test, None)
    crl = rollout(comps, test, CuePolicy(comps))
    assert not any(e.correct for e in none) and all(e.correct for e in crl)
    assert [s["feature"] for s in crl[0].steps] == [PLANTED[test[0].meta["cls"]], -1]
    assert crl[0].steps[0]["top_alternatives"] == [PLANTED[1 - test[0].meta["cls"]], 3]


def test_baselines_select_a_planted_static_feature_and_skip_corr_without_reward_variance(comps):
    cfg = BaselineConfig(seeds=[0, 1, 2], n_act=2, coef_grid=[2.0, 4.0])
    res = run_baselines(comps, cfg, usage_features=[9, 5])
    assert res.chosen["static_feature"] == 5  # 5 and 9 tie at 50% on train; the lower id wins
    coef_rows = res.selection[res.selection["stage"] == "coef@val"]
    assert coef_rows["accuracy"].tolist() == [0.5, 0.5] and res.chosen["static_coef"] == 2.0  # tie: smaller
    assert res.chosen["static_candidates"][:2] == [9, 5]
    assert any("corr skipped" in n for n in res.notes) and "corr_feature" not in res.chosen
    assert set(res.episodes) == {"baseline:none:test", "baseline:random:test", "baseline:static:test"}
    assert sorted(set(res.seeds["baseline:random:test"])) == [0, 1, 2]
    assert set(res.seeds["baseline:none:test"]) == {0}  # greedy decoding: deterministic methods run once
    eps, _ = res.frames()
    static = eps[eps["phase"] == "baseline:static:test"]
    assert static["correct"].mean() == 0.5  # one fixed feature answers exactly one of the two classes
    crl, _ = episode_frames(rollout(comps, comps.splits["test"], CuePolicy(comps)), "eval:test")
    methods = {"crl": crl, **{p.split(":")[1]: g for p, g in eps.groupby("phase")}}
    mt = method_table(methods, "crl", StatsConfig(n_boot=200)).set_index("method")
    assert mt.loc["none", "diff_vs_ref"] == 1.0 and mt.loc["static", "diff_vs_ref"] == 0.5
    assert mt.loc["random", "n_seeds"] == 3
    with pytest.raises(CRLError, match="unknown baseline"):
        run_baselines(comps, BaselineConfig(methods=["nope"]))


def test_correlation_ranking_finds_the_rewarded_feature():
    rng = np.random.default_rng(0)
    acts = rng.random((40, 6))
    rewards = (acts[:, 4] > 0.5).astype(float)
    acts[:, 2] = 1.0  # constant: no correlation defined
    r = correlation_ranking(acts, rewards)
    assert int(np.nanargmax(r)) == 4 and np.isnan(r[2])


def test_branch_points_are_at_step_zero(comps):
    wrong = {comps.splits["test"][0].id}
    trials = find_branch_points(comps, CuePolicy(comps, wrong), BranchConfig(n_alternatives=1))
    assert trials["prefix_match"].all()
    bp = branch_points(trials)
    assert set(bp["step"]) == {0} and len(bp) == 8  # every prompt branches at its first token only
    assert bp.set_index("prompt_id").loc[next(iter(wrong)), "flip"] == "to_correct"
    assert (bp["flip"] == "to_incorrect").sum() == 7
    agg = aggregate(trials, "planted").set_index("step")
    assert agg.loc[0, "n_branch_points"] == 8 and agg.loc[1, "n_branch_points"] == 0
    assert agg.loc[1, "flip_rate"] == 0.0


def test_forced_effects_side_effects_and_coef_sweep(comps, tmp_path):
    _, steps = episode_frames(rollout(comps, comps.splits["test"], CuePolicy(comps)), "eval:test")
    eff = forced_feature_effects(comps, steps, EffectConfig(), StatsConfig(n_boot=200)).set_index("feature")
    assert set(eff.index) == set(PLANTED)
    assert eff.loc[5, "effect"] == 1.0 and eff.loc[5, "none_acc"] == 0.0 and eff.loc[5, "n_prompts"] == 4
    assert eff.loc[5, "effect_mcnemar_p"] == pytest.approx(2 / 16)

    side = side_effects(comps, [5, 3], coef=4.0).set_index("feature")
    assert (side["kl_mean"] > 0.01).all() and side.loc[5, "top1_changed"] > 0.5
    zero = side_effects(comps, [5], coef=0.0, positions="all")
    assert zero.loc[0, "kl_mean"] == pytest.approx(0.0, abs=1e-6) and zero.loc[0, "top1_changed"] == 0.0
    with pytest.raises(CRLError, match="out of range"):
        side_effects(comps, [D_SAE])

    sweep = coef_sweep(comps, CuePolicy(comps), [4.0], split="val")
    assert [s["coef"] for s in sweep] == [0.0, 4.0]
    assert sweep[0]["accuracy"] == 0.0 and sweep[1]["accuracy"] == 1.0
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))
    write_coef_sweep(d, sweep)
    assert load_run(d).summary["coef_sweep"] == sweep


def test_write_baselines_appends_new_phases_only(comps, tmp_path):
    res = run_baselines(comps, BaselineConfig(methods=["none", "random"], seeds=[0, 1]))
    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4, random_seeds=()))
    written = write_baselines(d, res)
    assert written == ["baseline:random:test"]  # the run already has baseline:none:test
    run = load_run(d)
    rnd = run.episodes_of("baseline:random:test")
    assert sorted(set(rnd["seed"])) == [0, 1] and len(rnd) == 16
    assert len(run.steps_of("baseline:random:test")) == sum(len(e.steps) for e in res.episodes["baseline:random:test"])


def _write_real_run(d, comps, policy):
    """A run directory whose eval/baseline rows come from real rollouts (what `crl train` would log)."""
    import json

    from crl.analysis.envrun import append_rows, episode_rows

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
    i1, e1 = episode_rows(rollout(comps, test, None), "planted-run", "baseline:none:test", None)
    i2, e2 = episode_rows(rollout(comps, test, policy), "planted-run", "eval:test", None, update=5)
    append_rows(d, i1 + i2, e1 + e2)
    return d


def test_env_pipeline_feeds_the_report_end_to_end(comps, tmp_path):
    import re

    from PIL import Image

    from crl.analysis.env_pipeline import EnvAnalysisConfig, run_env_analyses
    from crl.analysis.pipeline import AnalyzeConfig, analyze_run

    d = _write_real_run(tmp_path / "run", comps, CuePolicy(comps))
    cfg = EnvAnalysisConfig(
        baselines=BaselineConfig(seeds=[0, 1], n_act=2, coef_grid=[4.0]),
        branch=BranchConfig(n_alternatives=1),
        sweep_multipliers=[1.0],
        n_boot=200,
    )
    out = run_env_analyses(d, cfg, comps=comps, policy=CuePolicy(comps))
    assert out["baseline_phases"] == ["baseline:random:test", "baseline:static:test"]  # none was logged
    assert out["coef_sweep"][-1] == {"coef": 4.0, "accuracy": 1.0, "well_formed_rate": 1.0}
    res = analyze_run(AnalyzeConfig(run_dir=str(d), n_boot=200))
    tables = res.report.tables
    assert tables["feature_usage"].set_index("feature").loc[5, "effect"] == 1.0
    assert set(tables["side_effects"]["feature"]) == set(PLANTED)
    assert tables["branch_by_step"].set_index("step").loc[0, "n_branch_points"] == 8
    mt = tables["methods"].set_index("method")
    assert mt.loc["crl", "accuracy"] == 1.0 and mt.loc["static", "accuracy"] == 0.5
    assert mt.loc["random", "n_seeds"] == 2
    html = res.html.read_text()
    assert "coefficient tolerance = 4" in html and "Planted task" in html and "100.0% of 8 episodes" in html
    assert not re.search(r"""src\s*=\s*["']?https?:""", html) and "<script" not in html
    for png in (d / "analysis").glob("*.png"):
        with Image.open(png) as im:
            im.verify()


def test_load_policy_restores_the_saved_network(comps, tmp_path):
    from crl.analysis.envrun import load_components, load_policy
    from crl.policy import ActorCritic

    torch.manual_seed(1)
    net = ActorCritic(comps.lm.d_model, comps.sae.directions(), True, comps.policy)
    torch.save(net.state_dict(), tmp_path / "policy.pt")
    agent = load_policy(comps, tmp_path)
    obs = torch.randn(3, comps.lm.d_model)
    assert torch.allclose(agent.net.get_value(obs), net.get_value(obs))
    assert agent.greedy
    with pytest.raises(CRLError, match="neither policy.pt"):
        load_policy(comps, tmp_path / "empty")
    with pytest.raises(CRLError, match="no config.yaml"):
        load_components(tmp_path)


def test_analyze_env_flag_fails_cleanly_on_a_run_without_a_full_config(tmp_path):
    from crl.analysis.pipeline import AnalyzeConfig, analyze_run

    d = write_run_dir(tmp_path / "r", SyntheticSpec(n_prompts=4))  # its config.yaml is a stub
    with pytest.raises(CRLError, match="cannot be rebuilt"):
        analyze_run(AnalyzeConfig(run_dir=str(d), env=True))
