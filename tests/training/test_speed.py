"""Speed options give the plain path's loss: padding exactly (to float rounding), fast dropout in
distribution, the whole fast loop (fused LoRA included) to within the stated tolerances. The fused LoRA
layer's own tests are in tests/methods/test_lora.py."""

from __future__ import annotations

import subprocess
import sys
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from peftx.recipe import validate_recipe
from peftx.runs.run import run
from peftx.training.builder import norm_params
from peftx.training.speed import FastDropout, ThreadTuner, attention_with_dropout, fast_dropout, prepare_model
from peftx.util.glibc import glibc
from tests.support.helpers import build
from tests.support.tiny import tiny_recipe

NO_DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "t5": {"dropout_rate": 0.0},
    "bart": {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_fast_dropout_keeps_the_distribution(dtype):
    torch.manual_seed(0)
    x = torch.ones(400, 1000, dtype=dtype, requires_grad=True)
    y = fast_dropout(x, 0.1)
    assert y.dtype == dtype
    dropped = (y == 0).float().mean().item()
    assert dropped == pytest.approx(0.1, abs=0.002)  # 400k draws: 5 standard deviations
    assert y.float().mean().item() == pytest.approx(1.0, abs=0.003)  # unbiased
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)  # the gradient goes through the same mask, scaled alike
    torch.testing.assert_close(x.grad[y != 0], y.detach()[y != 0])


def test_fast_dropout_scales_in_float32_math():
    """Kept elements are x / P(keep) rounded once: in bf16, a scale rounded first (1/0.9 -> 1.109375)
    would shrink every kept element by 0.16%."""
    torch.manual_seed(0)
    x = torch.randn(100_000, dtype=torch.bfloat16)
    y = fast_dropout(x, 0.1)
    kept = y != 0
    scale = 1 / (1 - round(0.1 * 32768) / 32768)
    assert torch.equal(y[kept], (x[kept].float() * scale).to(torch.bfloat16))


def test_fast_dropout_follows_torch_seed():
    """The masks come from torch's generator: the same seed gives the same masks (so a resumed run
    with its restored random state draws what the uninterrupted one drew)."""
    x = torch.ones(3000)
    torch.manual_seed(5)
    a = fast_dropout(x, 0.3)
    torch.manual_seed(5)
    b = fast_dropout(x, 0.3)
    assert torch.equal(a, b)
    assert not torch.equal(a, fast_dropout(x, 0.3))


def test_attention_with_dropout_zero_matches_sdpa():
    """Outputs and gradients of q, k and v, for boolean masks (padding, and one of a query's own),
    additive masks, no mask and causal attention."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False
    padding = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    padding[1, ..., 4:] = False
    additive = torch.zeros(2, 1, 5, 5, dtype=torch.float64).masked_fill(~mask, -1e9)
    grad = torch.randn(2, 3, 5, 8, dtype=torch.float64)
    for m, causal in ((mask, False), (padding, False), (additive, False), (None, False), (None, True)):
        ours = attention_with_dropout(q, k, v, m, 0.0, is_causal=causal)
        theirs = F.scaled_dot_product_attention(q, k, v, m, is_causal=causal)
        torch.testing.assert_close(ours, theirs)
        ours_grads = torch.autograd.grad(ours, (q, k, v), grad)
        torch.testing.assert_close(ours_grads, torch.autograd.grad(theirs, (q, k, v), grad))


def test_fast_dropout_mode_gives_the_same_expected_training_loss():
    """Training-mode loss with dropout is random; its mean over many draws is the same either way."""
    _, _, model, split = build(tiny_recipe("bert"))
    model.train()
    batch = split.collate(list(range(64)))
    y = batch.pop("labels")

    def losses(fast: bool) -> torch.Tensor:
        torch.manual_seed(1)
        out = []
        for _ in range(24):
            with FastDropout() if fast else torch.autograd.set_grad_enabled(True):
                out.append(F.cross_entropy(model(**batch), y).item())
        return torch.tensor(out)

    fast, plain = losses(True), losses(False)
    assert fast.std() > 0  # dropout is on
    stderr = (fast.var() / len(fast) + plain.var() / len(plain)).sqrt()
    assert abs(fast.mean() - plain.mean()) < 4 * stderr


@pytest.mark.parametrize("fam", ["bert", "gpt2"])
def test_fast_loop_gives_the_plain_loop_losses(tmp_path, fam):
    """Without dropout every speed option is exact: the same run with all of them on and all off
    logs the same validation losses (to 1e-4)."""
    results = {}
    for fast in (True, False):
        raw = tiny_recipe(fam, tmp_path / str(fast))
        raw["model"]["config_overrides"].update(NO_DROPOUT[fam])
        raw["model"]["head_dropout"] = 0.0
        raw["train"].update(
            fused_lora=fast,
            recompute_activations=fast,
            skip_unpooled_rows=fast,
            fast_dropout=fast,
            pad_to_multiple=None if fast else 8,
        )
        if not fast:
            raw["train"].update(eval_batch_tokens=None, eval_batch_size=32)
        results[fast] = run(validate_recipe(raw)).result
    for a, b in zip(results[True]["history"], results[False]["history"]):
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
    assert results[True]["metrics"]["test_loss"] == pytest.approx(results[False]["metrics"]["test_loss"], rel=1e-4)


@pytest.mark.slow
def test_compiled_model_gives_the_eager_loss(tmp_path):
    results = {}
    for compiled in (True, False):
        raw = tiny_recipe("bert", tmp_path / str(compiled))
        raw["model"]["config_overrides"].update(NO_DROPOUT["bert"])
        raw["model"]["head_dropout"] = 0.0
        raw["train"].update(compile=compiled)
        results[compiled] = run(validate_recipe(raw)).result
    assert results[True]["metrics"]["test_loss"] == pytest.approx(results[False]["metrics"]["test_loss"], rel=1e-3)


def test_auto_dtype_keeps_frozen_weights_in_bf16_when_training_in_bf16(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["train"]["precision"] = "bf16"
    _, _, model, split = build(raw)
    norms = norm_params(model)  # layer norms stay float32: their CPU kernels refuse mixed dtypes
    frozen = {n: p for n, p in model.named_parameters() if not p.requires_grad}
    assert all(p.dtype == torch.bfloat16 for n, p in frozen.items() if n not in norms)
    assert all(frozen[n].dtype == torch.float32 for n in norms if n in frozen) and norms
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # master weights
    _, _, reference, _ = build(tiny_recipe("bert"))  # same seed: same weights, all float32
    model.eval()
    reference.eval()
    batch = split.collate(list(range(32)))
    y = batch.pop("labels")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        stored = F.cross_entropy(model(**batch).float(), y).item()
        cast = F.cross_entropy(reference(**batch).float(), y).item()
    assert stored == pytest.approx(cast, rel=0.02)
    result = run(validate_recipe(raw)).result  # and a bf16 run trains end to end
    assert result["status"] == "completed" and result["precision"] == "bf16"


def test_token_budget_eval_batches_cover_every_example_once_within_budget():
    from peftx.training.batching import eval_batches

    lengths = torch.randint(3, 200, (500,)).numpy()
    batches = eval_batches(lengths, batch_size=64, max_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(500))
    assert all(len(b) <= 64 and (len(b) == 1 or len(b) * lengths[b].max() <= 1000) for b in batches)


def test_token_budget_evaluation_gives_the_same_logits():
    from peftx.training.evaluation import infer
    from peftx.training.session import make_accelerator

    _, _, model, split = build(tiny_recipe("bert"))
    accelerator = make_accelerator("fp32")
    model = accelerator.prepare_model(model, evaluation_mode=True)  # infer puts batches on its device
    fixed = infer(model, split, 32, accelerator)
    budget = infer(model, split, 256, accelerator, max_tokens=300)
    torch.testing.assert_close(budget, fixed, rtol=1e-4, atol=1e-5)


def test_thread_tuner_keeps_the_faster_thread_count(monkeypatch):
    threads = [4]  # a 4-core machine
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads[-1])
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    tuner = ThreadTuner("auto", every=10, probe=2)
    seconds = {4: 2.0, 1: 1.0}  # one thread is faster (a busy machine)
    used = []
    for step in range(14):
        tuner.choose(step)
        used.append(threads[-1])
        tuner.record(seconds[threads[-1]], work=100)
    # step 0 as is; steps 1-2 time 4 threads, 3-4 time one; then one thread, until steps 11-12 probe again
    assert used == [4, 4, 4, 1, 1, 1, 1, 1, 1, 1, 1, 4, 4, 1]
    assert ThreadTuner(2).candidates == [] and ThreadTuner(None).candidates == []


def test_threads_accepts_a_count_auto_or_null_and_names_the_key_otherwise():
    from peftx.errors import PeftxError

    for ok in (2, "auto", None):
        assert validate_recipe(tiny_recipe("bert") | {"train": {"steps": 1, "threads": ok}}).train.threads == ok
    with pytest.raises(PeftxError, match="train.threads: expected a number of threads"):
        validate_recipe(tiny_recipe("bert") | {"train": {"steps": 1, "threads": "many"}})


def test_fast_dropout_is_off_under_gradient_checkpointing():
    """Checkpointing recomputes the forward outside the step's context: masks must come from torch."""
    _, _, model, _ = build(tiny_recipe("bert"))
    cfg = validate_recipe(tiny_recipe("bert")).train
    assert prepare_model(model, cfg, torch.device("cpu")) is FastDropout
    checkpointed = cfg.model_copy(update={"gradient_checkpointing": True})
    assert prepare_model(model, checkpointed, torch.device("cpu")) is nullcontext
    assert prepare_model(model, cfg, torch.device("cuda")) is nullcontext  # GPUs' own dropout is fast


glibc_only = pytest.mark.skipif(glibc() is None, reason="glibc's allocator")

# Sets up the training loop's allocator (prepare_model with keep_freed_memory = argv[1]), then allocates
# and frees a 64 MiB tensor 10 times; prints the minor page faults that took, and how many MiB more the
# process holds after it than before.
_ALLOCATIONS = """
import os, resource, sys, torch
from peftx.recipe import TrainSection
from peftx.training.speed import prepare_model
keep = {"none": None, "false": False, "true": True}[sys.argv[1]]
prepare_model(torch.nn.Linear(2, 2), TrainSection(steps=1, keep_freed_memory=keep), torch.device("cpu"))
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
held = resident()
x = torch.ones(16 << 20); del x
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    x = torch.ones(16 << 20); del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, resident() - held)
"""


def _allocations(keep: str) -> tuple[int, float]:
    """(page faults, MiB held) of `_ALLOCATIONS` with keep_freed_memory = `keep`."""
    out = subprocess.run([sys.executable, "-c", _ALLOCATIONS, keep], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    faults, held = out.stdout.split()[-2:]
    return int(faults), float(held)


@glibc_only
@pytest.mark.parametrize("keep", ["none", "false"])
def test_freed_large_blocks_go_back_to_the_os_by_default(keep):
    """Lean by default on CPUs: a freed 64 MiB block is returned (its pages are faulted in anew next
    time: at least one fault per 2 MiB huge page), where glibc's own threshold would have risen to
    64 MiB after the first one and kept the rest in its heap."""
    faults, held = _allocations(keep)
    assert faults > 10 * 32 * 0.5
    assert abs(held) < 8, held


@glibc_only
def test_keep_freed_memory_stops_refaulting_large_blocks():
    """keep_freed_memory: true keeps a freed 64 MiB block in the heap for reuse, without page faults."""
    keep_faults, held = _allocations("true")
    lean_faults, _ = _allocations("false")
    assert keep_faults < lean_faults / 4, (keep_faults, lean_faults)
    assert held > 32, held  # the freed block's pages stay the process's


# Fills glibc's heap with 500 MiB of small blocks and frees all but the last (so the heap's top stays in
# use), then trims between "steps"; prints the MiB that went back to the OS.
_TRIM = """
import os, sys, torch
from peftx.training.speed import keep_freed_memory, return_freed_memory, trim_heap
(return_freed_memory if sys.argv[1] == "lean" else keep_freed_memory)()
resident = lambda: int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
blocks = [torch.ones(64 << 10) for _ in range(2000)]
del blocks[:-1]
before = resident()
trim_heap()
print(before - resident())
"""


@glibc_only
@pytest.mark.parametrize(("setting", "returned"), [("lean", True), ("keep", False)])
def test_the_heap_is_trimmed_between_steps_only_when_lean(setting, returned):
    out = subprocess.run([sys.executable, "-c", _TRIM, setting], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    freed = float(out.stdout.split()[-1])
    assert (freed > 400) is returned, freed


@pytest.mark.parametrize(
    ("method", "train", "routed"),
    [
        ({"name": "lora", "r": 4}, {}, True),
        ({"name": "lora", "r": 4}, {"recompute_activations": False}, False),
        ({"name": "lora", "r": 4}, {"gradient_checkpointing": True}, False),
        ({"name": "full"}, {}, False),  # no fused LoRA layer to make use of it
    ],
)
def test_activations_are_recomputed_only_for_fused_lora_layers(method, train, routed):
    raw = tiny_recipe("gpt2", method=method)
    raw["train"].update(train)
    recipe, _, model, _ = build(raw)
    prepare_model(model, recipe.train, torch.device("cpu"))
    activations = [m for n, m in model.named_modules() if n.endswith(".mlp.act")]
    assert activations and all(("forward" in vars(m)) == routed for m in activations)
