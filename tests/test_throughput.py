"""`textile-sorter bench-train`: training-step throughput of a backbone + heads."""

from __future__ import annotations

import math

import torch

from sorting.cli import main
from sorting.training.throughput import training_throughput

torch.set_num_threads(1)


def test_throughput_times_real_training_steps_on_the_cpu() -> None:
    r = training_throughput("tiny", batch=4, input_size=32, steps=2, warmup=1, device="cpu")
    assert r.device == "cpu" and r.batch == 4 and r.steps == 2 and not r.amp
    assert math.isfinite(r.images_per_s) and r.images_per_s > 0
    assert r.to_dict()["backbone"] == "tiny"


def test_cli_compares_fp32_and_mixed_precision(capsys) -> None:
    assert main(["bench-train", "tiny", "--batch", "2", "--input-size", "32", "--steps", "1", "--device", "cpu",
                 "--compare"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "FP32" in lines[0] and "bf16 + channels-last" in lines[1]


def test_unknown_backbone_is_a_clear_error(capsys) -> None:
    assert main(["bench-train", "no_such_net", "--steps", "1", "--device", "cpu"]) != 0
    assert "no_such_net" in capsys.readouterr().err
