"""Reading a run's steering effects back without torch: which (feature, level) pairs an eval used, the stored record,
and the report's table (one row per feature x level)."""

from __future__ import annotations

import pandas as pd
import pytest

from crl.analysis.offline.feature_effects import (
    EFFECTS_FILE,
    effects_table,
    level_of,
    read_effects_record,
    read_feature_effects,
    tokens_text,
    used_levels,
)
from crl.errors import CRLError
from crl.logs.atomic import atomic_write_json
from crl.logs.schema import NO_STEER


def _entry(level: int, kl: float, top: str) -> dict:
    return {
        "level": level,
        "coef": 0.5 * level,
        "kl_neutral": kl,
        "kl_task": 2 * kl,
        "top1_changed_neutral": 0.25,
        "top1_changed_task": 0.5,
        "n_neutral": 8,
        "n_task": 16,
        "n_uses": 3,
        "promotes": [[top, 2.5], [" B", 1.25], ["\n", 1.0], [" D", 0.5]],
        "demotes": [[" no", -3.0], [" C", -1.0], [" E", -0.75], [" F", -0.5]],
    }


RECORD = {
    "run": "r",
    "phase": "eval:test",
    "coef": 0.5,
    "coef_mode": "relative",
    "n_features_left_out": 0,
    "features": {"12": [_entry(1, 0.1, " A"), _entry(-1, 0.2, " Z")], "7": [_entry(1, 0.3, " yes")]},
}


def test_used_levels_most_used_first_with_levels_and_a_cap():
    steps = pd.DataFrame(
        {
            "feature": [7, 7, 7, 12, 12, 12, 3, NO_STEER, NO_STEER, NO_STEER, NO_STEER, 9, 9, 9],
            "coef": [0.5, -0.5, -0.5, 0.5, 0.5, 0.5, 0.25, 0, 0, 0, 0, -0.5, -0.5, 1.5],
        }
    )
    used, left = used_levels(steps, 0.5)
    assert used == {7: {-1: 2, 1: 1}, 9: {-1: 2, 3: 1}, 12: {1: 3}, 3: {0.5: 1}}  # ties (3 uses) go to the lower id
    assert list(used) == [7, 9, 12, 3] and list(used[7]) == [-1, 1] and left == 0
    capped, left = used_levels(steps, 0.5, max_features=2)
    assert list(capped) == [7, 9] and left == 2
    assert used_levels(steps[steps["feature"] == NO_STEER], 0.5) == ({}, 0)
    assert isinstance(level_of(-0.5, 0.5), int) and level_of(0.25, 0.5) == 0.5
    with pytest.raises(CRLError, match="steering.coef is 0"):
        level_of(1.0, 0.0)


def test_read_back_and_one_table_row_per_feature_and_level(tmp_path):
    assert read_feature_effects(tmp_path) is None and read_effects_record(tmp_path) is None
    atomic_write_json(tmp_path / EFFECTS_FILE, RECORD)
    assert read_effects_record(tmp_path) == RECORD
    got = read_feature_effects(tmp_path)
    assert list(got) == [12, 7] and got[12][1]["level"] == -1 and got[7] == RECORD["features"]["7"]

    table = effects_table(RECORD)
    assert len(table) == 3 and table[["feature", "level"]].values.tolist() == [[12, 1], [12, -1], [7, 1]]
    assert table.loc[1, "kl_task"] == 0.4 and table.loc[2, "coef"] == 0.5 and table["n_uses"].tolist() == [3, 3, 3]
    assert table.loc[0, "promotes"] == "' A' +2.50, ' B' +1.25, '\\n' +1.00"  # top 3 only, whitespace visible
    assert table.loc[0, "demotes"] == "' no' -3.00, ' C' -1.00, ' E' -0.75"
    assert effects_table(got).equals(table)  # the features map gives the same table
    assert tokens_text([]) == "" and effects_table({"features": {}}).empty


def test_a_damaged_file_is_one_line(tmp_path):
    path = tmp_path / EFFECTS_FILE
    path.parent.mkdir()
    path.write_text('{"features": ')
    with pytest.raises(CRLError, match="feature_effects.json is not valid JSON; delete it"):
        read_feature_effects(tmp_path)
    path.write_text("[]")
    with pytest.raises(CRLError, match="has no 'features' object"):
        read_effects_record(tmp_path)
