"""The run-directory format. Analysis reads exactly these files; bump FORMAT_VERSION on any change.

<run_dir>/
  run.json              identity: format_version, model, sae identity/hook/d_sae/neuronpedia_id, task, seed
  config.yaml           the resolved Hydra config
  checkpoints/last.pt   policy, optimizer, masking state, RNG states, counters, log byte offsets
  interventions.jsonl   one row per steered token (InterventionRow), train and eval phases
  episodes.jsonl        one row per finished episode (EpisodeRow)
  metrics.jsonl         one row per PPO update (free-form numeric dict with "update" and "global_step")
  summary.json          written last; its presence marks a complete run
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT_VERSION = 1
RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"
CHECKPOINT = "checkpoints/last.pt"
INTERVENTIONS = "interventions.jsonl"
EPISODES = "episodes.jsonl"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
NO_STEER = -1  # the feature id logged for the "no steering" action


@dataclass
class InterventionRow:
    run: str
    phase: str  # "train" | "eval:<split>" | "baseline:<name>:<split>"
    update: int  # PPO update index (eval rows: the update of the evaluated policy)
    episode: int  # global episode id within the run and phase
    prompt_id: str
    step: int  # token step within the episode (0 = the decision at the last prompt token)
    position: int  # absolute token position that was steered
    token_id: int  # the token generated at this step
    token: str
    feature: int  # chosen SAE feature, NO_STEER for no steering
    coef: float
    logprob: float
    value: float
    feature_act: float  # the chosen feature's SAE activation at this position before steering
    resid_norm: float
    top_alternatives: list[int] = field(default_factory=list)  # policy's next-best features (for branch points)
    reward: float = 0.0  # final episode reward, filled when the episode ends
    correct: bool = False
    well_formed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EpisodeRow:
    run: str
    phase: str
    update: int
    episode: int
    prompt_id: str
    completion: str
    answer: str
    reward: float
    correct: bool
    well_formed: bool
    n_steps: int
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
