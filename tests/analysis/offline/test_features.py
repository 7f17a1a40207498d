"""Feature usage, token types, task specificity and planted recovery (crl.analysis.offline.features)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from crl.analysis.offline.features import (
    FeatureConfig,
    feature_usage,
    share_ci,
    step_histogram,
    task_specificity,
    token_type,
    with_context,
)
from crl.errors import CRLError
from crl.logs.reader import load_run
from crl.logs.schema import NO_STEER
from tests.analysis.synthetic import SyntheticSpec, write_run_dir


@pytest.mark.parametrize(
    "token,kind",
    [
        ("<|im_start|>", "special"),
        ("<eos>", "special"),
        ("\n", "newline"),
        (" \n\n", "newline"),
        ("  ", "whitespace"),
        (" 42", "digit"),
        ("3.5", "digit"),
        (".", "punctuation"),
        (" ,", "punctuation"),
        ("**", "punctuation"),
        (" The", "capitalized"),
        ("Paris", "capitalized"),
        (" answer", "lowercase"),
        ("don't", "lowercase"),
        ("ĠHello", "capitalized"),
        ("Ċ", "newline"),
        ("x2", "other"),
        ("", "other"),
    ],
)
def test_token_type(token, kind):
    assert token_type(token) == kind


def test_feature_usage_ranks_the_rewarded_feature_first(run):
    usage = feature_usage(run.steps_of("eval:test"), run.episodes_of("eval:test"), run.neuronpedia_id)
    top = usage.iloc[0]
    # 31 correct episodes x 4 steps of feature 7, out of 40 x 5 decisions.
    assert int(top["feature"]) == 7 and top["count"] == 124 and top["share"] == pytest.approx(124 / 200)
    assert top["mean_reward"] == 1.0 and top["reward_lift"] == pytest.approx(1.0)
    assert top["url"] == "https://www.neuronpedia.org/gemma-2-2b/6-gemmascope-res-16k/7"
    assert list(usage["feature"]) == [7, 3, NO_STEER]
    assert usage.set_index("feature").loc[NO_STEER, "label"] == "no steer"
    assert pd.isna(usage.set_index("feature").loc[NO_STEER, "url"])
    assert top["syntactic_share"] == pytest.approx(0.75)  # "The" is a word; " 4", "2", "." are not
    hist = step_histogram(run.steps_of("eval:test"), [7])
    assert hist["step"].tolist() == [0, 1, 2, 3] and hist["count"].tolist() == [31] * 4


def test_context_tokens_and_effects_join(run):
    ctx = with_context(run.steps_of("eval:test"))
    first = ctx[(ctx["episode"] == 1)].sort_values("step")
    assert first["prev_token"].tolist() == ["<prompt>", "The", " 4", "2", "."]
    assert first["next_token"].tolist() == [" 4", "2", ".", "\n", "<end>"]
    eff = pd.DataFrame({"feature": [7], "effect": [0.3]})
    usage = feature_usage(run.steps_of("eval:test"), run.episodes_of("eval:test"), None, eff)
    assert usage.set_index("feature").loc[7, "effect"] == 0.3 and usage["url"].isna().all()
    with pytest.raises(CRLError, match="'feature' column"):
        feature_usage(run.steps_of("eval:test"), run.episodes_of("eval:test"), None, pd.DataFrame({"f": [1]}))


def test_neuronpedia_format_matches_backend():
    import ast

    from crl.analysis.offline.features import NEURONPEDIA_URL

    # Read the backend's constant from its source: importing crl.backends.sae would load torch (slow).
    src = Path(__file__).resolve().parents[3] / "crl" / "backends" / "sae.py"
    consts = {
        n.targets[0].id: n.value.value
        for n in ast.parse(src.read_text()).body
        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name) and isinstance(n.value, ast.Constant)
    }
    assert consts["NEURONPEDIA_URL"] == NEURONPEDIA_URL


def _task_steps(tmp_path: Path, task: str, other: int, sae: str | None = None):
    spec = SyntheticSpec(run=task, task=task, other_feature=other, n_prompts=30, sae_identity=sae)
    return load_run(write_run_dir(tmp_path / task, spec))


def test_task_specific_vs_shared_features(tmp_path):
    a, b = _task_steps(tmp_path, "arith", 3), _task_steps(tmp_path, "mmlu", 11)
    cfg = FeatureConfig(min_share=0.05, n_boot=300)
    ci = share_ci(a.steps_of("eval:test"), cfg).set_index("feature")
    assert ci.loc[7, "lo"] <= ci.loc[7, "share"] <= ci.loc[7, "hi"] and ci.loc[7, "used"]
    spec = task_specificity(
        {"arith": a.steps_of("eval:test"), "mmlu": b.steps_of("eval:test")},
        {"arith": a.sae_identity, "mmlu": b.sae_identity},
        cfg,
    ).set_index("feature")
    assert spec.loc[7, "kind"] == "shared" and spec.loc[7, "n_tasks"] == 2
    assert spec.loc[3, "kind"] == "task-specific" and spec.loc[3, "tasks"] == "arith"
    assert spec.loc[11, "tasks"] == "mmlu" and spec.loc[11, "share_arith"] == 0.0
    with pytest.raises(CRLError, match="different SAEs"):
        task_specificity({"a": a.steps_of("eval:test")}, {"a": "sae1", "b": "sae2"}, cfg)


def test_planted_recovery_counts_step0_hits(tmp_path):
    from crl.analysis.offline.features import planted_recovery

    d = write_run_dir(tmp_path / "p", SyntheticSpec(n_prompts=8))
    rows = [json.loads(line) for line in (d / "episodes.jsonl").read_text().splitlines()]
    for r in rows:
        r["meta"]["cls"] = int(r["prompt_id"][1:]) % 2  # class 0 -> planted feature 7, class 1 -> 3
    (d / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = load_run(d)
    rec = planted_recovery(run.steps_of("eval:test"), run.episodes_of("eval:test"), [7, 3])
    # Step 0 is feature 7 on the correct prompts p1..p5 and 3 on p0, p6, p7: hits are p2, p4 and p7.
    assert rec["n_episodes"] == 8 and rec["step0_hit"] == pytest.approx(3 / 8)


def test_feature_usage_labels_from_a_dict_or_a_function(run):
    steps, eps = run.steps_of("eval:test"), run.episodes_of("eval:test")
    by_dict = feature_usage(steps, eps, labels={7: "'42' → ' answer'"}).set_index("feature")["label"]
    assert by_dict.to_dict() == {7: "'42' → ' answer'", 3: "3", NO_STEER: "no steer"}  # 3: not covered, bare id
    by_fn = feature_usage(steps, eps, labels=lambda f: f"f{f}" if f == 3 else None).set_index("feature")["label"]
    assert by_fn.to_dict() == {7: "7", 3: "f3", NO_STEER: "no steer"}
