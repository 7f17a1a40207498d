"""Task families (crl/envs/tasks/family.py, compare's wordings, directions and ranges): the splits draw only the chosen
variants, held-out ones never reach training, splits stay disjoint, gold answers follow the direction, and the plain
task's prompts are the ones it always had."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

import pytest

from crl.config import FamilyConfig, TaskConfig
from crl.config.compose import compose_config
from crl.envs.tasks import compare
from crl.envs.tasks.base import SPLITS
from crl.envs.tasks.family import Variants, held_out_axes
from crl.envs.tasks.registry import make_task
from crl.errors import CRLError

PRESET = ["task=compare_family"]
QUESTION_TO = {q: (w, d) for w, qs in compare.WORDINGS.items() for d, q in qs.items()}


def _family(**kw) -> TaskConfig:
    return TaskConfig(name="compare", n_train=400, n_val=100, n_test=100, family=FamilyConfig(enabled=True, **kw))


def _parts(prompt: str) -> tuple[str, int, int]:
    """(question, number A, number B) of a compare prompt."""
    m = re.fullmatch(r"(.*)\n\nA\) (\d+)\nB\) (\d+)\n\nAnswer with the letter of the correct option only\.", prompt)
    assert m, prompt
    return m.group(1), int(m.group(2)), int(m.group(3))


def test_every_wording_has_both_directions_and_distinct_questions():
    assert len(compare.WORDINGS) == 18
    assert all(set(qs) == {"larger", "smaller"} for qs in compare.WORDINGS.values())
    questions = [q for qs in compare.WORDINGS.values() for q in qs.values()]
    assert len(set(questions)) == len(questions) == 36
    assert compare.QUESTIONS == {"larger": "Which number is larger?", "smaller": "Which number is smaller?"}


def test_the_family_draws_only_the_chosen_wordings_directions_and_ranges():
    task = make_task(_family(wordings=["pick", "value"], directions=["smaller"], ranges=["3digit"]))
    for split in SPLITS:
        examples = task.load(split)
        assert {e.meta["wording"] for e in examples} == {"pick", "value"}
        assert {e.meta["kind"] for e in examples} == {"smaller"}
        assert {e.meta["range"] for e in examples} == {"3digit"}
        for e in examples:
            question, a, b = _parts(e.prompt)
            assert QUESTION_TO[question] == (e.meta["wording"], "smaller")
            assert 100 <= a <= 999 and 100 <= b <= 999 and a != b


def test_every_chosen_value_is_drawn_and_the_draw_is_seeded():
    cfg = _family(ranges=["1digit", "2digit", "3digit"])
    train = make_task(cfg).load("train")
    assert set(Counter(e.meta["wording"] for e in train)) == set(compare.WORDINGS)
    assert set(Counter(e.meta["kind"] for e in train)) == {"larger", "smaller"}
    assert set(Counter(e.meta["range"] for e in train)) == {"1digit", "2digit", "3digit"}
    assert [e.prompt for e in make_task(cfg).load("train")] == [e.prompt for e in train]
    other = TaskConfig(**{**cfg.__dict__, "seed": 1})
    assert [e.prompt for e in make_task(other).load("train")] != [e.prompt for e in train]


def test_gold_answers_follow_the_direction():
    for direction, pick in (("smaller", min), ("larger", max)):
        task = make_task(_family(directions=[direction], ranges=["1digit", "3digit"]))
        for e in task.load("test"):
            _, a, b = _parts(e.prompt)
            assert e.answer == ("A" if a == pick(a, b) else "B"), e.prompt
    smaller = make_task(TaskConfig(name="compare", subset="smaller", n_test=50)).load("test")  # the plain task too
    assert all(e.answer == ("A" if (p := _parts(e.prompt))[1] < p[2] else "B") for e in smaller)


def test_the_preset_holds_out_two_wordings_and_three_digit_numbers_from_training():
    cfg = compose_config("train", PRESET).task
    task = make_task(cfg)
    trained = task.variants()
    assert trained == Variants(("plain", "bigger", "pick", "value"), ("larger", "smaller"), ("2digit",))
    held_questions = {q for w in ("option", "than") for q in compare.WORDINGS[w].values()}
    for split in SPLITS:
        for e in task.load(split):
            question, a, b = _parts(e.prompt)
            assert question not in held_questions and 10 <= a <= 99 and 10 <= b <= 99
    assert len(task.load("train")) == 2000 and len(task.load("test")) == 400
    specs = task.family_axes.default_specs(cfg.family, trained)
    assert specs == ["direction:larger", "direction:smaller", "wording:option", "wording:than", "range:3digit"]


def test_the_experiment_preset_trains_one_direction_and_holds_out_the_inverse_question():
    cfg = compose_config("train", ["experiment=compare_family"])
    assert cfg.policy.greedy_rule == "steer_if_likely" and (cfg.ppo.total_updates, cfg.ppo.episodes_per_update) == (
        16,
        256,
    )
    task = make_task(cfg.task)
    trained = task.variants()
    assert trained == Variants(("plain", "bigger", "pick", "value"), ("larger",), ("2digit",))
    assert {QUESTION_TO[_parts(e.prompt)[0]][1] for e in task.load("train")} == {"larger"}
    specs = task.family_axes.default_specs(cfg.task.family, trained)
    assert specs == ["trained", "wording:option", "wording:than", "range:3digit", "direction:smaller"]


def test_the_wide_preset_trains_16_wordings_and_holds_out_the_same_two():
    cfg = compose_config("train", ["experiment=compare_family_wide"])
    narrow = compose_config("train", ["experiment=compare_family"])
    assert (cfg.ppo, cfg.policy.greedy_rule) == (narrow.ppo, narrow.policy.greedy_rule)  # only the wordings differ
    task = make_task(cfg.task)
    trained = task.variants()
    assert len(trained.wordings) == 16 and set(trained.wordings) == set(compare.WORDINGS) - {"option", "than"}
    assert trained.directions == ("larger",)
    train = task.load("train")
    assert {e.meta["wording"] for e in train} == set(trained.wordings)
    held_questions = {q for w in ("option", "than") for q in compare.WORDINGS[w].values()}
    assert not any(_parts(e.prompt)[0] in held_questions for s in SPLITS for e in task.load(s))
    specs = task.family_axes.default_specs(cfg.task.family, trained)
    assert specs == ["trained", "wording:option", "wording:than", "range:3digit", "direction:smaller"]


def test_splits_are_disjoint_across_variants_and_held_out_prompts_never_train():
    task = make_task(compose_config("train", PRESET).task)
    axes, trained = task.family_axes, task.variants()
    held = {}
    for spec in ("wording:option", "wording:than", "range:3digit", "wording:option+range:3digit"):
        v = axes.parse(spec, trained, "compare")
        held[spec] = {s: task.variant_examples(v, s, 60) for s in SPLITS}
    seen = {s: {e.prompt for e in task.load(s)} for s in SPLITS}
    for by_split in held.values():
        for s in SPLITS:
            seen[s] |= {e.prompt for e in by_split[s]}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1 :]:
            assert not seen[s] & seen[t]
    train = {e.prompt for e in task.load("train")}
    assert not any({e.prompt for e in by_split["test"]} & train for by_split in held.values())
    assert all(len(by_split["test"]) == 60 for by_split in held.values())


def test_plain_compare_is_unchanged_and_equals_its_one_variant_family():
    plain = make_task(TaskConfig(name="compare", n_train=300, n_val=50, n_test=80))
    one = make_task(
        TaskConfig(
            name="compare",
            n_train=300,
            n_val=50,
            n_test=80,
            family=FamilyConfig(enabled=True, wordings=["plain"], directions=["larger"], ranges=["2digit"]),
        )
    )
    for split in SPLITS:
        a, b = plain.load(split), one.load(split)
        assert [(e.id, e.prompt, e.answer) for e in a] == [(e.id, e.prompt, e.answer) for e in b]
        assert all(set(e.meta) == {"options", "option_texts", "kind"} for e in a)  # no family keys in plain rows


# sha256 of every (id, prompt, answer, meta) of the splits, measured before the family existed: shipped results, tests
# and the logs of earlier runs depend on these prompts.
PINNED = {
    "train": ("5ef7f9b052c962dd2c22a85eb3125f924ed0ac2508795efd6ed043da035b7b7f", {}),
    "smaller": ("3f4baf89def210c56cc0255274ae1163f2bf3efce8065e739e3959a3683626b3", {"subset": "smaller"}),
    "seed3": ("bbd689e63f7a7ac6105fe387096dd92c60d1d14a7c900e7c257b4dbcedc620cf", {"seed": 3, "n_test": 50}),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_plain_compare_prompts_are_byte_identical_to_before_the_family(name):
    digest, kw = PINNED[name]
    cfg = compose_config("train", []).task if name == "train" else TaskConfig(name="compare", **kw)
    task = make_task(cfg)
    blob = json.dumps({s: [(e.id, e.prompt, e.answer, e.meta) for e in task.load(s)] for s in SPLITS}, sort_keys=True)
    assert hashlib.sha256(blob.encode()).hexdigest() == digest


def test_variant_specs_and_held_out_axes():
    task = make_task(TaskConfig(name="compare"))
    axes, trained = task.family_axes, task.variants()
    assert trained == Variants(("plain",), ("larger",), ("2digit",))
    specs = axes.default_specs(task.cfg.family, trained)
    assert specs[0] == "trained" and specs[-1] == "direction:smaller"
    assert {"wording:pick", "range:3digit", "range:1digit"} <= set(specs) and "wording:plain" not in specs
    v = axes.parse("wording:pick+range:3digit", trained, "compare")
    assert v == Variants(("pick",), ("larger",), ("3digit",))
    assert held_out_axes(v, trained) == ["wording", "range"]
    assert held_out_axes(axes.parse("trained", trained, "compare"), trained) == []
    for bad, match in (("wording", "is not 'trained'"), ("colour:red", "is not 'trained'"), ("range:4digit", "4digit")):
        with pytest.raises(CRLError, match=match):
            axes.parse(bad, trained, "compare")


def test_a_small_variant_yields_what_it_holds_instead_of_failing():
    task = make_task(TaskConfig(name="compare"))
    v = task.family_axes.parse("range:1digit", task.variants(), "compare")
    few = task.variant_examples(v, "test", 400)
    assert 0 < len(few) < 72 and len({e.prompt for e in few}) == len(few)
    with pytest.raises(CRLError, match="yields only 58 distinct train problems; lower task.n_train or widen"):
        make_task(_family(wordings=["plain"], directions=["larger"], ranges=["1digit"])).load("test")


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"family": FamilyConfig(enabled=True, wordings=["shout"])}, "task.family.wordings names 'shout'"),
        ({"family": FamilyConfig(enabled=True, ranges=["4digit"])}, "allowed: 1digit, 2digit, 3digit"),
        (
            {"family": FamilyConfig(enabled=True, wordings=["plain", "pick"], holdout_wordings=["pick"])},
            "holdout_wordings names 'pick', which task.family.wordings trains on",
        ),
        ({"family": FamilyConfig(enabled=True), "subset": "smaller"}, "task.subset=smaller is invalid"),
    ],
)
def test_bad_family_settings_are_one_line(kw, match):
    with pytest.raises(CRLError, match=match):
        make_task(TaskConfig(name="compare", **kw))


def test_the_family_record_is_what_the_splits_draw_from():
    """What `crl probe` writes as probe.json's family and `crl study` compares with its cells' (Task.family_record)."""
    record = lambda overrides: make_task(compose_config("train", overrides).task).family_record()  # noqa: E731
    assert record(["task=compare"]) == {"wordings": ["plain"], "directions": ["larger"], "ranges": ["2digit"]}
    assert record(["task=compare", "task.subset=smaller"])["directions"] == ["smaller"]
    assert record(PRESET) == {
        "wordings": ["plain", "bigger", "pick", "value"],
        "directions": ["larger", "smaller"],
        "ranges": ["2digit"],
    }
    assert record(["task=arith"]) is None


def test_a_task_without_variants_rejects_the_family():
    with pytest.raises(CRLError, match="task 'gsm8k_offline' has no variants"):
        make_task(TaskConfig(name="gsm8k_offline", family=FamilyConfig(enabled=True)))


def test_the_xor_preset_trains_both_directions_on_a_feature_shortlist():
    cfg = compose_config("train", ["experiment=compare_xor"])
    narrow = compose_config("train", ["experiment=compare_family"])
    assert cfg.masking.mode == "fixed" and cfg.masking.features == [1591, 652, 560, 1793]
    assert (cfg.ppo.total_updates, cfg.ppo.update_epochs, cfg.ppo.learning_rate) == (24, 16, 1e-3)
    assert cfg.ppo.episodes_per_update == narrow.ppo.episodes_per_update and cfg.policy.noop_init_bias == 1.4
    task = make_task(cfg.task)
    trained = task.variants()
    assert trained == Variants(("plain", "bigger", "pick", "value"), ("larger", "smaller"), ("2digit",))
    assert {QUESTION_TO[_parts(e.prompt)[0]][1] for e in task.load("train")} == {"larger", "smaller"}
    specs = task.family_axes.default_specs(cfg.task.family, trained)
    assert specs == ["direction:larger", "direction:smaller", "wording:option", "wording:than", "range:3digit"]
