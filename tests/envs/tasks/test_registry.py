"""The task registry and the Hydra task configs: every task registered, unknown names and fields rejected."""

from __future__ import annotations

import dataclasses

import pytest

from crl.config import TaskConfig
from crl.config.compose import compose_config
from crl.envs.tasks import arith
from crl.envs.tasks.registry import TASKS, make_task, register_task
from crl.errors import CRLError
from tests.envs.tasks.helpers import HUB, OFFLINE


# -- registry and configs ---------------------------------------------------------------------------------
def test_registry_lists_every_task():
    assert set(OFFLINE + HUB) <= set(TASKS)
    for name in OFFLINE + HUB:
        assert TASKS[name].name == name


def test_unknown_task_name_lists_available():
    with pytest.raises(CRLError, match="task 'nope' is unknown; available: .*arith.*gsm8k_offline"):
        make_task(TaskConfig(name="nope"))


def test_register_task_rejects_a_taken_name():
    with pytest.raises(CRLError, match="taken"):
        register_task("arith")(type("Other", (arith.ArithTask,), {}))
    assert TASKS["arith"] is arith.ArithTask


@pytest.mark.parametrize("name", OFFLINE + HUB)
def test_yaml_config_builds_the_task(name):
    cfg = compose_config("train", [f"task={name}"]).task  # conf/task/<name>.yaml over the TaskConfig defaults
    task = make_task(cfg)
    assert task.name == name
    assert cfg.max_new_tokens == type(task).default_max_new_tokens
    assert make_task(dataclasses.asdict(cfg)).cfg == task.cfg  # a plain mapping, as Hydra gives after to_container


def test_make_task_rejects_unknown_fields():
    with pytest.raises(CRLError, match="task.colour=red is invalid: no such key"):
        make_task({"name": "arith", "colour": "red"})


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"name": "arith", "mode": "constrained"}, "not multiple choice"),
        (
            {"name": "bbq_offline", "mode": "beam"},
            "task.mode=beam is invalid: unknown choice; valid: free, constr",
        ),
        ({"name": "bbq_offline", "subset": "ambig"}, "allowed: ambiguous, disambiguated"),
        ({"name": "gsm8k_offline", "subset": "hard"}, "allowed: none"),
        ({"name": "arith", "max_new_tokens": 0}, "task.max_new_tokens=0 is invalid: out of range"),
    ],
)
def test_bad_config_fails_before_loading(kw, match):
    with pytest.raises(CRLError, match=match):
        make_task(TaskConfig(**kw))
