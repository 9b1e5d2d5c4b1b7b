"""The recipe's shared section base, the run-length bound, the result-neutral mark, and the `train`
section (the loop, its budget and its speed options), apart from the plug-in assembly in `schema`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# More optimizer steps than any run takes (a year at 30 steps a second); a warm-up longer is a mistake.
MAX_STEPS = 1_000_000_000
# Marks a field whose value changes speed or location, not results (see `result_neutral_keys`).
RESULT_NEUTRAL = {"result_neutral": True}


def added_later(value_before: object) -> dict:
    """Marks a result-defining field added after runs were recorded without it: such a run computed as
    `value_before` does (see `result_defining`), so setting that value resumes it or keeps it done."""
    return {"absent_means": value_before}


class Section(BaseModel):
    # attribute docstrings become each field's `description`: `peftx recipe show` prints them
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class EarlyStop(Section):
    """Stop a run when validation accuracy stops improving (`train.steps` / `epochs` stay the cap)."""

    patience: int = Field(3, ge=1)
    """Evaluations in a row without a new best (by more than min_delta) that end the run."""
    min_delta: float = Field(0.0, ge=0, lt=1, allow_inf_nan=False)
    """How much (accuracy as a fraction: 0.005 is half a point) an evaluation must beat the best by to
    count as an improvement."""


class TrainSection(Section):
    """The training loop."""

    optimizer: Literal["adamw", "adamw8bit", "lion8bit", "paged_adamw8bit"] = "adamw"
    """adamw (torch); the others are bitsandbytes' 8-bit optimizers: state in 8 bits (about 2 bytes per
    trained parameter instead of 8). Lion usually wants a 3-10x smaller lr; paged_adamw8bit pages its
    state to CPU memory under GPU memory pressure (on a CPU it is plain adamw8bit)."""
    lr: float = Field(5e-4, gt=0, allow_inf_nan=False)
    """Peak learning rate (after warm-up)."""
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False)
    """Decoupled weight decay of trained matrices (biases, norms and vectors do not decay)."""
    batch_size: int = Field(32, ge=1)
    """Examples per micro-batch in each process (the global batch is this x processes x grad_accum)."""
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    steps: int | None = Field(None, ge=1)
    """Optimizer steps; give either steps or epochs."""
    epochs: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Passes over the training split, counted in global batches; give either steps or epochs."""
    warmup: float = Field(0.06, ge=0, allow_inf_nan=False)
    """Warm-up length: a fraction of all steps if < 1, else a number of steps."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warm-up."""
    clip_grad_norm: float | None = Field(1.0, gt=0, allow_inf_nan=False)
    """Clip the global gradient norm to this before each optimizer step; null: no clipping."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast where the hardware multiplies bf16 fast (CUDA with bf16, CPUs with
    AVX512-BF16 or AMX), else fp32."""
    eval_every: int = Field(200, ge=1)
    """Evaluate on the validation split every this many steps (and at the end)."""
    eval_batch_size: int = Field(256, ge=1)
    """Most examples in an evaluation batch."""
    eval_batch_tokens: int | None = Field(4096, ge=1)
    """Most padded tokens in an evaluation batch (batches are cut from length-sorted examples, so long
    examples come in smaller batches: less padding; None: always eval_batch_size examples)."""
    select: Literal["best", "last"] = "best"
    """Which weights the final test uses: best validation accuracy, or the last step."""
    group_by_length: bool = True
    """Batch sequences of similar length together (less padding)."""
    log_every: int = Field(10, ge=1)
    """Report training loss, learning rate and speed every this many steps."""
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: far less
    memory for activations, about one more forward pass of time."""
    # Speed options (peftx/training/speed/). Each gives the plain path's loss; tests/training/test_speed.py checks it.
    fused_lora: bool = True
    """Run each LoRA layer as one product with the merged weight W + s·B·A and take the LoRA gradients
    in BLAS's fast layout (same result to float rounding; ~1.25x faster LoRA steps on CPU)."""
    recompute_activations: bool = Field(True, json_schema_extra=RESULT_NEUTRAL)
    """A fused LoRA layer right after an activation (the feed-forward's second matrix) keeps the
    activation's input, which the activation keeps anyway, instead of its output, and computes the
    output again in backward: exact, one more element-wise pass, and about a quarter less memory kept for
    backward (4 of MiniLM's ~17 hidden-sized tensors per layer; more for GPT-2's composite GELU). Applies
    with fused_lora, not under gradient_checkpointing or compile."""
    skip_unpooled_rows: bool = Field(True, json_schema_extra=added_later(False))
    """The backbone's last layer computes only the row the pooling reads ([CLS], or the last token), with
    keys and values of every row: the same outputs to float rounding, and 5/6 of a 6-layer model's last
    layer less work. Applies to `cls` and `last` pooling on BERT, GPT-2 and LLaMA-shaped models, not
    under gradient_checkpointing or compile."""
    fast_dropout: bool | None = None
    """Draw dropout masks 15 bits per element instead of one Bernoulli draw each (same distribution,
    probability quantised to 1/32768; ~1.15x faster steps on CPU in fp32, more in bf16). None: on
    for CPUs, off for GPUs, whose own dropout is already fast. Off under gradient_checkpointing (its
    recomputed forward must draw the same masks)."""
    pad_to_multiple: int | None = Field(None, ge=1)
    """Round each padded batch width up to a multiple of this. None: 8 on GPUs (tensor-core shapes), 1 on
    CPUs, where rounding only adds work."""
    threads: int | str | None = Field(None, json_schema_extra=RESULT_NEUTRAL)
    """Threads for CPU math (torch.set_num_threads); None: PyTorch's default, one per core. On a machine
    shared with other jobs one thread can be 2x faster; auto times both every 100 steps and keeps the
    faster (reproducible to float rounding only)."""
    keep_freed_memory: bool | None = Field(None, json_schema_extra=RESULT_NEUTRAL)
    """How the C library's allocator (glibc) treats a step's large tensors. False: each block of 2 MiB
    or more gets its own mapping and goes back to the OS when freed (lean: the demo's steps peak ~0.4 GB
    lower at ~0.97x the speed). True: blocks up to 256 MiB come from the heap and up to 1 GiB of freed
    heap is kept, so nothing is page-faulted in twice (for the fragmented heap's memory). None: False
    on CPUs, untouched on GPUs. Process-wide, from the start of training; docs/low-memory.md has the
    trade as measured."""
    compile: bool = False
    """torch.compile the model (dynamic shapes). Fuses element-wise work; costs minutes of compiling up
    front, so it pays only on long runs (see docs/speed.md)."""
    checkpoint_every: int | Literal["auto"] | None = Field("auto", json_schema_extra=RESULT_NEUTRAL)
    """Write a resumable checkpoint (trained weights, optimizer, schedule, data position, random states)
    into the run directory every this many steps. auto: at every evaluation and at least every 5
    minutes of training. null: never. The last checkpoint and the best evaluation's are kept."""
    early_stop: EarlyStop | None = None
    """Stop when validation accuracy is flat for `patience` evaluations; `steps` (or `epochs`) is then the
    cap, and the learning-rate schedule is laid out over it. result.json records whether the run stopped
    flat or at its cap. null: always train to the end."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A step whose gradient norm is not finite (inf, nan): stop the run as diverged, naming the step, or
    skip that update and count it (10 skipped in a row still stop the run)."""

    @field_validator("checkpoint_every")
    @classmethod
    def _checkpoint_every(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, int) and not isinstance(v, bool) and v < 1:
            raise ValueError(f"expected a number of steps (1 or more), 'auto' or null, got {v!r}")
        return v

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | str | None) -> int | str | None:
        if v is not None and v != "auto" and not (isinstance(v, int) and v >= 1):
            raise ValueError(f"expected a number of threads (1 or more), 'auto' or null, got {v!r}")
        return v

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainSection:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        if self.warmup >= 1 and self.warmup != int(self.warmup):
            raise ValueError(f"warmup: {self.warmup} is neither a fraction (< 1) nor a whole number of steps")
        if self.warmup >= 1 and self.steps is not None and self.warmup > self.steps:
            raise ValueError(f"warmup: {int(self.warmup)} steps is longer than the run (steps: {self.steps})")
        if self.warmup > MAX_STEPS:  # e.g. 1e30 with epochs: the learning rate would stay near 0 all run
            raise ValueError(f"warmup: {self.warmup:g} steps is more than any run takes (at most {MAX_STEPS:,})")
        return self
