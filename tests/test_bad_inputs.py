"""The bad-input catalogue: every malformed recipe, data file or argument costs seconds, not a night of training.

Each case must exit with code 2 and one `error:` line naming the place (file:line, key, row or flag) and the fix,
print no traceback, and leave the case's directory, including an earlier run in its output dir, byte for byte as
it was. The cases run through the real `llmtune` entry point (llmtune.cli.main) one after another in one worker
process, each with its own argv, working directory and stdout/stderr files (redirected at the descriptor level), so
heavy libraries are imported once; `test_in_process_results_match_a_fresh_process` runs a sample in separate
processes and checks that they agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

TESTS = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    """A bad input: files to write into the case dir, the command line, and the fragments its error must hold.

    `recipe` (deep-merged over BASE) is written to recipe.yaml. Strings may use {dir} (the case dir), {out} (its
    output dir, holding an earlier run), {model} (the tiny model) and {data} (the built-in data files).
    """

    name: str
    argv: str
    expect: tuple[str, ...]
    recipe: dict[str, Any] | None = None
    files: dict[str, str | bytes] = field(default_factory=dict)
    model_copy: dict[str, bytes | None] | None = None
    """When set, the tiny model is copied to {dir}/m with these files replaced (None: removed)."""


BASE: dict[str, Any] = {
    "stage": "sft",
    "model": {"name_or_path": "{model}"},
    "method": {"kind": "lora"},
    "data": {"train": [{"path": "{data}/sft_messages.jsonl"}], "max_length": 128, "cache_dir": "{dir}/cache"},
    "train": {"max_steps": 2, "batch_size": 2, "save_steps": 1, "logging_steps": 1},
    "output": {"dir": "{out}", "overwrite": True},
}
SFT = "sft --recipe {dir}/recipe.yaml"
USER = {"role": "user", "content": "What is 2 plus 2?"}
ANSWER = {"role": "assistant", "content": "4"}


def jsonl(*rows: Any) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def chat(*messages: dict) -> dict:
    return {"messages": list(messages)}


def train_on(name: str, **source: Any) -> dict:
    return {"data": {"train": [{"path": f"{{dir}}/{name}", **source}]}}


GOOD = chat(USER, ANSWER)
PAIR = {"prompt": "What is 2 plus 2?", "chosen": "4", "rejected": "5"}

RECIPE_CASES = [
    Case("yaml-syntax", SFT, ("recipe.yaml:4:7", "YAML syntax error", "flow sequence opened at line 3"),
         files={"recipe.yaml": "stage: sft\nmodel: {name_or_path: x}\ndata: [unclosed\noutput: {dir: y}\n"}),
    Case("yaml-not-a-mapping", SFT, ("recipe.yaml", "must be a mapping of keys"), files={"recipe.yaml": "- sft\n"}),
    Case("recipe-not-utf8", SFT, ("recipe.yaml:2", "not UTF-8", "save the recipe as UTF-8"),
         files={"recipe.yaml": b"stage: sft\ndescription: caf\xe9\n"}),
    Case("recipe-missing", "sft --recipe {dir}/nope.yaml", ("nope.yaml", "recipe file not found")),
    Case("unknown-top-key", SFT, ("recipe.yaml:", "unknown key 'trian'", "did you mean 'train'"),
         recipe={"trian": {"lr": 1}}),
    Case("unknown-nested-key", SFT, ("recipe.yaml:", "'train.learning_rat'", "allowed here:", "lr"),
         recipe={"train": {"learning_rat": 1e-4}}),
    Case("wrong-type", SFT, ("recipe.yaml:", "train.max_steps", "valid integer", "'ten'"),
         recipe={"train": {"max_steps": "ten"}}),
    Case("out-of-range", SFT, ("recipe.yaml:", "train.batch_size", "greater than 0"),
         recipe={"train": {"batch_size": 0}}),
    Case("bad-enum", SFT, ("recipe.yaml:", "method.kind", "'lora'", "'qlora'", "'qlor'"),
         recipe={"method": {"kind": "qlor"}}),
    Case("qlora-with-full", SFT, ("recipe.yaml:", "method.qlora is set but method.kind is 'full'",
         "method.kind: qlora"),
         recipe={"method": {"kind": "full", "qlora": {"quant_type": "nf4"}}}),
    Case("dpo-block-on-sft", SFT, ("the dpo block is set but stage is 'sft'", "use stage: dpo"),
         recipe={"dpo": {"beta": 0.2}}),
    Case("preference-format-on-sft", SFT, ("data.train[0].format is 'preference'", "allowed: alpaca"),
         recipe={"data": {"train": [{"path": "{data}/preference.jsonl", "format": "preference"}]}}),
    Case("missing-required-key", SFT, ("missing required key 'model'",), files={"recipe.yaml": "stage: sft\n"
         "data: {train: [{path: x.jsonl}]}\noutput: {dir: out}\n"}),
    Case("extends-missing", SFT, ("recipe.yaml:1", "`extends: base.yaml` not found"), recipe={"extends": "base.yaml"}),
    Case("extends-cycle", "sft --recipe {dir}/a.yaml", ("`extends` forms a cycle", "a.yaml -> b.yaml -> a.yaml",
         "remove one of these"),
         files={"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"}),
    Case("data-file-missing", SFT, ("data file {dir}/nope.jsonl not found",), recipe=train_on("nope.jsonl")),
    Case("model-dir-without-config", SFT, ("model.name_or_path", "{dir}/empty-model", "no config.json"),
         recipe={"model": {"name_or_path": "{dir}/empty-model"}}, files={"empty-model/README.md": "nothing here\n"}),
    Case("model-path-is-a-file", SFT, ("model.name_or_path", "weights.bin is a file", "model directory"),
         recipe={"model": {"name_or_path": "{dir}/weights.bin"}}, files={"weights.bin": b"\x00" * 64}),
    Case("model-path-missing", SFT, ("model.name_or_path", "{dir}/no-model does not exist"),
         recipe={"model": {"name_or_path": "{dir}/no-model"}}),
    Case("output-dir-not-empty", SFT, ("output.dir", "is not empty", "--set output.overwrite=true", "--resume"),
         recipe={"output": {"overwrite": False}}),
    Case("output-dir-is-a-file", SFT, ("output.dir", "taken is a file", "choose a directory path"),
         recipe={"output": {"dir": "{dir}/taken"}},
         files={"taken": "a file\n"}),
    Case("resume-without-checkpoint", SFT + " --resume", ("--resume", "no checkpoint to resume from",
         "run without --resume"), recipe={"output": {"dir": "{dir}/fresh"}}, files={"fresh/notes.txt": "none\n"}),
    Case("resume-from-an-unsealed-checkpoint", SFT + " --resume", ("--resume", "no complete checkpoint-N"),
         recipe={"output": {"dir": "{dir}/cut"}}, files={"cut/checkpoint-4/trainer_state.json": '{"global_step": 4}'}),
    Case("stage-command-mismatch", "pt --recipe {dir}/recipe.yaml", ("has stage: sft", "run llmtune sft --recipe"),
         recipe={}),
    Case("set-without-equals", SFT + " --set train.lr", ("--set 'train.lr'", "expected KEY=VALUE"), recipe={}),
    Case("set-into-a-value", SFT + " --set train.lr.peak=1", ("--set train.lr.peak", "train.lr is a single value"),
         recipe={"train": {"lr": 1.0e-3}}),
    Case("set-makes-a-section", SFT + " --set train.lr.peak=1", ("--set train.lr.peak=1: train.lr", "valid number"),
         recipe={}),
    Case("set-bad-index", SFT + " --set data.train.3.weight=2", ("--set data.train.3", "not an index"), recipe={}),
    Case("set-bad-value", SFT + " --set train.lr=fast", ("--set train.lr=fast", "train.lr", "valid number"), recipe={}),
    Case("fp16-without-gpu", SFT, ("train.mixed_precision", "fp16 needs a CUDA GPU", "use bf16 or no"),
         recipe={"train": {"mixed_precision": "fp16"}}),
    Case("adapter-with-full", SFT, ("model.adapter is set but method.kind is 'full'", "method.kind: lora"),
         recipe={"method": {"kind": "full"}, "model": {"adapter": "{dir}/adapter"}}),
    Case("unknown-chat-template", SFT, ("model.chat_template 'chatmlx'", "shipped template"),
         recipe={"model": {"chat_template": "chatmlx"}}),
    Case("bad-hub-endpoint", SFT, ("recipe.yaml:", "hub.endpoint", "'ftp://mirror' is not an http(s) URL"),
         recipe={"model": {"name_or_path": "acme/model"}, "hub": {"endpoint": "ftp://mirror"}}),
    Case("duplicate-key", SFT, ("recipe.yaml:5", "duplicate key 'train' (first written at line 3)"),
         files={"recipe.yaml": "stage: sft\nmodel: {name_or_path: x}\ntrain: {lr: 1.0e-4}\ndata: {train: [{path: "
                "a.jsonl}]}\ntrain: {max_steps: 5}\noutput: {dir: run}\n"}),
    Case("set-unknown-key", SFT + " --set train.lrr=1", ("--set train.lrr=1", "unknown key", "did you mean 'lr'"),
         recipe={}),
    Case("train-extra-unknown", SFT, ("train.extra", "'no_such_arg' is not an argument of SFTConfig"),
         recipe={"train": {"extra": {"no_such_arg": 1}}}),
    Case("bad-jinja-template", SFT, ("model.chat_template", "not a valid Jinja template", "line 1"),
         recipe={"model": {"chat_template": "{% if %}"}}),
    Case("lora-target-missing", SFT, ("method.lora.target_modules", "'q_projx' matches no module", "q_proj"),
         recipe={"method": {"lora": {"target_modules": ["q_projx"]}}}),
    Case("lora-target-partly-misspelt", SFT, ("method.lora.target_modules", "'v_projx' matches no module"),
         recipe={"method": {"lora": {"target_modules": ["q_proj", "v_projx"]}}}),
    Case("freeze-too-many-layers", SFT, ("method.freeze.trainable_layers is 9", "only 2 layers"),
         recipe={"method": {"kind": "freeze", "freeze": {"trainable_layers": 9}}}),
    Case("adapter-missing", SFT, ("model.adapter", "{dir}/noadapter is not a directory"),
         recipe={"model": {"adapter": "{dir}/noadapter"}}),
    Case("eval-ratio-too-high", SFT, ("data.eval_ratio 0.99 leaves no training rows", "lower it"),
         recipe={"data": {"eval_ratio": 0.99}}),
    Case("accelerate-config-missing", SFT + " --nproc 2 --accelerate-config {dir}/acc.yaml",
         ("train.accelerate_config", "acc.yaml not found"), recipe={}),
    Case("model-config-not-json", SFT, ("model.name_or_path", "config.json' is not a valid JSON file"),
         recipe={"model": {"name_or_path": "{dir}/m"}}, model_copy={"config.json": b"{bad"}),
    Case("model-without-tokenizer", SFT, ("model.name_or_path", "cannot load a tokenizer from {dir}/m"),
         recipe={"model": {"name_or_path": "{dir}/m"}},
         model_copy={"tokenizer.json": None, "tokenizer_config.json": None}),
    Case("model-without-weights", SFT, ("model.name_or_path", "no weights (*.safetensors)"),
         recipe={"model": {"name_or_path": "{dir}/m"}}, model_copy={"model.safetensors": None}),
    Case("model-corrupt-weights", SFT, ("model.name_or_path", "cannot load the weights in {dir}/m", "download"),
         recipe={"model": {"name_or_path": "{dir}/m"}},
         model_copy={"model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{}"}),
]  # fmt: skip

DATA_CASES = [
    Case("data-empty-file", SFT, ("empty.jsonl: no rows", "add rows or remove this source"),
         recipe=train_on("empty.jsonl"), files={"empty.jsonl": ""}),
    Case("data-bad-json-line", SFT, ("bad.jsonl:2", "not valid JSON", "data.bad_rows: skip"),
         recipe=train_on("bad.jsonl"), files={"bad.jsonl": jsonl(GOOD, '{"messages": [', GOOD)}),
    Case("data-unknown-columns", SFT, ("cols.jsonl:1", "cannot tell the format", "question, reply", "set format"),
         recipe=train_on("cols.jsonl"), files={"cols.jsonl": jsonl({"question": "q", "reply": "a"})}),
    Case("data-missing-column", SFT, ("alpaca.jsonl:2", "missing column 'output'"),
         recipe=train_on("alpaca.jsonl", format="alpaca"),
         files={"alpaca.jsonl": jsonl({"instruction": "Say hi", "output": "hi"}, {"instruction": "Say hi"})}),
    Case("data-unknown-role", SFT, ("roles.jsonl:1", "unknown role 'robot'", "allowed: system"),
         recipe=train_on("roles.jsonl"), files={"roles.jsonl": jsonl(chat(USER, {"role": "robot", "content": "4"}))}),
    Case("data-empty-assistant", SFT, ("turns.jsonl:2", "assistant turn 1 is empty"), recipe=train_on("turns.jsonl"),
         files={"turns.jsonl": jsonl(GOOD, chat(USER, {"role": "assistant", "content": "  "}))}),
    Case("data-roles-do-not-alternate", SFT, ("alt.jsonl:1", "roles do not alternate", "message 2"),
         recipe=train_on("alt.jsonl"), files={"alt.jsonl": jsonl(chat(USER, USER, ANSWER))}),
    Case("data-ends-with-user", SFT, ("end.jsonl:1", "last one must be 'assistant'"), recipe=train_on("end.jsonl"),
         files={"end.jsonl": jsonl(chat(USER, ANSWER, USER))}),
    Case("data-system-in-the-middle", SFT, ("sys.jsonl:1", "a system message may only come first"),
         recipe=train_on("sys.jsonl"),
         files={"sys.jsonl": jsonl(chat(USER, ANSWER, {"role": "system", "content": "be brief"}, USER, ANSWER))}),
    Case("data-row-not-an-object", SFT, ("list.jsonl:1", "must be an object"), recipe=train_on("list.jsonl"),
         files={"list.jsonl": jsonl([USER, ANSWER])}),
    Case("data-not-utf8", SFT, ("latin1.jsonl:2", "not UTF-8", "byte 0xe9 at column 47", "re-save the file as UTF-8"),
         recipe=train_on("latin1.jsonl"),
         files={"latin1.jsonl": jsonl(GOOD).encode() + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n'}),
    Case("data-nothing-left-to-train", SFT, ("long.jsonl:2", "nothing left to train on", "data.max_length=32",
         "raise data.max_length"), recipe={"data": {"train": [{"path": "{dir}/long.jsonl"}], "max_length": 32}},
         files={"long.jsonl": jsonl(GOOD, chat({"role": "user", "content": "why " * 80}, ANSWER))}),
    Case("data-everything-too-long-skipped", SFT, ("no training example is left", "raise data.max_length"),
         recipe={"data": {"train": [{"path": "{dir}/long.jsonl"}], "max_length": 16, "bad_rows": "skip"}},
         files={"long.jsonl": jsonl(chat({"role": "user", "content": "why " * 40}, ANSWER))}),
    Case("data-csv-missing-column", SFT, ("rows.csv:2", "missing column 'output'"),
         recipe=train_on("rows.csv", format="alpaca"), files={"rows.csv": "instruction,answer\nSay hi,hi\n"}),
    Case("data-csv-extra-cells", SFT, ("rows.csv:3", "more cells than the 2 columns"),
         recipe=train_on("rows.csv"), files={"rows.csv": "instruction,output\nSay hi,hi\nSay yo,yo,extra\n"}),
    Case("data-json-syntax", SFT, ("rows.json:2", "not valid JSON", "list of objects"), recipe=train_on("rows.json"),
         files={"rows.json": '[{"text": "a"},\n {"text": }]\n'}),
    Case("data-unsupported-type", SFT, ("rows.xml", "unsupported file type '.xml'"), recipe=train_on("rows.xml"),
         files={"rows.xml": "<rows/>\n"}),
    Case("data-column-map-missing", SFT, ("map.jsonl:1", "missing column 'answer'", "mapped to 'output'"),
         recipe=train_on("map.jsonl", columns={"instruction": "question", "output": "answer"}),
         files={"map.jsonl": jsonl({"question": "Say hi", "reply": "hi"})}),
    Case("data-sharegpt-bad-from", SFT, ("share.jsonl:1", "unknown role 'narrator'"), recipe=train_on("share.jsonl"),
         files={"share.jsonl": jsonl({"conversations": [{"from": "narrator", "value": "once"}]})}),
    Case("data-eval-file-bad", SFT, ("eval.jsonl:1", "assistant turn 1 is empty"),
         recipe={"data": {"eval": [{"path": "{dir}/eval.jsonl"}]}},
         files={"eval.jsonl": jsonl(chat(USER, {"role": "assistant", "content": ""}))}),
    Case("data-chat-file-for-pt", "pt --recipe {dir}/recipe.yaml", ("sft_messages.jsonl", "format 'messages'",
         "this stage trains on text rows", "the stage that trains on chat rows"), recipe={"stage": "pt"}),
    Case("data-text-not-a-string", "pt --recipe {dir}/recipe.yaml", ("text.jsonl:1", "text is not a string"),
         recipe={"stage": "pt", **train_on("text.jsonl")}, files={"text.jsonl": jsonl({"text": 42})}),
    Case("data-chosen-equals-rejected", "dpo --recipe {dir}/recipe.yaml", ("pairs.jsonl:2", "chosen and rejected are "
         "the same"), recipe={"stage": "dpo", **train_on("pairs.jsonl")},
         files={"pairs.jsonl": jsonl(PAIR, {**PAIR, "rejected": "4"})}),
    Case("data-ranked-equal-scores", "rm --recipe {dir}/recipe.yaml", ("ranked.jsonl:1", "the same score"),
         recipe={"stage": "rm", **train_on("ranked.jsonl")},
         files={"ranked.jsonl": jsonl({"prompt": "q", "responses": ["a", "b"], "scores": [1, 1]})}),
    Case("data-parquet-corrupt", SFT, ("rows.parquet: not a readable Parquet file",), recipe=train_on("rows.parquet"),
         files={"rows.parquet": b"not parquet"}),
    Case("data-empty-directory", SFT, ("emptydir: cannot find data files",), recipe=train_on("emptydir"),
         files={"emptydir/.keep": ""}),
    Case("data-json-object-of-lists", SFT, ("rows.json", "expected a JSON list of rows"), recipe=train_on("rows.json"),
         files={"rows.json": '{"a": [], "b": []}'}),
    Case("data-txt-blank", "pt --recipe {dir}/recipe.yaml", ("blank.txt: no rows",),
         recipe={"stage": "pt", **train_on("blank.txt")}, files={"blank.txt": "\n\n"}),
    Case("data-chat-file-for-rm", "rm --recipe {dir}/recipe.yaml", ("sft_messages.jsonl", "preference rows"),
         recipe={"stage": "rm"}),
]  # fmt: skip

CLI_CASES = [
    Case("cli-unknown-option", SFT + " --learning-rate 1e-4", ("No such option: --learning-rate",), recipe={}),
    Case("cli-missing-recipe-option", "sft", ("Missing option '--recipe'",)),
    Case("cli-init-model-bad-preset", "init-model {dir}/m --preset huge", ("Unknown preset 'huge'", "tiny")),
    Case("cli-init-model-vocab-size", "init-model {dir}/m --preset tiny --vocab-size 10", ("--vocab-size",)),
    Case("cli-init-model-missing-corpus", "init-model {dir}/m --preset tiny --corpus {dir}/c.txt",
         ("Corpus file {dir}/c.txt does not exist",)),
    Case("cli-init-model-into-non-empty", "init-model {out} --preset tiny", ("is not empty", "--overwrite")),
    Case("cli-synth-data-into-non-empty", "synth-data {out}", ("is not empty", "--overwrite")),
    Case("cli-download-bad-endpoint", "download acme/model --endpoint localhost:8080", ("'localhost:8080'",
         "(from --endpoint)", "http(s) URL")),
    Case("cli-download-missing-token-file", "download acme/model --endpoint http://127.0.0.1:9 --token-file "
         "{dir}/token", ("--token-file {dir}/token", "cannot read it")),
    Case("cli-generate-top-k-greedy", "generate hi --model {model} --top-k 5", ("--top-k", "--temperature above 0")),
    Case("cli-generate-top-p-range", "generate hi --model {model} --temperature 1 --top-p 1.5", ("--top-p", "(0, 1]")),
    Case("cli-generate-no-prompts", "generate --model {model}", ("no prompts", "--prompts FILE")),
    Case("cli-generate-negative-temperature", "generate hi --model {model} --temperature -1", ("--temperature",)),
    Case("cli-generate-missing-model", "generate hi --model {dir}/nope", ("--model", "{dir}/nope does not exist")),
    Case("cli-export-into-non-empty", "export --model {model} --out {out}", ("--out", "is not empty", "--overwrite")),
    Case("cli-export-not-an-adapter", "export --adapter {dir}/plain --out {dir}/exp",
         ("--adapter", "not a PEFT adapter directory"), files={"plain/config.json": "{}\n"}),
    Case("cli-eval-missing-file", "eval --model {model} --data {dir}/nope.jsonl", ("nope.jsonl not found",)),
    Case("cli-eval-data-and-recipe", "eval --model {model} --data x.jsonl --recipe {dir}/recipe.yaml",
         ("exactly one of --data FILE or --recipe",), recipe={}),
    Case("cli-eval-bad-format", "eval --model {model} --data {data}/eval_messages.jsonl --format chatty",
         ("--format 'chatty'", "choose one of")),
    Case("cli-eval-nothing-to-evaluate", "eval --data {data}/eval_messages.jsonl", ("--model",)),
    Case("cli-plan-bad-memory", "plan --recipe {dir}/recipe.yaml --gpu-memory lots", ("--gpu-memory 'lots'",
         "24GiB"), recipe={}),
    Case("cli-export-bad-dtype", "export --model {model} --out {dir}/exp --dtype float8", ("--dtype 'float8'",
         "choose one of", "bfloat16")),
    Case("cli-generate-bad-dtype", "generate hi --model {model} --dtype int8", ("--dtype 'int8'", "float32")),
    Case("cli-export-bad-shard-size", "export --model {model} --out {dir}/exp --max-shard-size big",
         ("--max-shard-size 'big'", "such as 5GB")),
    Case("cli-generate-prompts-missing", "generate --model {model} --prompts {dir}/p.txt", ("--prompts", "not a file")),
    Case("cli-generate-prompts-not-utf8", "generate --model {model} --prompts {dir}/p.txt",
         ("--prompts {dir}/p.txt:2", "not UTF-8"), files={"p.txt": b"hello\ncaf\xe9\n"}),
    Case("cli-eval-data-not-utf8", "eval --model {model} --data {dir}/e.jsonl", ("e.jsonl:1", "not UTF-8"),
         files={"e.jsonl": b'{"text": "caf\xe9"}\n'}),
    Case("cli-eval-context-too-long", "eval --model {model} --data {data}/eval_text.jsonl --context 100000",
         ("--context 100000 exceeds the model's 1024 positions",)),
    Case("cli-download-binary-token-file", "download acme/model --endpoint http://127.0.0.1:9 --token-file {dir}/tok",
         ("--token-file {dir}/tok is not UTF-8",), files={"tok": b"\xff\xfe\n"}),
    Case("cli-bon-not-a-reward-model", "bon --model {model} --reward {model} --prompts {data}/eval_messages.jsonl "
         "--out {dir}/b", ("--reward", "is not a reward model")),
    Case("cli-tokenize-bad-data", "tokenize --recipe {dir}/recipe.yaml", ("bad.jsonl:1", "not valid JSON"),
         recipe=train_on("bad.jsonl"), files={"bad.jsonl": "{oops\n"}),
]  # fmt: skip


GRPO = "grpo --recipe {dir}/recipe.yaml"
RL = {"stage": "grpo", "train": {"batch_size": 4}, "rl": {"num_generations": 2, "rewards": [{"length": [1, 8]}]}}


def rl_case(name: str, expect: tuple[str, ...], argv: str = GRPO, files: dict | None = None, **sections: Any) -> Case:
    """A grpo/rloo/kto/dpo case: RL over BASE, each section given replacing RL's (None: left out)."""
    recipe = {key: value for key, value in {**RL, **sections}.items() if value is not None}
    return Case(name, argv, expect, recipe=recipe, files=files or {})


RL_CASES = [
    rl_case("grpo-no-prompts", ("format 'text'", "trains on prompt rows", "formats: prompt, alpaca"),
            data={"train": [{"path": "{data}/text.jsonl"}]}),
    rl_case("grpo-no-rewards", ("stage grpo needs rl.rewards",), rl={"num_generations": 2}),
    rl_case("grpo-reward-model-not-a-classifier", ("rl.rewards[0].reward_model", "is a causal LM, not a reward model"),
            rl={"num_generations": 2, "rewards": [{"reward_model": "{model}"}]}),
    rl_case("grpo-unknown-reward", ("unknown key", "accuracy"), rl={"rewards": [{"accuracy": "exact"}]}),
    rl_case("grpo-unknown-match", ("rl.rewards.0.match", "'exact' or 'contains'"),
            rl={"rewards": [{"match": "exactly"}]}),
    rl_case("grpo-two-rewards-in-one", ("sets exactly one of", "regex, length"),
            rl={"rewards": [{"regex": "^a", "length": [1, 2]}]}),
    rl_case("grpo-bad-regex", ("regex '(' does not compile",), rl={"rewards": [{"regex": "("}]}),
    rl_case("grpo-code-not-allowed", ("runs Python code", "rl.allow_code: true"),
            rl={"rewards": [{"function": "{dir}/r.py:f"}]}, files={"r.py": "def f(completions, **kw): return 1\n"}),
    rl_case("grpo-code-file-missing", ("rl.rewards[0].function", "nope.py does not exist"),
            rl={"allow_code": True, "num_generations": 2, "rewards": [{"function": "{dir}/nope.py:f"}]}),
    rl_case("grpo-group-does-not-fit", ("train.batch_size x train.grad_accum (4)",
            "multiple of rl.num_generations (3)"),
            rl={"num_generations": 3, "rewards": [{"length": [1, 8]}]}),
    rl_case("grpo-match-without-answers", ("rl.rewards[0].match", "no training row has a reference answer"),
            rl={"num_generations": 2, "rewards": [{"match": "exact"}]}, data={"train": [{"path": "{dir}/p.jsonl"}]},
            files={"p.jsonl": jsonl({"prompt": "Add 1 and 2."})}),
    rl_case("rl-block-on-dpo", ("the rl block is set but stage is 'dpo'", "grpo or rloo"),
            argv="dpo --recipe {dir}/recipe.yaml", stage="dpo"),
    rl_case("kto-batch-of-one", ("train.batch_size must be 2 or more for kto",), argv="kto --recipe {dir}/recipe.yaml",
            stage="kto", rl=None, train={"batch_size": 1}, data={"train": [{"path": "{data}/preference.jsonl"}]}),
    rl_case("dpo-loss-weights-mismatch", ("dpo.loss_weights has 1 weights for 2 losses",),
            argv="dpo --recipe {dir}/recipe.yaml", stage="dpo", rl=None,
            dpo={"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}),
    rl_case("dpo-unknown-loss", ("dpo.loss_type", "'sigmoid_norm'", "'ppo'"), argv="dpo --recipe {dir}/recipe.yaml",
            stage="dpo", rl=None, dpo={"loss_type": "ppo"}),
]  # fmt: skip

CASES = RECIPE_CASES + DATA_CASES + CLI_CASES + RL_CASES
EARLIER_RUN = {
    "recipe.yaml": b"# an earlier run\nstage: sft\n",
    "metrics.jsonl": b'{"step": 1, "loss": 2.5}\n',
    "adapter_model.safetensors": bytes(range(256)) * 4,
    "checkpoint-1/trainer_state.json": b'{"global_step": 1}\n',
}


def fill(value: Any, ctx: dict[str, str]) -> Any:
    """Replace {dir}, {out}, {model} and {data} in every string of a nested value."""
    if isinstance(value, str):
        for key, repl in ctx.items():
            value = value.replace("{" + key + "}", repl)
        return value
    if isinstance(value, dict):
        return {k: fill(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, ctx) for v in value]
    return value


def tree_hashes(root: Path) -> dict[str, str]:
    """Every file and directory under root, files with the hash of their bytes; the tokenized-data cache (cache/,
    written by errors found after tokenizing and reused by the next run) is left out."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if p.relative_to(root).parts[0] != "cache"
    }


def prepare_case(case: Case, root: Path, model: Path, data: Path) -> dict[str, str]:
    """Write the case's files and the earlier run into root; returns the placeholder values."""
    from llmtune.recipe import deep_merge

    ctx = {"dir": str(root), "out": str(root / "out"), "model": str(model), "data": str(data)}
    for name, content in {**{f"out/{k}": v for k, v in EARLIER_RUN.items()}, **case.files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(fill(content, ctx), encoding="utf-8")
    if case.model_copy is not None:
        shutil.copytree(model, root / "m")
        for name, content in case.model_copy.items():
            (root / "m" / name).unlink(missing_ok=True)
            if content is not None:
                (root / "m" / name).write_bytes(content)
    if case.recipe is not None:
        recipe = fill(deep_merge(BASE, case.recipe), ctx)
        (root / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return ctx


def run_in_process(argv: list[str], cwd: Path, stdout: Path, stderr: Path) -> int:
    """Run `llmtune ARGV` through llmtune.cli.main as `python -m llmtune` would, stdout and stderr into files.

    The descriptors are redirected, so everything a library prints lands there too; an uncaught exception prints
    its traceback and gives exit code 1, as the interpreter does.
    """
    from llmtune.cli import main

    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with stdout.open("wb") as out, stderr.open("wb") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        os.chdir(cwd)
        sys.argv = ["llmtune", *argv]
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
    return code


def drive(spec_file: str) -> None:
    """Worker entry: run every case listed in spec_file and write their exit codes beside it."""
    specs = json.loads(Path(spec_file).read_text())
    codes = {s["name"]: run_in_process(s["argv"], Path(s["cwd"]), Path(s["stdout"]), Path(s["stderr"])) for s in specs}
    Path(spec_file).with_suffix(".codes.json").write_text(json.dumps(codes))


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    before: dict[str, str]
    after: dict[str, str]
    ctx: dict[str, str]


def worker_env(tmp: Path) -> dict[str, str]:
    hidden = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    return env | {"HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "COLUMNS": "400", "PYTHONPATH": str(TESTS)}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_data_dir: Path) -> dict:
    """Every case prepared, run once in one worker process, and its directory hashed before and after."""
    root = tmp_path_factory.mktemp("catalogue")
    specs, prepared = [], {}
    for case in CASES:
        case_dir = root / case.name
        case_dir.mkdir()
        ctx = prepare_case(case, case_dir, tiny_model_dir, tiny_data_dir)
        prepared[case.name] = (ctx, tree_hashes(case_dir))
        logs = root / f"{case.name}.log"
        specs.append({"name": case.name, "argv": shlex.split(fill(case.argv, ctx)), "cwd": str(case_dir),
                      "stdout": f"{logs}.out", "stderr": f"{logs}.err"})  # fmt: skip
    spec_file = root / "specs.json"
    spec_file.write_text(json.dumps(specs))
    code = f"from test_bad_inputs import drive; drive({str(spec_file)!r})"
    done = subprocess.run([sys.executable, "-c", code], env=worker_env(root), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(spec_file.with_suffix(".codes.json").read_text())
    return {
        s["name"]: Outcome(
            codes[s["name"]],
            Path(s["stdout"]).read_text(errors="replace"),
            Path(s["stderr"]).read_text(errors="replace"),
            prepared[s["name"]][1],
            tree_hashes(Path(s["cwd"])),
            prepared[s["name"]][0],
        )  # fmt: skip
        for s in specs
    }


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"^\s*error:", line, flags=re.IGNORECASE)]


def check(case: Case, outcome: Outcome) -> None:
    shown = f"exit {outcome.code}\nstdout:\n{outcome.stdout[-2000:]}\nstderr:\n{outcome.stderr[-4000:]}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, shown
    assert outcome.code == 2, shown
    lines = error_lines(outcome.stderr)
    assert len(lines) == 1, shown
    message = " ".join(outcome.stderr[outcome.stderr.lower().index("error:") :].split())
    for fragment in case.expect:
        assert " ".join(fill(fragment, outcome.ctx).split()) in message, f"{fragment!r} not in: {message}"
    assert outcome.after == outcome.before, "the case changed files:\n" + shown


def test_the_catalogue_is_large_and_its_names_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 40 and len(RECIPE_CASES) >= 15 and len(DATA_CASES) >= 10 and len(CLI_CASES) >= 10


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_exits_2_with_one_message_and_touches_nothing(case: Case, outcomes: dict) -> None:
    check(case, outcomes[case.name])


SAMPLE = ("wrong-type", "data-bad-json-line", "cli-unknown-option", "cli-generate-top-k-greedy", "data-not-utf8")


def test_in_process_results_match_a_fresh_process(outcomes: dict, tmp_path: Path) -> None:
    """The worker runs the real entry point: a fresh `python -m llmtune` gives the same exit code and stderr."""
    for name in SAMPLE:
        case, seen = next(c for c in CASES if c.name == name), outcomes[name]
        argv = shlex.split(fill(case.argv, seen.ctx))
        fresh = subprocess.run([sys.executable, "-m", "llmtune", *argv], cwd=seen.ctx["dir"],
                               env=worker_env(tmp_path), capture_output=True, text=True)  # fmt: skip
        assert fresh.returncode == seen.code, fresh.stderr
        assert error_lines(fresh.stderr) == error_lines(seen.stderr)
