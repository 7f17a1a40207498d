"""Learning you can see: greedy val evaluations during training, and which policy gets reported.

Every `run.eval_every` updates, and once before training (update 0: the untrained policy, which under its
no-steer prior does not steer), the greedy policy is evaluated on `run.val_split` (phase `eval:val`). With
`run.select=best_val` the policy with the highest val accuracy is the one evaluated on the test split and saved
as policy.pt; ties go to the earlier update, so a run in which steering never beat the untrained policy on val
reports the untrained policy ("do no harm"). `run.patience` stops training after that many evaluations without
a better val accuracy. The best policy's weights live in checkpoints/best.pt (written atomically), and this
object's state goes into every checkpoint, so a resumed run selects exactly as an uninterrupted one.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crl.agent.policy import ActorCritic
from crl.agent.ppo import PolicyAgent
from crl.config import RunConfig
from crl.envs.rollout import Episode, accuracy
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.atomic import atomic_write_bytes
from crl.logs.schema import Phase
from crl.logs.writer import RunWriter

BEST_FILE = "checkpoints/best.pt"


def episode_stats(episodes: list[Episode]) -> dict[str, float]:
    """Accuracy, well-formed rate, mean reward, the no-steer share of decisions and steers per episode."""
    feats = [f for ep in episodes for f in ep.features]
    return {
        **accuracy(episodes),
        "noop_share": float(np.mean([f == schema.NO_STEER for f in feats])) if feats else 1.0,
        "steers_per_episode": float(np.mean([sum(f >= 0 for f in ep.features) for ep in episodes])),
        "n": len(episodes),
    }


class Selection:
    def __init__(self, run_dir: Path, exp: RunConfig):
        self.dir, self.exp = Path(run_dir), exp
        self.curve: list[dict[str, float]] = []  # one row per val evaluation
        self.best_update: int | None = None
        self.best_accuracy = -1.0
        self.since_best = 0
        self.stopped_at: int | None = None

    @property
    def stopped(self) -> bool:
        return self.stopped_at is not None

    def evaluate(
        self, comps: Any, net: ActorCritic, update: int, writer: RunWriter, run_name: str, seed: int
    ) -> dict[str, float]:
        """Evaluate the greedy policy on val, log its rows, keep it if it is the best so far; returns metrics."""
        from crl.run.evaluate import evaluate

        split = self.exp.val_split
        episodes = evaluate(comps, split, PolicyAgent(net, greedy=True), seed, progress=f"{split} at update {update}")
        writer.append_episodes(episodes, run_name, Phase.eval(split), update)
        stats = episode_stats(episodes)
        self.curve.append({"update": update, **stats})
        if stats["accuracy"] > self.best_accuracy:  # strictly better: ties keep the earlier update
            self.best_update, self.best_accuracy, self.since_best = update, stats["accuracy"], 0
            buf = io.BytesIO()
            torch.save({"update": update, "policy": net.state_dict()}, buf)
            atomic_write_bytes(self.dir / BEST_FILE, buf.getvalue())
        else:
            self.since_best += 1
            if self.exp.patience and self.since_best >= self.exp.patience:
                self.stopped_at = update
        return {
            "eval/val_accuracy": stats["accuracy"],
            "eval/val_well_formed": stats["well_formed"],
            "eval/val_noop_share": stats["noop_share"],
            "eval/val_steers_per_episode": stats["steers_per_episode"],
            "eval/best_update": float(self.best_update),
        }

    def chosen(self, last_update: int) -> int:
        return self.best_update if self.exp.select == "best_val" and self.best_update is not None else last_update

    def best_state(self) -> dict[str, torch.Tensor]:
        path = self.dir / BEST_FILE
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - missing or corrupt: either way the selection cannot be honoured
            raise CRLError(
                f"{path} is missing or corrupt ({type(e).__name__}) and the selected update cannot be rebuilt from "
                "later checkpoints; train again in a fresh run dir, or pass run.select=last to test the last policy"
            ) from None
        if saved["update"] != self.best_update:
            raise CRLError(
                f"{path} holds update {saved['update']}, not the selected {self.best_update} (was the run dir copied "
                "mid-run?); train again in a fresh run dir, or pass run.select=last to test the last policy"
            )
        return saved["policy"]

    def summary(
        self, chosen: int, last_update: int, last: list[Episode] | None, on_train: list[Episode]
    ) -> dict[str, Any]:
        val = {row["update"]: row for row in self.curve}
        return {
            "rule": self.exp.select,
            "selected_update": chosen,
            "last_update": last_update,
            "stopped_early": self.stopped,
            "val_curve": self.curve,
            "val_before": val[0]["accuracy"] if 0 in val else None,
            "val_selected": val[chosen]["accuracy"] if chosen in val else None,
            "train_selected": episode_stats(on_train),
            "test_last": episode_stats(last) if last is not None else None,
        }

    def state_dict(self) -> dict[str, Any]:
        keys = ("curve", "best_update", "best_accuracy", "since_best", "stopped_at")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
