"""Reload a finished run: `Predictor(run_dir).predict(["[MAX 2 9 ]", ...])`, or score it on a split
of its task with `Predictor(run_dir).evaluate(["test"])`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch

from peftx.errors import PeftxError
from peftx.recipe import read_raw, validate_recipe
from peftx.runs.record import RECIPE, RunRecord, check_same_backbone
from peftx.runs.weights import load_weights
from peftx.spec.objective import format_metric
from peftx.tasks import SPLITS
from peftx.training.evaluation import evaluate, infer
from peftx.training.session import open_session
from peftx.training.speed import prepare_model
from peftx.util import text_files
from peftx.util.echo import printable
from peftx.util.text_files import decode_text, split_lines


class Predictor:
    """A trained run, rebuilt from its resolved recipe and saved weights.

    Args:
        run_dir: a directory written by `peftx run`.
        overrides: `a.b=value` changes to the run's recipe before rebuilding, for what does not change
            the trained tensors: e.g. `model.quantization=8bit` (the same weights on an 8-bit body) or
            `task.max_length=...`. A change that does (`method.r=4`) fails on loading the weights.
        allow_changed_weights: use the backbone although its weights' sha256 differs from the recorded
            one (`weights_changed` then says how).

    Raises:
        PeftxError: not a finished run directory, its weights do not fit the rebuilt model, or the
            backbone's weights changed since training (unless allowed).
    """

    def __init__(
        self, run_dir: str | Path, overrides: list[str] | None = None, allow_changed_weights: bool = False
    ) -> None:
        self.run_dir = Path(run_dir)
        self.record = RunRecord.read(self.run_dir)
        if not self.record.completed:
            raise PeftxError(f"{self.run_dir}: run status is {self.record.status!r}, not 'completed'")
        self.overrides = list(overrides or [])
        recipe_path = self.run_dir / RECIPE
        self.recipe = validate_recipe(read_raw(recipe_path, self.overrides), str(recipe_path))
        # precision as a run resolves it: `auto` suits the machine that reloads, an explicit setting is kept
        self.session = open_session(self.recipe, load_task=False)
        self.info = self.session.info
        self.accelerator = self.session.accelerator
        self.weights_changed = check_same_backbone(
            self.record, self.session.provenance, allow_changed_weights, self.run_dir
        )
        model = self.session.model
        load_weights(model, self.run_dir)
        model.eval()
        # training's speed options (threads, fused LoRA layers), without compiling for a short job
        prepare_model(model, self.recipe.train.model_copy(update={"compile": False}), self.accelerator.device)
        self.model = self.session.model = self.accelerator.prepare_model(model, evaluation_mode=True)

    @property
    def precision(self) -> str:
        return self.session.precision

    def logits(self, texts: list[str], where: list[str] | None = None) -> torch.Tensor:
        """Outputs (n, objective width: logits, or values in the targets' units) for inputs written as
        the task's `parse` reads them (a ListOps expression, a protein sequence, an image file's path).

        Args:
            where: each input's place for messages (e.g. "inputs.tsv:3"); None: "input 1", "input 2" ...

        Raises:
            PeftxError: an input the task cannot parse (naming its place).
        """
        if not texts:
            return torch.empty(0, self.info.objective.width)
        ids = []
        for i, text in enumerate(texts):
            try:
                ids.append(self.info.parse(text))
            except PeftxError as e:
                raise PeftxError(f"{where[i] if where else f'input {i + 1}'}: {e}") from None
        split = self.session.split(datasets.Dataset.from_dict({self.info.input_spec.column: ids}))
        train = self.recipe.train
        return infer(self.model, split, train.eval_batch_size, self.accelerator, train.eval_batch_tokens)

    def predict(self, texts: list[str], where: list[str] | None = None) -> list:
        """Each input's prediction as the objective decodes it: a label, the labels present, the
        target value(s), or a (horizon, channels) forecast (`where`: as for `logits`)."""
        return self.info.objective.decode(self.logits(texts, where))

    def evaluate(self, splits: list[str] | tuple[str, ...] = ("test",)) -> dict[str, dict]:
        """The objective's metrics, mean loss and size of each named split of the run's task, loaded as
        training loaded it (the recipe's data settings, with any overrides)."""
        for name in splits:
            if name not in SPLITS:
                raise PeftxError(f"--split: unknown split {name!r} (valid: {', '.join(SPLITS)})")
        self.session.load_task()
        return {
            name: evaluate(self.model, split, self.recipe.train, self.accelerator) | {"examples": len(split)}
            for name, split in self.session.splits(list(splits)).items()
        }


@dataclass
class Inputs:
    """Inputs to predict, read from a file: one per line, or a TSV with a `Source` column and an
    optional `Target` column."""

    texts: list[str]
    targets: list[str] | None = None
    where: list[str] | None = None  # each input's file:line


def read_inputs(text: str, where: str) -> Inputs:
    """Parse `peftx predict`'s input text (non-empty lines; a TSV whose header starts with `Source`).
    Lines end at LF, CRLF or a bare CR (`split_lines`), so each input's `where` is its line.

    Raises:
        PeftxError: a TSV row whose Source is empty, or whose fields do not match the header (naming
            its line).
    """
    numbered = [(n, line) for n, line in enumerate(split_lines(text), start=1) if line.strip()]
    if not numbered or numbered[0][1].split("\t")[0] != "Source":
        return Inputs([line for _, line in numbered], where=[f"{where}:{n}" for n, _ in numbered])
    header = numbered[0][1].split("\t")
    texts, targets, places = [], [], []
    for lineno, line in numbered[1:]:
        # one row per line (csv without quoting: an expression or a path is never quoted)
        row = dict(zip(header, line.split("\t")))
        if len(line.split("\t")) > len(header):
            raise PeftxError(f"{where}:{lineno}: more fields than the header's {len(header)}")
        if not row.get("Source", "").strip():
            raise PeftxError(f"{where}:{lineno}: Source: empty")
        texts.append(row["Source"])
        targets.append(row.get("Target") or "")
        places.append(f"{where}:{lineno}")
    return Inputs(texts, targets if "Target" in header else None, places)


@dataclass
class Predictions:
    inputs: Inputs
    labels: list  # one prediction per input, as `Predictor.predict` gives it

    @property
    def accuracy(self) -> float | None:
        """Share of predicted labels equal to the inputs' targets (None without targets, or for
        predictions that are not single labels)."""
        t = self.inputs.targets
        if t is None or not all(isinstance(p, str) for p in self.labels):
            return None
        return sum(p == y for p, y in zip(self.labels, t)) / max(len(t), 1)

    def rows(self) -> list[list[str]]:
        """TSV rows: header, then input, prediction[, target], each cell `printable` (a control
        character in an input or a label is shown escaped, never sent to the terminal)."""
        head = ["input", "prediction"] + (["target"] if self.inputs.targets is not None else [])
        body = [
            [printable(x), printable(_cell(p))]
            + ([printable(self.inputs.targets[i])] if self.inputs.targets is not None else [])
            for i, (x, p) in enumerate(zip(self.inputs.texts, self.labels))
        ]
        return [head, *body]


def _cell(prediction) -> str:
    """A prediction as one TSV cell: a label as it is, numbers to 6 significant digits, lists as JSON."""
    if isinstance(prediction, str):
        return prediction
    if isinstance(prediction, float):
        return f"{prediction:.6g}"
    return json.dumps(prediction)


def score_lines(scores: dict[str, dict], record: RunRecord) -> list[str]:
    """One line per evaluated split, its metrics (the primary one first) beside what training recorded
    for its primary metric."""
    m = record.metrics
    recorded = {"test": m.value("test"), "validation": m.value("val")} if m is not None else {}
    lines = []
    for name, s in scores.items():
        shown = ", ".join(f"{k} {format_metric(k, v)}" for k, v in s.items() if k not in ("loss", "examples"))
        line = f"{name}: {shown}, loss {s['loss']:.4f} ({s['examples']} examples)"
        if recorded.get(name) is not None:
            line += f"; at training: {format_metric(m.primary, recorded[name])}"
        lines.append(line)
    return lines


def predict_path(run_dir: str | Path, path: Path, allow_changed_weights: bool = False) -> Predictions:
    """Reload a run and predict every input of `peftx predict`'s input file ('-': stdin): read by the
    run's task where it reads that file's format (`TaskInfo.read_inputs`, e.g. the `sequences` task's
    CSV or Parquet files), else as lines or a Source/Target TSV."""
    predictor = Predictor(run_dir, allow_changed_weights=allow_changed_weights)
    read = predictor.info.read_inputs
    own = read(path) if read is not None and str(path) != "-" else None
    if own is not None:
        inputs = Inputs(*own)
    else:
        inputs = read_inputs(read_text(path), "<stdin>" if str(path) == "-" else str(path))
    return Predictions(inputs, predictor.predict(inputs.texts, inputs.where))


def read_text(path: Path) -> str:
    """A text file's content ('-': stdin), as `peftx.util.text_files` reads text (UTF-8, or UTF-16/32 with
    a byte-order mark).

    Raises:
        PeftxError: no such file, or not text (naming the line).
    """
    if str(path) == "-":
        return decode_text(sys.stdin.buffer.read(), "<stdin>")
    return text_files.read_text(path, "input file")
