"""The self-pretraining stage of `model.init: self_pretrained` (Amos et al., ICLR 2024, "Never Train
from Scratch"): before fine-tuning, the randomly initialised backbone is trained whole with its
family's own pretraining objective (`peftx.training.pretrain_objectives`) on the task's training
inputs alone (no labels, no other split), with its own steps, learning rate and seed
(`model.self_pretrain`).

The body it makes is cached under `$PEFTX_CACHE/self_pretrained/<digest>/` (`body.safetensors` and
`meta.json`: the loss before and after on fixed corrupted training sequences, the loss log, seconds),
keyed by everything that determines it: the backbone's configuration, the task's training inputs
(their sha256), the token each task index maps to, the objective and the stage's own fields. The run's
seed, method and training settings are not in the key, so every point of a sweep shares one body. A
file lock makes one process make it while others wait; a stopped stage goes on from its last
checkpoint (`<digest>.partial.pt`, every `checkpoint_every` steps and every 5 minutes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from filelock import FileLock, Timeout
from safetensors.torch import load_model, save_model
from transformers import PretrainedConfig

from peftx.errors import Diverged, PeftxError
from peftx.families import Family, SpecialIds
from peftx.inputs import InputContext
from peftx.inputs.layers import PretrainedVocabEmbedding
from peftx.inputs.pretrained_vocab import PretrainedVocabConfig, VocabMapping
from peftx.model.loading import build_backbone, load_config, load_tokenizer, resolve_family
from peftx.spec.input_spec import SymbolVocab
from peftx.training.batching import Split, make_split
from peftx.training.pretrain_objectives import IGNORE, PretrainHead, corrupt, objective_for, objective_loss
from peftx.util.cache import cache_root
from peftx.util.files import write_text_atomic

if TYPE_CHECKING:
    from peftx.recipe import RecipeBase
    from peftx.recipe.controls import SelfPretrainSection
    from peftx.tasks.base import TaskData

STAGE_VERSION = 1  # bump when the stage computes differently: older bodies are then not reused
BODY, META = "body.safetensors", "meta.json"
LOG_POINTS = 20  # entries of the stage's loss log
CHECKPOINT_SECONDS = 300.0
Log = Callable[[str], None]


@dataclass
class StageInputs:
    """What the stage reads, and the key of what it makes."""

    family: Family
    config: PretrainedConfig
    source: str
    objective: str
    tokens: list[list[int]]  # token ids of each task index, then the mask token, then the decoder start
    classes: int  # task indices (framing and symbols): the targets
    split: Split
    digest: str
    key: dict


def _data_sha256(ds) -> str:
    col = ds.data.column("tokens").combine_chunks()
    h = hashlib.sha256(np.ascontiguousarray(col.offsets.to_numpy()).tobytes())
    h.update(np.ascontiguousarray(col.values.to_numpy()).astype(np.int64).tobytes())
    return h.hexdigest()


def _extra_tokens(tokenizer, specials: SpecialIds, used: set[int], vocab: int) -> list[list[int]]:
    """The mask token (the tokenizer's own, else the first id nothing else uses) and the decoder start."""
    mask = getattr(tokenizer, "mask_token_id", None) if tokenizer is not None else None
    if mask is None or mask in used:
        mask = next(i for i in range(vocab) if i not in used)
    start = specials.decoder_start if specials.decoder_start is not None else specials.pad
    return [[mask], [start]]


def stage_inputs(recipe: RecipeBase, task: TaskData | None = None) -> StageInputs:
    """The stage's inputs and key for a recipe (its task loaded unless given).

    Raises:
        PeftxError: the task's inputs are not symbols, or its symbols have no tokens in the model.
    """
    m = recipe.model
    task = task if task is not None else recipe.task.load()
    spec = task.info.input_spec
    if not isinstance(spec, SymbolVocab):
        raise PeftxError(
            f"model.init: self_pretrained needs a task with discrete symbols; task {recipe.task.name} gives vectors"
        )
    config = load_config(m.source, m.config_overrides, m.trust_remote_code)
    family = resolve_family(m.source, config, m.family)
    tokenizer = load_tokenizer(m.source, False, m.trust_remote_code)
    with torch.device("meta"):
        shape_only = build_backbone(family, copy.deepcopy(config), m.source)
    specials = family.special_ids(config, tokenizer)
    ctx = InputContext(family, shape_only, tokenizer, specials, spec, family.hidden_size(config))
    mapping = recipe.input if isinstance(recipe.input, VocabMapping) else PretrainedVocabConfig()
    tokens = mapping.index_tokens(ctx)
    used = {t for row in tokens for t in row} | {i for i in (specials.pad, specials.bos, specials.eos) if i is not None}
    extra = _extra_tokens(tokenizer, specials, used, shape_only.get_input_embeddings().num_embeddings)
    max_length = family.max_positions(config)
    split = make_split(task.splits["train"], spec, specials, max_length, 1)
    objective = objective_for(family, config)
    section = m.self_pretrain.model_dump(mode="json")
    section.pop("checkpoint_every")  # when progress is saved, not what is computed
    cfg = config.to_dict()
    cfg.pop("transformers_version", None)
    key = {
        "version": STAGE_VERSION,
        "family": family.name,
        "config": cfg,
        "objective": objective,
        "tokens": tokens + extra,
        "max_length": max_length,
        "data_sha256": _data_sha256(task.splits["train"]),
        "self_pretrain": section,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return StageInputs(family, config, m.source, objective, tokens + extra, len(tokens), split, digest, key)


def stage_dir(digest: str) -> Path:
    """Where the body of one key is cached."""
    return cache_root() / "self_pretrained" / digest


def _complete(d: Path) -> bool:
    return (d / BODY).is_file() and (d / META).is_file()


# recipe (as plain data) -> digest of its body, for the builder to skip recomputing the key in a run
# that has just made sure of the body
_ENSURED: dict[str, str] = {}


def _recipe_id(recipe: RecipeBase) -> str:
    return json.dumps(recipe.to_dict(), sort_keys=True, default=str)


def ensure_self_pretrained(recipe: RecipeBase, log: Log | None = None, task: TaskData | None = None) -> dict:
    """Make the recipe's self-pretrained body unless it is cached (waiting for a process making it).

    Args:
        log: told what the stage does (waiting, resuming, its result).
        task: the recipe's task, if already loaded.

    Returns:
        The stage's record: key, objective, steps, loss before and after, loss log, seconds it took,
        and `reused` (found in the cache, not made now).

    Raises:
        PeftxError: the task or model does not suit the stage.
        Diverged: the stage's loss became non-finite.
    """
    inputs = stage_inputs(recipe, task)
    d = stage_dir(inputs.digest)
    d.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(d) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if log:
            log(f"self-pretraining: waiting for another process making body {inputs.digest}")
        lock.acquire()
    try:
        if _complete(d):
            meta, reused = json.loads((d / META).read_text(encoding="utf-8")), True
        else:
            meta, reused = _make(inputs, recipe.model.self_pretrain, d, log), False
    finally:
        lock.release()
    _ENSURED[_recipe_id(recipe)] = inputs.digest
    record = {k: v for k, v in meta.items() if k != "key_fields"} | {"reused": reused}
    if log:
        how = "reused" if reused else f"made in {meta['seconds']:.1f} s"
        log(
            f"self-pretraining ({meta['objective']}): {meta['loss_before']:.4g} -> {meta['loss_after']:.4g} "
            f"in {meta['steps']} steps, {how} (body {inputs.digest})"
        )
    return record


def load_self_pretrained(backbone: torch.nn.Module, recipe: RecipeBase) -> str:
    """Load the recipe's self-pretrained body into `backbone` (in place), making it first if needed.

    Returns:
        The body's digest (for the run's provenance).
    """
    digest = _ENSURED.get(_recipe_id(recipe))
    if digest is None or not _complete(stage_dir(digest)):
        digest = ensure_self_pretrained(recipe)["key"]
    missing, unexpected = load_model(backbone, str(stage_dir(digest) / BODY), strict=False)
    if missing or unexpected:
        raise PeftxError(
            f"model.init: self_pretrained: body {digest} does not fit the backbone ({[*missing, *unexpected][0]})"
        )
    return digest


def _make(inputs: StageInputs, sp: SelfPretrainSection, d: Path, log: Log | None) -> dict:
    """Run (or go on with) the stage, then write the body and its record into `d` atomically."""
    partial = d.parent / f"{d.name}.partial.pt"
    backbone, meta = _train(inputs, sp, partial, log)
    tmp = Path(tempfile.mkdtemp(dir=d.parent, prefix=f".{d.name}-"))
    try:
        save_model(backbone, str(tmp / BODY))
        write_text_atomic(tmp / META, json.dumps(meta | {"key_fields": inputs.key}, indent=1, default=str))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the body from other users of a shared cache
        os.replace(tmp, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    partial.unlink(missing_ok=True)
    return meta


def _device() -> torch.device:
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device


def _optimizer(backbone, head, sp: SelfPretrainSection):
    params = [*backbone.parameters(), *head.parameters()]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": sp.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=sp.lr)
    warm = int(sp.warmup * sp.steps)

    def factor(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (sp.steps - step) / max(1, sp.steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _fixed_batches(inputs: StageInputs, sp: SelfPretrainSection) -> list[tuple]:
    """The sequences (and their corruption) the loss is measured on before and after: fixed by the seed."""
    gen = torch.Generator().manual_seed(sp.seed + 1)
    n = len(inputs.split)
    idx = torch.randperm(n, generator=gen)[: min(sp.eval_examples, n)].tolist()
    out = []
    for i in range(0, len(idx), sp.batch_size):
        batch = inputs.split.collate(idx[i : i + sp.batch_size])
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out.append((corrupt(inputs.objective, ids, mask, inputs.classes, sp.mask_prob, sp.span, gen), mask))
    return out


class _Stage:
    """The stage's trained state: the backbone, its prediction head, the optimizer, the schedule and the
    random streams (the stage's generator for batches and corruption; torch's for dropout)."""

    def __init__(self, inputs: StageInputs, sp: SelfPretrainSection, device: torch.device) -> None:
        self.inputs, self.sp, self.device = inputs, sp, device
        torch.manual_seed(sp.seed)  # initial weights and dropout follow the stage's own seed
        self.backbone = build_backbone(inputs.family, copy.deepcopy(inputs.config), inputs.source).float().to(device)
        self.head = PretrainHead(inputs.family.hidden_size(inputs.config), inputs.classes).to(device)
        self.lookup = PretrainedVocabEmbedding(self.backbone.get_input_embeddings(), inputs.tokens).to(device)
        self.opt, self.sched = _optimizer(self.backbone, self.head, sp)
        self.gen = torch.Generator().manual_seed(sp.seed)
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=sp.precision == "bf16")
        self.step, self.log, self.seconds, self.before = 0, [], 0.0, None

    def loss(self, c, mask: torch.Tensor) -> torch.Tensor:
        with self.autocast:
            table = self.lookup.table()  # (indices, hidden), tied to the backbone's embedding
            return objective_loss(
                self.inputs.objective, self.backbone, self.head, table, c.to(self.device), mask.to(self.device)
            )

    def fixed_loss(self, fixed: list[tuple]) -> float:
        """Mean loss per scored position over the fixed batches, without dropout."""
        self.backbone.eval()
        self.head.eval()
        total = count = 0.0
        with torch.no_grad():
            for c, mask in fixed:
                n = int((c.targets != IGNORE).sum())
                total += float(self.loss(c, mask)) * n
                count += n
        self.backbone.train()
        self.head.train()
        return total / max(count, 1.0)

    def train_step(self) -> float:
        sp, inputs = self.sp, self.inputs
        idx = torch.randint(len(inputs.split), (sp.batch_size,), generator=self.gen).tolist()
        batch = inputs.split.collate(idx)
        mask = batch["attention_mask"]
        c = corrupt(inputs.objective, batch["input_ids"], mask, inputs.classes, sp.mask_prob, sp.span, self.gen)
        loss = self.loss(c, mask)
        if not torch.isfinite(loss):
            raise Diverged(f"self-pretraining diverged at step {self.step + 1}; try a smaller model.self_pretrain.lr")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([*self.backbone.parameters(), *self.head.parameters()], 1.0)
        self.opt.step()
        self.sched.step()
        self.step += 1
        return loss.item()

    def save(self, path: Path, seconds: float) -> None:
        state = {
            "backbone": self.backbone.state_dict(),
            "head": self.head.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "generator": self.gen.get_state(),
            "rng": torch.get_rng_state(),
            "step": self.step,
            "log": self.log,
            "seconds": seconds,
            "loss_before": self.before,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a reader never sees half a checkpoint

    def restore(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.backbone.load_state_dict(state["backbone"])
        self.head.load_state_dict(state["head"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.step, self.log, self.seconds, self.before = (
            state["step"],
            state["log"],
            state["seconds"],
            state["loss_before"],
        )


def _train(
    inputs: StageInputs, sp: SelfPretrainSection, partial: Path, log: Log | None
) -> tuple[torch.nn.Module, dict]:
    """The stage from its start or its last checkpoint to its end: (the trained backbone on the CPU, its record)."""
    device = _device()
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the run's streams kept
        stage = _Stage(inputs, sp, device)
        fixed = _fixed_batches(inputs, sp)
        resumed_from = None
        if partial.is_file():
            stage.restore(partial)
            resumed_from = stage.step
            if log:
                log(f"self-pretraining: going on from step {stage.step} of {sp.steps}")
        if stage.before is None:
            stage.before = stage.fixed_loss(fixed)
        every, last_save = max(1, sp.steps // LOG_POINTS), time.perf_counter()
        while stage.step < sp.steps:
            loss = stage.train_step()
            if stage.step % every == 0 or stage.step == sp.steps:
                stage.log.append({"step": stage.step, "loss": loss})
            now = time.perf_counter()
            if stage.step < sp.steps and (
                stage.step % sp.checkpoint_every == 0 or now - last_save > CHECKPOINT_SECONDS
            ):
                stage.save(partial, stage.seconds + now - t0)
                last_save = now
        after = stage.fixed_loss(fixed)
    meta = {
        "key": inputs.digest,
        "objective": inputs.objective,
        "steps": sp.steps,
        "lr": sp.lr,
        "seed": sp.seed,
        "loss_before": stage.before,
        "loss_after": after,
        "log": stage.log,
        "seconds": stage.seconds + time.perf_counter() - t0,
        "resumed_from": resumed_from,
        "sequences": len(inputs.split),
        "data_sha256": inputs.key["data_sha256"],
    }
    return stage.backbone.cpu(), meta
