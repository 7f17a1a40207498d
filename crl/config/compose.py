"""Check a command's config before any model loads: compose it as Hydra will, then validate it.

Hydra reports a bad override (an unknown group option, a wrong type on a typed node) with its own multi-line
errors before the app runs, so `crl.cli` calls `check_command` first: it composes with `hydra.compose`, turns
any Hydra or OmegaConf error into one `ConfigError`, then runs the schema's type and range checks and checks that
each device (model.device, sae.device) is one this host's torch can use (crl/config/device.py). A `-m` sweep
is checked value by value; Hydra's informational flags (`--help`, `--info`, ...) are left to Hydra.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from crl.config.apps import APPS, register
from crl.config.core import ConfigError, describe, field_type, load, why_invalid
from crl.config.device import check_devices
from crl.errors import CRLError
from crl.paths import CONF_DIR

# Flags after which Hydra prints information or reads another config: nothing of ours to check.
_HYDRA_ONLY = {"-h", "--help", "--hydra-help", "--version", "-i", "--info", "-sc", "--shell-completion"}
_HYDRA_ONLY |= {"--experimental-rerun", "-cp", "--config-path", "-cd", "--config-dir", "-cn", "--config-name"}


def check_command(config_name: str, argv: list[str], conf_dir: str = CONF_DIR) -> None:
    """Validate the config `argv` (Hydra flags and overrides) gives `conf/<config_name>.yaml`; one-line errors."""
    args = _hydra_args(argv)
    if args is None:
        return
    for overrides in _sweep_variants(args.overrides) if args.multirun else [args.overrides]:
        cfg = compose_config(config_name, overrides, conf_dir)
        # `--cfg job` only prints the config, and a Slurm job runs on another host (its node checks the device on
        # loading, crl.run.components): either may name a device this host lacks.
        if not args.cfg and "hydra/launcher=submitit_slurm" not in args.overrides:
            check_devices(cfg)


def compose_config(config_name: str, overrides: list[str], conf_dir: str = CONF_DIR) -> Any:
    """The validated root config of `conf/<config_name>.yaml` with `overrides`; any problem is one CRLError."""
    from hydra import compose, initialize_config_dir

    register()
    root = APPS[config_name]
    try:
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            cfg = compose(config_name, overrides=overrides)
    except Exception as e:  # noqa: BLE001 - Hydra and OmegaConf raise many types; each becomes one line
        raise _one_line(e, root, overrides) from None
    return load(root, cfg)


def _hydra_args(argv: list[str]) -> argparse.Namespace | None:
    """Hydra's own reading of the command line, or None when Hydra alone should handle it."""
    from hydra._internal.utils import get_args_parser  # the flags @hydra.main accepts, so both agree

    if any(a.split("=", 1)[0] in _HYDRA_ONLY for a in argv):
        return None
    parser = get_args_parser()
    parser.exit_on_error = False
    try:
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError:
        return None  # Hydra prints its usage error
    return None if extra else args


def _sweep_variants(overrides: list[str]) -> Iterator[list[str]]:
    """The overrides with each sweep at its first value, then each other value of each sweep in turn."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ValueType

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as e:  # noqa: BLE001
        raise _one_line(e, None, overrides) from None
    fixed, sweeps = [], []
    for o in parsed:
        if not o.is_sweep_override():
            fixed.append(o.input_line)
        elif o.is_discrete_sweep() and o.value_type != ValueType.GLOB_CHOICE_SWEEP:
            sweeps.append((o.get_key_element(), list(o.sweep_string_iterator())))
        # interval and glob sweeps are left to the sweeper
    first = [f"{key}={values[0]}" for key, values in sweeps if values]
    yield fixed + first
    for i, (key, values) in enumerate(sweeps):
        for value in values[1:]:
            yield fixed + first[:i] + [f"{key}={value}"] + first[i + 1 :]


def _given(overrides: list[str]) -> dict[str, str]:
    """key -> value as the user typed it (`+ppo.foo=1` -> {"ppo.foo": "1"})."""
    out = {}
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if sep:
            out[key.split("@")[0]] = value
    return out


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _one_line(exc: Exception, root: type | None, overrides: list[str]) -> CRLError:
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

    given = _given(overrides)
    for e in _chain(exc):
        if isinstance(e, MissingConfigException) and e.options is not None and e.missing_cfg_file:
            group, _, name = e.missing_cfg_file.rpartition("/")
            options = ", ".join(o for o in e.options if not o.startswith("base_"))
            return ConfigError(group, name, f"no such option in config group '{group}'", options)
        if isinstance(e, OverrideParseException):
            return _bad_syntax(overrides, e)
        full_key = getattr(e, "full_key", None)
        if isinstance(e, OmegaConfBaseException) and full_key and root is not None:
            if field_type(root, full_key) is None:  # OmegaConf names a new key of a mapping without its parent
                full_key = next((k for k in given if k.endswith("." + full_key)), full_key)
            value = given.get(full_key, getattr(e, "value", None))
            spec = field_type(root, full_key)
            if spec is None or isinstance(e, ConfigKeyError | ConfigAttributeError):
                parent = field_type(root, full_key.rpartition(".")[0]) if "." in full_key else (root, {})
                keys = describe(parent[0]).removeprefix("keys ") if parent else "see --cfg job"
                return ConfigError(full_key, value, "no such key", keys)
            if isinstance(e, MissingMandatoryValue):
                return ConfigError(full_key, "???", "required", describe(*spec))
            return ConfigError(full_key, value, why_invalid(value, spec[0]), describe(*spec))
    line = _first_line(exc)
    if line.startswith("Ambiguous value for argument"):
        key, _, value = line.split("'")[1].partition("=")
        return ConfigError(key, value, "a comma list is a sweep", f"[{value}] for a list, or -m to sweep")
    return CRLError(line)


def _bad_syntax(overrides: list[str], exc: Exception) -> CRLError:
    """Name the override Hydra's grammar rejected (its error does not)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except Exception as e:  # noqa: BLE001
            key, _, value = o.partition("=")
            return ConfigError(key, value, f"not an override ({_first_line(e)})", "key=value, key=[a,b], key=null")
    return CRLError(_first_line(exc))
