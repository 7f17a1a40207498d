"""`crl probe [task=compare] [layers=[6,15,24]] [n_oracle=64]`: before training, can steering help?

At each layer: a linear probe on the residual at the decision position, the model's own accuracy, the majority
class, a shuffled-label control and an oracle over every single action of the policy's action set
(crl.analysis.replay.probe, crl.analysis.replay.oracle). Prints the table and a verdict per layer on stdout, with the
oracle's feature shortlist as a `crl train ... masking=fixed` line to paste; writes probe.json, probe.png and probe.html
to out_dir (default runs/probe-<task option>-<timestamp>). probe.json names the conf/task option (`task_option`) and
the task's variants (`family`), which `crl study` matches its tasks by. Progress lines go to stderr.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from crl.config import ProbeConfig, load
from crl.errors import exit_on_error
from crl.paths import CONF_DIR


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task)


def _task_option() -> str | None:
    """The conf/task option the task was composed from (after any experiment=), as Hydra picked it."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("task")


def _layer_override() -> bool:
    """Whether the command line set steering.layer but not layers (then steering.layer alone is probed)."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in _overrides()}
    return "steering.layer" in keys and "layers" not in keys


@hydra.main(config_path=CONF_DIR, config_name="probe", version_base=None)
@exit_on_error
def main(raw: DictConfig) -> None:
    from crl.analysis.replay.probe import check_inputs, headroom, probe_layers
    from crl.analysis.report.probe import format_table, write_probe

    cfg = load(ProbeConfig, raw)
    layers = probe_layers(cfg, _layer_override())
    check_inputs(cfg, layers)  # before the model loads
    option = _task_option()
    out = Path(cfg.out_dir or f"runs/probe-{option or cfg.task.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    record = headroom(cfg, layers, overrides=_overrides(), task_option=option)
    print(format_table(record), flush=True)
    paths = write_probe(out, record)
    print(f"written: {paths['json']}, {paths['html']} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
