"""Baselines that do not depend on a run's seed or policy, computed once and shared by the runs that would compute
them alike (`crl analyze env=true shared_baselines=<dir>`; `crl study` passes <out>/shared to every cell).

Shared: random, corr, prompting and letter_prior (each whole: its selection rows, what it chose, its notes and its
held-out episodes), the unsteered pass that ranks static's and corr's candidates (`activations`), and the selection
scores of static's candidates by activation (`static_by_activation`). Not shared: none (training logs it), crl, and
static as a whole: its candidates by usage come from the run's policy, so its choice is the run's own; only the scores
of its candidates by activation are taken from here, row for row what the run would have measured.

Where: <dir>/<key>/<name>.json, one entry a name, with <dir>/<key>/key.json holding what the key hashes. An entry is
written whole or not at all (`crl.logs.atomic`: a killed run leaves at most a `.<name>.json.tmp`, never read), and a
file lock per entry (`.<name>.lock`, fcntl) makes a second run wait for the first instead of computing it again. An
entry that cannot be read, or was stored under another key, is computed again and replaced.

Reuse writes the stored rows into this run's logs under this run's name and next episode ids (`baselines.write_rows`,
the writer `write_baselines` uses), so the run directory reads as if the run had computed them itself.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.analysis.replay import announce
from crl.analysis.replay.baselines import BaselineConfig, BaselineRows, run_baselines
from crl.errors import CRLError
from crl.logs import schema
from crl.logs.atomic import atomic_write_bytes
from crl.logs.schema import Phase

if TYPE_CHECKING:
    from crl.run.components import Components

SHARED_METHODS = ("random", "corr", "prompting", "letter_prior")  # the baselines shared whole, in run order
# Raised when an entry's content changes, so older entries are not read (2: random at every level; 3: val rows carry
# per-prompt outcomes, the val stage scores the whole val split).
ENTRY_FORMAT = 3

# The key: sha256 of the JSON (sorted keys) of
# - "config": the run's config.yaml (the whole resolved `crl train` config) without what cannot change these baselines:
#   seed, resume, init_from, run (evaluation, checkpoints, output), logger (wandb), policy and masking (the baselines
#   never use the policy network or the action mask), and of ppo everything but num_envs (the lockstep batch size the
#   rollouts run at, which can change the numerics); model, sae, task (its seed and split sizes included) and steering
#   stay whole;
# - "identity": run.json's model, sae_identity, task, task_seed, layer and d_sae (what makes feature ids and prompts
#   mean the same thing; they count even where config.yaml is not a full config);
# - "baselines": the baseline settings of `crl analyze` (split, seeds = env_seeds, n_act, select_split, coef_split,
#   coef_grid, max_select_prompts, max_val_prompts, prior_prompts, repeat_deterministic, num_envs); not methods or
#   n_usage;
# - "crl": the package version and, when CRL runs from a git checkout, its commit (uncommitted edits do not count);
# - "format": ENTRY_FORMAT.
# The directory is named by the first 16 hex digits; key.json holds the fields and the whole digest, which every entry
# repeats and is checked against.
DROPPED_CONFIG = ("seed", "resume", "init_from", "run", "logger", "policy", "masking")
KEPT_PPO = ("num_envs",)
KEY_CHARS = 16


@functools.cache
def _commit() -> str | None:
    """The git commit CRL runs from, or None (not a checkout, no git)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def key_fields(run_dir: str | Path, cfg: BaselineConfig) -> dict[str, Any]:
    """What the key of a run's shared baselines hashes (the comment above)."""
    from omegaconf import OmegaConf

    import crl

    run_dir = Path(run_dir)
    info = schema.RunInfo.read(run_dir)
    raw = OmegaConf.to_container(OmegaConf.load(run_dir / schema.CONFIG_YAML), resolve=True)
    config = {k: v for k, v in (raw if isinstance(raw, dict) else {}).items() if k not in DROPPED_CONFIG}
    if isinstance(config.get("ppo"), dict):
        config["ppo"] = {k: v for k, v in config["ppo"].items() if k in KEPT_PPO}
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("methods", "n_usage")}
    return {
        "format": ENTRY_FORMAT,
        "crl": {"version": crl.__version__, "commit": _commit()},
        "identity": {**info.identity(), "d_sae": info.d_sae},
        "config": config,
        "baselines": settings,
    }


def digest(fields: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def _jsonable(x: Any) -> Any:  # as the run writer encodes rows (crl.logs.writer), so stored rows read back the same
    return x.tolist() if hasattr(x, "tolist") else str(x)


class SharedBaselines:
    """The shared entries of one key (module docstring); also `run_baselines`' cache (`BaselineCache`)."""

    def __init__(self, root: str | Path, fields: dict[str, Any]) -> None:
        self.root = Path(root)
        self.fields = fields
        self.digest = digest(fields)
        self.key = self.digest[:KEY_CHARS]
        self.dir = self.root / self.key
        self.reused: list[str] = []  # entry names taken from the store, in order
        self.stored: list[str] = []  # entry names computed here and stored
        self._got: dict[str, Any] = {}  # what this process read or stored already

    @classmethod
    def for_run(cls, root: str | Path, run_dir: str | Path, cfg: BaselineConfig) -> SharedBaselines:
        return cls(root, key_fields(run_dir, cfg))

    # -- entries ---------------------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def read(self, name: str) -> Any | None:
        """The stored value of entry `name`, or None (absent, unreadable, or stored under another key)."""
        try:
            entry = json.loads(self.path(name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != self.digest or entry.get("name") != name:
            return None
        return entry.get("value")

    def has(self, name: str) -> bool:
        return self.read(name) is not None

    def _write(self, name: str, value: Any) -> None:
        if not (self.dir / "key.json").exists():
            text = json.dumps({"key": self.digest, "fields": self.fields}, indent=2, sort_keys=True, default=str)
            atomic_write_bytes(self.dir / "key.json", (text + "\n").encode())
        entry = {"key": self.digest, "name": name, "value": value}
        atomic_write_bytes(self.path(name), json.dumps(entry, default=_jsonable).encode())

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / f".{name}.lock", "ab") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                announce.say(f"baselines: waiting for another crl process computing {name} in {self.dir}")
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def get(self, name: str, compute: Callable[[], Any]) -> Any:
        """Entry `name`: read back, else computed (by one process at a time; a waiting one reads what the first
        stored) and stored."""
        if name in self._got:
            return self._got[name]
        value = self.read(name)
        if value is None:
            with self._lock(name):
                value = self.read(name)  # stored while this process waited for the lock
                if value is None:
                    value = compute()
                    self._write(name, value)
                    self.stored.append(name)
        if name not in self.stored:
            self.reused.append(name)
        self._got[name] = value
        return value

    # -- BaselineCache -----------------------------------------------------------------------------------------------
    def activations(self, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return self.get("activations", compute)

    def static_scores(self, compute: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return self.get("static_by_activation", compute)

    # -- the baselines of one run ------------------------------------------------------------------------------------
    def method(self, comps: Components, cfg: BaselineConfig, method: str) -> BaselineRows:
        """One shared baseline, whole, as rows (computed with this store as the cache, so corr shares the unsteered
        pass with static)."""

        def compute() -> dict[str, Any]:
            res = run_baselines(comps, dataclasses.replace(cfg, methods=[method]), cache=self).rows()
            phases = {p: {"interventions": i, "episodes": e} for p, (i, e) in res.phases.items()}
            return {"phases": phases, "selection": res.selection, "chosen": res.chosen, "notes": res.notes}

        v = self.get(method, compute)
        phases = {p: (rows["interventions"], rows["episodes"]) for p, rows in v["phases"].items()}
        return BaselineRows(phases, list(v["selection"]), dict(v["chosen"]), list(v["notes"]))


def run_shared(
    comps: Components,
    cfg: BaselineConfig,
    store: SharedBaselines,
    usage_features: list[int] | None = None,
    policy: Any = None,
) -> BaselineRows:
    """`run_baselines(cfg)` as rows, the shared methods from `store` (computed and stored there when absent), the
    others here with `store` as their cache; phases, selection rows and notes in `cfg.methods` order, as
    `run_baselines` gives them. Prints one line naming what was reused and one naming what was stored."""
    unknown = [m for m in cfg.methods if m not in (*SHARED_METHODS, "none", "static", "crl")]
    if unknown:
        raise CRLError(f"unknown baseline(s) {unknown}; choose from {[*SHARED_METHODS, 'none', 'static', 'crl']}")
    own = [m for m in cfg.methods if m not in SHARED_METHODS]
    parts: dict[str, BaselineRows] = {}
    if own:
        local = run_baselines(comps, dataclasses.replace(cfg, methods=own), usage_features, policy, cache=store).rows()
        for m in own:
            phase = str(Phase.baseline(m, cfg.split))
            parts[m] = BaselineRows(
                {p: r for p, r in local.phases.items() if p == phase},
                [r for r in local.selection if r.get("method") == m],
                {},
            )
        chosen, notes = local.chosen, local.notes
    else:
        chosen, notes = {}, []
    for m in cfg.methods:
        if m in SHARED_METHODS:
            parts[m] = store.method(comps, cfg, m)
            chosen = {**chosen, **parts[m].chosen}
            notes = [*notes, *parts[m].notes]
    out = BaselineRows({}, [], chosen, notes)
    for m in cfg.methods:
        out.phases.update(parts[m].phases)
        out.selection.extend(parts[m].selection)
    if store.reused:
        announce.say(f"baselines: {_names(store.reused)} reused from {store.root} (key {store.key})")
    if store.stored:
        announce.say(f"baselines: {_names(store.stored)} computed here and stored in {store.root} (key {store.key})")
    return out


_LABELS = {"activations": "the unsteered pass", "static_by_activation": "static's candidates by activation"}


def _names(entries: list[str]) -> str:
    """The entries' names for a line: the methods first, then the parts of static and corr."""
    methods = [n for n in entries if n in SHARED_METHODS]
    parts = [_LABELS.get(n, n) for n in entries if n not in SHARED_METHODS]
    return ", ".join(methods) + (f" ({', '.join(parts)})" if methods and parts else ", ".join(parts))
