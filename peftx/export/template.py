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


def _series_steps(input_ids: torch.Tensor, values: torch.Tensor, value: int, start: int, scaling: str):
    """Each example's time steps, left-aligned ((batch, steps, channels), steps per example); with
    scaling "instance" each example's channels standardised over their steps."""
    n = (input_ids == value).sum(1)  # (batch,)
    x = values[:, start : start + int(n.max())].float()
    if scaling == "instance":
        real = (torch.arange(x.shape[1], device=x.device)[None] < n[:, None]).unsqueeze(-1).float()
        count = real.sum(1, keepdim=True).clamp(min=1)
        loc = (x * real).sum(1, keepdim=True) / count
        x = (x - loc) / ((((x - loc) * real) ** 2).sum(1, keepdim=True) / count + 1e-5).sqrt()
    return x, n


def _layout(count: torch.Tensor, framing: list, index: dict[str, int]):
    """Positions of `count` body vectors between the framing: (each one's body index, its kind as
    pad / start / end / value ids), both (batch, width)."""
    width = int(framing[0]) + int(count.max()) + int(framing[1])
    r = torch.arange(width, device=count.device)[None] - int(framing[0])  # (1, width)
    ids = torch.full((len(count), width), index["pad"], dtype=torch.long, device=count.device)
    ids[(r >= 0) & (r < count[:, None])] = index["value"]
    if framing[0]:
        ids[:, 0] = index["start"]
    if framing[1]:
        ids[r.expand_as(ids) == count[:, None]] = index["end"]
    return r.clamp(min=0).expand_as(ids), ids


class Patches(nn.Module):
    """Input kind "patches": a series' steps (padded at the end by repeating the last one `patch_stride`
    times) cut into patches of `patch_len` every `patch_stride` steps, each through `proj`: all
    channels in one patch ("mixed"), or each channel's patches in turn plus its `channel` vector
    ("independent"); `position` rows added per patch where there are any. Returns the embeddings and
    the new, shorter attention mask."""

    TENSORS = ("table", "proj.weight", "proj.bias", "channel", "position")
    SETTINGS = ("patch_len", "patch_stride", "patch_channels", "patch_scaling", "patch_framing")

    def __init__(self, tensors: dict[str, torch.Tensor], settings: dict, index: dict[str, int]) -> None:
        super().__init__()
        for name in ("table", "channel", "position"):
            self.register_buffer(name, tensors[name])
        weight = tensors["proj.weight"]  # (hidden, patch numbers)
        self.proj = nn.Linear(weight.shape[1], weight.shape[0])
        self.proj.load_state_dict({"weight": weight, "bias": tensors["proj.bias"]})
        self.len, self.stride = settings["patch_len"], settings["patch_stride"]
        self.independent = settings["patch_channels"] == "independent"
        self.scaling, self.framing, self.index = settings["patch_scaling"], settings["patch_framing"], index

    def forward(self, input_ids: torch.Tensor, values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x, n = _series_steps(input_ids, values, self.index["value"], int(self.framing[0]), self.scaling)
        p = (torch.div(n + self.stride - self.len, self.stride, rounding_mode="floor") + 1).clamp(min=1)
        t = torch.minimum(torch.arange((int(p.max()) - 1) * self.stride + self.len)[None], n[:, None] - 1)
        cuts = x.gather(1, t.unsqueeze(-1).expand(-1, -1, x.shape[2])).unfold(1, self.len, self.stride)
        if self.independent:  # (batch, channels x patches, hidden), channel after channel
            vec, count = (self.proj(cuts) + self.channel).transpose(1, 2).flatten(1, 2), p * x.shape[2]
        else:
            vec, count = self.proj(cuts.flatten(2)), p  # (batch, patches, hidden)
        r, ids = _layout(count, self.framing, self.index)
        c, j = (r // p[:, None], r % p[:, None]) if self.independent else (torch.zeros_like(r), r)
        at = (c * cuts.shape[1] + j).clamp(max=vec.shape[1] - 1)
        body = vec.gather(1, at.unsqueeze(-1).expand(-1, -1, vec.shape[-1]))
        if len(self.position):
            body = body + self.position[j.clamp(max=len(self.position) - 1)]
        framing = self.table[ids.clamp(max=self.index["end"])]
        return torch.where((ids == self.index["value"]).unsqueeze(-1), body, framing), (ids != self.index["pad"]).long()


class Digits(nn.Module):
    """Input kind "digits": each value as a sign and `digits_integers + digits_decimals` digits of
    round(|v| x 10^decimals) (the point implied), a step's channels in turn, then ","; each token
    embedded as its row of `table` (framing, then "0".."9", "+", "-", ","). Returns the embeddings and
    the new, longer attention mask."""

    TENSORS = ("table",)
    SETTINGS = ("digits_integers", "digits_decimals", "digits_scaling", "digits_framing")

    def __init__(self, tensors: dict[str, torch.Tensor], settings: dict, index: dict[str, int]) -> None:
        super().__init__()
        self.register_buffer("table", tensors["table"])  # (3 + 13, hidden)
        self.integers, self.decimals = settings["digits_integers"], settings["digits_decimals"]
        self.scaling, self.framing, self.index = settings["digits_scaling"], settings["digits_framing"], index

    def forward(self, input_ids: torch.Tensor, values: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x, n = _series_steps(input_ids, values, self.index["value"], int(self.framing[0]), self.scaling)
        width, first = self.integers + self.decimals, self.index["end"] + 1  # symbol rows follow the framing
        q = (x.abs() * 10**self.decimals).round().clamp(max=10**width - 1).long()
        digits = first + (q.unsqueeze(-1) // 10 ** torch.arange(width - 1, -1, -1)) % 10
        sign = torch.where(x < 0, first + 11, first + 10).unsqueeze(-1)  # "-" or "+"
        step = torch.cat([sign, digits], -1).flatten(2)  # (batch, steps, channels x (1 + width))
        step = torch.cat([step, torch.full_like(step[..., :1], first + 12)], -1)  # "," ends each step
        r, ids = _layout(n * step.shape[-1], self.framing, self.index)
        tokens = step.flatten(1).gather(1, r.clamp(max=step[0].numel() - 1))
        return self.table[torch.where(ids == self.index["value"], tokens, ids)], (ids != self.index["pad"]).long()


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
INPUT_KINDS = {
    "table": IndexTable,
    "linear": LinearValues,
    "intensity_bins": IntensityBins,
    "patches": Patches,
    "digits": Digits,
}
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
        self.objective = self.task.get("objective", {"kind": "classification"})
        # regression heads answer in the targets' units: times their training deviation, plus their mean
        self.output_loc, self.output_scale = tensors.get("output_scale.loc"), tensors.get("output_scale.scale")

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
        """Outputs of a batch as `batch` makes it: logits (batch, labels), or values in the targets'
        units (regression; forecasting: (batch, horizon x channels), time-major)."""
        forecasting, norm = self.objective["kind"] == "forecasting" and values is not None, None
        if forecasting:  # each example's context normalised per channel over its real positions (RevIN)
            real = (input_ids == self.index["value"]).unsqueeze(-1).float()
            n = real.sum(1, keepdim=True).clamp(min=1)
            loc = (values * real).sum(1, keepdim=True) / n
            scale = ((((values - loc) * real) ** 2).sum(1, keepdim=True) / n + 1e-5).sqrt()
            values, norm = (values - loc) / scale, (loc, scale)
        embeds, mask = self.input(input_ids, values), attention_mask  # (batch, seq, hidden)
        if isinstance(embeds, tuple):  # a layer that changes the length (patches, digits) gives its mask
            embeds, mask = embeds
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
        out = self.head(pooled.to(self.head.weight.dtype))
        if self.output_scale is not None:
            out = out * self.output_scale + self.output_loc
        if norm is not None:
            out = (out.float().reshape(len(out), -1, len(self.labels)) * norm[1] + norm[0]).flatten(1)
        return out

    @torch.no_grad()
    def logits(self, sequences: list) -> torch.Tensor:
        """Outputs (n, ...) of raw sequences (symbols or value arrays), as `forward` gives them."""
        return self(**self.batch(sequences))

    def predict(self, sequences: list) -> list:
        """Each sequence's answer: its label name (classification), the label names present
        (multilabel: probability above 0.5), its target value(s) (regression), or a forecast as
        (horizon, channels) nested lists."""
        out, kind = self.logits(sequences), self.objective["kind"]
        if kind == "multilabel":
            return [[self.labels[i] for i in row.nonzero().flatten().tolist()] for row in out > 0]
        if kind == "regression":
            return [row if len(row) > 1 else row[0] for row in out.tolist()]
        if kind == "forecasting":
            return out.reshape(len(out), -1, len(self.labels)).tolist()
        return [self.labels[i] for i in out.argmax(-1).tolist()]
