"""Reload a finished run and predict: `Predictor(run_dir).predict(["[MAX 2 9 ]", ...])`."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import torch
import yaml
from accelerate.utils import set_seed

from peftx.artifacts import RECIPE, RESULT, load_weights
from peftx.build import build_model
from peftx.data import make_split
from peftx.errors import PeftxError
from peftx.recipe import validate_recipe
from peftx.train import infer, make_accelerator


class Predictor:
    """A trained run, rebuilt from its resolved recipe and saved weights.

    Args:
        run_dir: a directory written by `peftx run`.

    Raises:
        PeftxError: not a finished run directory.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        result_path = self.run_dir / RESULT
        if not result_path.is_file():
            raise PeftxError(f"{self.run_dir}: not a run directory (no {RESULT})")
        self.result = json.loads(result_path.read_text())
        if self.result.get("status") != "completed":
            raise PeftxError(f"{self.run_dir}: run status is {self.result.get('status')!r}, not 'completed'")
        self.recipe = validate_recipe(yaml.safe_load((self.run_dir / RECIPE).read_text()), str(self.run_dir / RECIPE))
        self.info = self.recipe.task.describe()
        set_seed(self.recipe.seed)
        self.model, _ = build_model(self.recipe, self.info)
        load_weights(self.model, self.run_dir)
        self.model.eval()
        precision = self.result.get("precision", "fp32")
        self.accelerator = make_accelerator(precision)
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
        split = make_split(ds, self.info.input_spec, model.specials, model.max_length)
        train = self.recipe.train
        return infer(self.model, split, train.eval_batch_size, self.accelerator, train.eval_batch_tokens)

    def predict(self, texts: list[str]) -> list[str]:
        """Predicted label of each input."""
        return [self.info.labels[i] for i in self.logits(texts).argmax(-1).tolist()]
