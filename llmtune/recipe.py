"""Load a recipe: read YAML, resolve `extends:`, apply `--set` overrides, validate against llmtune.schema.

Every failure becomes one UserError naming the file, line and key, and what would be valid.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from llmtune.errors import UserError, not_utf8
from llmtune.schema import STAGE_BLOCKS, Recipe, nested_model

Position = tuple[str, int]  # (file, 1-based line)
M = TypeVar("M", bound=BaseModel)

SHIPPED_DIR = Path(__file__).resolve().parent / "recipes"
"""The recipes (and accelerate configs) shipped inside the package; `./recipes` in a checkout links here."""


def find_recipe(ref: str | Path, base: Path | None = None) -> Path:
    """A recipe given as a path (relative to `base`, else the cwd) or as a shipped recipe's name.

    A name is relative to the shipped folder, `.yaml` optional, and may keep a leading `recipes/`
    (`qwen2.5-0.5b/sft-lora`, `recipes/demo/pt.yaml`), so the docs' commands work outside a checkout too.
    A local file wins; when neither exists the local path is returned, for the caller's "not found".
    """
    local = base / ref if base is not None else Path(ref)
    if local.is_file():
        return local
    return shipped_file(str(ref), ".yaml") or local


def shipped_file(ref: str, suffix: str) -> Path | None:
    """The shipped file `ref` names (with or without `suffix` and a leading `recipes/`), or None."""
    name = ref.replace("\\", "/").removeprefix("./").removeprefix("recipes/")
    if name.startswith(("/", "~", "..")):
        return None
    for candidate in (name, name + suffix):
        path = SHIPPED_DIR / candidate
        if path.is_file():
            return path
    return None


@dataclass
class _Loaded:
    data: dict[str, Any]
    positions: dict[tuple[str, ...], Position] = field(default_factory=dict)


def _line_positions(node: yaml.Node, file: str, prefix: tuple[str, ...], out: dict) -> None:
    """Record where each key (and list item) was written, so errors can point at file:line.

    A key written twice in one mapping is refused: YAML loaders silently keep the last one.
    """
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, str(key_node.value))
            line = key_node.start_mark.line + 1
            if path in out:
                raise UserError(
                    f"{file}:{line}: duplicate key {'.'.join(path)!r} (first written at line {out[path][1]}); "
                    "keep one of them"
                )
            out[path] = (file, line)
            _line_positions(value_node, file, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = (*prefix, str(i))
            out[path] = (file, item.start_mark.line + 1)
            _line_positions(item, file, path, out)


def _read_yaml(path: Path) -> _Loaded:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(
            f"{path}: recipe file not found, nor a shipped recipe of that name (`llmtune recipe list` shows them)"
        ) from None
    except UnicodeDecodeError:
        raise not_utf8(str(path), path.read_bytes(), "save the recipe as UTF-8") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the recipe ({exc.strerror or exc})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context = exc.context_mark if exc.problem and exc.context else None
        opened = f" ({exc.context} opened at line {context.line + 1})" if context and context.line != mark.line else ""
        raise UserError(f"{where}: YAML syntax error: {exc.problem or exc.context}{opened}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe must be a mapping of keys (stage:, model:, ...), not {type(data).__name__}")
    positions: dict[tuple[str, ...], Position] = {}
    if node is not None:
        _line_positions(node, str(path), (), positions)
    return _Loaded(data, positions)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value (lists included) in `override` replaces the base's."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _resolve(path: Path, chain: tuple[Path, ...]) -> _Loaded:
    path = path.resolve()
    if path in chain:
        cycle = " -> ".join(p.name for p in (*chain, path))
        raise UserError(f"{chain[-1]}: `extends` forms a cycle: {cycle}; remove one of these `extends:` lines")
    loaded = _read_yaml(path)
    parent_ref = loaded.data.pop("extends", None)
    if parent_ref is None:
        return loaded
    if not isinstance(parent_ref, str):
        line = loaded.positions.get(("extends",), (str(path), 0))[1]
        raise UserError(
            f"{path}:{line}: `extends` must be a path to another recipe (relative to this file) "
            "or a shipped recipe's name"
        )
    parent_path = find_recipe(parent_ref, path.parent)
    if not parent_path.is_file():
        line = loaded.positions.get(("extends",), (str(path), 0))[1]
        raise UserError(
            f"{path}:{line}: `extends: {parent_ref}` not found (looked for {parent_path}, and for a shipped recipe "
            "of that name: `llmtune recipe list` shows them)"
        )
    parent = _resolve(parent_path, (*chain, path))
    return _Loaded(deep_merge(parent.data, loaded.data), {**parent.positions, **loaded.positions})


def apply_override(data: dict[str, Any], assignment: str) -> tuple[str, ...]:
    """Apply one `--set a.b.c=value`; the value is parsed as YAML (so 1e-4, true, [a, b] keep their types).

    Returns the key path that was set."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, parts[: depth + 1], key.strip())
    last = parts[-1]
    if isinstance(node, list):
        index = _index(node, last, parts)
        node[index] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"--set {key}: {'.'.join(parts[:-1])} is a single value, not a section")
    return tuple(parts)


def _index(node: list, part: str, parts: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"--set {'.'.join(parts)}: {part!r} is not an index of this list (0..{len(node) - 1})")
    return int(part)


def _step(node: Any, part: str, walked: list[str], key: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, walked)]
    if not isinstance(node, dict):
        raise UserError(f"--set {'.'.join(walked)}: {'.'.join(walked[:-1])} is a single value, not a section")
    if node.get(part) is None:
        node[part] = {}
    elif not isinstance(node[part], (dict, list)):
        raise UserError(f"--set {key}: {'.'.join(walked)} is a single value, not a section")
    return node[part]


def _field_names(loc: tuple[Any, ...], root: type[BaseModel] = Recipe) -> list[str]:
    """The keys allowed at `loc` in the schema, for "did you mean" suggestions."""
    model: Any = root
    for part in loc:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        info = model.model_fields.get(str(part))
        if info is None:
            break
        model = nested_model(info.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _describe(error: dict[str, Any], positions: dict, origin: str, root: type[BaseModel] = Recipe) -> str:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    key = tuple(str(p) for p in loc)
    below = (v for k, v in positions.items() if key and k[: len(key)] == key and not v[1])
    where = positions.get(key) or next(below, None)  # a --set below the failing key is what changed it
    for cut in range(len(loc) - 1, 0, -1):
        if where:
            break
        where = positions.get(tuple(str(p) for p in loc[:cut]))
    prefix = (f"{where[0]}:{where[1]}" if where[1] else where[0]) if where else origin
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _field_names(loc[:-1], root)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"{prefix}: unknown key {dotted!r}; {hint}allowed here: {', '.join(allowed)}"
    if kind == "missing":
        return f"{prefix}: missing required key {dotted!r}"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    shown = f" (got {value!r})" if not isinstance(value, (dict, list)) and kind != "value_error" else ""
    subject = f"{dotted}: " if loc else ""
    return f"{prefix}: {subject}{message}{shown}"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, merge, override and validate a recipe (a path or a shipped recipe's name); raise UserError with every
    problem found."""
    return load_validated(find_recipe(path), overrides, Recipe)


def load_validated(path: str | Path | None, overrides: list[str] | None, root: type[M]) -> M:
    """A YAML file (or nothing) with `extends:` and --set applied, validated as `root`; errors name file and line."""
    if path is None:
        loaded = _Loaded({})
        for assignment in overrides or []:
            loaded.positions[apply_override(loaded.data, assignment)] = (f"--set {assignment}", 0)
        return _validate(loaded, root, "--set")
    path = Path(path)
    loaded = _resolve(path, ())
    data = loaded.data
    for assignment in overrides or []:
        keys = apply_override(data, assignment)
        loaded.positions = {k: v for k, v in loaded.positions.items() if k[: len(keys)] != keys}
        loaded.positions[keys] = (f"--set {assignment}", 0)
    return _validate(loaded, root, str(path))


def _validate(loaded: _Loaded, root: type[M], origin: str) -> M:
    try:
        return root.model_validate(loaded.data)
    except ValidationError as exc:
        problems = [_describe(e, loaded.positions, origin, root) for e in exc.errors()]
        head = "invalid recipe" if len(problems) == 1 else f"invalid recipe ({len(problems)} problems)"
        raise UserError(f"{head}: " + "; ".join(problems)) from None


def dump_recipe(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML, defaults included: what `recipe show` prints and runs save.

    Sections that do not apply (the dpo, kto, orpo, cpo and rl blocks outside their stages, method blocks of other
    kinds) are left out.
    """
    data = recipe.model_dump(mode="json")
    kind = recipe.method.kind
    unused = {"lora": kind in ("full", "freeze"), "freeze": kind != "freeze", "qlora": kind != "qlora"}
    data["method"] = {k: v for k, v in data["method"].items() if not unused.get(k)}
    for block, stages in STAGE_BLOCKS.items():
        if recipe.stage not in stages:
            data.pop(block)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def describe_line(path: Path) -> str:
    """The recipe's one-line description, read without validation (for `recipe list`)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return "(unreadable)"
    return str(data.get("description", "")).strip() if isinstance(data, dict) else ""
