"""`task.json`: what a run's inputs and outputs are, in plain JSON, so that a run directory (and an
export of it) says without peftx how to feed the model and read its answers.

It holds the task's literal symbol order (or the shape of its continuous inputs), the shared index
space (padding, start, end, first symbol), the framing the model's family adds (which start/end
tokens, their ids in the model's vocabulary), the longest input, and the label names in the order of
the logits. Where the input layer embeds symbols by the model's own tokens (`pretrained_vocab`), it
also holds each symbol's token ids (`input.token_ids`, averaged where there are several; for
`pixel_vocab`, a list by intensity level), read from the layer itself, so the ids a reloaded run or
an export uses are the ones that were trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from peftx.inputs.base import TokenMappedInput
from peftx.spec.index_space import BOS, EOS, OFFSET, PAD, VALUE
from peftx.spec.input_spec import SymbolVocab
from peftx.util.files import write_text_atomic

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel
    from peftx.tasks import TaskInfo

TASK_FILE = "task.json"
FORMAT = "peftx-task/1"


def task_description(info: TaskInfo, model: PeftxModel) -> dict:
    """The content of task.json for a task and the model built for it (its family's framing)."""
    spec = info.input_spec
    if isinstance(spec, SymbolVocab):
        inputs = {
            "kind": "symbols",
            "symbols": list(spec.symbols),
            "version": spec.version,
            "spelling": {s: spec.spelling(s) for s in spec.symbols},
        }
        index = {"pad": PAD, "start": BOS, "end": EOS, "first_symbol": OFFSET}
    else:
        inputs = {"kind": "continuous", "dim": spec.dim, "scale": spec.scale, "values": spec.kind}
        index = {"pad": PAD, "start": BOS, "end": EOS, "value": VALUE}
    if isinstance(model.input, TokenMappedInput):
        tokens = model.input.token_map()[OFFSET:]  # (symbol or intensity level, pieces)
        inputs["token_ids"] = dict(zip(spec.symbols, tokens, strict=True)) if isinstance(spec, SymbolVocab) else tokens
    sp = model.specials
    return {
        "format": FORMAT,
        "labels": list(info.labels),
        "objective": info.objective.to_dict(),
        "input": inputs,
        "index_space": index,
        "framing": {
            "start": sp.bos is not None,
            "end": sp.eos is not None,
            "start_token_id": sp.bos,
            "end_token_id": sp.eos,
            "pad_token_id": sp.pad,
            "decoder_start_token_id": sp.decoder_start,
        },
        "family": model.family.name,
        "pooling": model.pooling,
        "max_length": model.max_length,
    }


def write_task_description(run_dir: Path, info: TaskInfo, model: PeftxModel) -> Path:
    """Write `run_dir/task.json` (atomically) and return its path."""
    path = Path(run_dir) / TASK_FILE
    write_text_atomic(path, json.dumps(task_description(info, model), indent=1, ensure_ascii=False) + "\n")
    return path
