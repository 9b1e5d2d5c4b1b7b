"""The tuner x family table of docs/methods.md's "Every peft tuner": every peft type through the `peft` method on
a tiny random model of each family (hidden 32, 2 layers), the tiny ListOps task, a few optimizer steps of
the library's own loop (`Trainer.step`).

A cell reads "ran: <trained tuner parameters>" when the model built, trained, the loss stayed finite and
only the tuner's parameters and the head moved; otherwise the one-line error peftx gives (shortened).
Configs are peft's defaults except where a default does not fit hidden size 32 (`SMALL`).

Usage:
    python scripts/peft_tuner_table.py                 # every peft type, markdown on stdout
    python scripts/peft_tuner_table.py --tuners loha,vera --steps 5
"""

from __future__ import annotations

import argparse
import copy
import re
import tempfile
import time
import warnings

import torch
from peft import PEFT_TYPE_TO_CONFIG_MAPPING

from peftx.errors import PeftxError
from peftx.recipe import validate_recipe
from peftx.training.job import TrainJob
from peftx.training.loop import Trainer
from peftx.training.session import open_session

TINY = {
    "bert": ("bert-base-uncased", dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=128)),
    "gpt2": ("gpt2", dict(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=127,
                          eos_token_id=127)),
    "t5": ("t5-small", dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                            num_heads=4)),
    "bart": ("facebook/bart-base", dict(vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2,
                                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                        decoder_ffn_dim=64, max_position_embeddings=128)),
}  # fmt: skip
# peft defaults sized for hidden sizes of hundreds; these fit 32
SMALL = {
    "ADALORA": {"init_r": 4, "target_r": 2},
    "C3A": {"block_size": 16},
    "MISS": {"r": 8},
    "SHIRA": {"r": 2},
    "ROAD": {"group_size": 8},
    "VBLORA": {"vector_length": 8},
    "WAVEFT": {"n_frequency": 64},
    "BEFT": {"target_modules": ["attention"]},
}


def cell(family: str, tuner: str, steps: int) -> str:
    source, overrides = TINY[family]
    raw = {
        "name": "t",
        "model": {
            "family": family,
            "source": source,
            "pretrained": False,
            "config_overrides": copy.deepcopy(overrides),
        },
        "task": {"name": "listops", "preset": "tiny"},
        "method": {"name": "peft", "tuner": tuner.lower(), "config": SMALL.get(tuner, {})},
        "train": {"lr": 1e-2, "batch_size": 16, "steps": steps, "warmup": 0, "precision": "fp32"},
        "output": {"dir": tempfile.mkdtemp()},
    }
    try:
        recipe = validate_recipe(raw)
        session = open_session(recipe)
    except PeftxError as e:
        return short(str(e))
    model = session.model
    infos = model.param_infos()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    splits = session.splits(["train", "validation"])
    trainer = Trainer(
        TrainJob(model, splits["train"], splits["validation"], recipe.train, recipe.seed, session.accelerator)
    )
    losses = [trainer.step().loss.item() for _ in range(steps)]  # the library's own optimizer steps
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    tuner_params = sum(p.numel() for n, p in model.named_parameters() if n in trainable and infos[n].role == "adapter")
    ok = moved <= trainable and any(infos[n].role == "adapter" for n in moved) and all(x == x for x in losses)
    return f"ran: {tuner_params:,}" if ok else f"trained, but moved {sorted(moved - trainable)[:1]}"


def short(message: str) -> str:
    """The reason of an error, without its recipe location and peft's long tails."""
    message = re.sub(r"^(<recipe>: )?method(\.config)?: ", "", message)
    message = re.sub(r"^peft \w+ on \w+: ", "", message)
    if "Conv1D" in message:
        return "peft: no Conv1D layer"
    return message.split(". ")[0][:160].replace("|", "/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuners", help="comma-separated peft types (default: all)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    tuners = args.tuners.upper().split(",") if args.tuners else [t.value for t in PEFT_TYPE_TO_CONFIG_MAPPING]
    t0 = time.perf_counter()
    cells = {tuner: [cell(f, tuner, args.steps) for f in TINY] for tuner in tuners}
    print("| peft type | " + " | ".join(TINY) + " |")
    print("|---|" + "---|" * len(TINY))
    for tuner, row in cells.items():
        if any(c.startswith("ran") for c in row):
            print(f"| {tuner} | " + " | ".join(row) + " |")
    print("\nRefused on every family (the one-line error's reason):\n")
    for tuner, row in cells.items():
        if not any(c.startswith("ran") for c in row):
            print(f"- {tuner}: {row[0].removeprefix(f'peft_type {tuner} ')}")
    print(
        f"\n{len(tuners)} tuners x {len(TINY)} families, {args.steps} steps each, in {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
