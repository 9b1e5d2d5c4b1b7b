"""Checkpoints carry their files' digests: a resumed run passes over a damaged checkpoint to the newest
intact one, and refuses in one line when none is intact."""

from __future__ import annotations

import pytest

from peftx.errors import PeftxError
from peftx.runs.directory import decide_run_dir
from peftx.training.checkpoints import CHECKPOINTS, _write_digests, damage, latest_good_checkpoint


def fake_checkpoint(run_dir, step: int):
    path = run_dir / CHECKPOINTS / f"step-{step:06d}"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (path / "loop.json").write_text(f'{{"step": {step}}}')
    _write_digests(path)
    return path


def test_the_newest_intact_checkpoint_is_chosen_and_the_damaged_one_named(tmp_path):
    old, new = fake_checkpoint(tmp_path, 2), fake_checkpoint(tmp_path, 4)
    assert damage(new) is None and latest_good_checkpoint(tmp_path) == (new, [])
    data = bytearray((new / "model.safetensors").read_bytes())
    data[100] ^= 0xFF  # one flipped byte
    (new / "model.safetensors").write_bytes(bytes(data))
    path, damaged = latest_good_checkpoint(tmp_path)
    assert path == old
    assert damaged == [f"{new}: model.safetensors does not match its sha256 (damaged after it was written)"]
    (old / "loop.json").unlink()
    assert latest_good_checkpoint(tmp_path) == (None, [damaged[0], f"{old}: loop.json is missing"])


def test_a_run_whose_checkpoints_are_all_damaged_refuses_to_resume_in_one_line(tmp_path, monkeypatch):
    path = fake_checkpoint(tmp_path, 2)
    (path / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr("peftx.runs.directory.plan_run_dir", lambda *a: ("resume", type("R", (), {"recipe": {}})()))
    monkeypatch.setattr("peftx.runs.directory.result_defining", lambda d: {})
    recipe = type("Recipe", (), {"to_dict": lambda self: {}})()
    with pytest.raises(PeftxError, match=r"model.safetensors does not match.*no intact checkpoint.*--overwrite") as e:
        decide_run_dir(tmp_path, recipe, overwrite=False, resume=True)
    assert "\n" not in str(e.value)
