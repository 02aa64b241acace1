"""Stage cls: sequence classification, a `num_labels`-way head on a causal LM base (or on a classifier).

Labels come from the data (sorted distinct labels, strings or integers) and are saved as id2label / label2id in the
model config and in `labels.json` beside the weights, so a LoRA run reloads with its head. TRL has no classification
trainer: transformers' Trainer trains on rows tokenized here (truncated to data.max_length, padded per batch with the
pad id) and reports accuracy and macro F1 on the eval split.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmtune import console
from llmtune.errors import UserError
from llmtune.schema import Recipe

if TYPE_CHECKING:
    import datasets
    from transformers import Trainer


def build(recipe: Recipe, args_common: dict[str, Any]) -> Trainer:
    """Labels checked and data tokenized before the model loads; then the seq-cls model, its method, the trainer."""
    from transformers import DataCollatorWithPadding, TrainingArguments

    from llmtune.data.load import load_splits
    from llmtune.infer.classify import label_maps
    from llmtune.modeling import count_parameters, describe_parameters, load_model, load_tokenizer
    from llmtune.stages.args import build_config
    from llmtune.stages.rm import apply_scorer_method

    tokenizer = load_tokenizer(recipe)
    train, evals = load_splits(recipe)
    names = training_labels(train, recipe)
    if evals is not None:
        check_eval_labels(evals, names)
    id2label, label2id = label_maps(names)
    train_ids = tokenize(train, tokenizer, label2id, recipe.data.max_length)
    eval_ids = tokenize(evals, tokenizer, label2id, recipe.data.max_length) if evals is not None else None
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    with suppress_seqcls_warning():  # the new head and the unused lm_head are expected, not news
        model = load_model(recipe, head="sequence_classification", num_labels=len(names))
    model.config.id2label, model.config.label2id = id2label, label2id
    model.config.pad_token_id = tokenizer.pad_token_id
    model = apply_scorer_method(model, recipe)
    trainable, total = count_parameters(model)
    console.info(f"{recipe.method.kind} classifier, {len(names)} labels: {describe_parameters(trainable, total)}")
    config = build_config(TrainingArguments, args_common)
    return _trainer_class()(
        model=model,
        args=config,
        train_dataset=train_ids,
        eval_dataset=eval_ids,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
    )


def training_labels(train: datasets.Dataset, recipe: Recipe) -> list[str]:
    """The label names in id order; a classifier needs two classes at least."""
    from llmtune.infer.classify import label_order

    names = label_order(train["label"])
    if len(names) < 2:
        sources = ", ".join(src.path for src in recipe.data.train)
        raise UserError(
            f"{sources}: every training row has the label {names[0]!r}; a classifier needs rows of at least two labels"
        )
    return names


def check_eval_labels(evals: datasets.Dataset, names: list[str]) -> None:
    """Every eval label must be one the head is trained on."""
    for label, origin in zip(evals["label"], evals["origin"], strict=True):
        if label not in names:
            raise UserError(
                f"{origin}: label {label!r} does not occur in the training data (labels: {', '.join(names)}); "
                "the classifier cannot predict it"
            )


def tokenize(rows: datasets.Dataset, tokenizer: Any, label2id: dict[str, int], max_length: int) -> datasets.Dataset:
    """input_ids, attention_mask and the label id of each row, tokenized as prediction tokenizes
    (llmtune.infer.classify.encode)."""
    from llmtune.infer.classify import encode

    def batch(rows: dict[str, list]) -> dict[str, list]:
        ids = encode(tokenizer, rows["text"], max_length)
        return {
            "input_ids": ids,
            "attention_mask": [[1] * len(x) for x in ids],
            "labels": [label2id[label] for label in rows["label"]],
        }

    return rows.map(batch, batched=True, remove_columns=rows.column_names)


def compute_metrics(prediction: Any) -> dict[str, float]:
    """Accuracy and macro F1 of the argmax class on the eval split."""
    from llmtune.infer.classify import accuracy_and_macro_f1

    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    return accuracy_and_macro_f1(logits.argmax(-1).tolist(), prediction.label_ids.tolist())


def _trainer_class() -> type:
    from transformers import Trainer

    from llmtune.infer.classify import model_labels, write_labels

    class ClassifierTrainer(Trainer):
        """Trainer whose saves (checkpoints and the final model) carry labels.json beside the weights."""

        def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
            super().save_model(output_dir, _internal_call)
            if self.args.should_save:
                write_labels(model_labels(self.model), Path(output_dir or self.args.output_dir))

    return ClassifierTrainer
