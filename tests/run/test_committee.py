"""`crl transfer committee=[...]` end to end on the tiny model with a planted answer (tests/run/test_transfer.py's
`planted`): members that agree make the committee act as one of them, members that disagree on every decision make it
never steer (no steering's outcomes exactly), a majority quorum takes the 2-of-3 action, actions are compared by
(feature, level) and not by index, and incompatible members are one line before any model loads."""

from __future__ import annotations

import dataclasses
import json
import sys

import pandas as pd
import pytest

from crl.analysis.offline.stats import StatsConfig
from crl.analysis.offline.transfer_committee import committee_table
from crl.errors import CRLError
from crl.run.transfer import transfer_outcomes
from crl.run.transfer_committee import committee_outcomes, plan_committee
from tests.run.helpers import crl
from tests.run.test_transfer import STEER, always, planted, write_run

pytestmark = pytest.mark.usefixtures("one_thread")

OTHER = 5  # another feature of the planted SAE
SPECS = ["direction:larger", "direction:smaller"]  # gold B always / A always: steering to one letter gains on one


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories of one planted setup, each policy always picking one action: amp (STEER amplified), amp_rev
    (the same action with coef_levels [-1, 1]: another index), sup_rev (STEER suppressed, at amp's index), other
    (OTHER amplified)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("committee")
    cfg, comps, _ = planted(root)
    rev = dataclasses.replace(cfg, steering=dataclasses.replace(cfg.steering, coef_levels=[-1.0, 1.0]))
    comps_rev = dataclasses.replace(comps, steering=rev.steering)
    made = {
        "amp": (cfg, comps, always(comps.new_policy(), STEER, 0)),
        "amp_rev": (rev, comps_rev, always(comps_rev.new_policy(), STEER, 1)),
        "sup_rev": (rev, comps_rev, always(comps_rev.new_policy(), STEER, 0)),
        "other": (cfg, comps, always(comps.new_policy(), OTHER, 0)),
    }
    out = {name: write_run(root / "runs" / name, *parts, seed=i) for i, (name, parts) in enumerate(made.items())}
    out["cfg"] = cfg
    return out


def _committee(runs, names, quorum="all", specs=SPECS, agree="action") -> pd.DataFrame:
    plan = plan_committee([runs[n] for n in names], quorum, specs, n=16, agree=agree)
    outcomes, _, settings = committee_outcomes(plan)
    assert settings["agree"] == agree
    assert settings["quorum_size"] == {"all": len(names), "majority": len(names) // 2 + 1}[quorum]
    return pd.DataFrame(outcomes)


def _member(runs, name, specs=SPECS) -> pd.DataFrame:
    return pd.DataFrame(transfer_outcomes(runs[name], specs, n=16)[0])


def test_members_that_agree_make_the_committee_act_as_a_member(runs):
    # amp and amp_rev pick the same action (STEER, +1) at different indices: they agree
    got, member = _committee(runs, ["amp", "amp_rev"]), _member(runs, "amp")
    assert list(got["prompt_id"]) == list(member["prompt_id"])
    assert list(got["committee_correct"]) == list(member["crl_correct"])
    assert got["committee_steered"].all() and not got["committee_abstained"].any()
    assert (got["committee_agreed"] == 2).all() and (got["committee_disagreed"] == 0).all()
    assert set(got["committee_votes"]) == {f"{STEER}@+1|{STEER}@+1"}
    # the planted answer: steering to one letter is right on one direction, wrong on the other
    by = got.groupby("variant")["committee_correct"].mean()
    assert sorted(by.tolist()) == [0.0, 1.0] and (got["none_correct"] != got["committee_correct"]).all()


def test_members_that_disagree_on_every_decision_never_steer_with_quorum_all(runs):
    # amp and sup_rev pick the same index but not the same action (STEER +1 vs -1); other picks another feature
    got = _committee(runs, ["amp", "sup_rev", "other"])
    assert not got["committee_steered"].any() and got["committee_abstained"].all()
    assert list(got["committee_correct"]) == list(got["none_correct"])
    assert (got["committee_agreed"] == 1).all() and (got["committee_disagreed"] == got["committee_decisions"]).all()
    assert set(got["committee_votes"]) == {f"{STEER}@+1|{STEER}@-1|{OTHER}@+1"}
    table = committee_table(got, [{"variant": s} for s in SPECS], 3, StatsConfig(n_boot=100)).set_index("variant")
    assert (table["committee_diff"] == 0).all() and (table["committee_verdict"] == "TIE").all()
    assert (table["agreed_1"] == 1.0).all() and (table["agreed_3"] == 0.0).all()
    assert (table["committee_disagreed_decisions"] == 1.0).all() and (table["committee_steered"] == 0.0).all()


def test_a_majority_quorum_takes_the_two_of_three_action(runs):
    got, member = _committee(runs, ["amp", "other", "amp_rev"], "majority"), _member(runs, "amp")
    assert list(got["committee_correct"]) == list(member["crl_correct"]) and got["committee_steered"].all()
    assert (got["committee_agreed"] == 2).all() and not got["committee_abstained"].any()
    assert set(got["committee_votes"]) == {f"{STEER}@+1|{OTHER}@+1|{STEER}@+1"}
    strict = _committee(runs, ["amp", "other", "amp_rev"], "all", specs=SPECS[:1])  # the same members, all of them
    assert not strict["committee_steered"].any() and (strict["committee_agreed"] == 2).all()


def test_agree_answer_keeps_a_member_episode_where_different_actions_reach_one_answer(runs):
    # amp (STEER +1) and other (OTHER +1): different features, so agree=action never steers; on the tiny model both
    # move the answer to B, so agree=answer keeps amp's episode (the first member with the shared answer)
    by_action = _committee(runs, ["amp", "other"])
    assert not by_action["committee_steered"].any() and by_action["committee_abstained"].all()
    got, member = _committee(runs, ["amp", "other"], agree="answer"), _member(runs, "amp")
    assert got["committee_steered"].all() and not got["committee_abstained"].any()
    assert (got["committee_agreed"] == 2).all() and (got["committee_disagreed"] == 0).all()
    assert set(got["committee_votes"]) == {f"{STEER}@+1|{OTHER}@+1"} and set(got["committee_answers"]) == {"B|B"}
    assert list(got["committee_correct"]) == list(member["crl_correct"])
    assert (got["committee_correct"] != got["none_correct"]).all()


def test_agree_answer_withholds_where_the_answers_differ_and_a_majority_keeps_the_two(runs):
    # sup_rev (STEER -1) answers A, amp B: no answer has both, so the committee keeps the unsteered episode
    got = _committee(runs, ["amp", "sup_rev"], agree="answer")
    assert not got["committee_steered"].any() and got["committee_abstained"].all()
    assert set(got["committee_answers"]) == {"B|A"} and (got["committee_agreed"] == 1).all()
    assert list(got["committee_correct"]) == list(got["none_correct"])
    assert (got["committee_disagreed"] == got["committee_decisions"]).all()
    # with a majority, amp and other (B) outvote sup_rev (A): the committee is amp, the first member answering B
    two, member = _committee(runs, ["sup_rev", "amp", "other"], "majority", agree="answer"), _member(runs, "amp")
    assert list(two["committee_correct"]) == list(member["crl_correct"]) and two["committee_steered"].all()
    assert (two["committee_agreed"] == 2).all() and not two["committee_abstained"].any()
    assert set(two["committee_votes"]) == {f"{STEER}@-1|{STEER}@+1|{OTHER}@+1"}


def test_the_device_path_decides_as_the_host_path(runs, monkeypatch):
    """The env's on_device mode (tensors per decision, extras gathered at the batch's end), run on the CPU."""
    from crl.envs import rollout

    names, specs = ["amp", "sup_rev", "amp_rev"], SPECS[:1]
    host = _committee(runs, names, "majority", specs)
    monkeypatch.setattr(rollout, "DEVICE_MODE_ON_CPU", True)
    device = _committee(runs, names, "majority", specs)
    pd.testing.assert_frame_equal(device, host)
    assert (host["committee_agreed"] == 2).all() and host["committee_steered"].all()


def _config_of(run, **steering) -> None:
    """Rewrite run's config.yaml with these steering fields."""
    from crl.run.components import saved_config
    from crl.run.train import config_yaml

    cfg = saved_config(run)
    cfg = dataclasses.replace(cfg, steering=dataclasses.replace(cfg.steering, **steering))
    (run / "config.yaml").write_bytes(config_yaml(cfg))


def test_members_of_another_layer_are_one_line_before_any_model_loads(runs, tmp_path, monkeypatch):
    import shutil

    bad = tmp_path / "runs" / "l0"
    shutil.copytree(runs["other"], bad)
    _config_of(bad, layer=0)
    monkeypatch.setattr("crl.run.components.load_model", lambda *a, **k: pytest.fail("a model loaded"))
    with pytest.raises(CRLError) as e:
        plan_committee([runs["amp"], bad], "all", SPECS, n=4)
    assert str(e.value) == (
        "committee: l0 has steering.layer=0, amp has steering.layer=1; the members steer through one model, SAE and "
        "env, so they must share it: list runs trained with one steering.layer"
    )


@pytest.fixture
def crl_cli(monkeypatch, tmp_path, capsys):
    """`crl transfer` with these arguments: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)  # Hydra's job log
    monkeypatch.setattr(sys, "argv", list(sys.argv))

    def call(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = crl("transfer", *args)
        out, err = capsys.readouterr()
        return code, out, err

    return call


def test_the_command_writes_the_table_with_agreement_and_the_acceptance_line(runs, crl_cli):
    members = f"committee=[{runs['amp']},{runs['other']},{runs['amp_rev']}]"
    code, out, err = crl_cli(members, "quorum=majority", "n=8", "n_boot=100", "variants=[trained,direction:smaller]")
    assert code == 0, err
    assert "[crl] committee of 3 runs (amp, other, amp_rev): steers where 2 of 3 agree" in err
    assert "[crl] transfer 1/2 trained: 8 test prompts" in err and "transfer 2/2 direction:smaller committee" in err
    where = runs["amp"].parent / "committee-majority"  # the default: the runs' parent, committee-<quorum>
    table = pd.read_csv(where / "transfer_committee.csv")
    assert list(table["variant"]) == ["trained", "direction:smaller"]
    assert {"committee_diff", "committee_lo", "committee_verdict", "committee_steered", "committee_abstained"} <= set(
        table.columns
    )
    assert (table["agreed_2"] == 1.0).all() and (table["agreed_3"] == 0.0).all()
    assert (table["committee_disagreed_decisions"] == 0.0).all()
    # the trained direction (larger: gold B) and its inverse: steering to one letter gains on one, harms the other
    assert sorted(table["committee_verdict"]) == ["GAIN", "HARM"]
    prompts = pd.read_csv(where / "transfer_committee_prompts.csv")
    assert len(prompts) == 16 and (prompts["committee_agreed"] == 2).all()
    assert {"committee_votes", "committee_disagreed", "committee_decisions"} <= set(prompts.columns)
    saved = json.loads((where / "transfer_committee.json").read_text())
    assert saved["quorum"] == "majority" and saved["quorum_size"] == 2 and saved["members"] == 3
    assert [r["run"] for r in saved["runs"]] == ["amp", "other", "amp_rev"] and saved["n"] == 8
    assert saved["acceptance"]["held_out"] == ["direction:smaller"] and not saved["acceptance"]["met"]
    assert "committee" in out and "verdict" in out and "members agreeing at the first decision (3|2|1 of 3" in out
    line = next(x for x in out.splitlines() if x.startswith("acceptance, committee"))
    assert line == saved["acceptance_line"] and line.startswith(
        "acceptance, committee (steers only where the members agree): every held-out variant lo >= -0.02: "
    )
    assert line.endswith(
        "a held-out wording with a gain p < 0.05: no (no held-out wording among the variants) -> not met"
    )
    assert f"written: {where / 'transfer_committee.csv'}" in out
    # another committee into the same default folder is refused; out= puts it elsewhere
    two = f"committee=[{runs['amp']},{runs['amp_rev']}]"
    code, _, err = crl_cli(two, "quorum=majority", "n=8")
    assert code == 2 and "is a committee of other runs (amp, amp_rev, other); pass out=" in err
    code, _, err = crl_cli(two, "quorum=majority", "n=4", "variants=[trained]", f"out={where.parent / 'two'}")
    assert code == 0 and (where.parent / "two" / "transfer_committee.json").exists(), err
    # agree=answer: its own default folder, its rule in the settings and the agreement header
    code, out, err = crl_cli(members, "quorum=majority", "agree=answer", "n=4", "n_boot=100", "variants=[trained]")
    assert code == 0, err
    assert "steers where 2 of 3 agree on the same answer, each on its own episode" in err
    saved = json.loads((where.parent / "committee-majority-answer" / "transfer_committee.json").read_text())
    assert saved["agree"] == "answer" and saved["run"] == "committee-majority-answer"
    assert "members agreeing on the answer (3|2|1 of 3; quorum 2)" in out


def test_bad_input_is_one_line(runs, crl_cli, tmp_path):
    amp, other = runs["amp"], runs["other"]
    coef = tmp_path / "runs" / "coef2"
    import shutil

    shutil.copytree(other, coef)
    _config_of(coef, coef=2.0)
    cases = {
        f"committee=[{amp}]": "a committee needs two runs or more",
        f"committee=[{amp},{other}] run_dir={amp}": "committee= names the runs whose policies act together",
        f"committee=[{amp},{other}] run_dirs=[{amp},{other}]": "run_dirs=",
        f"committee=[{amp},{tmp_path / 'nope'}]": f"committee: {tmp_path / 'nope'} is not a CRL run directory",
        f"committee=[{amp},{amp}]": f"committee: {amp} is listed twice",
        f"committee=[{amp},{other}] fit_abstain=knn": "the committee abstains where they disagree",
        f"committee=[{amp},{other}] quorum=most": "quorum",
        f"committee=[{amp},{other}] agree=letters": "agree",
        f"committee=[{amp},{coef}]": "committee: coef2 has steering.coef=2.0, amp has steering.coef=4.0;",
    }
    for args, message in cases.items():
        code, _, err = crl_cli(*args.split(), "n=4")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_members_of_fixed_masking_on_other_features_share_the_union(runs):
    from crl.config import MaskingConfig
    from crl.run.transfer_committee import check_members

    cfg = runs["cfg"]
    fixed = lambda fs: dataclasses.replace(cfg, masking=MaskingConfig(mode="fixed", features=fs))  # noqa: E731
    env = check_members([("a", fixed([3, 1])), ("b", fixed([5, 3]))])
    assert env.mode == "fixed" and env.features == [1, 3, 5]
    same = check_members([("a", fixed([3, 1])), ("b", fixed([3, 1]))])
    assert same.features == [3, 1]
    with pytest.raises(CRLError, match="committee: b has masking=none, a has masking=fixed; .* one masking$"):
        check_members([("a", fixed([3])), ("b", cfg)])
