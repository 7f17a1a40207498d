"""Steering effects per feature (crl.analysis.replay.steer_effects) on the tiny planted world: the steered position is
the env's step 0, a decoder row along a token's unembedding promotes it (and its negative level demotes it), KL is 0
at coefficient 0 and grows with |coef|, and the record a run gets round-trips through its run directory."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from crl.analysis.offline.feature_effects import effects_table, read_effects_record, read_feature_effects
from crl.analysis.replay.runner import rollout
from crl.analysis.replay.steer_effects import (
    DecisionBatch,
    ensure_feature_effects,
    feature_effects,
    run_feature_effects,
    write_feature_effects,
)
from crl.analysis.report.document import Report
from crl.analysis.report.steering import TITLE, steering_section
from crl.backends.sae import sae_from_decoder
from crl.config import SteeringConfig, TaskConfig
from crl.envs.steering_env import prompt_texts
from crl.envs.tasks.registry import make_task
from crl.errors import CRLError
from crl.logs.reader import load_run
from tests.analysis.replay.planted import D_SAE, PLANTED, CuePolicy, write_real_run

TOKEN = " cat"


@pytest.fixture(scope="module")
def token_world(comps):
    """The planted world with feature 0's decoder row along the unembedding of TOKEN (the tiny model ties its
    embeddings, so this is also the token's embedding), steered raw, and a chat-templated task (compare)."""
    lm = comps.lm
    assert lm.model.config.tie_word_embeddings
    assert lm.model.lm_head.weight.data_ptr() == lm.model.get_input_embeddings().weight.data_ptr()
    (t,) = lm.tokenizer(TOKEN, add_special_tokens=False)["input_ids"]
    w = comps.sae.directions().clone()
    w[0] = lm.model.lm_head.weight.detach()[t]
    sae = sae_from_decoder(w, comps.sae.hook, "test:token")
    task = make_task(TaskConfig(name="compare", n_train=8, n_val=8, n_test=8, max_new_tokens=1))
    splits = {s: task.load(s) for s in ("train", "val", "test")}
    steering = SteeringConfig(coef=8.0, coef_mode="raw", coef_levels=[1.0, -1.0])
    return dataclasses.replace(comps, sae=sae, task=task, splits=splits, steering=steering)


def test_the_steered_position_is_the_envs_step_0(token_world):
    """The chat-templated task prompts, steered where the env steers: the env's first greedy token is the argmax."""
    w = token_world
    examples = w.splits["val"]
    texts, special = prompt_texts(w.task, w.lm.tokenizer, examples)
    assert not special and texts[0] != examples[0].prompt  # the chat template was applied
    batch = DecisionBatch.from_texts(w.lm, w.sae.hook_name, texts, special)
    for feature, li in ((None, None), (0, 0), (3, 1)):  # no steering; feature 0 amplified; feature 3 suppressed
        if feature is None:
            lp, scripts = batch.base, None
        else:
            lp = batch.logprobs(w.sae.directions()[feature], w.steering.coef * w.steering.coef_levels[li])
            scripts = {e.id: [li * D_SAE + feature] for e in examples}  # action id = level index * d_sae + feature
        eps = rollout(w, examples, None, scripts=scripts)
        assert [ep.steps[0]["token_id"] for ep in eps] == lp.argmax(-1).tolist()


def test_a_tokens_unembedding_direction_promotes_it_and_its_negative_demotes_it(token_world):
    rec = feature_effects(token_world, {0: [1, -1], 3: [1]}, n_task_prompts=4)
    up, down = rec["features"]["0"]
    assert (up["level"], up["coef"], down["level"], down["coef"]) == (1, 8.0, -1, -8.0)
    assert up["promotes"][0][0] == TOKEN and up["promotes"][0][1] > 1.0
    assert down["demotes"][0][0] == TOKEN and down["demotes"][0][1] < -1.0
    assert TOKEN not in [t for t, _ in up["demotes"]] + [t for t, _ in down["promotes"]]
    assert len(up["promotes"]) == len(up["demotes"]) == 10
    assert [d for _, d in up["promotes"]] == sorted((d for _, d in up["promotes"]), reverse=True)
    assert (up["n_neutral"], up["n_task"], rec["n_task"]) == (8, 4, 4)
    assert TOKEN not in [t for t, _ in rec["features"]["3"][0]["promotes"][:1]]  # another direction, other tokens
    assert list(rec["features"]) == ["0", "3"] and rec["coef_mode"] == "raw"


def test_kl_is_zero_at_coefficient_zero_and_grows_with_the_coefficient(comps):
    levels = [0, 0.25, 0.5, 1, 2, -2]
    rec = feature_effects(comps, {PLANTED[0]: levels, 3: [0]}, n_task_prompts=8)
    entries = rec["features"][str(PLANTED[0])]
    assert [e["level"] for e in entries] == levels and [e["coef"] for e in entries] == [4.0 * lv for lv in levels]
    for e in (entries[0], rec["features"]["3"][0]):
        assert e["kl_neutral"] == pytest.approx(0.0, abs=1e-6) and e["kl_task"] == pytest.approx(0.0, abs=1e-6)
        assert e["top1_changed_neutral"] == 0.0 and e["top1_changed_task"] == 0.0
        assert max(abs(d) for _, d in e["promotes"] + e["demotes"]) < 1e-4
    for key in ("kl_neutral", "kl_task"):
        kls = [e[key] for e in entries[:5]]
        assert all(a < b for a, b in zip(kls, kls[1:], strict=False)), (key, kls)
        assert entries[5][key] > entries[3][key]  # |coef| 8 beats |coef| 4 in either direction


def test_bad_input_is_refused_in_one_line(comps):
    with pytest.raises(CRLError, match="out of range"):
        feature_effects(comps, {D_SAE: [1]})
    with pytest.raises(CRLError, match="split 'dev' was not loaded"):
        feature_effects(comps, {5: [1]}, split="dev")
    with pytest.raises(CRLError, match="neutral prompt"):
        feature_effects(comps, {5: [1]}, neutral_prompts=())


def test_a_runs_record_round_trips_and_is_reused_while_current(comps, tmp_path):
    d = write_real_run(tmp_path / "run", comps, CuePolicy(comps))
    rec = run_feature_effects(d, comps=comps)
    assert rec["run"] == "planted-run" and rec["phase"] == "eval:test" and rec["n_features_left_out"] == 0
    assert list(rec["features"]) == [str(f) for f in PLANTED]  # 4 uses each: ties go to the lower id
    assert [e["n_uses"] for es in rec["features"].values() for e in es] == [4, 4]
    assert rec["features"]["5"][0]["promotes"][0][0] == " A"  # planted[0] is the unembedding of class 0's target
    path = write_feature_effects(d, rec)
    assert path == d / "analysis" / "feature_effects.json" and read_effects_record(d) == rec
    got = read_feature_effects(d)
    assert set(got) == set(PLANTED) and got[5] == rec["features"]["5"]
    table = effects_table(rec)
    assert len(table) == 2 and table["feature"].tolist() == PLANTED and table["n_uses"].tolist() == [4, 4]

    # Current: read back, the model is not needed (none could be built from this hand-written config).
    again, note = ensure_feature_effects(d)
    assert again == rec and note is None
    _, note = ensure_feature_effects(d, force=True)
    assert note.startswith("not measured: the run's model and SAE could not be rebuilt")
    one, _ = ensure_feature_effects(d, max_features=1, comps=comps)  # another plan: measured again, and written
    assert list(one["features"]) == ["5"] and one["n_features_left_out"] == 1 and read_effects_record(d) == one

    rep = Report("t")
    steering_section(rep, load_run(d), None, measure=False)
    (title, parts), table = rep.sections[0], rep.tables["steering_effects"]
    assert title == TITLE and len(table) == 1 and "1 less used feature is left out" in "".join(parts)
    assert "&#x27; A&#x27; +" in "".join(parts)  # the promoted token, escaped


def test_the_section_says_why_nothing_was_measured(comps, tmp_path):
    d = write_real_run(tmp_path / "run", comps, CuePolicy(comps))
    rep = Report("t")
    steering_section(rep, load_run(d), None, measure=True)  # config.yaml cannot be rebuilt: a note, no failure
    html = "".join(rep.sections[0][1])
    assert "not measured: the run&#x27;s model and SAE could not be rebuilt" in html and not rep.tables
    rep = Report("t")
    steering_section(rep, load_run(d), None, measure=False)
    assert "feature_effects=false" in "".join(rep.sections[0][1])


@pytest.mark.parametrize(
    "texts",
    [
        ["a", "The weather today is", "She opened the door and then she"],  # nothing shared, ragged
        ["The weather is", "The weather is nice today", "The weather in the north of the"],  # a shared start
    ],
)
def test_the_decision_batch_matches_a_full_forward(comps, texts):
    """The KV-cache shortcut (the shared start once, the rest once, the last token per variant, several variants per
    forward) gives the env's full left-padded forward, steered at the last token."""
    from crl.backends.hooks import residual_hook
    from crl.envs.lockstep import encode_prompts

    lm, sae = comps.lm, comps.sae
    ids, mask, pos = encode_prompts(lm.tokenizer, texts, True)
    batch = DecisionBatch(lm, sae.hook_name, ids, mask, pos)
    dirs = sae.directions(unit=True)[[5, 3, 9]]
    scales = torch.tensor([4.0, -2.0, 1.0])

    def full(d: torch.Tensor | None, scale: float) -> torch.Tensor:
        def add(resid):
            out = resid.clone()
            out[:, -1] += scale * resid[:, -1].norm(dim=-1, keepdim=True) * d
            return out

        hook = residual_hook(lm.layers, sae.hook_name, add) if d is not None else contextlib.nullcontext()
        with torch.no_grad(), hook:
            logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        return torch.log_softmax(logits, -1)

    assert torch.allclose(batch.base, full(None, 0.0), atol=1e-5)
    many = batch.steered(dirs, scales, relative=True)
    assert many.shape == (3, len(texts), batch.base.shape[-1])
    for k in range(3):
        want = full(dirs[k], float(scales[k]))
        assert torch.allclose(many[k], want, atol=1e-5)
        assert torch.allclose(batch.logprobs(dirs[k], float(scales[k]), relative=True), want, atol=1e-5)
