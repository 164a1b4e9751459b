"""Typed configuration: pydantic models loaded from YAML plus ``key=value`` overrides.

Every job has one config object. Unknown keys and wrong types are errors that name the
key (and, for unknown keys, the closest valid one), raised as :class:`ConfigError` in one
short line that never echoes more than a few characters of the offending value.

Floats must be finite in every config section (``.inf`` is a valid YAML float, and an
infinite belt speed sorts nothing). The YAML reader refuses duplicate keys (YAML would keep
the last one silently) and aliases that expand beyond :data:`MAX_YAML_NODES` nodes (an
alias bomb costs gigabytes once anything walks the expanded value).
"""

from __future__ import annotations

import difflib
import reprlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sorting.errors import ConfigError

T = TypeVar("T", bound="StrictModel")

MAX_YAML_NODES = 100_000  # nodes of one YAML document once its aliases are expanded; configs hold a few hundred
MAX_YAML_BYTES = 10_000_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated, floats are finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and alias bombs (see the module docstring)."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # '<<: *base' keys are meant to be overridden
            key = self.construct_object(key_node, deep=True)
            try:
                seen = key in first_line
            except TypeError:
                continue  # an unhashable key: the base class says so
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {_short(key)} (first on line {first_line[key] + 1})",
                    key_node.start_mark)
            first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes under ``node`` with every alias counted at its full size; raises past :data:`MAX_YAML_NODES`."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise yaml.composer.ComposerError(None, None, "a recursive alias (a node inside itself)", node.start_mark)
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes) for k, v in node.value)
    open_nodes.discard(id(node))
    if size > MAX_YAML_NODES:
        raise yaml.composer.ComposerError(
            None, None, f"aliases expand to more than {MAX_YAML_NODES} values (an alias bomb?)", node.start_mark)
    sizes[id(node)] = size
    return size


def load_yaml_text(text: str) -> Any:
    """Parse one YAML document with :class:`ConfigLoader` (raises ``yaml.YAMLError``/``RecursionError``)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def _short(value: Any) -> str:
    """A bounded repr of a config value for error messages (cheap even for a huge or shared structure)."""
    text = _SHORT_REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxlist, _SHORT_REPR.maxtuple, _SHORT_REPR.maxdict = 2, 4, 4, 4
_SHORT_REPR.maxstring, _SHORT_REPR.maxother = 40, 40


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys of the (nested) model section at ``loc`` (for did-you-mean hints)."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        ann = fields[part].annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        current = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_error(model: type[BaseModel], err: ValidationError, source: str) -> str:
    """Turn a pydantic error into one short line naming each bad key (the first few errors)."""
    lines = []
    errors = err.errors(include_url=False, include_context=False)
    for e in errors[:5]:
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            valid = _field_names(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
            hint = f" (did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?)" if close else ""
            lines.append(f"unknown key '{key}'{hint}")
        elif e["type"] in ("value_error", "assertion_error"):
            # a validator's own message names its fields; the input is the whole section
            message = e["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
            lines.append(f"'{key}': {message}" if key else message)
        else:
            lines.append(f"'{key}': {e['msg']} (got {_short(e.get('input'))})")
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"invalid config {source}: " + "; ".join(lines) + more


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Parse ``a.b=value`` strings into a nested dict; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, raw = item.split("=", 1)
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = load_yaml_text(raw) if raw != "" else ""
        except (yaml.YAMLError, RecursionError) as exc:
            raise ConfigError(f"override '{_short(item)}': cannot parse value: {_yaml_problem(exc)}") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return tree


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` updated recursively by ``extra`` (neither is modified)."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _yaml_problem(exc: BaseException) -> str:
    """One line for a YAML error: the problem and where (pyyaml's own text spans several lines)."""
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{exc.problem or exc.context}{where}"
    return " ".join(str(exc).split())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for missing files, bad text and bad syntax."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder, not a file")
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"config file {path} is not a regular file")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_YAML_BYTES // 1_000_000} MB")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def build_config(model: type[T], data: dict[str, Any], source: str = "") -> T:
    """Validate ``data`` into ``model`` or raise :class:`ConfigError`."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(model, err, source or model.__name__)) from None


def load_config(model: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``model`` from an optional YAML file plus ``key=value`` overrides."""
    data = read_yaml(path) if path is not None else {}
    data = deep_merge(data, parse_overrides(overrides or []))
    return build_config(model, data, str(path) if path else model.__name__)


def save_config(config: BaseModel, path: str | Path) -> Path:
    """Write a config as YAML (what the run actually used)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
    return path
