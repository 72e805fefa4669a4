"""One YAML file plus dotted command-line overrides, validated against a schema.

    cfg = load_config("configs/demo.yaml", ["train.batch_size=8", "model.weights=null"])
    cfg.train.batch_size  # -> 8

A config may start with `extends: <path>` (relative to itself): it is then merged over that file
key by key, lists replaced whole. The merged result must match SCHEMA exactly: an unknown or
missing key, a wrong type or a value outside its choices is a ConfigError naming the key.
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from mushroom.errors import ConfigError
from mushroom.fileio import atomic_write

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.yaml"
RESOLVED_NAME = "config.resolved.yaml"

EDIBILITY_GRADES = ("choice", "edible", "caution", "inedible", "poisonous", "deadly")
OPEN_LICENSES = ("cc0", "cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nc-sa")
EXPORT_FORMATS = ("float32", "dynamic", "float16", "ptq_int8", "qat_int8")


# --- type specs ---------------------------------------------------------------------------------
class Spec:
    """Checks one value; returns it (possibly converted) or raises ConfigError naming `key`."""

    def check(self, key: str, value: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class Type(Spec):
    def __init__(self, kind: type, low: float | None = None, high: float | None = None):
        self.kind, self.low, self.high = kind, low, high

    def describe(self) -> str:
        return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[self.kind]

    def check(self, key, value):
        ok = isinstance(value, self.kind) and not (self.kind is not bool and isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise ConfigError(f"config key '{key}' must be {self.describe()}, got {value!r}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            bound = (f"at least {self.low}" if self.high is None else f"at most {self.high}" if self.low is None
                     else f"between {self.low} and {self.high}")
            raise ConfigError(f"config key '{key}' must be {bound}, got {value!r}")
        return value


class Choice(Spec):
    def __init__(self, *choices: Any):
        self.choices = choices

    def describe(self) -> str:
        return "one of " + ", ".join(str(c) for c in self.choices)

    def check(self, key, value):
        if value not in self.choices:
            raise ConfigError(f"config key '{key}' must be {self.describe()}, got {value!r}")
        return value


class Optional(Spec):
    def __init__(self, inner: Spec):
        self.inner = inner

    def describe(self) -> str:
        return f"null or {self.inner.describe()}"

    def check(self, key, value):
        return None if value is None else self.inner.check(key, value)


class ListOf(Spec):
    def __init__(self, inner: Spec | dict, unique: bool = False):
        self.inner, self.unique = inner, unique

    def describe(self) -> str:
        return "a list"

    def check(self, key, value):
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        out = [_check(f"{key}[{i}]", self.inner, v) for i, v in enumerate(value)]
        if self.unique:
            seen = set()
            for i, v in enumerate(out):
                if repr(v) in seen:
                    raise ConfigError(f"config key '{key}[{i}]' repeats {v!r}")
                seen.add(repr(v))
        return out


INT = Type(int)
POS_INT = Type(int, low=1)
NONNEG_INT = Type(int, low=0)
FLOAT = Type(float)
FRACTION = Type(float, low=0.0, high=1.0)
POS_FLOAT = Type(float, low=1e-12)
STR = Type(str)
BOOL = Type(bool)

SPECIES_SCHEMA = {
    "name": STR,
    "common_name": STR,
    "taxon_id": POS_INT,
    "edibility": Choice(*EDIBILITY_GRADES),
    "notes": STR,
    "look_alikes": ListOf(STR),
}

# Species never trained, downloaded only to measure unknown-species detection: the same fields, but the
# taxon id may be null (looked up by name on iNaturalist).
EVALUATION_SPECIES_SCHEMA = {**SPECIES_SCHEMA, "taxon_id": Optional(POS_INT)}
UNKNOWN_SCORES = ("msp", "energy", "max_logit", "mahalanobis", "rel_mahalanobis")

SCHEMA: dict = {
    "experiment": STR,
    "seed": NONNEG_INT,
    "paths": {"data_dir": STR, "models_dir": STR, "reports_dir": STR},
    "data": {
        "api_base_url": STR,
        "place_id": Optional(POS_INT),
        "quality_grade": Choice("research", "needs_id", "casual", "any"),
        "max_photos_per_species": POS_INT,
        "max_photos_per_observation": POS_INT,
        "photo_size": Choice("small", "medium", "large", "original"),
        "licenses": ListOf(Choice(*OPEN_LICENSES), unique=True),
        "per_page": Type(int, low=1, high=200),
        "download_workers": Type(int, low=1, high=32),
        # Above 1/s and 60/min only for a local test server: mushroom.inat refuses it for a remote API.
        "requests_per_second": Type(float, low=1e-3, high=1000.0),
        "requests_per_minute": Type(int, low=1, high=60000),
        "timeout_s": POS_FLOAT,
        "max_retries": NONNEG_INT,
        "retry_backoff_s": Type(float, low=0.0, high=60.0),
        "user_agent": STR,
        "split": {"train": FRACTION, "val": FRACTION, "test": FRACTION},
        "species_subset": Optional(ListOf(STR, unique=True)),
    },
    "image": {"size": Type(int, low=32, high=1024)},
    "augment": {"flip": BOOL, "rotation": FRACTION, "zoom": FRACTION, "contrast": FRACTION},
    "model": {
        "name": STR,
        "weights": Optional(STR),
        "dropout": Type(float, low=0.0, high=0.95),
        "hidden_units": NONNEG_INT,
    },
    "baseline": {"model": STR, "weights": Optional(STR)},
    "train": {
        "batch_size": POS_INT,
        "cache": BOOL,
        "label_smoothing": Type(float, low=0.0, high=0.5),
        "strategy": Choice("default", "mirrored", "multi_worker"),
        "early_stopping_patience": POS_INT,
        "schedule": Choice("cosine", "constant"),
        "stage1": {"epochs": NONNEG_INT, "learning_rate": POS_FLOAT},
        "stage2": {"epochs": NONNEG_INT, "learning_rate": POS_FLOAT, "unfreeze_fraction": FRACTION},
    },
    "quantize": {
        "formats": ListOf(Choice(*EXPORT_FORMATS), unique=True),
        "qat_epochs": NONNEG_INT,
        "qat_learning_rate": POS_FLOAT,
        "representative_images": POS_INT,
        "check_images": POS_INT,
        "min_agreement": FRACTION,
        "parallel_conversions": Type(int, low=1, high=16),
    },
    "evaluate": {
        "ece_bins": Type(int, low=2, high=100),
        "latency_runs": POS_INT,
        "latency_warmup": NONNEG_INT,
        "threads": Optional(POS_INT),
        # Resamples of the test finds behind every interval (mushroom.stats); below 100 the tails are noise.
        "bootstrap_samples": Type(int, low=100),
        # Share of the resampled values an interval holds (0.95: the 2.5th to 97.5th percentile).
        "confidence": Type(float, low=0.5, high=0.999),
        # The formats evaluate.py evaluates when --formats is not given; null = every one present.
        "formats": Optional(ListOf(Choice("keras", *EXPORT_FORMATS), unique=True)),
    },
    "predict": {
        "top_k": Type(int, low=1, high=20),
        "edible_threshold": FRACTION,
        "danger_threshold": FRACTION,
        "not_edible_threshold": FRACTION,
        "unknown_recall": Type(float, low=0.5, high=1.0),
        "edible_unknown_recall": Type(float, low=0.5, high=1.0),
    },
    "open_set": {
        "unknown_species": Optional(ListOf(STR, unique=True)),
        "max_photos_per_species": POS_INT,
        "unknown_val_fraction": Type(float, low=0.1, high=0.9),
        "score": Choice("auto", *UNKNOWN_SCORES),
        "pca_dim": Type(int, low=2, high=4096),                # rel_mahalanobis: PCA dimensions of the embedding
        "exposure_statistics": BOOL,                           # exposure photos shape rel_mahalanobis' statistics
        # Outlier exposure: photos of species outside the study train towards a uniform answer.
        "exposure_fraction": Type(float, low=0.0, high=0.8),   # of the unknown species, by species
        "exposure_weight": Type(float, low=0.0),               # weight of the uniform-target loss; 0 = off
        "exposure_download": NONNEG_INT,                       # photos of other Fungi download_data.py fetches
        "exposure_max_per_species": POS_INT,                   # cap per downloaded exposure species
        "exposure_genus_share": FRACTION,                      # share of them from the study species' genera
    },
    "pipeline": {
        # Stages pipeline.py runs at once (a stage starts when the ones it needs are done).
        "parallel_stages": Type(int, low=1, high=8),
    },
    "study": {
        "cv_folds": Type(int, low=0, high=20),   # 0: one train/val/test split; k >= 3: the k-fold study
        "fold": Type(int, low=0, high=20),       # set by the k-fold study for each fold's scripts; 0 otherwise
    },
    "wandb": {
        "project": STR,
        "entity": Optional(STR),
        "mode": Choice("auto", "online", "offline", "disabled"),
        "init_timeout_s": POS_FLOAT,
    },
    "species": ListOf(SPECIES_SCHEMA),
    "evaluation_species": ListOf(EVALUATION_SPECIES_SCHEMA),
}


def _check(key: str, spec: Spec | dict, value: Any) -> Any:
    if isinstance(spec, dict):
        return _check_mapping(key, spec, value)
    return spec.check(key, value)


def _check_mapping(prefix: str, schema: dict, value: Any) -> dict:
    where = f"config key '{prefix}'" if prefix else "the config"
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping of keys, got {value!r}")
    for k in value:
        if k not in schema:
            full = f"{prefix}.{k}" if prefix else str(k)
            hint = _closest(str(k), schema)
            raise ConfigError(f"unknown config key '{full}'" + (f" (did you mean '{hint}'?)" if hint else ""))
    out = {}
    for k, spec in schema.items():
        full = f"{prefix}.{k}" if prefix else k
        if k not in value:
            raise ConfigError(f"config key '{full}' is missing")
        out[k] = _check(full, spec, value[k])
    return out


def _closest(name: str, schema: dict) -> str | None:
    import difflib

    hits = difflib.get_close_matches(name, list(schema), n=1, cutoff=0.6)
    return hits[0] if hits else None


# --- attribute access -------------------------------------------------------------------------
class Config(dict):
    """A dict whose keys are also attributes (cfg.train.batch_size), recursively."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError as exc:
            raise AttributeError(name) from exc

    def to_dict(self) -> dict:
        return _plain(self)


def _wrap(value: Any) -> Any:
    if isinstance(value, dict):
        return Config({k: _wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- loading ----------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys at the top level")
    return data


def _read_with_extends(path: Path, seen: tuple = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config file {path} extends itself (through {' -> '.join(map(str, seen))})")
    data = _read_yaml(path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"config key 'extends' in {path} must be a path, got {base!r}")
    parent = _read_with_extends((path.parent / base), seen + (path,))
    return deep_merge(parent, data)


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


_FLOAT = __import__("re").compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_override(data: dict, override: str) -> None:
    """Apply one `dotted.key=value` override in place; the value is parsed as YAML (8, null, [a, b])."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' must look like key.subkey=value")
    key, raw = override.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override '{override}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    node, schema = data, SCHEMA
    for i, part in enumerate(parts):
        prefix = ".".join(parts[: i + 1])
        if not isinstance(schema, dict) or part not in schema:
            hint = _closest(part, schema) if isinstance(schema, dict) else None
            raise ConfigError(f"unknown config key '{prefix}' in --set {override}"
                              + (f" (did you mean '{hint}'?)" if hint else ""))
        if i == len(parts) - 1:
            node[part] = value
        else:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node, schema = node[part], schema[part]


def validate(data: dict) -> Config:
    """Check `data` against SCHEMA and the cross-key rules; return it as a Config."""
    checked = _check_mapping("", SCHEMA, data)
    split = checked["data"]["split"]
    total = split["train"] + split["val"] + split["test"]
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(f"config key 'data.split' fractions must add up to 1, they add up to {total:g}")
    if split["train"] <= 0:
        raise ConfigError("config key 'data.split.train' must be above 0")
    if checked["study"]["cv_folds"] in (1, 2):
        raise ConfigError("config key 'study.cv_folds' must be 0 (one train/val/test split) or at least 3 (each fold "
                          "tests once, the next validates, the others train)")
    names: dict[str, str] = {}
    ids: dict[int, str] = {}
    entries = [(f"species[{i}]", sp) for i, sp in enumerate(checked["species"])]
    entries += [(f"evaluation_species[{i}]", sp) for i, sp in enumerate(checked["evaluation_species"])]
    for key, sp in entries:
        if sp["name"] in names:
            raise ConfigError(f"config key '{key}.name' repeats species '{sp['name']}' (first at {names[sp['name']]})")
        if sp["taxon_id"] is not None and sp["taxon_id"] in ids:
            raise ConfigError(f"config key '{key}.taxon_id' repeats taxon id {sp['taxon_id']} (first at {ids[sp['taxon_id']]})")
        names[sp["name"]] = key
        if sp["taxon_id"] is not None:
            ids[sp["taxon_id"]] = key
    if not checked["species"]:
        raise ConfigError("config key 'species' must list at least one species")
    table = {sp["name"] for sp in checked["species"]}
    subset = checked["data"]["species_subset"] or []
    for i, name in enumerate(subset):
        if name not in table:
            raise ConfigError(f"config key 'data.species_subset[{i}]' names '{name}', which is not in 'species'")
    for i, name in enumerate(checked["open_set"]["unknown_species"] or []):
        if name not in names:
            raise ConfigError(f"config key 'open_set.unknown_species[{i}]' names '{name}', which is in neither "
                              "'species' nor 'evaluation_species'")
        if name in subset or (not subset and name in table):
            raise ConfigError(f"config key 'open_set.unknown_species[{i}]' names '{name}', which the model trains "
                              "on (data.species_subset): a species cannot be both known and unknown")
    return _wrap(checked)


def load_config(path: str | os.PathLike | None = None, overrides: Iterable[str] = ()) -> Config:
    """Read, merge (`extends`), override and validate a config file."""
    data = _read_with_extends(Path(path) if path else DEFAULT_CONFIG)
    for ov in overrides:
        apply_override(data, ov)
    return validate(data)


def with_overrides(cfg: Config, overrides: Iterable[str]) -> Config:
    """A validated copy of `cfg` with dotted overrides applied (cfg itself is not changed)."""
    data = copy.deepcopy(_plain(cfg))
    for ov in overrides:
        apply_override(data, ov)
    return validate(data)


def save_resolved(cfg: Config, directory: str | os.PathLike) -> Path:
    """Write the resolved config beside an output, so the output can be reproduced."""
    path = Path(directory) / RESOLVED_NAME
    atomic_write(path, yaml.safe_dump(_plain(cfg), sort_keys=False, allow_unicode=True))
    return path


def add_config_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help="YAML config (default: config.yaml; the demo uses configs/demo.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config key, e.g. --set train.batch_size=8 (repeatable)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up lines and library logs (hidden by default)")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)


def resolve_path(cfg: Config, key: str) -> Path:
    """A path from cfg.paths, relative paths taken from the current directory."""
    return Path(cfg.paths[key]).expanduser()


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Config]:
    """Parse the command line (with --config/--set added) and load the config it names."""
    add_config_args(parser)
    args = parser.parse_args(argv)
    if args.verbose:   # read by mushroom.keras_env and tracking, here and in every child process
        os.environ["MUSHROOM_VERBOSE"] = "1"
    return args, config_from_args(args)
