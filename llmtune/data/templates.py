"""Chat templates: choose one, render conversations, and find the assistant spans without `{% generation %}` markers.

Span rule: for assistant message i, render messages[:i] with the generation prompt (the prefix) and messages[:i+1]
without it; the answer is the text between the two, so it includes the template's end-of-turn token (the model
learns to stop) and excludes trailing whitespace after it. Every partial rendering must be a prefix of the whole
conversation's rendering; templates that rewrite earlier turns fail that check with a clear error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmtune import console
from llmtune.data.formats import Messages
from llmtune.errors import UserError, not_utf8

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "templates"
Span = tuple[int, int]


def shipped_templates() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.jinja"))


def resolve_chat_template(tokenizer: Any, spec: str | None, *, required: bool = False) -> str | None:
    """The template text for model.chat_template: null = the tokenizer's own, a shipped name, a file, or Jinja itself.

    With no spec and no template of the tokenizer's: None, or a UserError when `required` (the data is chat).
    """
    if spec is None:
        own = tokenizer.chat_template
        if isinstance(own, dict):
            own = own.get("default")
        if own or not required:
            return own or None
        raise UserError(
            f"the tokenizer of {tokenizer.name_or_path} has no chat template, and the data is chat; "
            f"set model.chat_template: chatml (or one of {', '.join(shipped_templates())}, or a Jinja file)"
        )
    if "{%" in spec or "{{" in spec:
        return _checked(spec, "the template given in model.chat_template")
    shipped = SHIPPED_DIR / f"{spec}.jinja"
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            return _checked(path.read_text(encoding="utf-8"), str(path))
        except UnicodeDecodeError:
            raise not_utf8(f"model.chat_template {path}", path.read_bytes(), "save it as UTF-8") from None
    raise UserError(
        f"model.chat_template {spec!r} is neither a shipped template ({', '.join(shipped_templates())}), "
        "an existing Jinja file, nor a Jinja template string"
    )


def _checked(template: str, what: str) -> str:
    """The template, once it compiles (with transformers' own Jinja environment); else a UserError naming the line."""
    from jinja2 import TemplateSyntaxError
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:
        _compile_jinja_template(template)
    except TemplateSyntaxError as exc:
        raise UserError(
            f"model.chat_template: {what} is not a valid Jinja template (line {exc.lineno}: {exc.message}); fix it "
            f"or use a shipped one ({', '.join(shipped_templates())})"
        ) from None
    return template


def template_name(spec: str | None) -> str:
    """How error messages name the template that model.chat_template picks."""
    if spec is None:
        return "the tokenizer's chat template"
    if "{%" in spec or "{{" in spec:
        return "the chat template given in model.chat_template"
    return f"chat template {spec!r}"


class ChatRenderer:
    """Renders conversations with one template exactly as `apply_chat_template(tokenize=False)` does.

    It calls the compiled template directly (transformers' own cached compile, so the same Jinja environment and
    helpers) rather than `render_jinja_template`, whose per-call copying of plain data doubled the rendering time.
    """

    def __init__(self, template: str, tokenizer: Any, name: str = "the chat template") -> None:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        self.compiled = _compile_jinja_template(template)
        self.name = name
        self.variables = {"tools": None, "documents": None, **tokenizer.special_tokens_map}

    def render(self, conversations: list[Messages], add_generation_prompt: bool, where: list[str]) -> list[str]:
        from jinja2 import TemplateError

        render, out = self.compiled.render, []
        try:
            for conv in conversations:
                out.append(render(messages=conv, add_generation_prompt=add_generation_prompt, **self.variables))
        except TemplateError as exc:
            raise UserError(f"{where[len(out)]}: {self.name} cannot render this conversation: {exc}") from None
        return out

    def spans(
        self, conversations: list[Messages], loss_on: str, where: list[str]
    ) -> tuple[list[str], list[list[Span]]]:
        """Whole renderings, and per conversation the character spans to train on (loss_on: see DataSpec)."""
        full = self.render(conversations, False, where)
        if loss_on == "all":
            return full, [[(0, len(text))] for text in full]
        jobs = []  # (conversation number, assistant message index)
        for n, conv in enumerate(conversations):
            turns = [i for i, m in enumerate(conv) if m["role"] == "assistant"]
            jobs.extend((n, i) for i in (turns[-1:] if loss_on == "last_assistant" else turns))
        prefixes = self.render([conversations[n][:i] for n, i in jobs], True, [where[n] for n, _ in jobs])
        partial_jobs = [(n, i) for n, i in jobs if i + 1 < len(conversations[n])]
        partials = self.render(
            [conversations[n][: i + 1] for n, i in partial_jobs], False, [where[n] for n, _ in partial_jobs]
        )
        ends = dict(zip(partial_jobs, partials, strict=True))
        spans: list[list[Span]] = [[] for _ in conversations]
        for (n, i), prefix in zip(jobs, prefixes, strict=True):
            upto = ends.get((n, i), full[n])
            if not (full[n].startswith(prefix) and full[n].startswith(upto) and len(upto) >= len(prefix)):
                raise UserError(
                    f"{where[n]}: {self.name} renders earlier turns differently once later turns follow (rendering "
                    f"message {i + 1} alone is not a prefix of the whole conversation), so assistant turns cannot be "
                    "located; set data.loss_on: last_assistant or all, or use another model.chat_template"
                )
            end = max(len(prefix), len(upto.rstrip()))
            spans[n].append((len(prefix), end))
        return full, spans


def mark_trained(offsets: list[tuple[int, int]], spans: list[Span]) -> list[bool]:
    """For each token (its character range), whether it overlaps a span; spans are sorted and disjoint."""
    marks, j = [], 0
    for start, end in offsets:
        while j < len(spans) and spans[j][1] <= start:
            j += 1
        marks.append(end > start and j < len(spans) and spans[j][0] < end)
    return marks


def generation_eos_ids(model_dir: Path | None, tokenizer: Any) -> list[int]:
    """Token ids generation stops on: generation_config.json's eos_token_id if present, else the tokenizer's eos."""
    eos: Any = tokenizer.eos_token_id
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        from transformers import GenerationConfig

        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def end_of_turn_ids(tokenizer: Any, template: str) -> list[int]:
    """The token ids a template writes after an assistant answer (empty: it writes nothing, not even a stop)."""
    answer = "Hello there"
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": answer}]
    texts, spans = ChatRenderer(template, tokenizer).spans([conv], "last_assistant", ["eos check"])
    (start, end), text = spans[0][0], texts[0]
    found = text.find(answer, start)
    content_end = found + len(answer) if found >= 0 else start
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return [
        tok
        for tok, (s, e) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
        if s >= content_end and e <= end and e > s
    ]


def check_eos(tokenizer: Any, eos_ids: list[int], template: str) -> bool:
    """Warn when the token ending an assistant turn is not one generation stops on (the model would never stop)."""
    ends = end_of_turn_ids(tokenizer, template)
    stops = ", ".join(f"{tokenizer.convert_ids_to_tokens(i)!r} ({i})" for i in eos_ids) or "nothing"
    if not ends:
        console.warn(
            f"the chat template writes nothing after an assistant answer, so the model cannot learn to stop "
            f"(generation stops on {stops}); use a template that ends turns with an eos token"
        )
        return False
    last = ends[-1]
    if last in eos_ids:
        return True
    console.warn(
        f"the chat template ends an assistant turn with {tokenizer.convert_ids_to_tokens(last)!r} ({last}), but "
        f"generation stops only on {stops} (generation_config.eos_token_id): a model trained this way never stops "
        f"talking. Add {last} to eos_token_id in the model's generation_config.json, or use a template whose turns "
        "end with one of those tokens"
    )
    return False
