"""llmtune.modeling.cpu_lora against peft's own LoRA forward: same outputs and gradients, masks drawn at the asked
rate and replayed by activation checkpointing, peft's path kept where the branch does not apply."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")


def _base(dtype, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def _model(dtype, dropout: float = 0.0, seed: int = 0):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(_base(dtype, seed), lora)  # adapters stay fp32 on a bf16 base, as in training
    for name, param in model.named_parameters():  # B starts at zero; make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_same_loss_and_adapter_gradients_as_peft(dtype) -> None:
    """fp32: peft's own arithmetic. A bf16 base: peft under torch.autocast (bf16 products, fp32 adapters)."""
    from llmtune.modeling.cpu_lora import speed_up_lora

    ids = torch.randint(0, 300, (3, 11), generator=torch.Generator().manual_seed(1))
    peft_model = _model(dtype)
    fast = copy.deepcopy(peft_model)
    assert speed_up_lora(fast) == 14  # 7 linear layers x 2 decoder layers
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss_a, grads_a = _loss_and_grads(peft_model, ids)
    loss_b, grads_b = _loss_and_grads(fast, ids)
    tol = 1e-6  # measured: 0 for both (bf16 vs peft in fp32 arithmetic: 2.3e-2, the size of bf16 rounding)
    assert float(loss_b) == pytest.approx(float(loss_a), rel=tol)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == 28
    for name, grad in grads_a.items():
        assert grads_b[name].dtype == torch.float32
        assert float((grads_b[name] - grad).norm()) <= tol * float(grad.norm()), name


def test_dropout_matches_the_same_mask_applied_by_hand() -> None:
    """The branch with dropout equals scale * B(A(x * ~drop / (1 - p'))) for the mask it drew, in value and grads."""
    from llmtune.modeling.cpu_lora import LoraBranch, drop_mask

    x = torch.randn(4, 9, 32, requires_grad=True)
    a = torch.randn(4, 32, requires_grad=True)
    b = torch.randn(6, 4, requires_grad=True)
    torch.manual_seed(7)
    out = LoraBranch.apply(x, a, b, 0.25, 2.0)
    out.square().sum().backward()
    grads = [t.grad.clone() for t in (x, a, b)]
    for t in (x, a, b):
        t.grad = None
    torch.manual_seed(7)
    drop, p = drop_mask(x.shape, 0.25)
    assert p == 0.25
    ref = 2.0 * ((x * ~drop / (1 - p)) @ a.t()) @ b.t()
    ref.square().sum().backward()
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, (x.grad, a.grad, b.grad), strict=True):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)


def test_masks_keep_the_asked_share_and_vary() -> None:
    from llmtune.modeling.cpu_lora import drop_mask

    torch.manual_seed(0)
    first, p = drop_mask(torch.Size([1000, 1000]), 0.05)
    second, _ = drop_mask(torch.Size([1000, 1000]), 0.05)
    assert p == round(0.05 * 32768) / 32768
    # 1e6 draws: the dropped share is within 5 standard deviations (2.2e-4) of p
    assert abs(float(first.float().mean()) - p) < 1.1e-3
    assert abs(float(first[:, :500].float().mean()) - float(first[:, 500:].float().mean())) < 2e-3
    assert not torch.equal(first, second)


def test_checkpointing_replays_the_masks_and_disabled_adapters_take_peft_path() -> None:
    """With dropout on, a checkpointed model gets the gradients of the same model without checkpointing (the
    recomputed forward draws the same masks); `disable_adapter()` (DPO's reference) gives the base model's logits."""
    from llmtune.modeling.cpu_lora import speed_up_lora

    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(2))
    plain = _model(torch.float32, dropout=0.1)
    speed_up_lora(plain)
    checkpointed = copy.deepcopy(plain)
    checkpointed.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
    plain.train(), checkpointed.train()
    torch.manual_seed(3)
    loss_a, grads_a = _loss_and_grads(plain, ids)
    torch.manual_seed(3)
    loss_b, grads_b = _loss_and_grads(checkpointed, ids)
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-6)
    assert all(torch.allclose(grads_a[n], grads_b[n], rtol=1e-5, atol=1e-7) for n in grads_a)

    plain.eval()
    with torch.no_grad():
        with plain.disable_adapter():
            off = plain(input_ids=ids).logits
        assert torch.equal(off, _base(torch.float32).eval()(input_ids=ids).logits)
        assert not torch.allclose(off, plain(input_ids=ids).logits)


def test_a_run_checkpointing_every_other_layer_trains_the_same_adapter(tiny_recipe) -> None:
    """`train.gradient_checkpointing: 0.5` recomputes layer 0 of the tiny model's 2 and keeps layer 1's activations;
    with LoRA dropout on, the adapter equals the run without checkpointing (the masks are replayed)."""
    from safetensors.torch import load_file

    from llmtune.modeling import decoder_layers
    from llmtune.recipe import load_recipe
    from llmtune.training.run import run

    method = {"kind": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}}
    plain = run(load_recipe(tiny_recipe(method=method, name="plain", train={"max_steps": 3})))
    half = run(load_recipe(tiny_recipe(method=method, name="half", train={"max_steps": 3,
                                                                          "gradient_checkpointing": 0.5})))  # fmt: skip
    layers = decoder_layers(half.trainer.model.get_base_model())[1]
    assert [layer.gradient_checkpointing for layer in layers] == [False, True]
    assert not any(layer.gradient_checkpointing for layer in decoder_layers(plain.trainer.model.get_base_model())[1])
    a = load_file(f"{plain.output_dir}/adapter_model.safetensors")
    b = load_file(f"{half.output_dir}/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7) for k in a)
    assert plain.final_loss == pytest.approx(half.final_loss, rel=1e-5)


def test_auto_checkpointing_follows_the_estimated_activations() -> None:
    """The tiers of `train.gradient_checkpointing: auto` on three shapes: the SmolLM-135M shape at 4 and 30 layers
    (batch 8 x 256, bf16) and a 1B Llama shape at batch 8 x 2048."""
    from transformers import LlamaConfig

    from llmtune.modeling.checkpointing import GIB, auto_share, config_activation_bytes

    def saved(layers: int, hidden: int, intermediate: int, tokens: int) -> float:
        config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers)
        return config_activation_bytes(config, tokens, act_bytes=2)

    small, deep, big = saved(4, 576, 1536, 2048), saved(30, 576, 1536, 2048), saved(16, 2048, 8192, 16384)
    assert small < GIB / 2 and auto_share(small) == 0.0
    assert 1.5 * GIB < deep < 2.5 * GIB and auto_share(deep) == 0.5  # measured: 2.1 GiB more RSS without it
    assert big > 8 * GIB and auto_share(big) == 1.0
