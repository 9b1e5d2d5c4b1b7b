"""The torch modules of the series adapters `patch_linear` and `digits` (their configs import no torch).

Both change the sequence's length: a batch arrives with one VALUE position per time step (framed by
the family's start/end positions, right-padded), and leaves as patches (fewer positions) or as digit
tokens (more). So their `forward` returns `(embeds, attention_mask)` for the new positions, and
`max_input_length(positions)` tells the batching how many time steps fit the backbone's positions.
The exported template (`peftx.export.template`, kinds "patches" and "digits") repeats these steps in
plain torch; a test holds the two to 1e-5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from peftx.inputs.base import ExportedInput
from peftx.spec.index_space import BOS, EOS, NUM_FRAMING, PAD, VALUE

if TYPE_CHECKING:
    from peftx.spec.input_spec import InputSpec

DIGIT_SYMBOLS = (*(str(d) for d in range(10)), "+", "-", ",")  # shared index 3 + i
PLUS, MINUS, COMMA = (NUM_FRAMING + DIGIT_SYMBOLS.index(s) for s in ("+", "-", ","))


def series_steps(batch: dict[str, torch.Tensor], start: int, scaling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's time steps, left-aligned: ((batch, steps, channels) float32, steps per example).

    Args:
        start: positions before the first step (1 with a start token, else 0).
        scaling: "instance": each example and channel standardised over its real steps (mean 0,
            deviation 1, as RevIN does); "none": as they come.
    """
    n = (batch["input_ids"] == VALUE).sum(1)  # (batch,)
    x = batch["values"][:, start : start + int(n.max())].float()  # (batch, steps, channels)
    if scaling == "instance":
        real = (torch.arange(x.shape[1], device=x.device) < n[:, None]).unsqueeze(-1).float()
        count = real.sum(1, keepdim=True).clamp(min=1)
        loc = (x * real).sum(1, keepdim=True) / count
        scale = ((((x - loc) * real) ** 2).sum(1, keepdim=True) / count + 1e-5).sqrt()
        x = (x - loc) / scale
    return x, n


def layout(count: torch.Tensor, bos: bool, eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The new positions of each example: `count` body positions between the framing.

    Returns:
        (index of each position in the body, clamped to 0 off it; (batch, width)), (what each
        position is: PAD / BOS / EOS / VALUE; (batch, width)).
    """
    width = int(bos) + int(count.max()) + int(eos)
    r = torch.arange(width, device=count.device).unsqueeze(0) - int(bos)  # (1, width)
    body = (r >= 0) & (r < count[:, None])  # (batch, width)
    ids = torch.full(body.shape, PAD, dtype=torch.long, device=count.device)
    ids[body] = VALUE
    if bos:
        ids[:, 0] = BOS
    if eos:
        ids[r.expand_as(ids) == count[:, None]] = EOS
    return r.clamp(min=0).expand_as(ids), ids


class PatchInput(nn.Module):
    """Patches of `patch_len` steps every `stride` steps (the series padded at its end by repeating its
    last step `stride` times, as GPT4TS does), each projected to the hidden size.

    `mixed`: a patch holds every channel (patch_len x channels numbers), one position per patch.
    `independent`: each channel's patches are positions of their own (channel 1's patches, then
    channel 2's ...), through one shared projection of patch_len numbers plus a learned vector per
    channel.

    Args:
        framing: module mapping {input_ids: PAD/BOS/EOS} to vectors.
        like: the backbone's embedding module (output dtype only; not registered).
        positions: rows of a learned position table added to each patch (None: the backbone's own).
    """

    def __init__(
        self,
        channels: int,
        patch_len: int,
        stride: int,
        independent: bool,
        scaling: str,
        hidden: int,
        framing: nn.Module,
        like: nn.Module,
        frame: tuple[bool, bool],
        positions: int | None,
    ) -> None:
        super().__init__()
        self.channels, self.patch_len, self.stride = channels, patch_len, stride
        self.independent, self.scaling, self.frame = independent, scaling, frame
        self.proj = nn.Linear(patch_len if independent else patch_len * channels, hidden)
        self.channel = nn.Parameter(torch.randn(channels, hidden) * 0.02) if independent else None
        self.position = nn.Parameter(torch.randn(positions, hidden) * 0.02) if positions else None
        self.framing = framing
        self._like = [like]

    def patches(self, n: torch.Tensor) -> torch.Tensor:
        """Patches of a series of n steps (at least one)."""
        return (torch.div(n + self.stride - self.patch_len, self.stride, rounding_mode="floor") + 1).clamp(min=1)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, n = series_steps(batch, int(self.frame[0]), self.scaling)  # (batch, steps, channels)
        p = self.patches(n)  # (batch,)
        span = (int(p.max()) - 1) * self.stride + self.patch_len
        t = torch.minimum(torch.arange(span, device=x.device)[None], n[:, None] - 1)  # repeat the last step
        x = x.gather(1, t.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # (batch, span, channels)
        cuts = x.unfold(1, self.patch_len, self.stride)  # (batch, patches, channels, patch_len)
        if self.independent:
            vec = self.proj(cuts) + self.channel  # (batch, patches, channels, hidden)
            vec = vec.transpose(1, 2).flatten(1, 2)  # (batch, channels x patches, hidden): channel-major
            count = p * self.channels
        else:
            vec, count = self.proj(cuts.flatten(2)), p  # (batch, patches, hidden)
        r, ids = layout(count, *self.frame)
        c, j = (r // p[:, None], r % p[:, None]) if self.independent else (torch.zeros_like(r), r)
        at = (c * cuts.shape[1] + j).clamp(max=vec.shape[1] - 1)  # (batch, width): row of `vec` (any, off the body)
        body = vec.gather(1, at.unsqueeze(-1).expand(-1, -1, vec.shape[-1]))
        if self.position is not None:
            body = body + self.position[j.clamp(max=len(self.position) - 1)]
        dtype = self._like[0].weight.dtype
        special = self.framing({"input_ids": ids.clamp(max=EOS)}).to(dtype)
        return torch.where((ids == VALUE).unsqueeze(-1), body.to(dtype), special), (ids != PAD).long()

    def max_input_length(self, positions: int) -> int:
        """The longest framed input (one position per step) whose patches fit in `positions`."""
        frame = int(self.frame[0]) + int(self.frame[1])
        most = (positions - frame) // (self.channels if self.independent else 1)
        if self.position is not None:
            most = min(most, len(self.position))
        return frame + max(1, (most - 1) * self.stride + self.patch_len - 1)

    def export_spec(self, spec: InputSpec) -> ExportedInput:
        """Kind "patches": the projection, the framing vectors, and the channel and position vectors
        (zeros where the layer has none)."""
        hidden = self.proj.out_features
        table = self.framing({"input_ids": torch.arange(NUM_FRAMING).unsqueeze(0)})[0]  # (3, hidden)
        tensors = {
            "table": table,
            "proj.weight": self.proj.weight,
            "proj.bias": self.proj.bias,
            "channel": self.channel if self.channel is not None else torch.zeros(1, hidden),
            "position": self.position if self.position is not None else torch.zeros(0, hidden),
        }
        settings = {
            "patch_len": self.patch_len,
            "patch_stride": self.stride,
            "patch_channels": "independent" if self.independent else "mixed",
            "patch_scaling": self.scaling,
            "patch_framing": list(self.frame),
        }
        return ExportedInput("patches", tensors, settings)


class DigitsInput(nn.Module):
    """Each value written at fixed precision as a sign token and `integers + decimals` digit tokens
    (the decimal point implied, as LLMTime writes numbers), a step's channels one after another and a
    comma after each step; the tokens embedded by `lookup` (the model's own vectors for "0".."9",
    "+", "-", ","; or a learned table).

    Args:
        lookup: maps shared indices (framing, then `DIGIT_SYMBOLS`) to vectors.
    """

    def __init__(
        self, channels: int, integers: int, decimals: int, scaling: str, lookup: nn.Module, frame: tuple[bool, bool]
    ) -> None:
        super().__init__()
        self.channels, self.integers, self.decimals = channels, integers, decimals
        self.scaling, self.frame, self.lookup = scaling, frame, lookup

    @property
    def tokens_per_step(self) -> int:
        return self.channels * (1 + self.integers + self.decimals) + 1

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, n = series_steps(batch, int(self.frame[0]), self.scaling)  # (batch, steps, channels)
        width = self.integers + self.decimals
        q = (x.abs() * 10**self.decimals).round().clamp(max=10**width - 1).long()  # (batch, steps, channels)
        powers = 10 ** torch.arange(width - 1, -1, -1, device=x.device)
        digits = NUM_FRAMING + (q.unsqueeze(-1) // powers) % 10  # (batch, steps, channels, width)
        sign = torch.where(x < 0, MINUS, PLUS).unsqueeze(-1)
        step = torch.cat([sign, digits], -1).flatten(2)  # (batch, steps, channels x (1 + width))
        step = torch.cat([step, torch.full_like(step[..., :1], COMMA)], -1)  # (batch, steps, tokens per step)
        r, ids = layout(n * self.tokens_per_step, *self.frame)
        tokens = step.flatten(1).gather(1, r.clamp(max=step[0].numel() - 1))
        return self.lookup({"input_ids": torch.where(ids == VALUE, tokens, ids)}), (ids != PAD).long()

    def max_input_length(self, positions: int) -> int:
        """The longest framed input (one position per step) whose digit tokens fit in `positions`."""
        frame = int(self.frame[0]) + int(self.frame[1])
        return frame + max(1, (positions - frame) // self.tokens_per_step)

    def export_spec(self, spec: InputSpec) -> ExportedInput:
        """Kind "digits": the vector of every shared index (framing, then the digit symbols) and the
        number format."""
        ids = torch.arange(NUM_FRAMING + len(DIGIT_SYMBOLS)).unsqueeze(0)
        table = self.lookup({"input_ids": ids})[0]  # (16, hidden)
        settings = {
            "digits_integers": self.integers,
            "digits_decimals": self.decimals,
            "digits_scaling": self.scaling,
            "digits_framing": list(self.frame),
        }
        return ExportedInput("digits", {"table": table}, settings)
