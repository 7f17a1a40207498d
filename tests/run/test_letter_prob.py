"""task.reward=letter_prob on a tiny model: the training reward is the gold letter's probability over the option letters
at the answer token (recomputed here from the model's own logits), while `correct`, the evaluations and their accuracy
stay the 0/1 verdict; a task that is not constrained multiple choice is a one-line error before any model loads."""

from __future__ import annotations

import pytest
import torch

from crl.backends.hooks import HookPoint, residual_hook
from crl.backends.model import tiny_model
from crl.backends.sae import sae_from_decoder
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.reader import read_jsonl
from crl.run.components import build
from crl.run.train import train
from tests.run.helpers import compose_train

pytestmark = pytest.mark.usefixtures("one_thread")


def _overrides(tmp_path, reward: str) -> list[str]:
    return [
        "model=tiny",
        "sae=disk",
        f"sae.path={tmp_path / 'sae'}",
        "steering.layer=1",
        "steering.coef=4.0",
        "task=compare",
        f"task.reward={reward}",
        "task.n_train=32",
        "task.n_val=20",
        "task.n_test=8",
        "masking=none",
        "logger=disabled",
        "run.analyze=false",
        "run.eval_before=false",
        "run.eval_every=1",
        "policy.hidden=16",
        "policy.noop_init_bias=0.0",
        "ppo.num_envs=16",
        "ppo.episodes_per_update=16",
        "ppo.group_size=1",
        "ppo.total_updates=2",
    ]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny compare run with exact and with letter_prob (twice: determinism), and its components."""
    tmp = tmp_path_factory.mktemp("letter_prob")
    lm = tiny_model()
    decoder = torch.randn(8, lm.d_model, generator=torch.Generator().manual_seed(0))
    sae_from_decoder(decoder, HookPoint(1, "post"), "test").sae.save_model(str(tmp / "sae"))
    out = {}
    for name, reward in (("exact", "exact"), ("prob", "letter_prob"), ("prob_again", "letter_prob")):
        train(compose_train(_overrides(tmp, reward)), tmp / name)
        out[name] = tmp / name
    comps = build(compose_train(_overrides(tmp, "letter_prob")), splits=("train",))
    return out, comps


def _rows(run, file=schema.EPISODES):
    """The rows of one log file, without the run's name (the runs' directories differ)."""
    return [{k: v for k, v in r.items() if k != "run"} for r in read_jsonl(run / file)]


def _gold_prob(comps, ex, feature: int, coef: float) -> float:
    """The gold letter's softmax probability over the option letters, from one unbatched forward of the prompt with
    the episode's one steering vector added at the last prompt token (relative coefficient: coef * ||x|| * unit)."""
    from crl.envs.lockstep import encode_prompts
    from crl.envs.steering_env import prompt_texts

    lm, tok = comps.lm, comps.lm.tokenizer
    texts, special = prompt_texts(comps.task, tok, [ex])
    ids, mask, pos = encode_prompts(tok, texts, special, lm.device)
    unit = comps.sae.directions(unit=True).float()

    def add(resid):
        if feature < 0:
            return None
        out = resid.clone()
        x = resid[:, -1, :].float()
        out[:, -1, :] = (x + coef * x.norm(dim=-1, keepdim=True) * unit[feature]).to(resid.dtype)
        return out

    with torch.no_grad(), residual_hook(lm.layers, comps.sae.hook_name, add):
        logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[0, -1].float()
    letters = comps.task.allowed_token_ids(tok, ex)
    probs = torch.softmax(logits[letters], dim=-1)
    return float(probs[list(ex.meta["options"]).index(ex.answer)])


def test_letter_prob_trains_on_the_gold_letters_probability_and_logs_the_verdict(runs):
    dirs, comps = runs
    train_eps = [r for r in _rows(dirs["prob"]) if r["phase"] == "train"]
    assert len(train_eps) == 32
    rewards = [r["reward"] for r in train_eps]
    assert all(0.0 <= x <= 1.0 for x in rewards)
    assert any(0.0 < x < 1.0 for x in rewards)  # not a 0/1 verdict
    for r in train_eps:  # `correct` is the verdict: the emitted letter is the gold one
        assert r["correct"] == (r["completion"].strip() == r["answer"])
    # Recomputed from the model's logits, one prompt at a time, with the episode's own action.
    examples = {e.id: e for e in comps.splits["train"]}
    steps = {(s["update"], s["episode"]): s for s in _rows(dirs["prob"], schema.INTERVENTIONS) if s["phase"] == "train"}
    checked = 0
    for r in train_eps[:8]:
        s = steps[(r["update"], r["episode"])]
        expect = _gold_prob(comps, examples[r["prompt_id"]], s["feature"], s["coef"])
        assert r["reward"] == pytest.approx(expect, abs=1e-4), (r["prompt_id"], s["feature"])
        checked += 1
    assert checked == 8
    # The training accuracy chart is the verdict's share, the reward chart the mean probability.
    metrics = _rows(dirs["prob"], schema.METRICS)
    first = [r for r in train_eps if r["update"] == 0]
    assert metrics[0]["charts/accuracy"] == pytest.approx(sum(r["correct"] for r in first) / len(first))
    assert metrics[0]["charts/mean_reward"] == pytest.approx(sum(r["reward"] for r in first) / len(first))


def test_evaluations_keep_the_verdict_and_runs_are_deterministic(runs):
    dirs, _ = runs
    exact, prob = _rows(dirs["exact"]), _rows(dirs["prob"])
    val0 = [[r for r in rows if r["phase"] == "eval:val" and r["update"] == 0] for rows in (exact, prob)]
    assert len(val0[0]) == 20 and val0[0] == val0[1]  # update 0, the untrained policy: the same rows, accuracy
    for rows in (exact, prob):  # every evaluation's reward is the 0/1 verdict
        evals = [r for r in rows if r["phase"] != "train"]
        assert evals and all(r["reward"] in (0.0, 1.0) and r["correct"] == (r["reward"] == 1.0) for r in evals)
    assert all(r["reward"] in (0.0, 1.0) for r in exact)
    # Same config and seed, same logs (timings aside).
    assert prob == _rows(dirs["prob_again"])
    assert _rows(dirs["prob"], schema.INTERVENTIONS) == _rows(dirs["prob_again"], schema.INTERVENTIONS)


@pytest.mark.parametrize(
    "extra",
    [["task=arith"], ["task=compare", "task.mode=free"], ["task=arith", "task.mode=constrained"]],
)
def test_letter_prob_off_constrained_multiple_choice_is_one_line_before_any_model_loads(extra, monkeypatch, tmp_path):
    from crl.config import compose

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("crl.run.components.load_model", no_load)
    overrides = [*extra, "task.reward=letter_prob", "logger=disabled", "model=tiny"]
    with pytest.raises(CRLError) as e:
        compose.compose_config("train", overrides)  # what `crl train` checks first (crl.cli)
        train(compose_train(overrides), tmp_path / "run")  # task.mode=constrained on arith: the task's own check
    msg = str(e.value)
    assert "\n" not in msg and "task.reward" in msg and "exact" in msg


def test_letter_prob_is_refused_by_crl_grpo():
    from crl.config import compose

    with pytest.raises(CRLError, match=r"^task\.reward=letter_prob is invalid: .*valid: exact$"):
        compose.compose_config("grpo", ["task.reward=letter_prob"])
