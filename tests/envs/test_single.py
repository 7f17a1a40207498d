"""`SteeringEnv`, the single-episode adapter: steering math against a hand-steered forward, gymnasium's
checker, seeded example choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crl.backends.hooks import residual_hook
from crl.config import SteeringConfig
from crl.envs.single import SteeringEnv
from crl.errors import CRLError
from tests.envs.helpers import (
    D_SAE,
    prompt_ids,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# -- (b) steered logits equal a hand-steered forward ------------------------------------------------------
@pytest.mark.parametrize("mode", ["raw", "relative"])
def test_steered_logits_match_manual_forward(lm, sae, task, examples, mode):
    ex, f, g = examples[1], 3, 11
    coef = 0.3 if mode == "raw" else 1.5
    env = SteeringEnv(lm, sae, task, [ex], SteeringConfig(coef=coef, coef_mode=mode, max_new_tokens=4))
    captured: list[torch.Tensor] = []
    head = lm.model.get_output_embeddings().register_forward_hook(
        lambda _m, _a, out: captured.append(out[:, -1].detach().clone())
    )
    try:
        env.reset(options={"example": ex})
        _, _, _, _, info0 = env.step(f)
        _, _, _, _, info1 = env.step(g)
    finally:
        head.remove()
        env.close()
    dirs = sae.directions(unit=mode == "relative")
    ids = prompt_ids(lm, task, ex)
    last = len(ids) - 1

    def manual(seq: list[int], steer: dict[int, int]) -> torch.Tensor:
        def add(x: torch.Tensor) -> torch.Tensor:
            out = x.clone()
            for pos, feat in steer.items():
                scale = coef * (x[0, pos].norm() if mode == "relative" else 1.0)
                out[0, pos] += scale * dirs[feat]
            return out

        with torch.no_grad(), residual_hook(lm.layers, sae.hook_name, add):
            return lm.model(torch.tensor([seq])).logits[0, -1]

    t0 = info0["record"]["token_id"]
    ref0 = manual(ids, {last: f})
    torch.testing.assert_close(captured[0][0], ref0, rtol=1e-5, atol=1e-5)
    assert t0 == int(ref0.argmax())
    assert (manual(ids, {}) - ref0).abs().max() > 1e-2  # steering changed the logits: the check has teeth
    ref1 = manual([*ids, t0], {last: f, last + 1: g})
    torch.testing.assert_close(captured[1][0], ref1, rtol=1e-5, atol=1e-5)
    assert info1["record"]["token_id"] == int(ref1.argmax())
    assert (manual([*ids, t0], {last: f}) - ref1).abs().max() > 1e-2  # step 1 steers the fed-back token
    assert info0["record"]["position"] == last and info1["record"]["position"] == last + 1


# -- (e) gymnasium's checker ------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:.*Box observation space m.* value is .*infinity")  # residuals are unbounded
@pytest.mark.filterwarnings("error")  # any other complaint from the checker fails the test
def test_check_env_passes(lm, sae, task, examples):
    from gymnasium.utils.env_checker import check_env

    env = SteeringEnv(lm, sae, task, examples[:3], SteeringConfig(coef=0.3, coef_mode="raw", max_new_tokens=3))
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=5)
    assert obs.shape == (lm.d_model,) and obs.dtype == np.float32
    n = 2 * D_SAE + 1  # amplify and suppress each feature (default coef_levels [1, -1]), plus the no-op
    assert env.action_space.n == n and info["action_mask"].shape == (n,)
    env.close()


def test_single_env_seed_picks_the_same_example(lm, sae, task, examples):
    env = SteeringEnv(lm, sae, task, examples, SteeringConfig(max_new_tokens=2))
    picks = [env.reset(seed=s)[1]["prompt_id"] for s in (1, 2, 1)]
    assert picks[0] == picks[2]
    assert len({env.reset(seed=s)[1]["prompt_id"] for s in range(8)}) > 1
    with pytest.raises(CRLError, match="after the episode ended"):
        env.step(0), env.step(0), env.step(0)
    env.close()
