"""Reload a finished run: `Predictor(run_dir).predict(["[MAX 2 9 ]", ...])`, or score it on a split
of its task with `Predictor(run_dir).evaluate(["test"])`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import torch
from accelerate.utils import set_seed

from peftx.artifacts import RECIPE, RESULT, load_weights
from peftx.build import build_model
from peftx.data import make_split
from peftx.env import resolve_precision
from peftx.errors import PeftxError
from peftx.recipe import read_raw, validate_recipe
from peftx.run import task_splits
from peftx.speed import pad_multiple, prepare_model
from peftx.train import evaluate, infer, make_accelerator

SPLITS = ("train", "validation", "test")


class Predictor:
    """A trained run, rebuilt from its resolved recipe and saved weights.

    Args:
        run_dir: a directory written by `peftx run`.
        overrides: `a.b=value` changes to the run's recipe before rebuilding, for what does not change
            the trained tensors: e.g. `model.quantization=8bit` (the same weights on an 8-bit body) or
            `task.max_length=...`. A change that does (`method.r=4`) fails on loading the weights.

    Raises:
        PeftxError: not a finished run directory, or its weights do not fit the rebuilt model.
    """

    def __init__(self, run_dir: str | Path, overrides: list[str] | None = None) -> None:
        self.run_dir = Path(run_dir)
        result_path = self.run_dir / RESULT
        if not result_path.is_file():
            raise PeftxError(f"{self.run_dir}: not a run directory (no {RESULT})")
        self.result = json.loads(result_path.read_text())
        if self.result.get("status") != "completed":
            raise PeftxError(f"{self.run_dir}: run status is {self.result.get('status')!r}, not 'completed'")
        self.overrides = list(overrides or [])
        recipe_path = self.run_dir / RECIPE
        self.recipe = validate_recipe(read_raw(recipe_path, self.overrides), str(recipe_path))
        self.info = self.recipe.task.describe()
        set_seed(self.recipe.seed)
        self.model, _ = build_model(self.recipe, self.info)
        load_weights(self.model, self.run_dir)
        self.model.eval()
        # as a run resolves it: `auto` suits the machine that reloads, an explicit setting is kept
        self.precision = resolve_precision(self.recipe.train.precision)
        self.accelerator = make_accelerator(self.precision)
        # training's speed options (threads, fused LoRA layers), without compiling for a short job
        prepare_model(self.model, self.recipe.train.model_copy(update={"compile": False}), self.accelerator.device)
        self.model = self.accelerator.prepare_model(self.model, evaluation_mode=True)

    def logits(self, texts: list[str]) -> torch.Tensor:
        """Logits (n, classes) for inputs written as the task's `parse` reads them (a ListOps expression,
        a protein sequence, an image file's path)."""
        if not texts:
            return torch.empty(0, len(self.info.labels))
        ids = []
        for lineno, text in enumerate(texts, start=1):
            try:
                ids.append(self.info.parse(text))
            except PeftxError as e:
                raise PeftxError(f"input {lineno}: {e}") from None
        ds = datasets.Dataset.from_dict({self.info.input_spec.column: ids})
        model = self.accelerator.unwrap_model(self.model)
        multiple = pad_multiple(self.recipe.train, self.accelerator.device)
        split = make_split(ds, self.info.input_spec, model.specials, model.max_length, multiple)
        train = self.recipe.train
        return infer(self.model, split, train.eval_batch_size, self.accelerator, train.eval_batch_tokens)

    def predict(self, texts: list[str]) -> list[str]:
        """Predicted label of each input."""
        return [self.info.labels[i] for i in self.logits(texts).argmax(-1).tolist()]

    def evaluate(self, splits: list[str] | tuple[str, ...] = ("test",)) -> dict[str, dict]:
        """Accuracy, mean cross-entropy and size of each named split of the run's task, loaded as
        training loaded it (the recipe's data settings, with any overrides)."""
        for name in splits:
            if name not in SPLITS:
                raise PeftxError(f"--split: unknown split {name!r} (valid: {', '.join(SPLITS)})")
        model = self.accelerator.unwrap_model(self.model)
        loaded = task_splits(self.recipe.task.load(), model, self.recipe.train, self.accelerator.device, splits)
        return {
            name: evaluate(self.model, split, self.recipe.train, self.accelerator) | {"examples": len(split)}
            for name, split in loaded.items()
        }
