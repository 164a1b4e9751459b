"""Fusion rules of the spectrometer and the camera, compared on the same clips (issue 13, phase 2).

Each clip is sorted once by ``bench-sorter`` with the simulated spectrometer (fibre x colour bins); every item's
evidence (the camera's aggregated views, the spectrometer's mean reading) is kept and decided again under each
variant of the bins file's ``nir`` section, so the variants differ in the rule only. The table counts normal
garments in their right bin and in a wrong product bin, for garments whose fibre the simulator has its own
unseen spectra of (``own``) and those it reads through a stand-in (``stand-in``), and hard garments kept safe.

Choose a rule on the tuning clips only (the default seeds: 7 11 13 17 19 23), then report it on unseen seeds:

    python benchmarks/nir_fusion_study.py --model runs/demo/model.onnx                     # tuning seeds
    python benchmarks/nir_fusion_study.py --model runs/demo/model.onnx --seeds 29 31 37 41 43 47
"""

from __future__ import annotations

import argparse
import pickle
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

from sorting.apps.bench_sorter import BenchConfig, run_bench
from sorting.apps.nir_scoring import GroupCounts, score_nir
from sorting.apps.scoring import load_ground_truth
from sorting.models.onnx_model import read_metadata
from sorting.models.spectral_onnx import SpectralClassifier
from sorting.serving.fusion import CONFUSION_KEY, NirLikelihood
from sorting.serving.policy import ItemEvidence, Policy, load_policy_config
from sorting.serving.records import ItemDecision
from sorting.serving.spectrometer_config import SimSpectraConfig
from sorting.serving.spectrometer_sim import SpectraPool
from sorting.taxonomy import load_taxonomy

TUNING_SEEDS = (7, 11, 13, 17, 19, 23)
VARIANTS = {  # name -> the bins file's nir section
    "confusion": {"fusion": "confusion"},
    "confusion + NIR vouches for fibre": {"fusion": "confusion", "camera_fibre_ood": "spectrometer"},
    "product": {"fusion": "product"},
    "product + NIR vouches for fibre": {"fusion": "product", "camera_fibre_ood": "spectrometer"},
    "confusion, no reading -> reject": {"fusion": "confusion", "missing": "reject"},
}


def _evidence(item: ItemDecision, labels: dict[str, list[str]], likelihood: NirLikelihood | None) -> ItemEvidence:
    """The item's evidence as the loop built it, its NIR likelihood under ``likelihood``'s rule (None: no NIR)."""
    s = item.summary
    nir = item.nir
    if likelihood is None:
        nir = None
    elif nir is not None and nir.probs is not None:
        nir = replace(nir, likelihood=likelihood(nir.probs))
    return ItemEvidence(item_id=item.track_id, probs=s.probs, labels=labels, ood=s.ood, overlap=s.overlap,
                        two_colours=s.two_colours, cut_off=s.cut_off, n_views=s.n_views, ended=item.ended,
                        not_garment=s.not_garment, nir=nir, ood_heads=s.ood_heads)


def sorted_clip(seed: int, args: argparse.Namespace) -> tuple[list[ItemDecision], dict]:
    """The items of one clip sorted with the spectrometer, and the clip's ground truth (``--reuse``: the items
    of an earlier run of the same clip, kept in ``<work>/seed<N>/items.pkl``)."""
    out = args.work / f"seed{seed}"
    cache = out / "items.pkl"
    if args.reuse and cache.is_file():
        with cache.open("rb") as fh:
            return pickle.load(fh)
    result = run_bench(BenchConfig(line=args.line, out_dir=out, model=args.model, oracle=False, seed=seed,
                                   bins=args.bins, spectrometer="sim", nir_model=args.nir_model,
                                   nir_spectra=args.nir_spectra, progress=False))
    gt = load_ground_truth(Path(result.config["video"]).with_name("conveyor_gt.json"))
    with cache.open("wb") as fh:
        pickle.dump((result.decisions, gt), fh)
    return result.decisions, gt


def study_clip(seed: int, args: argparse.Namespace) -> dict[str, GroupCounts]:
    """Sort one clip with the spectrometer; the counts of every variant (and of the camera alone)."""
    decisions, gt = sorted_clip(seed, args)
    pool = SpectraPool.load(SimSpectraConfig(spectra=args.nir_spectra))
    own = {f for f in load_taxonomy().fibre if pool.source_class(f) == f}
    nir_model = SpectralClassifier.load(args.nir_model)
    bins = load_policy_config(args.bins)
    camera_labels = {h: list(v) for h, v in read_metadata(args.model).labels.items()}
    out = {}
    for name, section in {"camera alone": None, **VARIANTS}.items():
        policy = Policy(bins.model_copy(update={"nir": bins.nir.model_copy(update=section or {})}), camera_labels)
        likelihood = None if section is None else NirLikelihood(
            nir_model.metadata.labels, camera_labels["fibre"], rule=policy.config.nir.fusion,
            confusion=nir_model.metadata.metrics.get(CONFUSION_KEY))
        items = [replace(d, decision=policy.decide(_evidence(d, camera_labels, likelihood))) for d in decisions]
        score = score_nir(items, gt, policy, [], own)
        out[name] = score.groups
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the camera's ONNX model")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(TUNING_SEEDS))
    parser.add_argument("--line", type=Path, default=Path("serving/line-colour-6bin.yaml"))
    parser.add_argument("--bins", type=Path, default=Path("serving/bins-fibre-colour.yaml"))
    parser.add_argument("--nir-model", type=Path, default=Path("runs/models/nir-line.onnx"))
    parser.add_argument("--nir-spectra", type=Path, default=Path("runs/data/nir-line.csv"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-sorter/nir-study"))
    parser.add_argument("--reuse", action="store_true", help="decide again the items of an earlier run of these "
                        "clips (no sorting): for trying rules")
    args = parser.parse_args()
    totals: dict[str, dict[str, GroupCounts]] = defaultdict(lambda: defaultdict(GroupCounts))
    for seed in args.seeds:
        for variant, groups in study_clip(seed, args).items():
            for group, counts in groups.items():
                acc = totals[variant][group]
                for key, value in asdict(counts).items():
                    setattr(acc, key, getattr(acc, key) + value)
    print(f"seeds {' '.join(map(str, args.seeds))}")
    print("| rule | own: right bin | own: wrong product bin | stand-in: right | stand-in: wrong | all: right | "
          "hard safe |")
    print("|---|---|---|---|---|---|---|")
    for variant, groups in totals.items():
        own, other = groups["own"], groups["stand-in"]
        right, normal = own.right_nir + other.right_nir, own.normal + other.normal
        print(f"| {variant} | {own.right_nir}/{own.normal} ({own.right_nir / max(1, own.normal):.1%}) | {own.wrong_nir} "
              f"| {other.right_nir}/{other.normal} | {other.wrong_nir} | {right}/{normal} ({right / max(1, normal):.1%}) "
              f"| {own.safe_nir + other.safe_nir}/{own.hard + other.hard} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
