"""DDP: the same `train` command under torchrun (2 processes, gloo on CPU) stays in sync; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sorting.datasets.manifest import ManifestRow, write_manifest
from sorting.models.checkpoint import load_checkpoint
from sorting.training.distributed import DistContext, ShardedSampler, shard_indices, state_digest



def _ctx(rank: int, world: int) -> DistContext:
    return DistContext(rank=rank, world_size=world, local_rank=rank, device=torch.device("cpu"))


def test_sharded_sampler_splits_each_epoch_evenly_and_reshuffles() -> None:
    shards = [list(ShardedSampler(10, _ctx(r, 3), seed=1)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set(sum(shards, [])) == set(range(10))  # padded by repeating, nothing lost
    sampler = ShardedSampler(10, _ctx(0, 1), seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == list(range(10)) and list(sampler) != first
    weighted = ShardedSampler(4, _ctx(0, 1), weights=np.array([0.0, 0.0, 0.0, 1.0]))
    assert set(weighted) == {3}
    assert shard_indices(5, _ctx(1, 2)) == [1, 3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights_one_run_folder_and_one_mlflow_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(16):
        fibre, colour = ("cotton", "polyester")[i % 2], ("red", "blue")[(i // 2) % 2]
        img = np.full((20, 20, 3), (0, 0, 220) if colour == "red" else (220, 0, 0), np.uint8)
        if fibre == "polyester":
            img[::3] = 255
        cv2.imwrite(str(tmp_path / "img" / f"{i}.png"), img + rng.integers(0, 20, img.shape, dtype=np.uint8))
        rows.append(ManifestRow(f"img/{i}.png", fibre=fibre, colour=colour, split="val" if i % 4 == 0 else "train"))
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    out = tmp_path / "runs"
    store = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "MLFLOW_TRACKING_URI": store}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
        "-m", "sorting", "train", f"data.train=[{manifest}]", f"output_dir={out}", "model.input_size=32",
        "optim.epochs=2", "batch_size=4", "num_workers=0", "progress=false", "threads=1", "augment.preset=light",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run folder:") == 1  # only rank 0 reports
    [run] = list(out.iterdir())  # only rank 0 created a run folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["ranks_in_sync"]
    digest0, digest1 = metrics["weight_digests"]
    assert digest0 == digest1
    last = load_checkpoint(run / "last.pt").model
    assert state_digest(last) == digest0  # what rank 0 saved is what both ranks hold
    assert metrics["train_images"] == 12 and metrics["val"]["fibre"]["n"] == 4  # val gathered from both ranks
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=store)
    [tracked] = client.search_runs([e.experiment_id for e in client.search_experiments()])  # rank 0 alone logs
    assert tracked.data.metrics["val/fibre/accuracy"] == pytest.approx(metrics["val"]["fibre"]["accuracy"])
