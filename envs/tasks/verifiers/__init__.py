r"""Verifiable rewards with TRL's signature: ``f(prompts, completions, **columns) -> list[float]``.

Completions are plain strings or TRL conversational lists of ``{"role", "content"}`` messages; dataset columns
(``answer``, ``options``, ``should_refuse``) arrive as keyword lists aligned with ``completions``, so every
function here plugs into ``trl.GRPOTrainer(reward_funcs=...)`` unchanged.

Extraction functions return ``None`` on malformed output, so the well-formed rate (`*_format_reward`) is
reported apart from accuracy: an unparseable answer scores 0.0 accuracy *and* 0.0 format.

>>> numeric_reward(None, ["Adding them gives 12. #### 12", [{"role": "assistant", "content": "13"}]],
...                answer=["12", "12"])
[1.0, 0.0]

Modules by answer kind: `numeric`, `letters`, `refusals` (with `common` helpers); everything public is
re-exported here, so ``from crl.envs.tasks.verifiers import numeric_reward`` works.
"""

from crl.envs.tasks.verifiers.common import Completion, RewardFn, completion_text
from crl.envs.tasks.verifiers.letters import LETTERS, extract_letter, letter_format_reward, letter_reward
from crl.envs.tasks.verifiers.numeric import (
    canonical_number,
    extract_number,
    numbers_match,
    numeric_format_reward,
    numeric_reward,
)
from crl.envs.tasks.verifiers.refusals import as_bool, make_refusal_reward, refusal_format_reward, refusal_reward

__all__ = [
    "LETTERS",
    "Completion",
    "RewardFn",
    "as_bool",
    "canonical_number",
    "completion_text",
    "extract_letter",
    "extract_number",
    "letter_format_reward",
    "letter_reward",
    "make_refusal_reward",
    "numbers_match",
    "numeric_format_reward",
    "numeric_reward",
    "refusal_format_reward",
    "refusal_reward",
]
