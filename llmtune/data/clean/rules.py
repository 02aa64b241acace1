"""Language identification and rule filters, each a step: check(text) -> None to keep, or the reason to drop.

The Gopher and C4 rules are datatrove's own filters, called on a Document (under an executor the steps themselves
become datatrove filters: llmtune.data.clean.trove). datatrove splits English words with spaCy, which we do not
install: RegexWords is a dependency-free word tokenizer handed to the filters instead (words are runs of
letters/digits; each CJK character is a word; sentences end at . ! ? and their CJK forms or a line break). Rows
are never edited: C4's line removals only count towards its verdict.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Any

from datatrove.utils.word_tokenizers import WordTokenizer

from llmtune.data.clean.spec import LangSpec, RulesSpec
from llmtune.errors import UserError

WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*|[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]", re.UNICODE)
CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
SENTENCE = re.compile(r"[^.!?。！？\n]+[.!?。！？]*")
REPETITION_MIN_WORDS = 10  # the top-word share means nothing on a handful of words
STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})  # Gopher's list

# Defaults by row kind: web-document rules for pretraining text; chat turns, instructions and prompts are short.
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "text": dict(min_words=50, max_words=100_000, max_symbol_ratio=0.25, max_digit_ratio=0.2, max_top_word_ratio=0.3,
                 min_stop_words=2, gopher_quality=True, gopher_repetition=True, c4=True),
    "chat": dict(min_words=1, max_words=20_000, max_symbol_ratio=0.5, max_digit_ratio=0.5, max_top_word_ratio=0.5,
                 min_stop_words=0, gopher_quality=False, gopher_repetition=False, c4=False),
    "preference": dict(min_words=1, max_words=20_000, max_symbol_ratio=0.5, max_digit_ratio=0.5,
                       max_top_word_ratio=0.5, min_stop_words=0, gopher_quality=False, gopher_repetition=False,
                       c4=False),
    "prompt": dict(min_words=1, max_words=20_000, max_symbol_ratio=0.5, max_digit_ratio=0.5, max_top_word_ratio=0.5,
                   min_stop_words=0, gopher_quality=False, gopher_repetition=False, c4=False),
}  # fmt: skip


def words(text: str) -> list[str]:
    return WORD.findall(text)


_ALNUM = bytes(c for c in range(128) if chr(c).isalnum())
_DIGITS = b"0123456789"


def char_counts(text: str) -> tuple[int, int, int]:
    """(letters and digits, digits, all) among the text's characters that are not whitespace."""
    solid = "".join(text.split())
    if solid.isascii():  # the common case, counted in C
        raw = solid.encode("ascii")
        return len(raw) - len(raw.translate(None, _ALNUM)), len(raw) - len(raw.translate(None, _DIGITS)), len(raw)
    return sum(map(str.isalnum, solid)), sum(map(str.isdigit, solid)), len(solid)


class RegexWords(WordTokenizer):
    """datatrove's word tokenizer interface without spaCy or NLTK: `words`, and sentences ending at . ! ? (and their
    CJK forms) or a line break. A module-level class, so pipelines holding it can be pickled for executors."""

    def __init__(self) -> None:
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return words(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s.strip() for s in SENTENCE.findall(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in SENTENCE.finditer(text) if m.group().strip()]


@lru_cache(maxsize=1)
def _regex_word_tokenizer() -> RegexWords:
    return RegexWords()


class LanguageStep:
    """Keep rows whose most likely language is listed, with at least the given probability."""

    name = "lang"

    def __init__(self, spec: LangSpec) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        self.identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        unknown = sorted(set(spec.languages) - set(self.identifier.labels))
        if unknown:
            raise UserError(f"clean.lang.languages: unknown language code(s) {', '.join(unknown)} "
                            f"(py3langid knows ISO 639-1 codes such as en, zh, fr, de, es, ja)")  # fmt: skip
        self.languages, self.min_confidence = set(spec.languages), spec.min_confidence

    def check(self, text: str) -> str | None:
        lang, prob = self.identifier.classify(text)
        if lang not in self.languages:
            return f"language {lang}"
        return None if prob >= self.min_confidence else f"{lang} below confidence {self.min_confidence}"


class RuleStep:
    """Length, symbol and digit ratios, stop words, user patterns and words, then datatrove's Gopher and C4 rules."""

    name = "rules"

    def __init__(self, spec: RulesSpec, kind: str) -> None:
        chosen = {key: value if (value := getattr(spec, key)) is not None else default
                  for key, default in KIND_DEFAULTS[kind].items()}  # fmt: skip
        self.settings = chosen
        self.patterns = []
        for i, pattern in enumerate(spec.drop_patterns):
            try:
                self.patterns.append(re.compile(pattern))
            except re.error as exc:
                raise UserError(f"clean.rules.drop_patterns.{i}: {pattern!r} is not a valid regular expression "
                                f"({exc})") from None  # fmt: skip
        self.drop_words = {w.lower() for w in spec.drop_words}
        self.filters = self._datatrove_filters(chosen)

    @staticmethod
    def _datatrove_filters(chosen: dict[str, Any]) -> list[tuple[str, Any]]:
        from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

        tok = _regex_word_tokenizer()
        filters: list[tuple[str, Any]] = []
        if chosen["gopher_quality"]:
            # word count, symbols and stop words are our own checks above (so they apply to every kind)
            quality = GopherQualityFilter(min_doc_words=None, max_doc_words=None, max_symbol_word_ratio=0.1,
                                          min_stop_words=None, language=tok)  # fmt: skip
            filters.append(("gopher quality", quality))
        if chosen["gopher_repetition"]:
            filters.append(("gopher repetition", GopherRepetitionFilter(language=tok)))
        if chosen["c4"]:
            filters.append(("c4", C4QualityFilter(filter_no_terminal_punct=False, min_num_sentences=3, language=tok)))
        return filters

    def check(self, text: str) -> str | None:
        s = self.settings
        found = words(text)
        if len(found) < s["min_words"]:
            return f"fewer than {s['min_words']} words"
        if len(found) > s["max_words"]:
            return f"more than {s['max_words']} words"
        alnum, digits, chars = char_counts(text)
        if (chars - alnum) / (chars or 1) > s["max_symbol_ratio"]:
            return f"symbol ratio above {s['max_symbol_ratio']}"
        if digits / (chars or 1) > s["max_digit_ratio"]:
            return f"digit ratio above {s['max_digit_ratio']}"
        lowered = list(map(str.lower, found))
        if len(found) >= REPETITION_MIN_WORDS:
            top = Counter(lowered).most_common(1)[0]
            if top[1] / len(found) > s["max_top_word_ratio"]:
                return f"word {top[0]!r} repeated ({top[1]} of {len(found)} words)"
        if s["min_stop_words"] and not CJK.search(text) and sum(w in STOP_WORDS for w in lowered) < s["min_stop_words"]:
            return f"fewer than {s['min_stop_words']} stop words"
        for pattern in self.patterns:
            if pattern.search(text):
                return f"matches {pattern.pattern!r}"
        if self.drop_words and (hit := next((w for w in lowered if w in self.drop_words), None)):
            return f"contains {hit!r}"
        return self._datatrove(text)

    def _datatrove(self, text: str) -> str | None:
        from datatrove.data import Document

        for name, rule in self.filters:
            verdict = rule.filter(Document(text=unicodedata.normalize("NFC", text), id=""))
            if verdict is not True and not (isinstance(verdict, tuple) and verdict[0]):
                return f"{name}: {verdict[1] if isinstance(verdict, tuple) else 'dropped'}"
        return None
