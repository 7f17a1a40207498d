"""The run-directory format. Analysis reads exactly these files; bump FORMAT_VERSION on any change.

<run_dir>/
  run.json              identity: format_version, model, sae identity/hook/d_sae/neuronpedia_id, task, seed;
                        init_from: the run whose policy started this one (null: a fresh policy)
  config.yaml           the resolved Hydra config
  checkpoints/last.pt   policy, optimizer, masking state, RNG states, counters, log byte offsets
  interventions.jsonl   one row per steered token (InterventionRow), train and eval phases
  episodes.jsonl        one row per finished episode (EpisodeRow)
  metrics.jsonl         one row per PPO update (free-form numeric dict with "update" and "global_step")
  summary.json          written last; its presence marks a complete run
  FAILED.json           only after a failed invocation (crl.logs.lifecycle): the one-line error, the command;
                        a successful resume removes it. Its absence is the normal case, so older runs still read.
  shortlist.json        masking=shortlist only (crl/analysis/replay/shortlist.py): the features picked from the
                        train prompts before training, each one's new prompts, the cover, the prompts read; the
                        run's config.yaml says masking=fixed on them. Optional, like FAILED.json.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from crl.errors import CRLError
from crl.logs.atomic import atomic_write_json

FORMAT_VERSION = 1
RUN_JSON = "run.json"
CONFIG_YAML = "config.yaml"
CHECKPOINT = "checkpoints/last.pt"
INTERVENTIONS = "interventions.jsonl"
EPISODES = "episodes.jsonl"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
FAILED = "FAILED.json"
SHORTLIST = "shortlist.json"  # masking=shortlist: how the run's features were picked
BASELINE_SELECTION = "analysis/baseline_selection.csv"  # every baseline candidate tried (`crl analyze env=true`)
# Per-prompt outcomes of the selection rows scored on val; row = the row's 0-based index in BASELINE_SELECTION.
BASELINE_VAL_OUTCOMES = "analysis/baseline_val_outcomes.csv"
VAL_OUTCOME_COLUMNS = ("row", "prompt_id", "correct", "well_formed")
LOGS = (INTERVENTIONS, EPISODES, METRICS)  # the append-only JSONL logs
NO_STEER = -1  # the feature id logged for the "no steering" action
PHASE_KINDS = ("train", "eval", "baseline")


def base_id(prompt_id: str) -> str:
    """A prompt id without the `#<tag>` a replay adds to run variants of one prompt in one batch.

    >>> base_id("q12#causal3"), base_id("q12")
    ('q12', 'q12')
    """
    return prompt_id.split("#", 1)[0]


@dataclass(frozen=True)
class Phase:
    """Which policy produced a row, on which split. Logs store `str(phase)`:
    "train" | "eval:<split>" | "baseline:<method>:<split>"."""

    kind: str  # "train" | "eval" | "baseline"
    split: str = "train"
    method: str = "crl"  # for kind == "baseline": the baseline's name ("none", "random", "static", "corr", ...)

    def __post_init__(self) -> None:
        if self.kind not in PHASE_KINDS:
            raise CRLError(f"phase kind '{self.kind}' is unknown; use one of {PHASE_KINDS}")
        if ":" in self.split or ":" in self.method:  # the string form would not parse back
            raise CRLError(f"phase split '{self.split}' and method '{self.method}' must not contain ':'")

    @classmethod
    def train(cls) -> Phase:
        return cls("train")

    @classmethod
    def eval(cls, split: str) -> Phase:
        return cls("eval", split)

    @classmethod
    def baseline(cls, method: str, split: str) -> Phase:
        return cls("baseline", split, method)

    def __str__(self) -> str:
        if self.kind == "train":
            return "train"
        if self.kind == "eval":
            return f"eval:{self.split}"
        return f"baseline:{self.method}:{self.split}"

    @classmethod
    def parse(cls, name: str) -> Phase:
        parts = str(name).split(":")
        if parts == ["train"]:
            return cls.train()
        if len(parts) == 2 and parts[0] == "eval" and parts[1]:
            return cls.eval(parts[1])
        if len(parts) == 3 and parts[0] == "baseline" and parts[1] and parts[2]:
            return cls.baseline(parts[1], parts[2])
        raise CRLError(
            f"phase '{name}' is not 'train', 'eval:<split>' or 'baseline:<name>:<split>'; fix the log writer"
        )


@dataclass(kw_only=True)
class RunInfo:
    """run.json: what a run is (model, SAE, task, seed, steering). Field order is the file's key order.
    Keys with a None default may be absent in older or hand-written run dirs."""

    format_version: int = FORMAT_VERSION
    run: str
    model: str
    sae_identity: str
    task: str
    task_seed: int | None = None
    layer: int
    hook_name: str
    d_sae: int
    neuronpedia_id: str | None = None
    seed: int
    coef: float
    coef_mode: str | None = None
    planted: list[int] | None = None
    allow_noop: bool | None = None
    ran_on: dict[str, Any] | None = None  # where it ran: host, device (GPU name), torch version, CPU threads
    # `init_from=`: the run whose trained policy started this one (its directory, run name, the policy file loaded,
    # its update), and that the observation statistics came with it instead of being measured (crl/run/init_from.py).
    init_from: dict[str, Any] | None = None

    # What must match for a run's feature ids and prompts to mean the same thing (resume, eval, replay).
    IDENTITY_KEYS: ClassVar[tuple[str, ...]] = ("model", "sae_identity", "task", "task_seed", "layer")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, run_dir: Path) -> None:
        atomic_write_json(Path(run_dir) / RUN_JSON, self.to_dict())

    @classmethod
    def read(cls, run_dir: str | Path) -> RunInfo:
        """Load and validate run.json; every problem is one line naming what is wrong and the fix."""
        path = Path(run_dir) / RUN_JSON
        if not path.exists():
            raise CRLError(
                f"'{run_dir}' is not a CRL run directory (no {RUN_JSON}); pass a directory written by `crl train`"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise CRLError(f"{path} is not valid JSON; the run is corrupt, re-run it") from None
        if not isinstance(data, dict):
            raise CRLError(f"{path} is not a JSON object; the run is corrupt, re-run it")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            shown = "none (written before versioning)" if version is None else version
            raise CRLError(
                f"run '{run_dir}' has format_version={shown} but this CRL reads version {FORMAT_VERSION}; "
                "re-run it with this version or convert its logs"
            )
        names = [f.name for f in fields(cls)]
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise CRLError(f"{RUN_JSON} of run '{run_dir}' lacks keys {missing}; re-run it with this CRL version")
        return cls(**{k: data[k] for k in names if k in data})  # unknown keys: written by a newer CRL, ignored

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.IDENTITY_KEYS}


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
    # The policy's next-best valid actions, best first (for branch points): action ids, not feature ids: level index *
    # d_sae + feature (steering.coef_levels), the no-op the last id (n_levels * d_sae) when steering.allow_noop.
    top_alternatives: list[int] = field(default_factory=list)
    reward: float = 0.0  # final episode reward, filled when the episode ends
    correct: bool = False
    well_formed: bool = False
    # True where policy.abstain forced "no steering" (the residual was unlike the training sample), False where the
    # rule let the policy decide. None (the key is left out of the row) when the policy has no abstention rule, so
    # the rows of runs without it are exactly those written before the rule existed (readers fill None).
    abstained: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if row["abstained"] is None:
            del row["abstained"]
        return row


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
