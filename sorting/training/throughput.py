"""Training throughput of a registry backbone with fibre + colour heads (``textile-sorter bench-train``).

Full forward + backward + AdamW steps on random batches, timed after warm-up steps (with CUDA
synchronisation), so the figure is the model's cost on the device, without data loading. Mixed
precision (bf16 autocast) and channels-last are the trainer's CUDA settings; compare both ways.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from sorting.models.multihead import MultiHeadClassifier
from sorting.models.registry import create_backbone
from sorting.training.distributed import pick_device


@dataclass(frozen=True)
class Throughput:
    """Images per second of training steps for one setting."""

    backbone: str
    device: str
    batch: int
    input_size: int
    amp: bool
    channels_last: bool
    steps: int
    images_per_s: float

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def training_throughput(backbone: str, *, batch: int = 64, input_size: int = 224, steps: int = 30, warmup: int = 3,
                        device: str = "auto", amp: bool = False, channels_last: bool = False,
                        pretrained: bool = False) -> Throughput:
    """Time ``steps`` training steps of ``backbone`` + two heads on random ``batch`` x 3 x ``input_size``^2 images."""
    dev = pick_device(device)
    bb = create_backbone(backbone, pretrained=pretrained)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = MultiHeadClassifier(bb.module, bb.feature_dim, {"fibre": 10, "colour": 12}).to(dev, memory_format=fmt)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, input_size, input_size, device=dev).to(memory_format=fmt)
    targets = {head: torch.randint(0, n, (batch,), device=dev) for head, n in (("fibre", 10), ("colour", 12))}

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x)
            loss = sum(F.cross_entropy(out[h], t) for h, t in targets.items())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(warmup):
        step()
    sync()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - started
    return Throughput(backbone, str(dev), batch, input_size, amp, channels_last, steps, batch * steps / seconds)
