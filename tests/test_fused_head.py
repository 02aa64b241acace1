"""llmtune.modeling.fused_head against TRL's fused LM head: same loss, metrics and LoRA gradients on CPU."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _model(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(seed)
    base = LlamaForCausalLM(config)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    for name, param in model.named_parameters():  # B starts at zero; make the adapters matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    return model, base


def _batch():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (3, 17), generator=gen)
    labels = ids.clone()
    labels[:, :6] = -100
    labels[2, 12:] = -100
    return ids, labels


@pytest.mark.parametrize("chunk_rows", [256, 5])
def test_same_loss_metrics_and_gradients_as_trl(chunk_rows):
    from trl.trainer.utils import add_fused_lm_head

    from llmtune.modeling.fused_head import add_cpu_fused_lm_head

    ids, labels = _batch()
    results = []
    for ours in (False, True):
        model, base = _model()
        add_fused_lm_head(base, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # DPO's set
        if ours:
            assert add_cpu_fused_lm_head(base, chunk_rows=chunk_rows)
        with torch.no_grad():  # as DPO's reference pass: same log-probs, no gradient work
            reference = model(input_ids=ids, labels=labels, fused_lm_head=True).log_probs
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        torch.testing.assert_close(reference, out.log_probs.detach())
        out.loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        results.append((out.loss.detach(), out.entropy.sum(), out.is_top1.sum(), out.label_mask, grads,
                        out.log_probs.detach(), out.mean_logits))  # fmt: skip
    (loss_a, ent_a, top_a, mask_a, grad_a, lp_a, ml_a), (loss_b, ent_b, top_b, mask_b, grad_b, lp_b, ml_b) = results
    torch.testing.assert_close(loss_b, loss_a)
    torch.testing.assert_close(lp_b, lp_a, rtol=1e-5, atol=1e-5)  # zero where the label is -100, in both
    torch.testing.assert_close(ml_b, ml_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent_b, ent_a, rtol=1e-5, atol=1e-4)
    assert int(top_a) == int(top_b)
    assert torch.equal(mask_a, mask_b)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-6)


def test_plain_forward_and_trainable_head_are_left_to_the_original():
    from trl.trainer.utils import add_fused_lm_head

    from llmtune.modeling.fused_head import add_cpu_fused_lm_head

    ids, labels = _batch()
    model, base = _model()
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "is_top1"))
    assert add_cpu_fused_lm_head(base)
    assert model(input_ids=ids).logits.shape == (3, 17, 300)
    base.get_output_embeddings().weight.requires_grad_(True)
    out = model(input_ids=ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    assert base.get_output_embeddings().weight.grad is not None


def test_scaled_heads_are_refused():
    from transformers import LlamaConfig, LlamaForCausalLM

    from llmtune.modeling.fused_head import add_cpu_fused_lm_head

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    config.final_logit_softcapping = 30.0
    assert not add_cpu_fused_lm_head(LlamaForCausalLM(config))


def test_train_cpu_fused_head_false_keeps_trls_head(monkeypatch):
    from types import SimpleNamespace

    from llmtune.modeling import fused_head
    from llmtune.schema import TrainSpec
    from llmtune.training import run

    calls = []
    monkeypatch.setattr(fused_head, "add_cpu_fused_lm_head", calls.append)
    monkeypatch.setattr("llmtune.modeling.has_cuda", lambda: False)
    assert TrainSpec().cpu_fused_head
    cases = [
        ("sft", True, False, False),
        ("sft", False, False, False),
        ("sft", True, True, False),  # FSDP: TRL's
        ("dpo", True, False, False),
        ("dpo", True, False, True),
        ("rm", True, False, False),
    ]  # WPO, rm: TRL's
    for stage, on, fsdp, weighting in cases:
        trainer = SimpleNamespace(model=stage, ref_model=None, is_fsdp_enabled=fsdp, is_deepspeed_enabled=False,
                                  use_weighting=weighting)  # fmt: skip
        recipe = SimpleNamespace(stage=stage, method=SimpleNamespace(kind="full"), train=TrainSpec(cpu_fused_head=on))
        run._cpu_kernels(trainer, recipe)
    assert calls == ["sft", "dpo"]
