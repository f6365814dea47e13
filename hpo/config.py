"""Study files: TOML in, one typed, frozen spec tree out, validated once here.

Nothing downstream reads raw dicts or re-validates: a ``StudySpec`` that exists is a good one.
Every name a study file may use (a dataset, a net, an optimizer, a sampler...) is declared here as
a ``Literal``; the modules that implement them keep a dict per kind, and a test checks that each
dict's keys are the declared names.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hpo.errors import HpoError, closest, unknown

STUDIES_DIR = Path("studies")
STUDY_FILE = "study.toml"
KEEP = ("best", "all", "none")  # --keep: which trials' weights go to the artifact store
CHECKPOINT_DIR = Path("models") / "checkpoints"  # a trial's epoch checkpoints, beside the artifact store
CHECKPOINT_ENV = "HPO_CHECKPOINT_DIR"

# The names a study file may use, each implemented where it is used (the module in the comment).
# hpo.training.datasets.DATASETS; "folder" (images in a folder of the user's): hpo.training.folder
Dataset = Literal["fashion_mnist", "mnist", "kmnist", "cifar10", "cifar100", "folder"]
Net = Literal["lenet5", "simple_cnn", "resnet18"]  # hpo.training.nets.NETS
Activation = Literal["relu", "leaky_relu", "elu", "gelu", "tanh", "sigmoid"]  # hpo.training.nets.ACTIVATIONS
Optimizer = Literal["sgd", "adam", "adamw"]  # hpo.training.loop.OPTIMIZERS
Schedule = Literal["constant", "step", "cosine"]  # hpo.training.loop.SCHEDULES
Sampler = Literal["tpe", "random", "grid", "cmaes", "gp", "qmc", "nsga2"]  # hpo.search.study.SAMPLERS
Pruner = Literal[
    "median", "percentile", "successive_halving", "hyperband", "patient", "none"
]  # hpo.search.study.PRUNERS


@dataclass(frozen=True)
class DataSpec:
    dataset: Dataset = "fashion_mnist"
    val_fraction: float = 0.1  # held out of the training set for selection; the test set never is
    train_size: int = 0  # 0: the whole training split; N: a seeded subset for quick runs
    test_size: int = 0  # 0: the whole test set
    augment: bool = True  # the dataset's standard augmentation (crop, and flip where it makes sense)
    split_seed: int = -1  # seeds the validation split and subsets; -1: the study seed (a trial's config names it)
    # dataset = "folder": DIR/train/CLASS/*.png (ImageFolder's layout), optionally DIR/test/CLASS/... The study file
    # names DIR relative to the study folder; parse makes it absolute, so a trial's recorded config finds it anywhere.
    path: str = ""
    image_size: int = 0  # folder: resize to image_size x image_size; 0: the most common size in train/
    test_fraction: float = 0.2  # folder without test/: a seeded, stratified share of train/ held out as the test set


@dataclass(frozen=True)
class ModelSpec:
    name: Net = "lenet5"  # or your own net: "net.py:Class" (a file; parse makes it absolute) or "pkg.module:Class"
    activation: Activation = "relu"
    args: tuple[tuple[str, Any], ...] = ()  # [model.args]: keyword arguments of your net's constructor, sorted by name

    def arg(self, name: str, default: Any = None) -> Any:
        return dict(self.args).get(name, default)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 128
    optimizer: Optimizer = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Schedule = "constant"
    milestones: tuple[int, ...] = ()  # "step": the lr is multiplied by gamma after each of these epochs
    gamma: float = 0.1
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    device: str = "auto"  # auto (CUDA if present), cpu, cuda, cuda:N
    threads: int = 0  # CPU threads for torch; 0: all cores. Pinned either way, for bit-identical runs
    deterministic: bool = False  # CUDA deterministic algorithms (CPU runs are deterministic anyway)
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    checkpoint_every: int = 1  # save the training state every N epochs (a stopped trial resumes there); 0: never


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; ``hpo.training.loop.fit`` takes this and nothing of Optuna."""

    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    seed: int = 0

    def to_dict(self) -> dict:
        """The recorded config: [model.args] as a table (what a study file holds), left out when empty
        so a built-in net's record is what it always was."""
        out = dataclasses.asdict(self)
        args = out["model"].pop("args")
        if args:
            out["model"]["args"] = dict(args)
        return out


@dataclass(frozen=True)
class ParamSpec:
    """One searched setting: a range (low/high, optional log or step) or a list of choices."""

    key: str  # "section.field", e.g. "train.lr", or "model.args.X" (an argument of your own net)
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()  # searched only when each "section.field" takes one of its values
    label: str = ""  # Optuna's parameter name where it is not the bare field name ("lr|adam/adamw")

    @property
    def optuna_name(self) -> str:
        return self.label or self.name

    @property
    def section(self) -> str:
        return self.key.split(".")[0]

    @property
    def name(self) -> str:
        """The key less its section: "lr", "args.width"."""
        return self.key.split(".", 1)[1]

    @property
    def is_int(self) -> bool:
        if self.key.startswith(ARGS_PREFIX):  # a net argument's kind is the one its values were given in
            return isinstance(self.low, int) and not isinstance(self.low, bool)
        return _field_type(self.section, self.name) is int


@dataclass(frozen=True)
class SamplerSpec:
    name: Sampler = "tpe"
    options: dict = field(default_factory=dict)  # keyword arguments of the Optuna sampler


@dataclass(frozen=True)
class PrunerSpec:
    name: Pruner = "median"
    options: dict = field(default_factory=dict)  # keyword arguments of the Optuna pruner


# Objective metrics and the direction each is optimised in. The test accuracy is never one:
# selecting on the test set would make it a validation set.
METRICS = {"val_acc": "maximize", "wall_time": "minimize", "params": "minimize"}


@dataclass(frozen=True)
class ObjectiveSpec:
    metrics: tuple[str, ...] = ("val_acc",)

    @property
    def directions(self) -> list[str]:
        return [METRICS[m] for m in self.metrics]


@dataclass(frozen=True)
class StopSpec:
    """[stop]: end the run once the best value has not moved by more than min_delta in the last
    ``patience`` finished trials (0: never). min_delta None: the seed-to-seed noise, else 0.1."""

    patience: int = 0
    min_delta: float | None = None


@dataclass(frozen=True)
class StudySpec:
    name: str
    folder: Path
    base: TrainConfig
    description: str = ""
    trials: int = 20  # default for --trials
    search: tuple[ParamSpec, ...] = ()
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    stop: StopSpec = field(default_factory=lambda: StopSpec())
    source: str = ""  # the study file's text, stored with the study so the recipe travels
    overrides: tuple[str, ...] = ()  # the --set texts applied on top of it, stored beside it
    window: int = 0  # 0: free-running; L: trial i decides from trials <= i - L only (hpo.search.window)

    @property
    def seed(self) -> int:
        return self.base.seed


SECTIONS = {"data": DataSpec, "model": ModelSpec, "train": TrainSpec}
ARGS_PREFIX = "model.args."  # a searched or --set argument of your own net: model.args.width
TOP_LEVEL = {
    "description",
    "seed",
    "trials",
    "window",
    "data",
    "model",
    "train",
    "search",
    "sampler",
    "pruner",
    "objective",
    "stop",
}


def _field_type(section: str, name: str):
    return typing.get_type_hints(SECTIONS[section])[name]


def names(kind) -> tuple:
    """The accepted names of a ``Literal`` type (a field's declared names); () for other types."""
    return typing.get_args(kind) if typing.get_origin(kind) is Literal else ()


def declared(cls, field_name: str) -> tuple:
    """The names a spec's field accepts, e.g. ``declared(ModelSpec, "name")``."""
    return names(typing.get_type_hints(cls)[field_name])


def _coerce(value: Any, kind, where: str):
    """Check a TOML value against a dataclass field type; ints are accepted for floats. A name
    (a ``Literal`` field) is checked for its type here and against the names in ``validate``."""
    if names(kind):
        kind = type(names(kind)[0])
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typing.get_origin(kind) is tuple:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise HpoError(f"{where} must be a list of integers, got {value!r}")
        return tuple(value)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if not ok:
        raise HpoError(f"{where} must be {kind.__name__}, got {value!r}")
    return value


class Problems(HpoError):
    """Several independent problems of one study file, said together in one line, so that one run
    shows everything to fix. ``items``: each problem's own line."""

    def __init__(self, items: list[str]):
        self.items = items
        text = (
            items[0]
            if len(items) == 1
            else f"{len(items)} problems: " + "; ".join(f"({i}) {m}" for i, m in enumerate(items, 1))
        )
        super().__init__(text)


class _Collect:
    """Runs independent checks, keeping every HpoError (each Problems' items) instead of the first."""

    def __init__(self):
        self.items: list[str] = []

    def __call__(self, make, default=None):
        try:
            return make()
        except Problems as e:
            self.items += [m for m in e.items if m not in self.items]
        except HpoError as e:
            if str(e) not in self.items:
                self.items.append(str(e))
        return default

    def done(self) -> None:
        if self.items:
            raise Problems(self.items)


def _build(cls, table: dict, where: str, allowed=None):
    if not isinstance(table, dict):
        raise HpoError(f"[{where}] must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)] if allowed is None else allowed
    values, collect = {}, _Collect()
    for key, value in table.items():
        if key not in names:
            collect.items.append(f"unknown key {where}.{key}{closest(key, names)}; known keys: {', '.join(names)}")
            continue
        values[key] = collect(lambda key=key, value=value: _coerce(value, hints[key], f"{where}.{key}"))
    collect.done()
    return cls(**values)


def _param(key: str, raw: Any, where: str, args: dict | None = None) -> ParamSpec:
    """One searched setting; ``args`` (the study's [model.args]) gives a searched net argument its kind."""
    if key.startswith(ARGS_PREFIX):
        return _range_or_choices(key, key, raw, where, _arg_kind(key, raw, where, args or {}))
    section, _, name = key.rpartition(".")
    if not section:  # a bare name such as "lr" is looked up in the sections
        owners = [s for s, cls in SECTIONS.items() if name in {f.name for f in dataclasses.fields(cls)}]
        if len(owners) != 1:
            known = sorted({f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)})
            raise HpoError(
                f"unknown search parameter {where}.{key}{closest(key, known)}; searchable: {', '.join(known)}"
            )
        section = owners[0]
    elif section not in SECTIONS or name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        raise HpoError(f"unknown search parameter {where}.{key}; write it as data.X, model.X or train.X with a known X")
    return _range_or_choices(f"{section}.{name}", key, raw, where, _field_type(section, name))


def _range_or_choices(full: str, key: str, raw: Any, where: str, kind) -> ParamSpec:
    """``raw`` (the search entry ``key``, as written) as a range or choices of values of ``kind``
    (None: choices of any plain value)."""
    if isinstance(raw, list):
        raw = {"choices": raw}
    if not isinstance(raw, dict):
        raise HpoError(f"{where}.{key} must be {{ low = .., high = .. }} or {{ choices = [..] }}, got {raw!r}")
    allowed = ("low", "high", "log", "step", "choices")
    known = (*allowed, "when")  # `when` was taken off by _branches: it is a known key all the same
    for k in raw:
        if k not in allowed:
            raise HpoError(f"unknown key {where}.{key}.{k}{closest(k, known)}; known: {', '.join(known)}")
    if "choices" in raw:
        if set(raw) != {"choices"}:
            raise HpoError(f"{where}.{key}: use either choices or low/high, not both")
        choices = raw["choices"]
        if not isinstance(choices, list) or not choices:
            raise HpoError(f"{where}.{key}.choices must be a non-empty list")
        if kind is None:
            return ParamSpec(full, choices=tuple(_arg_value(c, f"{where}.{key}.choices") for c in choices))
        return ParamSpec(full, choices=tuple(_coerce(c, kind, f"{where}.{key}.choices") for c in choices))
    if kind not in (int, float):
        raise HpoError(f"{where}.{key} is {kind.__name__}: give it choices = [..], not a range")
    if "low" not in raw or "high" not in raw:
        raise HpoError(f"{where}.{key} needs both low and high (or choices)")
    low, high = (_coerce(raw[b], kind, f"{where}.{key}.{b}") for b in ("low", "high"))
    log = _coerce(raw.get("log", False), bool, f"{where}.{key}.log")
    step = _coerce(raw["step"], kind, f"{where}.{key}.step") if "step" in raw else None
    for what, value in (("low", low), ("high", high), ("step", step)):
        if value is not None and not math.isfinite(value):
            raise HpoError(f"{where}.{key}.{what} must be a finite number, got {value}")
    if step is not None and step <= 0:
        raise HpoError(f"{where}.{key}.step must be > 0, got {step}")
    if low > high:
        raise HpoError(f"{where}.{key}: low ({low}) is greater than high ({high}); swap them")
    if log and low <= 0:
        raise HpoError(f"{where}.{key}: log scale needs low > 0, got low = {low}")
    if log and step is not None:
        raise HpoError(f"{where}.{key}: step and log cannot be combined (Optuna forbids it); drop one")
    return ParamSpec(full, low=low, high=high, log=log, step=step)


# ---------------------------------------------------------------- your own net: "file.py:Class", [model.args]

NET_VALUES = (int, float, bool, str)  # what [model.args] may hold (and lists of them, kept as tuples)


def net_reference(name: str) -> tuple[str, str] | None:
    """A custom net's (where, class): "net.py:TinyNet" -> ("net.py", "TinyNet"), "pkg.mod:Net" ->
    ("pkg.mod", "Net"); None for a built-in name."""
    where, sep, cls = name.rpartition(":")
    return (where, cls) if sep else None


def is_net_file(where: str) -> bool:
    """A reference names a file (not an importable module) when it ends in .py or holds a path separator."""
    return where.endswith(".py") or "/" in where or os.sep in where


def _resolve_net(name: str, folder: Path) -> str:
    """A file reference made absolute against the study folder, so a recorded config (and a report's
    recipe) builds the same net from any working directory."""
    ref = net_reference(name)
    if ref is None or not is_net_file(ref[0]) or Path(ref[0]).is_absolute():
        return name
    return f"{(folder / ref[0]).resolve()}:{ref[1]}"


def _arg_value(value: Any, where: str):
    """A [model.args] value: a plain TOML value, or a list of them (a tuple, to stay hashable)."""
    if isinstance(value, list) and all(isinstance(v, NET_VALUES) for v in value):
        return tuple(value)
    if not isinstance(value, NET_VALUES):
        raise HpoError(f"{where} must be a number, string, boolean or a list of them, got {value!r}")
    return value


def _args(table: Any, where: str = "model.args") -> tuple[tuple[str, Any], ...]:
    if not isinstance(table, dict):
        raise HpoError(f"[{where}] must be a table of keyword arguments for your net, e.g. width = 32; got {table!r}")
    return tuple(sorted((k, _arg_value(v, f"{where}.{k}")) for k, v in table.items()))


def _model(table: Any) -> ModelSpec:
    """[model], its [model.args] table apart (the one field that is a table of its own)."""
    args = table.get("args", {}) if isinstance(table, dict) else {}
    rest = {k: v for k, v in table.items() if k != "args"} if isinstance(table, dict) else table
    return dataclasses.replace(_build(ModelSpec, rest, "model"), args=_args(args))


def _arg_kind(key: str, raw: Any, where: str, args: dict):
    """A searched net argument's kind: its value's in [model.args], else its range ends' (float if
    either is one); None (any plain value) for choices with no value to go by."""
    name = key[len(ARGS_PREFIX) :]
    if not name or "." in name:
        raise HpoError(f"search parameter {where}.{key}: write model.args.NAME, NAME an argument of your net")
    if name in args:
        value = args[name]
        return float if isinstance(value, float) else type(value)
    if isinstance(raw, dict) and "choices" not in raw:
        ends = [raw.get("low"), raw.get("high")]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ends):
            return float if any(isinstance(v, float) for v in ends) else int
        raise HpoError(f"{where}.{key} needs numbers for low and high (or choices), got {raw!r}")
    return None


def _named(cls, raw: Any, where: str):
    """[sampler] / [pruner]: a name plus the Optuna constructor's keyword arguments."""
    if raw is not None and not isinstance(raw, dict):
        raise HpoError(f"[{where}] must be a table, e.g. {where}.name = {cls().name!r}, got {raw!r}")
    raw = dict(raw or {})
    name = raw.pop("name", cls().name)
    if not isinstance(name, str):
        raise HpoError(f"{where}.name must be a string, got {name!r}")
    if name not in declared(cls, "name"):
        raise unknown(f"{where}.name", name, declared(cls, "name"))
    return cls(name=name, options=raw)


def _window(value) -> int:
    window = _coerce(value, int, "window")
    if window < 0:
        raise HpoError(f"window must be >= 0 (0: free-running; L: the reproducible window), got {window}")
    return window


def parse(raw: dict, name: str, folder: Path, source: str = "") -> StudySpec:
    """Turn a study file's TOML table into a validated ``StudySpec``; every problem the file has is
    said at once (``Problems``), as far as the parts that can be checked alone go."""
    collect = _Collect()
    for key in raw:
        if key not in TOP_LEVEL:
            collect.items.append(
                f"unknown key {key!r} in {folder / STUDY_FILE}{closest(key, TOP_LEVEL)}; "
                f"known: {', '.join(sorted(TOP_LEVEL))}"
            )
    seed = collect(lambda: _coerce(raw.get("seed", 0), int, "seed"), 0)
    sections = {
        s: collect(
            lambda s=s, cls=cls: _model(raw.get(s, {})) if s == "model" else _build(cls, raw.get(s, {}), s), cls()
        )
        for s, cls in SECTIONS.items()
    }
    model = sections["model"]
    sections["model"] = dataclasses.replace(model, name=collect(lambda: _resolve_net(model.name, folder), model.name))
    sections["data"] = _resolved(sections["data"], folder)
    base = TrainConfig(**sections, seed=seed)
    search = raw.get("search", {})
    if not isinstance(search, dict):
        collect.items.append("[search] must be a table of parameter = { low, high } or { choices }")
        search = {}
    spec = StudySpec(
        name=name,
        folder=folder,
        base=base,
        description=collect(lambda: _coerce(raw.get("description", ""), str, "description"), ""),
        trials=collect(lambda: _coerce(raw.get("trials", 20), int, "trials"), 20),
        search=collect(lambda: _resolve_choices(search_space(search, dict(base.model.args)), folder), ()),
        sampler=collect(lambda: _named(SamplerSpec, raw.get("sampler"), "sampler"), SamplerSpec()),
        pruner=collect(lambda: _named(PrunerSpec, raw.get("pruner"), "pruner"), PrunerSpec()),
        objective=collect(lambda: _objective(raw.get("objective", {})), ObjectiveSpec(("val_acc",))),
        stop=collect(lambda: _stop(raw.get("stop", {})), StopSpec()),
        source=source,
        window=collect(lambda: _window(raw.get("window", 0)), 0),
    )
    collect.done()  # the settings below are checked on a whole spec
    for where, config in variants(spec):  # each choice, and each range end, must itself be a valid setting
        collect(lambda where=where, config=config: validate(config, where=where))
    collect.done()
    return spec


def _objective(objective) -> ObjectiveSpec:
    metrics = objective.get("metrics", ["val_acc"]) if isinstance(objective, dict) else objective
    if isinstance(metrics, str):
        metrics = [metrics]
    if set(objective) - {"metrics"} if isinstance(objective, dict) else False:
        raise HpoError(f"unknown key in [objective]: {sorted(set(objective) - {'metrics'})}; known: metrics")
    _check_metrics(metrics)
    return ObjectiveSpec(tuple(metrics))


def _resolved(data: DataSpec, folder: Path) -> DataSpec:
    """data.path made absolute against the study folder (an absolute one stays): the trials record
    this spec, and retraining one later from another working directory must find the same images."""
    if not data.path:
        return data
    return dataclasses.replace(data, path=str((folder / Path(data.path).expanduser()).resolve()))


def variants(spec: StudySpec) -> list[tuple[str, TrainConfig]]:
    """The base config, then one per searched choice and range end (in its branch: nesterov under
    sgd), each named by where it comes from: what parse validates and hpo.training.custom builds."""
    out = [("", spec.base)]
    for p in spec.search:
        for value in p.choices or (p.low, p.high):
            branch = {k: values[0] for k, values in p.when}
            out.append((f"search.{p.name}", with_values(spec.base, {**branch, p.key: value})))
    return out


def _resolve_choices(params: tuple[ParamSpec, ...], folder: Path) -> tuple[ParamSpec, ...]:
    """Searched net names, file references made absolute as model.name is."""
    return tuple(
        dataclasses.replace(p, choices=tuple(_resolve_net(c, folder) for c in p.choices))
        if p.key == "model.name"
        else p
        for p in params
    )


def _check_metrics(metrics) -> None:
    """A non-empty list of distinct known names: anything else would fail only once the store exists."""
    if not isinstance(metrics, list) or not metrics:
        raise HpoError(f"objective.metrics must be a non-empty list of {', '.join(METRICS)}, got {metrics!r}")
    for m in metrics:
        if not isinstance(m, str):
            raise HpoError(f'objective.metrics holds {m!r}; write names, e.g. ["val_acc"]')
        if m not in METRICS:
            raise unknown("objective metric", m, METRICS)
    if len(set(metrics)) < len(metrics):
        raise HpoError(f"objective.metrics names a metric twice: {metrics}")


# ---------------------------------------------------------------- conditional search spaces
# A parameter is searched only in the branch its `when` names; one name may hold a list of ranges,
# one per branch:
#   lr = [{ low = .., high = .., when = { optimizer = "sgd" } }, { .., when = { optimizer = ["adam", "adamw"] } }]
# (or [[search.lr]] tables). Checked here once: conditions on searched choices, no cycle, no overlap.


def _full_key(key: str, where: str) -> str:
    """A bare field name ("optimizer") or "section.field" as "section.field"."""
    section, _, name = key.rpartition(".")
    if not section:
        owners = [s for s, cls in SECTIONS.items() if name in {f.name for f in dataclasses.fields(cls)}]
        section = owners[0] if len(owners) == 1 else ""
    if section not in SECTIONS or name not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
        raise HpoError(
            f'{where}: unknown setting {key!r}; write a searched setting, e.g. when = {{ optimizer = "sgd" }}'
        )
    return f"{section}.{name}"


def _when(raw: Any, where: str) -> tuple[tuple[str, tuple], ...]:
    if not isinstance(raw, dict) or not raw:
        raise HpoError(f'{where} must be a table of setting = value or [values], e.g. when = {{ optimizer = "sgd" }}')
    out = []
    for key, values in raw.items():
        full = _full_key(key, f"{where}.{key}")
        values = values if isinstance(values, list) else [values]
        if not values:
            raise HpoError(f"{where}.{key} is an empty list: give at least one value")
        kind = _field_type(*full.split("."))
        out.append((full, tuple(_coerce(v, kind, f"{where}.{key}") for v in values)))
    return tuple(out)


def _branches(key: str, raw: Any, where: str, args: dict) -> list[ParamSpec]:
    """One search entry: a range or choices, each optionally with `when`, or a list of such tables."""
    entries = raw if isinstance(raw, list) and raw and all(isinstance(e, dict) for e in raw) else [raw]
    out = []
    for i, entry in enumerate(entries):
        at = f"{where}.{key}" + (f"[{i}]" if len(entries) > 1 else "")
        entry = dict(entry) if isinstance(entry, dict) else entry
        when = _when(entry.pop("when"), f"{at}.when") if isinstance(entry, dict) and "when" in entry else ()
        if len(entries) > 1 and not when:
            raise HpoError(f"{at}: a setting with several ranges needs a `when` in each, naming its branch")
        out.append(dataclasses.replace(_param(key, entry, where, args), when=when))
    return out


def _overlap(a: ParamSpec, b: ParamSpec, choices: dict[str, set]) -> bool:
    """Whether some trial could satisfy both conditions (a key one leaves out allows every value)."""
    keys = {k for k, _ in a.when} | {k for k, _ in b.when}
    wa, wb = dict(a.when), dict(b.when)
    return all(set(wa.get(k, choices[k])) & set(wb.get(k, choices[k])) for k in keys)


def _cycle(depends: dict[str, set[str]]) -> list[str] | None:
    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node) :] + [node]
        for nxt in sorted(depends.get(node, ())):
            found = visit(nxt, path + [node])
            if found:
                return found
        return None

    return next((c for c in (visit(n, []) for n in sorted(depends)) if c), None)


def _label(p: ParamSpec) -> str:
    """ "lr|sgd", "lr|adam/adamw": the field name and the branch's values."""
    return (
        p.name
        + "|"
        + ",".join("/".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values) for _, values in p.when)
    )


def search_space(search: dict, args: dict | None = None) -> tuple[ParamSpec, ...]:
    """[search] as ParamSpecs, each after the settings its condition reads (define-by-run order);
    ``args``: the study's [model.args], whose values give searched net arguments their kinds."""
    params, named_by, collect = [], {}, _Collect()
    for key, raw in search.items():
        branches = collect(lambda key=key, raw=raw: _branches(key, raw, "search", args or {}))
        if branches is None:
            continue
        full = branches[0].key
        if full in named_by:  # "optimizer" and "train.optimizer": one setting, two entries
            collect.items.append(
                f"search: {named_by[full]} and {key} name the same setting ({full}); keep one "
                f"(several ranges of one setting go in one list, each with its `when`)"
            )
            continue
        named_by[full] = key
        params += branches
    collect.done()  # the conditions below read every entry
    by_key: dict[str, list[ParamSpec]] = {}
    for p in params:
        by_key.setdefault(p.key, []).append(p)
    choices = {k: {c for p in ps for c in p.choices} for k, ps in by_key.items()}
    for p in params:
        for k, values in p.when:
            at = f"search.{p.name}.when.{k.split('.')[1]}"
            if k not in by_key:
                raise HpoError(
                    f"{at}: {k.split('.')[1]} is not searched, so the condition never varies; "
                    f"add it to [search] with choices or drop the condition"
                )
            if any(not q.choices for q in by_key[k]):
                raise HpoError(
                    f"{at}: a condition needs a setting searched by choices, and {k.split('.')[1]} is a range"
                )
            for v in values:
                if v not in choices[k]:
                    raise HpoError(
                        f"{at} = {v!r} is not one of its choices: {', '.join(map(repr, sorted(choices[k], key=str)))}"
                    )
    loop = _cycle({k: {c for p in ps for c, _ in p.when} for k, ps in by_key.items()})
    if loop:
        raise HpoError(f"search: conditions form a cycle: {' -> '.join(k.split('.')[1] for k in loop)}")
    for ps in by_key.values():
        for i, a in enumerate(ps):
            for b in ps[i + 1 :]:
                if _overlap(a, b, choices):
                    raise HpoError(
                        f"search.{a.name}: two ranges overlap (when {_words(a.when) or 'always'} and when "
                        f"{_words(b.when) or 'always'}); give each branch values the others do not have"
                    )
    for k, ps in by_key.items():  # one Optuna name per distinct distribution
        if len(ps) > 1 and len({dataclasses.replace(p, when=()) for p in ps}) > 1:
            for i, p in enumerate(params):
                if p.key == k:
                    params[i] = dataclasses.replace(p, label=_label(p))
    ordered, done = [], set()
    while len(ordered) < len(params):
        ready = [p for p in params if p not in ordered and all(c in done for c, _ in p.when)]
        ordered += ready
        done |= {k for k in by_key if all(p in ordered for p in by_key[k])}
    return tuple(ordered)


def _words(when) -> str:
    return " and ".join(f"{k.split('.')[1]} in {list(v)}" for k, v in when)


def active(p: ParamSpec, values: dict[str, Any]) -> bool:
    """Whether ``p`` is searched given the values sampled so far ("section.field" -> value)."""
    return all(k in values and values[k] in allowed for k, allowed in p.when)


def _stop(raw: Any) -> StopSpec:
    if not isinstance(raw, dict):
        raise HpoError(f"[stop] must be a table (patience, min_delta), got {raw!r}")
    for key in raw:
        if key not in ("patience", "min_delta"):
            raise HpoError(
                f"unknown key stop.{key}{closest(key, ('patience', 'min_delta'))}; known keys: patience, min_delta"
            )
    patience = _coerce(raw.get("patience", 0), int, "stop.patience")
    min_delta = _coerce(raw["min_delta"], float, "stop.min_delta") if "min_delta" in raw else None
    if patience < 0:
        raise HpoError(f"stop.patience must be >= 0 (0: never stop early), got {patience}")
    if min_delta is not None and not (0 <= min_delta < math.inf):  # nan compares false
        raise HpoError(f"stop.min_delta must be a finite number >= 0, got {min_delta}")
    return StopSpec(patience, min_delta)


def value(config: TrainConfig, key: str) -> Any:
    """The setting "section.field" (or "model.args.X", None where the args do not give it) of ``config``."""
    if key.startswith(ARGS_PREFIX):
        return dict(config.model.args).get(key[len(ARGS_PREFIX) :])
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def with_values(config: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """A copy of ``config`` with "section.field" keys replaced (a trial's sampled parameters)."""
    sections = {s: getattr(config, s) for s in SECTIONS}
    for key, value in values.items():
        if key.startswith(ARGS_PREFIX):  # one argument of your own net, the others kept
            model = sections["model"]
            args = {**dict(model.args), key[len(ARGS_PREFIX) :]: value}
            sections["model"] = dataclasses.replace(model, args=tuple(sorted(args.items())))
            continue
        section, name = key.split(".")
        sections[section] = dataclasses.replace(sections[section], **{name: value})
    return dataclasses.replace(config, **sections)


def validate(config: TrainConfig, where: str = "") -> None:
    """Names against their declarations, values against their ranges. One line per problem."""
    d, t = config.data, config.train
    at = f" (in {where})" if where else ""
    _validate_net(config.model, at)
    problems: list[str] = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            value, known = getattr(getattr(config, section), f.name), declared(cls, f.name)
            if (section, f.name) == ("model", "name") and net_reference(value):
                continue  # your own net: checked by _validate_net here, built before any trial (hpo.training.custom)
            if known and value not in known:
                problems.append(str(unknown(f"{section}.{f.name}", value, known)) + at)
            if isinstance(value, float) and not math.isfinite(value):  # inf/nan pass every range check below
                problems.append(f"{section}.{f.name} must be a finite number, got {value}" + at)
    checks = (
        (t.lr > 0, f"train.lr must be > 0, got {t.lr}"),
        (t.batch_size >= 1, f"train.batch_size must be >= 1, got {t.batch_size}"),
        (0 <= t.momentum < 1, f"train.momentum must be in [0, 1), got {t.momentum}"),
        (t.epochs >= 1, f"train.epochs must be >= 1, got {t.epochs}"),
        (t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}"),
        (0 <= t.label_smoothing < 1, f"train.label_smoothing must be in [0, 1), got {t.label_smoothing}"),
        (t.warmup_epochs >= 0, f"train.warmup_epochs must be >= 0, got {t.warmup_epochs}"),
        (t.gamma > 0, f"train.gamma must be > 0, got {t.gamma}"),
        (t.threads >= 0, f"train.threads must be >= 0 (0: all cores), got {t.threads}"),
        (
            t.threads <= cpu_count(),
            f"train.threads must be at most the {cpu_count()} cores this machine gives us (0: all), got {t.threads}",
        ),
        (t.checkpoint_every >= 0, f"train.checkpoint_every must be >= 0 (0: no checkpoints), got {t.checkpoint_every}"),
        (
            not t.nesterov or (t.optimizer == "sgd" and t.momentum > 0),
            'train.nesterov needs optimizer = "sgd" and momentum > 0',
        ),
        (0 < d.val_fraction < 1, f"data.val_fraction must be in (0, 1), got {d.val_fraction}"),
        (d.train_size >= 0, f"data.train_size must be >= 0 (0: all), got {d.train_size}"),
        (d.test_size >= 0, f"data.test_size must be >= 0 (0: all), got {d.test_size}"),
        (d.split_seed >= -1, f"data.split_seed must be >= 0, or -1 for the study seed, got {d.split_seed}"),
        (
            d.dataset != "folder" or d.path != "",
            'data.dataset = "folder" needs data.path = "DIR", a folder holding DIR/train/CLASS/*.png (one per class)',
        ),
        (
            d.dataset == "folder" or not d.path,
            f'data.path is for data.dataset = "folder", not {d.dataset!r}: set dataset = "folder" or drop data.path',
        ),
        (
            d.image_size >= 0,
            f"data.image_size must be >= 0 (0: the most common size in the folder), got {d.image_size}",
        ),
        (
            d.dataset == "folder" or d.image_size == 0,
            f'data.image_size is for data.dataset = "folder" ({d.dataset} images keep their size): drop it',
        ),
        (0 < d.test_fraction < 1, f"data.test_fraction must be in (0, 1), got {d.test_fraction}"),
        (
            re.fullmatch(r"auto|cpu|cuda(:\d+)?", t.device) is not None,
            f"train.device must be auto, cpu, cuda or cuda:N, got {t.device!r}",
        ),
    )
    problems += [message + at for ok, message in checks if not ok]
    if problems:
        raise Problems(problems)


def _validate_net(model: ModelSpec, at: str) -> None:
    """Your own net's reference is well formed (the built-in names are checked with the others)."""
    ref = net_reference(model.name)
    if ref is None:
        if model.args and model.name in names(Net):
            raise HpoError(
                f'model.args is for your own net (model.name = "file.py:Class"); {model.name} takes none' + at
            )
        return
    where, cls = ref
    module_ok = is_net_file(where) or all(part.isidentifier() for part in where.split("."))
    if not (where and cls.isidentifier() and module_ok):
        raise HpoError(
            f'model.name = {model.name!r}: write your own net as "file.py:Class" (a path relative to the study '
            f'folder, or absolute) or "package.module:Class"' + at
        )


def cpu_count() -> int:
    """The cores this process may run on (its affinity: a Slurm or container limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_override(text: str) -> tuple[list[str], Any]:
    """ "train.lr=0.1" -> (["train", "lr"], 0.1). Values are TOML; a bare word is a string."""
    key, sep, value = text.partition("=")
    path = key.strip().split(".")
    net_arg = len(path) == 3 and path[:2] == ["model", "args"]  # an argument of your own net: model.args.width
    if not sep or not all(path) or (len(path) > 2 and not net_arg):
        raise HpoError(
            f"--set {text!r}: write SECTION.KEY=VALUE, e.g. --set train.lr=0.05 (or model.args.NAME=VALUE for your net)"
        )
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return path, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        path, value = parse_override(text)
        if len(path) == 1:
            raw[path[0]] = value
        elif len(path) == 3:  # model.args.NAME: a copy of [model.args], the file's table untouched
            model = raw.setdefault("model", {})
            args = model.get("args", {}) if isinstance(model, dict) else None
            if not isinstance(args, dict):
                raise HpoError(f"--set {text!r}: [model] and [model.args] must be tables in the study file")
            model["args"] = {**args, path[2]: value}
        else:
            section = raw.setdefault(path[0], {})
            if not isinstance(section, dict):
                raise HpoError(f"--set {text!r}: {path[0]} is not a section")
            if path[0] in ("sampler", "pruner") and path[1] == "name" and section.get("name") != value:
                section.clear()  # the file's options belong to the sampler/pruner being replaced
            section[path[1]] = value
    return raw


def find_study(name_or_path: str | Path) -> Path:
    """A study folder: a path that holds study.toml, or a name under studies/ (hpo.run, hpo.train
    and hpo.report all find theirs here)."""
    path = Path(name_or_path)
    for folder in (path, STUDIES_DIR / path):
        if (folder / STUDY_FILE).is_file():
            return folder
    bare = path.parent == Path(".")
    known = sorted(
        {
            p.parent.name
            for d in {STUDIES_DIR, path.parent if not bare else STUDIES_DIR}
            for p in d.glob(f"*/{STUDY_FILE}")
        }
    )
    raise HpoError(
        f"no study {str(name_or_path)!r}: expected {(STUDIES_DIR / path if bare else path) / STUDY_FILE}"
        f"{closest(path.name, known)}; studies here: {', '.join(known) or 'none'}"
    )


def load(name_or_path: str | Path, overrides: list[str] = ()) -> StudySpec:
    folder = find_study(name_or_path)
    file = folder / STUDY_FILE
    try:
        source = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise HpoError(f"{file} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    try:
        raw = tomllib.loads(source)
    except tomllib.TOMLDecodeError as e:
        raise HpoError(f"{file} is not valid TOML: {e}") from None
    spec = parse(apply_overrides(raw, list(overrides)), folder.resolve().name, folder, source)
    return dataclasses.replace(spec, overrides=tuple(overrides))
