"""The trainer reproduces a recorded golden run, and a resumed run equals an uninterrupted one.

``tests/golden/trainer.json`` was recorded from the trainer before it was split into parts (set-up,
epoch loop, early-stopping and checkpoint callbacks, post-training steps); the split must not change
what a run produces. Three tiny deterministic CPU runs cover the trainer's paths:

- ``joint``: fibre-only + colour-only manifests, ``tiny`` backbone trained end to end with light
  augmentation, a heads-only warm-up epoch, class-balanced sampling and the layout head;
- ``cached``: the ``efficientnet_lite0_colour`` backbone frozen for the whole run (heads on cached
  features, standardisation fitted from the cache), flip views, early stopping;
- ``partial``: the same backbone fine-tuned from block 14 on a cached prefix (its own statistics pass),
  cached augmented views, ``early_stopping.select=last``.

Per run the golden holds the per-epoch history, the result (best epoch, epochs run, stopped early),
calibration (temperatures, OOD thresholds), the layout head's metrics, every tensor of ``best.pt`` and
``last.pt`` (shape, dtype, sum and sum of absolute values), the optimizer/scheduler state, the outputs of
the best model on fixed inputs (all heads, the layout head included), the run folder's files and the
callback events. Floats are compared with a tolerance (another CPU may round differently).

Regenerate (only when a change of the results is intended, and say why in the commit)::

    TEXTILE_SORTER_REGEN_GOLDEN=1 python -m pytest tests/test_trainer_golden.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from sorting.datasets.manifest import ManifestRow, write_manifest
from sorting.models.checkpoint import load_checkpoint, read_checkpoint_dict
from sorting.training.config import load_train_config
from sorting.training.trainer import TrainResult, fit

GOLDEN = Path(__file__).parent / "golden" / "trainer.json"
REGENERATE = os.environ.get("TEXTILE_SORTER_REGEN_GOLDEN") == "1"
RTOL, ATOL = 2e-3, 2e-4
BGR = {"red": (0, 0, 230), "blue": (230, 40, 0), "green": (40, 200, 40)}

pytestmark = pytest.mark.slow  # five short training runs on the CPU


def _swatch(fibre: str | None, colour: str | None, rng: np.random.Generator) -> np.ndarray:
    img = np.full((24, 24, 3), BGR.get(colour or "", (128, 128, 128)), np.int32) + rng.integers(-15, 15, (24, 24, 3))
    if fibre == "polyester":
        img[::3] = 250  # stripes: the texture the fibre head must see
    return np.clip(img, 0, 255).astype(np.uint8)


def _manifest(folder: Path, pairs: list[tuple[str | None, str | None]], per_pair: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True)
    rows = []
    for i, (fibre, colour) in enumerate(pairs * per_pair):
        cv2.imwrite(str(folder / "img" / f"{i}.png"), _swatch(fibre, colour, rng))
        rows.append(ManifestRow(f"img/{i}.png", fibre=fibre, colour=colour, split="val" if i % 4 == 0 else "train"))
    return write_manifest(rows, folder / "manifest.csv")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("golden-data")
    return {
        "fibre": _manifest(root / "fibre", [("cotton", None), ("polyester", None)], 8, seed=0),
        "colour": _manifest(root / "colour", [(None, "red"), (None, "blue"), (None, "green")], 8, seed=1),
    }


COMMON = ["model.input_size=32", "batch_size=8", "num_workers=0", "progress=false", "threads=1", "seed=0",
          "deterministic=true", "device=cpu", "tracking.enabled=false", "optim.warmup_epochs=0"]
CASES: dict[str, list[str]] = {
    "joint": ["data.train=[{fibre}, {colour}]", "optim.epochs=3", "optim.lr=0.01", "augment.preset=light",
              "freeze_backbone_epochs=1", "balance=sampler", "layout.worlds=2", "layout.items_per_world=20",
              "layout.seed=1"],
    "cached": ["data.train=[{colour}]", "model.heads=[colour]", "model.backbone=efficientnet_lite0_colour",
               "optim.epochs=6", "optim.lr=0.05", "freeze_backbone_epochs=6", "augment.preset=flip",
               "balance=sqrt_loss_weights", "early_stopping.patience=1", "calibration.ood_quantile=0.95"],
    "partial": ["data.train=[{colour}]", "model.heads=[colour]", "model.backbone=efficientnet_lite0_colour",
                "optim.epochs=2", "optim.lr=0.01", "model.trainable_from=14", "freeze_backbone_epochs=1",
                "augment.preset=light", "augment.views=2", "early_stopping.patience=null",
                "early_stopping.select=last", "model.head_hidden={{colour: 8}}"],
}


class Events:
    """An observer callback that records what the trainer told it."""

    run_id = None

    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_train_start(self, config: Any, run_dir: Path) -> None:
        self.events.append(["start"])

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        self.events.append(["epoch", epoch, sorted(metrics)])

    def on_artifact(self, path: Path) -> None:
        self.events.append(["artifact", Path(path).name])

    def on_train_end(self, checkpoint_path: Path, metrics: dict[str, Any]) -> None:
        self.events.append(["end", Path(checkpoint_path).name, sorted(metrics)])


def _state_summary(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The keys, shapes and dtypes (as one SHA-1) and, per module (key up to 3 parts), the sum and the sum of
    absolute values of its tensors: a checksum a tolerance can compare, small enough for an EfficientNet."""
    layout = "\n".join(f"{k} {tuple(v.shape)} {v.dtype}" for k, v in sorted(state.items()))
    groups: dict[str, list[float]] = {}
    for key, value in sorted(state.items()):
        f = value.detach().cpu().double()
        sums = groups.setdefault(".".join(key.split(".")[:3]), [0.0, 0.0])
        sums[0] += float(f.sum())
        sums[1] += float(f.abs().sum())
    return {"tensors": len(state), "layout_sha1": hashlib.sha1(layout.encode()).hexdigest(), "modules": groups}


def _optimizer_summary(opt: dict[str, Any]) -> dict[str, Any]:
    """AdamW's moments summed over all parameters, its step counts and its parameter groups."""
    moments = {}
    for name in ("exp_avg", "exp_avg_sq"):
        values = [s[name].double() for s in opt["state"].values()]
        moments[name] = [float(sum(v.sum() for v in values)), float(sum(v.abs().sum() for v in values))]
    steps = sorted({float(s["step"]) for s in opt["state"].values()})
    return {"params_with_state": len(opt["state"]), "steps": steps, **moments, "param_groups": opt["param_groups"]}


def _model_outputs(path: Path) -> dict[str, Any]:
    """Every head's logits (and the embedding's sums) of the best model on a fixed random batch."""
    ckpt = load_checkpoint(path)
    size = ckpt.preprocess.input_size
    x = torch.from_numpy(np.random.default_rng(7).normal(0, 1, (3, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        out = ckpt.model(x)
    return {k: v.tolist() if k in ckpt.labels else [float(v.sum()), float(v.abs().sum())] for k, v in sorted(out.items())}


_VOLATILE_METRICS = {"seconds", "weight_digests"}  # time; exact bytes (the sums below carry tolerance)


def summarise(result: TrainResult, events: Events) -> dict[str, Any]:
    """What the golden records of one run (nothing that depends on the time or the temporary folder)."""
    best, last = read_checkpoint_dict(result.best_checkpoint), read_checkpoint_dict(result.last_checkpoint)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    return {
        "result": {"best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "stopped_early": result.stopped_early},
        "history": json.loads((result.run_dir / "history.json").read_text()),
        "metrics": {k: v for k, v in metrics.items() if k not in _VOLATILE_METRICS},
        "files": sorted(p.name for p in result.run_dir.iterdir()),
        "events": events.events,
        "best": {
            "keys": sorted(best), "labels": best["labels"], "epoch": best["epoch"], "temperature": best["temperature"],
            "ood": best["ood"], "dataset_hash": best["dataset_hash"], "head_hidden": best["head_hidden"],
            "metrics": {k: v for k, v in best["metrics"].items() if k not in _VOLATILE_METRICS},
            "state_dict": _state_summary(best["state_dict"]), "preprocess": best["preprocess"],
        },
        "last": {
            "keys": sorted(last), "epoch": last["epoch"], "trainer_state": last["trainer_state"],
            "metrics": last["metrics"], "state_dict": _state_summary(last["state_dict"]),
            "optimizer": _optimizer_summary(last["optimizer"]), "scheduler": last["scheduler"],
            "scaler": last["scaler"], "temperature": last["temperature"], "ood": last["ood"],
        },
        "outputs": _model_outputs(result.best_checkpoint),
    }


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=float))


def assert_matches(actual: Any, expected: Any, where: str = "") -> None:
    """Equal structure and values; floats within RTOL/ATOL."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        assert sorted(actual) == sorted(expected), f"{where}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_matches(actual[key], expected[key], f"{where}/{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual} != {expected}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_matches(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert isinstance(actual, (int, float)), f"{where}: {actual!r} is not a number"
        if math.isnan(expected):
            assert math.isnan(actual), f"{where}: {actual} != nan"
        else:
            assert actual == pytest.approx(expected, rel=RTOL, abs=ATOL), f"{where}: {actual} != {expected}"
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def _run(case: str, data: dict[str, Path], out: Path, *extra: str, callbacks: list[Any] | None = None) -> TrainResult:
    overrides = [o.format(**{k: str(v) for k, v in data.items()}) for o in CASES[case]]
    config = load_train_config(None, [*COMMON, *overrides, f"output_dir={out}", f"name={case}", *extra])
    return fit(config, callbacks=callbacks)


@pytest.mark.parametrize("case", sorted(CASES))
def test_trainer_reproduces_the_golden_run(case: str, data: dict[str, Path], tmp_path: Path) -> None:
    events = Events()
    summary = _plain(summarise(_run(case, data, tmp_path / "runs", callbacks=[events]), events))
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if REGENERATE:
        golden[case] = summary
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(golden, sort_keys=True, separators=(",", ":")) + "\n")
    assert case in golden, f"no golden for {case}: regenerate with TEXTILE_SORTER_REGEN_GOLDEN=1"
    assert_matches(summary, golden[case], case)


class Interrupted(BaseException):
    """Stands for a killed job: not an ``Exception``, so the callback list does not swallow it."""


class InterruptAfter(Events):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == self.epoch:
            raise Interrupted


def test_resumed_run_equals_the_uninterrupted_one(data: dict[str, Path], tmp_path: Path) -> None:
    """Stop after epoch 1 of 4 (last.pt is written before the observers hear of the epoch), resume, compare.

    Exact only where nothing random is drawn outside the seeded sampler: no augmentation and no dropout
    (their random streams restart from the seed on resume).
    """
    extra = ["augment.preset=none", "model.dropout=0", "optim.epochs=4", "layout=null"]
    whole = _run("joint", data, tmp_path / "whole", *extra)
    with pytest.raises(Interrupted):
        _run("joint", data, tmp_path / "parts", *extra, callbacks=[InterruptAfter(1)])
    [run_dir] = list((tmp_path / "parts").iterdir())
    assert read_checkpoint_dict(run_dir / "last.pt")["trainer_state"]["epoch"] == 1
    resumed = _run("joint", data, tmp_path / "parts", *extra, f"resume={run_dir / 'last.pt'}")
    assert resumed.run_dir == run_dir
    assert (resumed.best_epoch, resumed.epochs_run) == (whole.best_epoch, whole.epochs_run)
    for name in ("history.json",):
        assert json.loads((run_dir / name).read_text()) == json.loads((whole.run_dir / name).read_text())
    strip = {"seconds"}
    m_whole = {k: v for k, v in json.loads((whole.run_dir / "metrics.json").read_text()).items() if k not in strip}
    m_resumed = {k: v for k, v in json.loads((run_dir / "metrics.json").read_text()).items() if k not in strip}
    assert m_resumed == m_whole  # weight digests included: the final weights are bit-identical
    for name in ("best.pt", "last.pt"):
        a, b = read_checkpoint_dict(run_dir / name), read_checkpoint_dict(whole.run_dir / name)
        assert a["state_dict"].keys() == b["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), name
        assert (a["epoch"], a["temperature"], a["ood"]) == (b["epoch"], b["temperature"], b["ood"])
