"""`run_episodes` and the reference policies: `NoSteer` with or without an env, `RandomFeature` (the random
baseline: every valid action at every level), and `accuracy`."""

from __future__ import annotations

import numpy as np
import pytest

from crl.config import SteeringConfig
from crl.envs.rollout import Episode, NoSteer, RandomFeature, accuracy, run_episodes
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


def test_random_draws_every_valid_action_at_every_level():
    d, n = 8, 4000  # two levels: action = level * d + feature, the no-op 2d
    mask = np.zeros((n, 2 * d + 1), dtype=bool)
    mask[:, [2, 5, d + 2, d + 5, 2 * d]] = True  # features {2, 5} at both levels, and the no-op
    actions = RandomFeature(2 * d, seed=0).act(np.zeros((n, 3)), {"action_mask": mask})[0]
    values, counts = np.unique(actions, return_counts=True)
    assert values.tolist() == [2, 5, d + 2, d + 5]  # never the no-op or a masked action
    assert counts.min() > 0.22 * n and counts.max() < 0.28 * n  # about n / 4 each
    again = RandomFeature(2 * d, seed=0).act(np.zeros((n, 3)), {"action_mask": mask})[0]
    other = RandomFeature(2 * d, seed=1).act(np.zeros((n, 3)), {"action_mask": mask})[0]
    assert actions.tolist() == again.tolist() and actions.tolist() != other.tolist()  # seeded


def test_random_takes_the_noop_where_no_steering_action_is_valid():
    mask = np.array([[False, True, False, True, True], [False, False, False, False, True]])  # d = 2, two levels
    assert RandomFeature(4).act(np.zeros((2, 3)), {"action_mask": mask})[0][1] == 4
    assert RandomFeature(4).act(np.zeros((1, 3)), {"action_mask": mask[1:, :4]})[0].tolist() == [0]  # no no-op


def test_random_steers_both_signs_through_the_env(lm, sae, task, examples):
    cfg = SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=4, steer_steps=2)  # levels [1, -1]
    env = SteeringVecEnv(lm, sae, task, examples, cfg, num_envs=4, seed=0)
    try:
        eps = run_episodes(env, examples, RandomFeature(env.n_steer, seed=0))
    finally:
        env.close()
    steps = [s for ep in eps for s in ep.steps]
    assert {s["coef"] for s in steps if s["step"] < 2} == {0.3, -0.3}  # amplified and suppressed
    late = {s["feature"] for s in steps if s["step"] >= 2}
    assert late == {-1}  # past steer_steps only the no-op is valid
