"""`Phase` (the one phase type: constructors, string form, parser) and `RunInfo` (run.json in one place)."""

from __future__ import annotations

import json

import pytest

from crl.errors import CRLError
from crl.logs import schema
from crl.logs.schema import Phase, RunInfo


@pytest.mark.parametrize(
    "phase,text",
    [
        (Phase.train(), "train"),
        (Phase.eval("test"), "eval:test"),
        (Phase.baseline("none", "val"), "baseline:none:val"),
        (Phase.baseline("corr", "test"), "baseline:corr:test"),
    ],
)
def test_phase_string_form_and_parse_are_inverse(phase, text):
    assert str(phase) == text  # the logs store exactly these strings
    assert Phase.parse(text) == phase
    assert f"{phase}" == text


def test_phase_fields():
    assert Phase.eval("val").kind == "eval" and Phase.eval("val").split == "val"
    assert Phase.baseline("random", "test").method == "random"
    assert Phase.train().split == "train" and Phase.train().method == "crl"


@pytest.mark.parametrize("bad", ["", "eval", "eval:", "train:test", "baseline:none", "baseline::test", "sweep:1.0"])
def test_phase_parse_rejects_anything_else_in_one_line(bad):
    with pytest.raises(CRLError, match="is not 'train'") as e:
        Phase.parse(bad)
    assert "\n" not in str(e.value)


def test_phase_rejects_unknown_kinds_and_colons():
    with pytest.raises(CRLError, match="kind"):
        Phase("sweep")
    with pytest.raises(CRLError, match="':'"):
        Phase.eval("a:b")


def _info(**kw) -> RunInfo:
    base = dict(
        run="r",
        model="m",
        sae_identity="sae",
        task="arith",
        task_seed=0,
        layer=6,
        hook_name="blocks.6.hook_resid_post",
        d_sae=64,
        neuronpedia_id=None,
        seed=1,
        coef=0.5,
        coef_mode="relative",
        planted=None,
        allow_noop=True,
    )
    return RunInfo(**{**base, **kw})


def test_run_info_writes_today_s_run_json_and_reads_it_back(tmp_path):
    info = _info(planted=[3, 1])
    info.write(tmp_path)
    text = (tmp_path / schema.RUN_JSON).read_text()
    assert list(json.loads(text)) == [
        "format_version",
        "run",
        "model",
        "sae_identity",
        "task",
        "task_seed",
        "layer",
        "hook_name",
        "d_sae",
        "neuronpedia_id",
        "seed",
        "coef",
        "coef_mode",
        "planted",
        "allow_noop",
        "ran_on",
        "init_from",
    ]
    assert text == json.dumps(info.to_dict(), indent=2) + "\n"
    assert RunInfo.read(tmp_path) == info
    assert info.identity() == {"model": "m", "sae_identity": "sae", "task": "arith", "task_seed": 0, "layer": 6}


def test_run_info_optional_keys_may_be_absent_and_unknown_keys_are_ignored(tmp_path):
    data = {k: v for k, v in _info().to_dict().items() if k not in ("task_seed", "coef_mode", "planted", "allow_noop")}
    (tmp_path / schema.RUN_JSON).write_text(json.dumps({**data, "written_by": "a newer CRL"}))
    info = RunInfo.read(tmp_path)
    assert info.task_seed is None and info.planted is None and info.coef == 0.5


@pytest.mark.parametrize(
    "content,match",
    [
        (None, "not a CRL run directory"),
        ("{", "not valid JSON"),
        ("[1]", "not a JSON object"),
        ('{"run": "r"}', "format_version=none"),
        ('{"format_version": 99}', "format_version=99"),
        ('{"format_version": 1, "run": "r"}', r"lacks keys \['model'"),
    ],
)
def test_run_info_read_errors_are_one_line(tmp_path, content, match):
    if content is not None:
        (tmp_path / schema.RUN_JSON).write_text(content)
    with pytest.raises(CRLError, match=match) as e:
        RunInfo.read(tmp_path)
    assert "\n" not in str(e.value)
