"""The run-directory writer: append-only logs, checkpoints that record log sizes, truncation on resume."""

from __future__ import annotations

import json

import pytest
import torch

from crl.errors import CRLError
from crl.logs import schema
from crl.logs.atomic import atomic_write_json
from crl.logs.reader import read_jsonl
from crl.logs.writer import RunWriter, load_checkpoint


def test_atomic_json_leaves_no_temp_file(tmp_path):
    atomic_write_json(tmp_path / "a" / "x.json", {"b": 1})
    assert json.loads((tmp_path / "a" / "x.json").read_text()) == {"b": 1}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def test_checkpoint_records_log_sizes_and_resume_truncates(tmp_path):
    w = RunWriter(tmp_path)
    w.append(schema.EPISODES, [{"episode": 0}, {"episode": 1}])
    w.append(schema.METRICS, [{"update": 0, "x": torch.tensor([1.5])}])  # tensors are written as lists
    w.save_checkpoint({"update": 1})
    w.append(schema.EPISODES, [{"episode": 2}])  # after the checkpoint: lost when the run is killed
    w.close()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt["update"] == 1 and ckpt["format_version"] == schema.FORMAT_VERSION
    assert len(read_jsonl(tmp_path / schema.EPISODES)) == 3
    w = RunWriter(tmp_path)
    w.truncate_to(ckpt["log_sizes"])
    w.append(schema.EPISODES, [{"episode": 2}])
    w.close()
    assert [r["episode"] for r in read_jsonl(tmp_path / schema.EPISODES)] == [0, 1, 2]
    assert read_jsonl(tmp_path / schema.METRICS) == [{"update": 0, "x": [1.5]}]


def test_damaged_logs_and_checkpoints_are_one_line_errors(tmp_path):
    with pytest.raises(CRLError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / schema.CHECKPOINT).write_bytes(b"junk")
    with pytest.raises(CRLError, match="corrupt"):
        load_checkpoint(tmp_path)
    w = RunWriter(tmp_path)
    with pytest.raises(CRLError, match="shorter than its checkpoint"):
        w.truncate_to({schema.EPISODES: 10})
    w.close()
