"""Headroom before training (`crl probe`): can steering at a layer help on a task?

Three numbers per layer, on the task's held-out test prompts, each with a 95% CI:

- **readability**: a linear probe on the frozen model's residual at the SAE's layer, at the decision position (the
  last prompt token, exactly as the environment feeds it: `crl.envs.steering_env.prompt_texts` and
  `crl.envs.lockstep.encode_prompts`), fitted on the first `probe_train` train prompts. Multinomial logistic
  regression, L2, on features standardized with the train mean and std; the L2 weight is picked by k-fold
  cross-validation on train. Beside it, a reader shaped like the policy (`mlp_probe`: two tanh layers), since a
  linear probe misses answers that are a nonlinear function of what the residual holds (the compare family's gold
  letter is an XOR of direction and comparison: linear 0.57, MLP 1.00). The verdict uses the better of the two.
  The target (`ProbeConfig.target`):
    - `answer`: the gold class (a multiple-choice option, refuse/comply, the planted target): accuracy, Wilson CI,
      beside the majority class (the most frequent train class) and the same probe fitted on shuffled train labels.
    - `correct` (auto for number answers: arith, gsm8k): whether the unsteered model answers the prompt right, read
      from the same residual: AUROC with a bootstrap CI, against 0.5 and the shuffled control. The closest analogue of
      "the residual holds the answer" when the answer is a number: it says whether the residual knows *when* the model
      fails, which a policy needs in order to steer only there. With one outcome only (gsm8k_offline: never right)
      there is nothing to read, and the record says so in one line.
- **the model's own accuracy**: no steering, through CRL's evaluator (`crl.run.evaluate.evaluate`, the environment),
  the same pass that reads the residuals (a tap on the layers records the prompt forward of every batch).
- **reachability**: `crl.analysis.replay.oracle`: on the first `n_oracle` test prompts, whether any single action of
  the policy's action set makes the answer right (an upper bound on CRL's first decision), and the best single static
  action; with `shortlist_k` a feature shortlist for `masking=fixed` (greedy set cover of the prompts the model gets
  wrong) and the `crl train` line that uses it (`train_command`).

The verdict (`verdict`) reads them together: probe at chance -> steering at this layer is unlikely to help; probe
high and the model already as good -> little room; probe high, model low, oracle reaching the probe -> room, learning
is what matters; probe high but the oracle short of it -> levers missing (another layer, coefficient or dictionary).
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import numpy as np

from crl.errors import CRLError

if TYPE_CHECKING:
    import torch

    from crl.backends.model import FrozenLM
    from crl.config import ProbeConfig
    from crl.envs.rollout import Episode
    from crl.envs.tasks.base import Example, Task
    from crl.run.components import Components

CLASS_ANSWERS = ("letter", "refusal", "token")  # Task.answer_kind values whose gold answer is a class
Z95 = 1.959964


# -- statistics ----------------------------------------------------------------------------------------------------
def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (95% by default).

    >>> [round(x, 3) for x in wilson(45, 50)]
    [0.786, 0.957]
    >>> wilson(4, 4)[1], wilson(0, 4)[0]
    (1.0, 0.0)
    >>> wilson(0, 0)
    (nan, nan)
    """
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # Exact ends at k = 0 and k = n (rounding would leave the estimate a hair outside its own interval).
    return 0.0 if k == 0 else float(max(0.0, centre - half)), 1.0 if k == n else float(min(1.0, centre + half))


def auroc(scores: Any, labels: Any) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic, ties counted half); NaN with one class only.

    >>> auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> auroc([0.5, 0.5], [0, 1])
    0.5
    """
    s, y = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def auroc_ci(scores: Any, labels: Any, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of `auroc` over prompts (resamples with one class only are skipped)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    stats = [auroc(s[i], y[i]) for i in (rng.integers(0, len(s), len(s)) for _ in range(n_boot))]
    stats = [v for v in stats if not np.isnan(v)]
    if not stats:
        return float("nan"), float("nan")
    return float(np.quantile(stats, 0.025)), float(np.quantile(stats, 0.975))


def encode_labels(train: list[str], test: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Class ids of the train and test labels, classes sorted; a test label never seen in train is -1 (no probe fitted
    on train can predict it, so it counts as wrong).

    >>> encode_labels(["B", "A", "B"], ["A", "C"])
    (array([1, 0, 1]), array([ 0, -1]), ['A', 'B'])
    """
    classes = sorted(set(train))
    index = {c: i for i, c in enumerate(classes)}
    return (
        np.array([index[c] for c in train], dtype=np.int64),
        np.array([index.get(c, -1) for c in test], dtype=np.int64),
        classes,
    )


# -- the probe -----------------------------------------------------------------------------------------------------
def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, max_iter: int = 200) -> torch.Tensor:
    """Multinomial logistic regression by L-BFGS: weights (d + 1, n_classes), the last row the bias (not penalized).
    Loss: mean cross-entropy + l2/2 * ||W||^2. `x` is standardized, float64."""
    import torch

    w = torch.zeros(x.shape[1] + 1, n_classes, dtype=x.dtype, requires_grad=True)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-7, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xb @ w, y) + 0.5 * l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach()


def predict_proba(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.softmax(torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1) @ w, dim=-1)


def _standardize(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp_min(1e-6)
    return [(t - mean) / std for t in (train, *others)]


def choose_l2(x: torch.Tensor, y: np.ndarray, n_classes: int, grid: list[float], folds: int, seed: int) -> float:
    """The L2 weight of `grid` with the best k-fold cross-validated accuracy on (x, y) (ties: the larger weight).
    Each fold is standardized with its own training part."""
    import torch

    if len(grid) == 1:
        return float(grid[0])
    order = np.random.default_rng(seed).permutation(len(y))
    parts = np.array_split(order, min(folds, len(y)))
    yt = torch.as_tensor(y)
    scores = []
    for l2 in grid:
        right = 0
        for part in parts:
            held = np.zeros(len(y), dtype=bool)
            held[part] = True
            fit_x, held_x = _standardize(x[~held], x[held])
            w = fit_logistic(fit_x, yt[~held], n_classes, l2)
            right += int((predict_proba(w, held_x).argmax(-1) == yt[held]).sum())
        scores.append(right)
    best = max(scores)
    return float(max(l2 for l2, s in zip(grid, scores, strict=True) if s == best))


def linear_probe(
    x_train: torch.Tensor,
    y_train: np.ndarray,
    x_test: torch.Tensor,
    n_classes: int,
    grid: list[float],
    folds: int,
    seed: int,
) -> tuple[np.ndarray, float]:
    """Class probabilities (n_test, n_classes) of the probe fitted on train (L2 by cross-validation), and its L2."""
    import torch

    x_train, x_test = x_train.double(), x_test.double()
    l2 = choose_l2(x_train, y_train, n_classes, grid, folds, seed)
    tr, te = _standardize(x_train, x_test)
    w = fit_logistic(tr, torch.as_tensor(y_train), n_classes, l2)
    return predict_proba(w, te).numpy(), l2


@dataclasses.dataclass(frozen=True)
class MLPProbe:
    """The policy-shaped reader: d_model -> hidden -> hidden -> classes, tanh, AdamW on standardized features."""

    hidden: int = 256
    steps: int = 500
    weight_decay: float = 1e-2
    lr: float = 1e-3


def mlp_probe(
    x_train: torch.Tensor, y_train: np.ndarray, x_test: torch.Tensor, n_classes: int, spec: MLPProbe, seed: int
) -> np.ndarray:
    """Class probabilities (n_test, n_classes) of a policy-shaped MLP fitted on train (full batch, fixed steps)."""
    import torch

    tr, te = _standardize(x_train.float(), x_test.float())
    gen = torch.Generator().manual_seed(seed)
    layers = [torch.nn.Linear(tr.shape[1], spec.hidden), torch.nn.Linear(spec.hidden, spec.hidden)]
    head = torch.nn.Linear(spec.hidden, n_classes)
    with torch.no_grad():  # seeded init, independent of the global RNG
        for lin in (*layers, head):
            bound = 1 / lin.in_features**0.5
            lin.weight.copy_(torch.rand(lin.weight.shape, generator=gen) * 2 * bound - bound)
            lin.bias.zero_()
    net = torch.nn.Sequential(layers[0], torch.nn.Tanh(), layers[1], torch.nn.Tanh(), head)
    opt = torch.optim.AdamW(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    y = torch.as_tensor(y_train, dtype=torch.long)
    for _ in range(spec.steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(tr), y).backward()
        opt.step()
    with torch.no_grad():
        return torch.softmax(net(te), -1).double().numpy()


def probe_layer(
    x_train: torch.Tensor,
    y_train: np.ndarray,
    x_test: torch.Tensor,
    y_test: np.ndarray,
    n_classes: int,
    target: str,
    grid: list[float],
    folds: int,
    seed: int,
    n_boot: int,
    mlp: MLPProbe | None = None,
) -> dict[str, Any]:
    """The linear probe and its shuffled-label control on one layer's residuals, and with `mlp` the policy-shaped
    MLP and its control (`mlp`, `mlp_shuffled`). `answer`: accuracy (Wilson CI); `correct`: AUROC (bootstrap CI) of
    p(right), plus accuracy."""
    out: dict[str, Any] = {}
    shuffled = np.random.default_rng(seed).permutation(y_train)
    readers = [("probe", y_train, None), ("shuffled", shuffled, None)]
    if mlp is not None and mlp.steps:
        readers += [("mlp", y_train, mlp), ("mlp_shuffled", shuffled, mlp)]
    for name, labels, spec in readers:
        start = time.perf_counter()
        if spec is None:
            proba, l2 = linear_probe(x_train, labels, x_test, n_classes, grid, folds, seed)
        else:
            proba, l2 = mlp_probe(x_train, labels, x_test, n_classes, spec, seed), None
        pred = proba.argmax(-1)
        right = int((pred == y_test).sum())
        rec: dict[str, Any] = {
            "accuracy": right / len(y_test),
            "accuracy_ci": wilson(right, len(y_test)),
            "l2": l2,
            "seconds": round(time.perf_counter() - start, 2),
        }
        if target == "correct":
            rec["auroc"] = auroc(proba[:, 1], y_test == 1)
            rec["auroc_ci"] = auroc_ci(proba[:, 1], y_test == 1, n_boot, seed)
        rec["value"], rec["ci"] = (
            (rec["auroc"], rec["auroc_ci"]) if target == "correct" else (rec["accuracy"], rec["accuracy_ci"])
        )
        out[name] = rec
    return out


# -- the verdict ---------------------------------------------------------------------------------------------------
def best_reader(entry: dict[str, Any]) -> str:
    """ "probe" (linear) or "mlp": the one whose CI low beats its shuffled control's value by more.

    >>> e = {"probe": {"value": 0.6, "ci": (0.55, 0.65)}, "shuffled": {"value": 0.5},
    ...      "mlp": {"value": 1.0, "ci": (0.99, 1.0)}, "mlp_shuffled": {"value": 0.5}}
    >>> best_reader(e), best_reader({k: v for k, v in e.items() if not k.startswith("mlp")})
    ('mlp', 'probe')
    """
    if "mlp" not in entry:
        return "probe"
    margin = {r: entry[r]["ci"][0] - entry[c]["value"] for r, c in (("probe", "shuffled"), ("mlp", "mlp_shuffled"))}
    return "mlp" if margin["mlp"] > margin["probe"] else "probe"


ROOM = "room; learning is what matters"
MISSING = "levers missing: try another layer, coefficient or dictionary"
UNLIKELY = "steering at this layer is unlikely to help"
NO_ROOM = "little room: the model already answers as well as its residual reads"
UNMEASURED = "readable; reachability not measured (n_oracle=0)"
# The test prompts hold one class (e.g. the model is never right on them): no accuracy or AUROC to judge by.
UNDEFINED = "not measurable: the test prompts hold one class"


def verdict(
    target: str,
    probe: tuple[float, float],
    chance: float,
    model: float,
    oracle: tuple[float, float, float] | None,
    oracle_model: float | None = None,
) -> tuple[str, str]:
    """(verdict, why). `probe`: (value, CI low) (accuracy for `answer`, AUROC for `correct`); `chance`: what the probe
    must beat (the majority class or 0.5 AUROC, and the shuffled control); `model`: the unsteered accuracy;
    `oracle`: (accuracy, CI low, CI high) on the oracle's prompts and `oracle_model` the unsteered accuracy there.

    >>> verdict("answer", (0.95, 0.92), 0.54, 0.46, (1.0, 0.94, 1.0), 0.45)[0]
    'room; learning is what matters'
    >>> verdict("answer", (0.95, 0.92), 0.54, 0.46, (0.6, 0.48, 0.71), 0.45)[0]
    'levers missing: try another layer, coefficient or dictionary'
    >>> verdict("answer", (0.55, 0.50), 0.54, 0.46, (1.0, 0.94, 1.0), 0.45)[0]
    'steering at this layer is unlikely to help'
    >>> verdict("answer", (0.80, 0.76), 0.54, 0.79, None)[0]
    'little room: the model already answers as well as its residual reads'
    >>> verdict("correct", (float("nan"), float("nan")), 0.5, 0.0, None)[0]
    'not measurable: the test prompts hold one class'
    """
    value, low = probe
    name = "accuracy" if target == "answer" else "AUROC"
    if math.isnan(value):
        return UNDEFINED, f"the probe's {name} is undefined on the test prompts (one class among them); add test data"
    if not low > chance:
        return UNLIKELY, f"the probe's {name} ({value:.3f}, CI low {low:.3f}) does not beat chance ({chance:.3f})"
    if target == "answer" and model >= low:
        return NO_ROOM, f"the model's own accuracy ({model:.3f}) reaches the probe's CI ({low:.3f}..)"
    if oracle is None:
        return UNMEASURED, f"the probe reads it ({name} {value:.3f} > chance {chance:.3f})"
    acc, o_low, o_high = oracle
    base = model if oracle_model is None else oracle_model
    if target == "answer":
        reach = o_high >= value
        why = f"single actions reach {acc:.3f} (CI high {o_high:.3f}) against the probe's {value:.3f}"
    else:
        reach = o_low > base
        why = f"single first-decision actions reach {acc:.3f} (CI low {o_low:.3f}) against {base:.3f} unsteered"
    return (ROOM if reach else MISSING), why


# -- the unsteered pass --------------------------------------------------------------------------------------------
class DecisionTap:
    """Records the residual at the decision position (each row's last prompt token) at `layers`, in every prompt
    forward of the model (a forward that starts from an empty KV cache: the environment's step 0), in call order.
    Reads only: the environment's steering hook and the episodes are unchanged."""

    def __init__(self, lm: FrozenLM, layers: list[int], kind: str = "post"):
        self.lm, self.layers, self.kind = lm, list(layers), kind
        self.seen: dict[int, list[torch.Tensor]] = {layer: [] for layer in self.layers}
        self._armed = False
        self._stack = ExitStack()

    def __enter__(self) -> DecisionTap:
        from crl.backends.hooks import residual_hook

        def pre(_mod: Any, _args: Any, kwargs: dict[str, Any]) -> None:
            cache = kwargs.get("past_key_values")
            self._armed = cache is None or int(cache.get_seq_length()) == 0

        def post(_mod: Any, _args: Any, _out: Any) -> None:
            self._armed = False

        self._stack.callback(self.lm.model.register_forward_pre_hook(pre, with_kwargs=True).remove)
        self._stack.callback(self.lm.model.register_forward_hook(post).remove)
        for layer in self.layers:
            self._stack.enter_context(
                residual_hook(self.lm.layers, f"blocks.{layer}.hook_resid_{self.kind}", self._tap(layer))
            )
        return self

    def _tap(self, layer: int) -> Any:
        def record(resid: torch.Tensor) -> None:
            if self._armed:
                self.seen[layer].append(resid[:, -1, :].detach().float().cpu().clone())

        return record

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def residuals(self, n: int) -> dict[int, torch.Tensor]:
        """{layer: (n, d_model)}; a count other than `n` (prompts) is an error."""
        import torch

        out = {layer: torch.cat(t) if t else torch.zeros(0, self.lm.d_model) for layer, t in self.seen.items()}
        for layer, x in out.items():
            if len(x) != n:
                raise CRLError(f"the residual tap at layer {layer} saw {len(x)} prompts, expected {n}")
        return out


def unsteered_pass(
    comps: Components, examples: list[Example], layers: list[int], progress: str | None = None
) -> tuple[list[Episode], dict[int, torch.Tensor]]:
    """The unsteered episodes of `examples` through CRL's evaluator, and the residuals at the decision position at
    each of `layers` (the SAE's hook kind), read in the same forwards."""
    from crl.run.evaluate import evaluate

    comps = dataclasses.replace(comps, steering=dataclasses.replace(comps.steering, use_cache=True))
    with DecisionTap(comps.lm, layers, comps.sae.hook.kind) as tap:
        episodes = evaluate(comps, examples, None, seed=0, progress=progress)
    return episodes, tap.residuals(len(examples))


# -- the whole probe -----------------------------------------------------------------------------------------------
def probe_target(task: Task, target: str) -> str:
    """`answer` or `correct` for `ProbeConfig.target` on this task; a class target on a number task is an error."""
    is_class = task.answer_kind in CLASS_ANSWERS
    if target == "auto":
        return "answer" if is_class else "correct"
    if target == "answer" and not is_class:
        raise CRLError(
            f"target=answer needs a task whose gold answer is a class (an option, refuse/comply); task "
            f"'{task.name}' answers with a {task.answer_kind}: use target=correct (will the model be right?)"
        )
    return target


def probe_layers(cfg: ProbeConfig, layer_override: bool = False) -> list[int]:
    """The layers `cfg` probes: `cfg.layers`, or steering.layer when it is null or `layer_override` (the command
    saw `steering.layer=` and no `layers=`)."""
    return [cfg.steering.layer] if cfg.layers is None or layer_override else list(cfg.layers)


def check_inputs(cfg: ProbeConfig, layers: list[int]) -> Task:
    """Everything that can be checked before the model loads; returns the task."""
    from crl.backends.sae_store import find_sae, shipped_layers
    from crl.config import DEFAULT_MODEL_NAME
    from crl.envs.tasks.registry import make_task

    task = make_task(cfg.task)
    probe_target(task, cfg.target)
    if cfg.sae.source == "default" and cfg.model.source == "default":
        missing = [layer for layer in layers if find_sae(DEFAULT_MODEL_NAME, layer)[1] is None]
        if missing:
            shipped = ", ".join(map(str, shipped_layers()))
            raise CRLError(
                f"layers: layer {missing[0]} has no SAE for {DEFAULT_MODEL_NAME} (shipped: {shipped}); pick shipped "
                f"layers, or build one first with `crl sae build sae.layer={missing[0]}` (~15 min on 2 cores)"
            )
    constrained = cfg.task.mode == "constrained" and task.supports_constrained
    if cfg.n_oracle and not constrained and not cfg.steering.allow_noop:
        raise CRLError(
            "the oracle of a free-form task steers the first decision only, which needs steering.allow_noop=true "
            "(or n_oracle=0)"
        )
    return task


TRAIN_GROUPS = ("model", "sae", "task", "steering")  # what a probe override and a `crl train` override share


def train_overrides(overrides: list[str]) -> list[str]:
    """The probe's command-line overrides that `crl train` takes as they are: the model, SAE, task and steering
    (steering.layer and the masking are the shortlist's own; probe-only keys and the seed are left out).

    >>> train_overrides(["task=compare_family", "layers=[15]", "steering.layer=15", "masking=none", "+sae.x=1"])
    ['task=compare_family', '+sae.x=1']
    """
    out = []
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+~")
        if key.split(".", 1)[0] in TRAIN_GROUPS and key != "steering.layer":
            out.append(o)
    return out


def train_command(overrides: list[str], layer: int, features: list[int]) -> str:
    """The `crl train` line that trains on `features` alone (masking=fixed) at `layer`, after `overrides`
    (`train_overrides`), quoted for a POSIX shell.

    >>> train_command(["task=compare_family"], 15, [1591, 652])
    "crl train task=compare_family steering.layer=15 masking=fixed 'masking.features=[1591,652]'"
    """
    import shlex

    args = [
        *overrides,
        f"steering.layer={layer}",
        "masking=fixed",
        f"masking.features=[{','.join(map(str, features))}]",
    ]
    return " ".join(["crl", "train", *map(shlex.quote, args)])


def _train_config(cfg: ProbeConfig, layer: int) -> Any:
    from crl.config import TrainConfig, WandbConfig

    return TrainConfig(
        model=cfg.model,
        sae=cfg.sae,
        task=cfg.task,
        steering=dataclasses.replace(cfg.steering, layer=layer),
        masking=cfg.masking,
        logger=WandbConfig(mode="disabled"),
        seed=cfg.seed,
    )


def _labels(target: str, examples: list[Example], episodes: list[Episode]) -> list[str]:
    return [e.answer for e in examples] if target == "answer" else [str(int(ep.correct)) for ep in episodes]


def headroom(
    cfg: ProbeConfig,
    layers: list[int],
    progress: bool = True,
    overrides: list[str] | None = None,
    task_option: str | None = None,
) -> dict[str, Any]:
    """The whole probe (module doc) on `layers`: one record with the shared numbers (model, majority) and one entry per
    layer (probe, shuffled control, oracle with its shortlist, verdict). `overrides`: the command line's, which the
    shortlist's `crl train` line repeats where train takes them (`train_overrides`). `task_option`: the conf/task
    option the task was composed from (e.g. compare_family; `task` is the registry name, compare for both), which
    `crl study` matches its tasks by, with `family`: the variants the probed splits draw from (null without any)."""
    from crl.analysis.replay.oracle import oracle
    from crl.run.components import build

    start = time.perf_counter()
    task = check_inputs(cfg, layers)
    target = probe_target(task, cfg.target)
    comps = build(_train_config(cfg, layers[0]), splits=("train", "test"))
    train = comps.splits["train"][: cfg.probe_train]
    test = comps.splits["test"]
    say = (lambda name: f"probe: {name}") if progress else (lambda name: None)
    ep_train, x_train = unsteered_pass(comps, train, layers, say(f"{len(train)} train prompts (no steering)"))
    ep_test, x_test = unsteered_pass(comps, test, layers, say(f"{len(test)} test prompts (no steering)"))
    model_right = int(sum(ep.correct for ep in ep_test))
    y_train, y_test, classes = encode_labels(_labels(target, train, ep_train), _labels(target, test, ep_test))
    counts = np.bincount(y_train, minlength=len(classes))
    majority = int(np.argmax(counts))
    majority_right = int((y_test == majority).sum())
    record: dict[str, Any] = {
        "task": task.name,
        "task_option": task_option,
        "family": task.family_record(),
        "target": target,
        "model": comps.lm.name,
        "classes": classes,
        "n_train": len(train),
        "n_test": len(test),
        "unsteered": {"accuracy": model_right / len(test), "ci": wilson(model_right, len(test)), "n": len(test)},
        "majority": {
            "class": classes[majority],
            "accuracy": majority_right / len(test),
            "ci": wilson(majority_right, len(test)),
        },
        "steering": {
            "coef": comps.steering.coef,
            "coef_mode": comps.steering.coef_mode,
            "coef_levels": list(comps.steering.coef_levels),
            "allow_noop": comps.steering.allow_noop,
            "masking": cfg.masking.mode,
            "masking_features": cfg.masking.features,  # masking=fixed: the oracle's features; else null
        },
        "settings": {
            k: getattr(cfg, k)
            for k in ("probe_train", "n_oracle", "oracle_static", "shortlist_k", "l2", "folds", "n_boot", "seed")
        },
        "layers": [],
    }
    none_applies = None
    if len(classes) < 2:
        what = {"1": "every", "0": "no"}.get(classes[0], f"only the class '{classes[0]}' on") if classes else "no"
        none_applies = (
            f"none applies: the model answers {what} train prompt correctly, so there is nothing to read"
            if target == "correct"
            else f"none applies: every train prompt has the gold answer '{classes[0]}'"
        )
    record["none_applies"] = none_applies
    chance_base = 0.5 if target == "correct" else record["majority"]["accuracy"]
    for layer in layers:
        if layer != layers[0]:
            del comps
            comps = build(_train_config(cfg, layer), splits=("train", "test"))
        entry: dict[str, Any] = {"layer": layer, "hook": comps.sae.hook_name, "sae_identity": comps.sae.identity}
        if comps.planted is not None:
            entry["planted"] = list(comps.planted)  # the planted task's ground-truth features
        if none_applies is None:
            entry.update(
                probe_layer(
                    x_train[layer], y_train, x_test[layer], y_test, len(classes), target,
                    cfg.l2, cfg.folds, cfg.seed, cfg.n_boot,
                    MLPProbe(cfg.mlp_hidden, cfg.mlp_steps, cfg.mlp_weight_decay),
                )
            )  # fmt: skip
        if cfg.n_oracle:
            n = min(cfg.n_oracle, len(test))
            entry["oracle"] = oracle(
                comps,
                test[:n],
                [ep.correct for ep in ep_test[:n]],
                x_test[layer][:n],
                cfg.oracle_rows,
                cfg.oracle_max_episodes,
                cfg.oracle_static,
                say(f"oracle at layer {layer}") if progress else None,
                cfg.shortlist_k,
            )
            o = entry["oracle"]
            o["ci"] = wilson(o["reached"], o["n"])
            short = o.get("shortlist")
            if short is not None:
                short["command"] = (
                    train_command(train_overrides(overrides or []), layer, short["features"])
                    if short["features"]
                    else None
                )
            if o["best_static"] is not None:
                s = o["best_static"]
                s["ci"] = wilson(round(s["accuracy"] * o["n"]), o["n"])
        if none_applies is not None:
            entry["verdict"], entry["why"] = none_applies, ""
        else:
            # The better reader (by CI low) decides readability: the policy is an MLP, so what only the MLP reads is
            # still within its reach; each reader must beat its own shuffled control.
            reader = best_reader(entry)
            chance = max(chance_base, entry["shuffled" if reader == "probe" else "mlp_shuffled"]["value"])
            entry["reader"] = reader
            o = entry.get("oracle")
            entry["verdict"], entry["why"] = verdict(
                target,
                (entry[reader]["value"], entry[reader]["ci"][0]),
                chance,
                record["unsteered"]["accuracy"],
                None if o is None else (o["accuracy"], *o["ci"]),
                None if o is None else o["unsteered"],
            )
        record["layers"].append(entry)
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record
