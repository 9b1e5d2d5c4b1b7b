"""The ListOps LoRA recipe written as a user would with Hugging Face `Trainer` + peft.

The comparison point for `scripts/bench_speed.py`. Same data (peftx's ListOps generator, cpu
preset), same model (the offline all-MiniLM-L6-v2), same LoRA (r=8, alpha=16 on the attention and
feed-forward matrices, new classifier trained), same optimiser settings (AdamW, lr 1e-3, weight decay
0.01, 6% linear warm-up, clipping at 1.0), same batch size. Symbols are spelled as the words peftx
uses and tokenised by the model's tokenizer, so every example is the same token ids ([CLS] x [SEP]).
Everything else is the `Trainer` default: fp32, random batches padded to their longest member
(`DataCollatorWithPadding`), evaluation batch size 8. `--bf16` and `--group-by-length` turn on the
two switches a speed-minded user would reach for.

    python scripts/hf_trainer_baseline.py --steps 600
    python scripts/hf_trainer_baseline.py --steps 600 --bf16 --group-by-length
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from peftx.model.sources import offline_model_dir
from peftx.recipe import load_recipe
from peftx.tasks.listops.task import VOCAB

RECIPE = os.path.join(os.path.dirname(__file__), "..", "recipes", "listops_lora.yaml")


def listops_text(overrides: list[str] | None = None) -> datasets.DatasetDict:
    """The recipe's ListOps splits as text, each symbol spelled as the word peftx feeds the model
    (`overrides`: `task.key=value` changes, as peftx's --set takes them)."""
    task = load_recipe(RECIPE, overrides or []).task.load()
    words = [VOCAB.spelling(s) for s in VOCAB.symbols]

    def to_text(batch):
        return {"text": [" ".join(words[i] for i in tokens) for tokens in batch["tokens"]]}

    return datasets.DatasetDict(
        {name: split.map(to_text, batched=True, remove_columns=["tokens"]) for name, split in task.splits.items()}
    )


class StepTimes(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


class CountingCollator(DataCollatorWithPadding):
    """`DataCollatorWithPadding` that also records each batch's real and padded token counts."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lengths: list[list[int]] = []  # real lengths of each batch's examples
        self.padded: list[int] = []

    def __call__(self, features):
        batch = super().__call__(features)
        self.lengths.append(batch["attention_mask"].sum(1).tolist())
        self.padded.append(batch["attention_mask"].numel())
        return batch


def build_trainer(
    steps: int,
    bf16: bool = False,
    group_by_length: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    output_dir: str | None = None,
    task_overrides: list[str] | None = None,
) -> tuple[Trainer, StepTimes, CountingCollator, datasets.DatasetDict]:
    """A `Trainer` for the recipe's LoRA run, plus its step-time recorder and batch recorder."""
    path = str(offline_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(path)
    text = listops_text(task_overrides)
    data = text.map(lambda b: tokenizer(b["text"], truncation=True, max_length=512), batched=True)
    data = data.rename_column("label", "labels").remove_columns(["text"])
    hf_logging.set_verbosity_error()  # the new classifier's "newly initialized" notice is expected
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=10)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # also trains the new classifier
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=["query", "key", "value", "intermediate.dense", "output.dense"],
    )
    model = get_peft_model(model, lora)
    args = TrainingArguments(
        output_dir=output_dir or tempfile.mkdtemp(prefix="hf_baseline_"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=1e-3,
        weight_decay=0.01,
        warmup_steps=round(0.06 * steps),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        bf16=bf16,
        train_sampling_strategy="group_by_length" if group_by_length else "random",
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        disable_tqdm=True,
    )
    collator = CountingCollator(tokenizer)
    times = StepTimes()

    def accuracy(pred):
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        data_collator=collator,
        compute_metrics=accuracy,
        callbacks=[times],
    )
    return trainer, times, collator, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--group-by-length", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    trainer, times, collator, data = build_trainer(a.steps, a.bf16, a.group_by_length, seed=a.seed)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    val = trainer.evaluate()
    eval_s = time.perf_counter() - t0
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    n = a.steps * trainer.args.per_device_train_batch_size
    print(
        f"train {train_s:.0f}s ({n / train_s:.1f} examples/s), eval {eval_s:.1f}s "
        f"({len(data['validation']) / eval_s:.0f} examples/s); "
        f"val accuracy {val['eval_accuracy']:.4f}, test accuracy {test['test_accuracy']:.4f}"
    )


if __name__ == "__main__":
    main()
