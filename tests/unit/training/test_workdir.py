"""finetune's folders in the local cache: the same key reuses its trained folder, new keys keep only the last few."""

import os

import pytest

from slmflow.training.trainer import TrainingResult
from slmflow.training.workdir import KEEP, STALE_STAGING_SECONDS, finetune_folder, prune, train_once


def fake_training(calls: list):
    """Writes what the trainer writes (checkpoint/, adapter/, the Trainer's scratch) and counts its calls."""

    def train(work_dir):
        calls.append(work_dir)
        for name in ("checkpoint", "adapter", "trainer"):
            (work_dir / name).mkdir(parents=True)
        (work_dir / "checkpoint" / "model.safetensors").write_text(f"weights {len(calls)}")
        history = ({"loss": 2.5, "step": 1}, {"loss": 1.5, "step": 2})
        return TrainingResult(
            work_dir / "checkpoint", work_dir / "adapter", 36, 4, 2, 1.5, 1.7, 3.0, 900, 512.0, history
        )

    return train


def test_the_same_key_reuses_the_trained_folder_and_a_new_key_trains(tmp_path):
    calls: list = []
    folder = finetune_folder(tmp_path, "a" * 64)
    first, reused = train_once(folder, fake_training(calls))
    assert not reused and len(calls) == 1 and folder == tmp_path / "finetune" / ("a" * 32)
    assert first.checkpoint_dir == folder / "checkpoint" and first.adapter_dir == folder / "adapter"
    assert not (folder / "trainer").exists()  # the Trainer's scratch is not kept
    again, reused = train_once(folder, fake_training(calls))
    assert reused and len(calls) == 1  # not trained again
    assert again == first and again.history == ({"loss": 2.5, "step": 1}, {"loss": 1.5, "step": 2})
    assert (again.checkpoint_dir / "model.safetensors").read_text() == "weights 1"
    _, reused = train_once(finetune_folder(tmp_path, "b" * 64), fake_training(calls))
    assert not reused and len(calls) == 2


def test_a_training_that_fails_leaves_no_folder_to_reuse(tmp_path):
    def broken(work_dir):
        (work_dir / "checkpoint").mkdir(parents=True)
        raise RuntimeError("killed mid-training")

    folder = finetune_folder(tmp_path, "c" * 64)
    with pytest.raises(RuntimeError, match="killed mid-training"):
        train_once(folder, broken)
    assert not folder.exists() and list(folder.parent.iterdir()) == []  # the staging folder went with it
    _, reused = train_once(folder, fake_training([]))
    assert not reused


def test_only_the_last_few_folders_are_kept_and_never_the_current_one(tmp_path):
    root = tmp_path / "finetune"
    folders = []
    for age in range(6):  # folder 0 the newest
        folder = root / f"key{age}"
        folder.mkdir(parents=True)
        os.utime(folder, (1000 - age, 1000 - age))
        folders.append(folder)
    current = folders[5]  # the oldest by time, but the one this run uses
    removed = prune(root, current, now=2000)
    assert sorted(removed) == sorted(folders[KEEP - 1 : 5])
    assert sorted(root.iterdir()) == sorted([current, *folders[: KEEP - 1]])
    assert prune(root, current, now=2000) == []  # already bounded


def test_staging_folders_of_killed_jobs_go_once_they_are_stale(tmp_path):
    root = tmp_path / "finetune"
    live, stale = root / ".key-live", root / ".key-stale"
    for folder in (live, stale):
        folder.mkdir(parents=True)
    os.utime(live, (10_000, 10_000))
    os.utime(stale, (10_000 - STALE_STAGING_SECONDS - 1, 10_000 - STALE_STAGING_SECONDS - 1))
    assert prune(root, root / "current", now=10_000) == [stale]
    assert live.exists() and not stale.exists()
