"""`run_episodes` and the reference policies: `NoSteer` with or without an env, and `accuracy`."""

from __future__ import annotations

import numpy as np
import pytest

from crl.config import SteeringConfig
from crl.envs.rollout import Episode, NoSteer, accuracy, run_episodes
from crl.envs.steering_env import SteeringVecEnv
from crl.envs.tasks.base import Example
from tests.envs.helpers import D_SAE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_nosteer_without_an_env_acts_like_nosteer_with_one(lm, sae, task, examples):
    exs = examples[:3]
    env = SteeringVecEnv(lm, sae, task, exs, SteeringConfig(max_new_tokens=3, coef_levels=[1.0]), num_envs=3)
    try:
        with_env = run_episodes(env, exs, NoSteer(env))
        no_env = run_episodes(env, exs, NoSteer(noop=D_SAE))
    finally:
        env.close()
    assert [ep.steps for ep in with_env] == [ep.steps for ep in no_env]
    assert {s["feature"] for ep in no_env for s in ep.steps} == {-1}
    assert NoSteer(noop=5).act(np.zeros((2, 4)), {})[0].tolist() == [5, 5]


def test_nosteer_needs_a_noop_action(lm, sae, task, examples):
    env = SteeringVecEnv(lm, sae, task, examples[:1], SteeringConfig(allow_noop=False), num_envs=1)
    with pytest.raises(ValueError, match="allow_noop"):
        NoSteer(env)
    with pytest.raises(ValueError, match="noop"):
        NoSteer()
    env.close()


def test_accuracy_counts_correct_well_formed_and_reward():
    def ep(correct: bool, well_formed: bool, reward: float) -> Episode:
        return Episode(Example("p", "q", "a"), "c", reward, correct, well_formed, "eos", [])

    acc = accuracy([ep(True, True, 1.0), ep(False, True, 0.0), ep(False, False, 0.5), ep(True, True, 1.0)])
    assert acc == {"accuracy": 0.5, "well_formed": 0.75, "mean_reward": 0.625}
    assert accuracy([]) == {"accuracy": 0.0, "well_formed": 0.0, "mean_reward": 0.0}
