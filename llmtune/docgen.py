"""Generate docs/recipes.md from the schema, so the reference can never drift from the code.

python -m llmtune.docgen > docs/recipes.md     (a test checks the file is current)
"""

from __future__ import annotations

import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llmtune.schema import Recipe, nested_model

INTRO = """\
# Recipe reference

A recipe is one YAML file that picks the stage, model, data, method and hyper-parameters of a run.
Unknown keys are refused (with a "did you mean"), values are type-checked, and every error names the
file and line. This page is generated from `llmtune/schema/` by `python -m llmtune.docgen`.

- `extends: ../base/sft.yaml` — optional, first key: deep-merges this file over another (relative to this
  file). Mappings merge key by key; lists and values replace. Cycles and missing files are errors.
- `--set a.b=value` on any command overrides a key after `extends`, with the value parsed as YAML and
  type-checked: `--set train.lr=1e-4`, `--set data.train.0.weight=2`,
  `--set method.lora.target_modules=[q_proj,v_proj]`.
- Relative data and output paths are relative to the directory you run `llmtune` from.
- `llmtune recipe validate R.yaml` checks a recipe; `llmtune recipe show R.yaml` prints it fully resolved.

"""


def _type_name(annotation: typing.Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in typing.get_args(annotation))
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin in (list, dict):
        args = ", ".join(_type_name(a) for a in typing.get_args(annotation))
        return f"{origin.__name__}[{args}]"
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: typing.Any) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "(section)"
    return f"`{value!r}`" if value not in (None, [], {}) else f"`{value}`"


def render(model: type[BaseModel] = Recipe, prefix: str = "") -> list[str]:
    """One table per section, in schema order, recursing into nested sections."""
    rows, nested = [], []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        sub = nested_model(field.annotation)
        kind = f"list of `{sub.__name__}`" if sub and typing.get_origin(field.annotation) is list else None
        kind = kind or ("section" if sub else _type_name(field.annotation))
        doc = (field.description or (sub.__doc__ if sub and sub.__doc__ else "") or "").replace("\n", " ")
        rows.append(f"| `{key}` | {kind} | {_default(field)} | {doc.strip()} |")
        if sub:
            nested.append((sub, f"{key}[].") if kind.startswith("list") else (sub, f"{key}."))
    title = prefix.rstrip(".") or "top level"
    lines = [f"## `{title}`", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |", *rows, ""]
    for sub, sub_prefix in nested:
        lines += render(sub, sub_prefix)
    return lines


CLEAN_INTRO = """
# Clean recipes

`llmtune clean FILE... --out DIR --recipe clean.yaml` reads a separate file whose settings sit under `clean:`
(flags such as `--lang en,zh` and `--set clean.near.threshold=0.7` override it). A null setting takes the
default of the row kind; see [data.md](data.md#cleaning).

"""


def main() -> None:
    from llmtune.data.clean.spec import CleanRecipe

    print(
        INTRO
        + "\n".join(render())
        + CLEAN_INTRO
        + "\n".join(render(CleanRecipe, "")).replace("## `top level`", "## clean file: top level", 1),
        end="",
    )


if __name__ == "__main__":
    main()
