"""Run an exported peftx model with torch, transformers and safetensors alone (no peftx).

`peftx export` copies this file into every export as `task_model.py`. It imports nothing of peftx:
it rebuilds the layers peftx puts around a transformers backbone (the task's input layer, soft
prompts, the pooling of the family, the classification head) from `task.json` and
`task_layers.safetensors`:

    from peft import PeftModel
    from transformers import AutoModel
    from task_model import TaskModel

    body = PeftModel.from_pretrained(AutoModel.from_pretrained(BASE), EXPORT_DIR)  # or AutoModel alone
    model = TaskModel(body, EXPORT_DIR).eval()
    model.predict([["[MAX", "2", "9", "]"]])  # label names; `model.logits(...)` for the scores

Inputs are sequences of the task's symbols (strings, or their ids: positions in task.json's
`input.symbols`), or for continuous tasks (seq, dim) arrays of stored values.

The input layer and a soft prompt are rebuilt by kind (`INPUT_KINDS`, `EXTRA_KINDS`): task.json's
`export.input_kind` names the input layer's, an extra's tensors carry its kind as their prefix; each
kind reads its tensors from task_layers.safetensors and its settings from task.json's `export`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

TASK_FILE = "task.json"
LAYERS_FILE = "task_layers.safetensors"


class IndexTable(nn.Module):
    """Input kind "table": shared index i is embedded as row i of `table` (index, hidden)."""

    TENSORS = ("table",)
    SETTINGS = ()

    def __init__(self, tensors: dict[str, torch.Tensor], settings: dict, index: dict[str, int]) -> None:
        super().__init__()
        self.register_buffer("table", tensors["table"])

    def forward(self, input_ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        return self.table[input_ids]  # (batch, seq, hidden)


class LinearValues(nn.Module):
    """Input kind "linear": value positions through Linear(dim, hidden), padding/start/end as their
    row of `table` (3, hidden)."""

    TENSORS = ("table", "proj.weight", "proj.bias")
    SETTINGS = ()

    def __init__(self, tensors: dict[str, torch.Tensor], settings: dict, index: dict[str, int]) -> None:
        super().__init__()
        self.register_buffer("table", tensors["table"])
        weight = tensors["proj.weight"]  # (hidden, dim)
        self.proj = nn.Linear(weight.shape[1], weight.shape[0])
        self.proj.load_state_dict({"weight": weight, "bias": tensors["proj.bias"]})
        self.value, self.end = index["value"], index["end"]

    def forward(self, input_ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        framing = self.table[input_ids.clamp(max=self.end)]  # (batch, seq, hidden)
        return torch.where((input_ids == self.value).unsqueeze(-1), self.proj(values), framing)


class IntensityBins(nn.Module):
    """Input kind "intensity_bins": an intensity v in [0, 1] falls in bin b of `intensity_levels`
    equal bins and is embedded as row `value + b` of `table`; padding/start/end as their own row."""

    TENSORS = ("table",)
    SETTINGS = ("intensity_levels",)

    def __init__(self, tensors: dict[str, torch.Tensor], settings: dict, index: dict[str, int]) -> None:
        super().__init__()
        self.register_buffer("table", tensors["table"])  # (3 + levels, hidden)
        self.levels, self.value = settings["intensity_levels"], index["value"]

    def forward(self, input_ids: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
        level = (values[..., 0].clamp(0, 1) * self.levels).long().clamp(max=self.levels - 1)
        return self.table[torch.where(input_ids == self.value, self.value + level, input_ids)]


class InsertedPrompt(nn.Module):
    """Extra kind "prompt": `vectors` (length, hidden) inserted at position `prompt_offset` of every
    sequence, the attention mask extended over them."""

    TENSORS = ("vectors",)
    SETTINGS = ("prompt_offset",)

    def __init__(self, tensors: dict[str, torch.Tensor], settings: dict) -> None:
        super().__init__()
        self.register_buffer("vectors", tensors["vectors"])
        self.offset = settings["prompt_offset"]

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        at, n = self.offset, len(self.vectors)
        prompt = self.vectors.to(embeds.dtype).expand(embeds.shape[0], -1, -1)  # (batch, length, hidden)
        embeds = torch.cat([embeds[:, :at], prompt, embeds[:, at:]], dim=1)
        ones = torch.ones(mask.shape[0], n, dtype=mask.dtype)
        return embeds, torch.cat([mask[:, :at], ones, mask[:, at:]], dim=1)


# The layers this file rebuilds, by the kind `peftx export` names (task.json: export.input_kind; an
# extra's tensors are named `<kind>.<tensor>`). Each reads its TENSORS and its SETTINGS (from task.json's
# `export`) and nothing else; `peftx export` writes no other kind.
INPUT_KINDS = {"table": IndexTable, "linear": LinearValues, "intensity_bins": IntensityBins}
EXTRA_KINDS = {"prompt": InsertedPrompt}


def _part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named `<prefix>.<name>`, by name."""
    return {k.removeprefix(f"{prefix}."): v for k, v in tensors.items() if k.startswith(f"{prefix}.")}


class TaskModel(nn.Module):
    """An exported run: its backbone (given), input layer, soft prompt, pooling and head (loaded).

    Args:
        body: the backbone as transformers (and peft) load it: `AutoModel.from_pretrained(...)`,
            optionally wrapped by `PeftModel.from_pretrained(body, export_dir)`.
        export_dir: the directory `peftx export` wrote.

    Raises:
        ValueError: an export that needs peftx (its method acts inside the backbone), or whose input
            layer is of a kind this file does not know.
    """

    def __init__(self, body: nn.Module, export_dir: str | Path) -> None:
        super().__init__()
        export_dir = Path(export_dir)
        self.task = json.loads((export_dir / TASK_FILE).read_text(encoding="utf-8"))
        tensors = load_file(str(export_dir / LAYERS_FILE))
        settings = self.task.get("export", {})
        unsupported = settings.get("needs_peftx")
        if unsupported:
            raise ValueError(f"{export_dir}: {unsupported}; reload it with peftx (Predictor)")
        kind = settings.get("input_kind")
        if kind not in INPUT_KINDS:
            raise ValueError(f"{export_dir}: input kind {kind!r} is not one of {sorted(INPUT_KINDS)}")
        self.body = body
        self.labels = self.task["labels"]
        self.framing = self.task["framing"]
        self.index = self.task["index_space"]
        # trained tensors of the body outside any adapter (e.g. layer norms trained with LoRA)
        updates = _part(tensors, "body")
        if updates:
            own = dict(body.named_parameters())
            plain = {n.replace(".base_layer.", ".").removeprefix("base_model.model."): p for n, p in own.items()}
            with torch.no_grad():
                for name, value in updates.items():
                    plain[name].copy_(value)
        self.input = INPUT_KINDS[kind](_part(tensors, "input"), settings, self.index)
        extras = [EXTRA_KINDS[k](_part(tensors, k), settings) for k in EXTRA_KINDS if _part(tensors, k)]
        self.extras = nn.ModuleList(extras)  # e.g. a soft prompt
        head = tensors["head.weight"]
        self.head = nn.Linear(head.shape[1], head.shape[0])
        self.head.load_state_dict({"weight": head, "bias": tensors["head.bias"]})

    def batch(self, sequences: list) -> dict[str, torch.Tensor]:
        """Frame (start/end tokens as the family wants) and right-pad sequences into one batch."""
        start, end = self.framing["start"], self.framing["end"]
        symbols = self.task["input"].get("symbols")
        ids_of = {s: i for i, s in enumerate(symbols or [])}
        rows, values = [], []
        for seq in sequences:
            if symbols is not None:
                body = [self.index["first_symbol"] + (ids_of[s] if isinstance(s, str) else int(s)) for s in seq]
            else:
                seq = torch.as_tensor(seq, dtype=torch.float32).reshape(len(seq), -1)  # (seq, dim)
                body = [self.index["value"]] * len(seq)
                values.append(seq)
            rows.append([self.index["start"]] * start + body + [self.index["end"]] * end)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.index["pad"], dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        out = {"input_ids": ids, "attention_mask": mask}
        if values:  # each row's vectors at its VALUE positions (behind the start token, if any)
            vals = torch.zeros(len(rows), width, values[0].shape[1])
            for i, v in enumerate(values):
                vals[i, int(start) : int(start) + len(v)] = v
            out["values"] = vals * self.task["input"]["scale"]
        return out

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, values: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (batch, labels) of a batch as `batch` makes it."""
        embeds, mask = self.input(input_ids, values), attention_mask  # (batch, seq, hidden)
        for layer in self.extras:  # a soft prompt inserts its vectors and extends the mask
            embeds, mask = layer(embeds, mask)
        family, pooling = self.task["family"], self.task["pooling"]
        if family in ("t5", "bart") and pooling == "decoder_start":
            start = torch.full((embeds.shape[0], 1), self.framing["decoder_start_token_id"], dtype=torch.long)
            out = self.body(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=start, use_cache=False)
            pooled = out.last_hidden_state[:, 0]
        else:
            if family in ("t5", "bart"):  # encoder_mean
                hidden = self.body.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            else:
                extra = {"use_cache": False} if family == "gpt2" else {}
                hidden = self.body(inputs_embeds=embeds, attention_mask=mask, **extra).last_hidden_state
            if pooling == "cls":
                pooled = hidden[:, 0]
            elif pooling == "last":  # the last real position (right padding)
                pooled = hidden[torch.arange(hidden.shape[0]), mask.sum(1) - 1]
            else:  # mean over real positions
                w = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1)
        return self.head(pooled.to(self.head.weight.dtype))

    @torch.no_grad()
    def logits(self, sequences: list) -> torch.Tensor:
        """Logits (n, labels) of raw sequences (symbols or value arrays)."""
        return self(**self.batch(sequences))

    def predict(self, sequences: list) -> list[str]:
        """The predicted label name of each sequence."""
        return [self.labels[i] for i in self.logits(sequences).argmax(-1).tolist()]
