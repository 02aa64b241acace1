"""Decoding on the tiny model: greedy equals a hand-rolled argmax loop and does not depend on batching, sampling
repeats under a seed, beam search returns its best beam first with the score a forward pass recomputes, and the
chat loop is driven through its input and output streams.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from cli_runner import run_main as cli

from llmtune.errors import UserError
from llmtune.infer.chat import chat_loop
from llmtune.infer.generate import DecodeOptions, build_generation_config, generate, render_prompts

PROMPTS = ["Add the two numbers.\n3 4", "Reverse the word: cat", "Sort: 9 1 5", "hi"]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path):
    from llmtune.infer.load import load_for_inference

    loaded = load_for_inference(str(tiny_model_dir), device="cpu")
    return loaded.model, loaded.tokenizer


def argmax_decode(model, tokenizer, prompt: str, steps: int) -> str:
    """Greedy decoding without generate(): a full forward pass per token, no cache, stop at an eos id."""
    text = render_prompts(tokenizer, [prompt], chat=True)[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    stops = set(build_generation_config(model, tokenizer, DecodeOptions()).eos_token_id)
    new: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(token)
            if token in stops:
                break
    return tokenizer.decode(new, skip_special_tokens=True)


def test_greedy_matches_an_argmax_loop_and_ignores_batching(tiny) -> None:
    model, tokenizer = tiny
    options = DecodeOptions(max_new_tokens=8)
    batched = generate(model, tokenizer, PROMPTS, options, batch_size=4)
    assert batched == generate(model, tokenizer, PROMPTS, options, batch_size=4), "greedy is deterministic"
    one_by_one = [generate(model, tokenizer, [p], options)[0] for p in PROMPTS]
    assert batched == one_by_one, "left padding must not change the answers"
    assert [outs[0] for outs in batched] == [argmax_decode(model, tokenizer, p, 8) for p in PROMPTS]


def test_sampling_repeats_under_a_seed(tiny) -> None:
    model, tokenizer = tiny
    sample = DecodeOptions(max_new_tokens=8, temperature=1.0, top_k=50, top_p=0.95, seed=123)
    first = generate(model, tokenizer, PROMPTS, sample)
    assert first == generate(model, tokenizer, PROMPTS, sample)
    other = generate(model, tokenizer, PROMPTS, DecodeOptions(max_new_tokens=8, temperature=1.0, top_k=50, seed=7))
    assert other != first
    config = build_generation_config(model, tokenizer, sample)
    assert config.do_sample and config.top_k == 50 and config.use_cache
    assert not build_generation_config(model, tokenizer, DecodeOptions()).do_sample, "temperature 0 is greedy"


def test_beam_search_returns_the_highest_scoring_beam(tiny) -> None:
    model, tokenizer = tiny
    options = DecodeOptions(max_new_tokens=6, num_beams=4, num_return_sequences=4)
    config = build_generation_config(model, tokenizer, options)
    config.update(output_scores=True, return_dict_in_generate=True)
    penalty = 1.0 if config.length_penalty is None else config.length_penalty  # None: transformers' default, 1.0
    text = render_prompts(tokenizer, [PROMPTS[0]], chat=True)[0]
    prompt = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, generation_config=config)
    scores = out.sequences_scores.tolist()
    assert scores == sorted(scores, reverse=True)
    start, stops = prompt["input_ids"].shape[1], set(config.eos_token_id)
    recomputed = []
    with torch.no_grad():
        for seq in out.sequences.tolist():
            new = seq[start:]
            end = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
            ids = torch.tensor([seq[: start + end]])
            logp = model(ids).logits[0, :-1].log_softmax(-1)
            total = sum(logp[t - 1, ids[0, t]].item() for t in range(start, start + end))
            recomputed.append(total / end**penalty)
    assert recomputed == pytest.approx(scores, abs=1e-4)
    assert max(recomputed) == pytest.approx(recomputed[0], abs=1e-6)
    best = tokenizer.decode(out.sequences[0, start:], skip_special_tokens=True)
    assert generate(model, tokenizer, [PROMPTS[0]], options)[0][0] == best


def test_decode_options_refuse_contradictions() -> None:
    with pytest.raises(UserError, match="--top-k and --top-p apply to sampling"):
        DecodeOptions(top_k=5).check()
    with pytest.raises(UserError, match="needs as many beams"):
        DecodeOptions(num_return_sequences=3).check()


def test_chat_loop_streams_answers_keeps_history_and_resets(tiny) -> None:
    model, tokenizer = tiny
    options = DecodeOptions(max_new_tokens=12)
    out = io.StringIO()
    script = "first question\nsecond question\n/reset\nthird question\n/exit\nnever read\n"
    history = chat_loop(model, tokenizer, options, system="Be brief.", input_stream=io.StringIO(script),
                        output_stream=out)  # fmt: skip

    system = {"role": "system", "content": "Be brief."}
    first = generate(model, tokenizer, [[system, {"role": "user", "content": "first question"}]], options)[0][0]
    convo = [system, {"role": "user", "content": "first question"}, {"role": "assistant", "content": first.strip()},
             {"role": "user", "content": "second question"}]  # fmt: skip
    second = generate(model, tokenizer, [convo], options)[0][0]
    alone = generate(model, tokenizer, [[system, convo[-1]]], options)[0][0]
    assert second != alone, "precondition: the earlier turns change the answer"
    third = generate(model, tokenizer, [[system, {"role": "user", "content": "third question"}]], options)[0][0]
    assert history == [system, {"role": "user", "content": "third question"},
                       {"role": "assistant", "content": third.strip()}]  # fmt: skip
    shown = out.getvalue()
    assert shown.count(">>> ") == 5, "a prompt for each line read, up to /exit"
    assert f">>> {first}\n" in shown and f">>> {second}\n" in shown and f">>> {third}\n" in shown
    assert "(new conversation)" in shown and "never read" not in shown


def test_chat_and_generate_commands(tiny_model_dir, tmp_path, capsys) -> None:
    code, out, err = cli(capsys, "chat", "--model", str(tiny_model_dir), "--max-new-tokens", "4", stdin="hello\n")
    assert code == 0, err
    assert out.count(">>> ") == 2 and "/reset" in out, "answers, then stops at the end of input"

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n" + json.dumps({"messages": [
        {"role": "user", "content": "Sort: 3 1"}, {"role": "assistant", "content": "1 3"}]}) + "\n")  # fmt: skip
    results = tmp_path / "out.jsonl"
    code, out, err = cli(capsys, "generate", "--model", str(tiny_model_dir), "--prompts", str(prompts),
                         "--num-beams", "2", "--num-return-sequences", "2", "--max-new-tokens", "4",
                         "--out", str(results))  # fmt: skip
    assert code == 0, err
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [len(r["completions"]) for r in rows] == [2, 2]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Sort: 3 1"}], "the eval row's answer is not prompted"

    code, _, err = cli(capsys, "generate", "--model", str(tiny_model_dir), "hi", "--top-p", "0.9")
    assert code == 2 and "set --temperature above 0" in err
