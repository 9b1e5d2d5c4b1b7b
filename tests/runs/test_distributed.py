"""Several processes: sharded samplers and evaluation, and real gloo ranks (torchrun) against one
process at the same global batch: the same examples at every step, the same learning rate, the same
metrics (dropout off; float rounding apart), every evaluation example counted once."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peftx.recipe import validate_recipe
from peftx.training.batching import LengthGroupedBatches, eval_batches, eval_shard, shard
from peftx.training.evaluation import infer
from peftx.training.global_batch import loss_term
from peftx.training.loop import total_steps
from peftx.training.session import make_accelerator
from tests.support.distributed_worker import SCENARIOS, run_scenario
from tests.support.helpers import build
from tests.support.tiny import tiny_recipe

ROOT = Path(__file__).resolve().parents[2]
LOSS_TOL = 1e-5  # float rounding: measured differences are ~2e-7 (gradients summed in another order)

# ---------------------------------------------------------------------------------- without processes


@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize(("n", "procs", "batch"), [(249, 2, 16), (225, 2, 8), (100, 3, 5), (97, 4, 8)])
def test_process_parts_of_each_step_make_the_one_process_batch(n, procs, batch, group_by_length):
    lengths = np.random.default_rng(n).integers(3, 90, size=n)
    one = LengthGroupedBatches(lengths, batch * procs, seed=7, group_by_length=group_by_length)
    ranks = [
        LengthGroupedBatches(lengths, batch, 7, group_by_length, num_processes=procs, process_index=r)
        for r in range(procs)
    ]
    for _epoch in range(3):  # each epoch reshuffles, alike in every process
        reference = list(one)
        parts = [list(r) for r in ranks]
        assert all(len(p) == len(reference) == len(one) for p in parts)  # one entry per step everywhere
        for step, whole in enumerate(reference):
            mine = [p[step] for p in parts]
            assert [i for m in mine for i in m] == whole  # contiguous parts, in rank order
            sizes = [len(m) for m in mine]
            assert max(sizes) <= batch and max(sizes) - min(sizes) <= 1


def test_a_global_batch_smaller_than_the_process_count_leaves_later_processes_empty():
    assert [shard([5, 6], 4, r) for r in range(4)] == [[5], [6], [], []]
    assert [shard(list(range(7)), 3, r) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(ValueError, match="process_index 2"):
        LengthGroupedBatches(np.ones(4), 2, 0, num_processes=2, process_index=2)


@pytest.mark.parametrize(("n", "procs"), [(500, 2), (1000, 3), (64, 2), (5, 4), (1, 2)])
def test_evaluation_shards_visit_each_example_once_with_equal_forward_counts(n, procs):
    lengths = np.random.default_rng(n).integers(3, 300, size=n)
    batches = eval_batches(lengths, batch_size=32, max_tokens=1000)  # token budgets: unequal batch sizes
    shards = [eval_shard(batches, procs, r) for r in range(procs)]
    assert len({len(s) for s in shards}) == 1  # the same number of forwards in every process
    seen = sorted(i for s in shards for b in s for i in b)
    assert seen == list(range(n))
    assert all(b in batches for s in shards for b in s if b)  # each one a budgeted batch


def test_epochs_count_global_batches():
    cfg = validate_recipe(tiny_recipe() | {"train": {"epochs": 2, "batch_size": 16, "grad_accum": 2}}).train
    assert total_steps(cfg, 256) == 16
    assert total_steps(cfg, 256, num_processes=2) == 8
    assert total_steps(cfg, 250, num_processes=4) == 4  # a partial global batch is a step


def test_process_loss_terms_average_to_the_global_mean():
    torch.manual_seed(0)
    logits, labels = torch.randn(25, 10), torch.randint(0, 10, (25,))
    parts = [slice(0, 13), slice(13, 25)]
    terms = [loss_term(logits[p], labels[p], len(labels[p]), 25, 2) for p in parts]
    torch.testing.assert_close(sum(terms) / 2, F.cross_entropy(logits, labels))
    stand_in = loss_term(logits[:1], labels[:1], 0, 25, 2)  # a process with no example of the batch
    assert stand_in.item() == 0.0


def test_evaluation_restores_the_model_mode():
    _, _, model, split = build(tiny_recipe("bert"))
    accelerator = make_accelerator("fp32")
    for training in (False, True):
        model.train(training)
        infer(model, split, 32, accelerator, max_tokens=300)
        assert model.training is training
        assert all(m.training is training for m in model.modules())


# ------------------------------------------------------------------------------------- real processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(procs: int, out: Path, env: dict[str, str]) -> dict:
    """Run every scenario of the worker in `procs` processes (torchrun); the main process's records."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "tests.support.distributed_worker"]
    done = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, env=os.environ | env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return json.loads(out.read_text())


def one_process_records() -> dict:
    """The same scenarios in this process (one process), as the worker's JSON would hold them."""
    return json.loads(json.dumps({name: run_scenario(**spec) for name, spec in SCENARIOS.items()}))


def assert_same_run(one: dict, many: dict, procs: int, loss_tol: float) -> None:
    assert many["world_size"] == procs and one["world_size"] == 1
    assert many["lr"] == one["lr"]  # every step, exactly: one schedule step per optimizer step
    assert len(many["seen"]) == len(one["seen"])
    for ours, theirs in zip(many["seen"], one["seen"]):
        if len(theirs) >= procs:
            assert ours == theirs
        else:  # processes past the batch's end ran one of its examples at weight 0
            assert set(ours) == set(theirs)
    for step, loss in one["loss"].items():
        assert many["loss"][step] == pytest.approx(loss, abs=loss_tol)
    assert many["initial_val"] == pytest.approx(one["initial_val"], abs=loss_tol)  # same weights, same batches
    for ours, theirs in [*zip(many["history"], one["history"]), (many["val"], one["val"]), (many["test"], one["test"])]:
        for key in ("val_accuracy", "accuracy"):
            if key in theirs:
                assert ours[key] == theirs[key]
        for key in ("val_loss", "loss"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], abs=loss_tol)
    n_val, n_test = (len(one[k]) for k in ("val_ids", "test_ids"))
    assert sorted(many["val_ids"]) == list(range(n_val))  # each example once, gathered from all processes
    assert sorted(many["test_ids"]) == list(range(n_test))
    counts = ("train_examples", "train_tokens", "global_batch", "steps")
    assert {k: many["outcome"][k] for k in counts} == {k: one["outcome"][k] for k in counts}  # summed over processes
    assert many["outcome"]["per_process_batch"] * procs == one["outcome"]["per_process_batch"]


def test_two_gloo_processes_train_and_evaluate_as_one(tmp_path):
    one = one_process_records()  # first: it also fills the dataset cache the processes read
    many = launch(2, tmp_path / "two.json", {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"})
    for name in SCENARIOS:
        assert many[name]["distributed_type"] == "DistributedType.MULTI_CPU"
        assert_same_run(one[name], many[name], 2, LOSS_TOL)


FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_VERSION": "1",
    "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
    "FSDP_USE_ORIG_PARAMS": "true",  # frozen and trained parameters in one unit
    "FSDP_AUTO_WRAP_POLICY": "SIZE_BASED_WRAP",
    "FSDP_MIN_NUM_PARAMS": "2000",  # tiny models: a unit per layer or so
}


@pytest.mark.gpu
def test_fsdp_processes_train_and_evaluate_as_one(tmp_path):
    """accelerate 1.15 runs FSDP only on GPUs (on CPU ranks it silently falls back to DDP)."""
    procs = min(2, torch.cuda.device_count())  # NCCL takes one GPU per process
    one = launch(1, tmp_path / "one.json", {})
    many = launch(procs, tmp_path / "fsdp.json", FSDP_ENV)
    for name in SCENARIOS:
        assert many[name]["distributed_type"] == "DistributedType.FSDP"
        assert_same_run(one[name], many[name], procs, 1e-4)  # GPU kernels vary with batch shapes
