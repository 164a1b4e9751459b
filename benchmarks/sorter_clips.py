"""Sort the six 300-garment benchmark clips and summarise them in one table.

The README's sorter figures come from these clips (seeds 7 11 13 17 19 23; the segmentation
settings were tuned on them with the GT oracle, so they are *tuning* clips). ``--seeds`` picks
other clips: figures reported as unseen must come from seeds that took no part in tuning.

Each clip runs through ``textile-sorter bench-sorter`` (one subprocess per clip, so every clip
starts from a fresh process as a user's run would). Besides the table, it writes a decision
fingerprint per clip (item id, bin, reason of every logged decision) so a refactoring can show
that the sorter decides exactly as before: ``--compare OLD.json``.

    python benchmarks/sorter_clips.py --model runs/demo/model.onnx --out runs/clips-demo.json
    python benchmarks/sorter_clips.py --out runs/clips-oracle.json              # GT oracle
    python benchmarks/sorter_clips.py --model runs/demo/model.onnx --compare runs/clips-demo.json

With the simulated NIR spectrometer on the fibre x colour bins (models/NIR.md, "On the line"), a second table:
fibre-correct bins with the spectrometer and with the camera alone (the same runs), garments whose fibre the
simulator has its own unseen spectra of apart from those it reads through a stand-in, and the association:

    python benchmarks/sorter_clips.py --model runs/demo/model.onnx --seeds 29 31 37 41 43 47 \
        -- --spectrometer sim --bins serving/bins-fibre-colour.yaml
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

TUNING_SEEDS = (7, 11, 13, 17, 19, 23)


def run_clip(seed: int, model: Path | None, out: Path, extra: list[str]) -> dict:
    """Sort one clip with ``bench-sorter``; return its score and decision fingerprint."""
    cmd = [sys.executable, "-m", "sorting", "bench-sorter", "--seed", str(seed), "--out", str(out), "--no-progress",
           *extra]
    if model is not None:
        cmd += ["--model", str(model)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    bench = json.loads((out / "bench.json").read_text())
    with sqlite3.connect(out / "decisions.sqlite") as db:
        rows = db.execute("SELECT item_id, bin, reason, missed FROM decisions ORDER BY CAST(item_id AS INTEGER)").fetchall()
    score = bench["score"]
    return {"seed": seed, "non_hard_correct": score["non_hard_correct"], "non_hard_total": score["non_hard_total"],
            "hard_safe": score["hard_safe"], "hard_items": score["hard_items"], "lost": score["lost"],
            "duplicated": score["duplicated"], "phantom": score["phantom"], "fps": bench["fps"],
            "loop_ratio": bench["loop_ratio"], "decisions": [list(r) for r in rows], "nir": bench.get("nir")}


def print_nir(results: list[dict]) -> None:
    """The spectrometer's table (runs with ``--spectrometer sim``)."""
    runs = [r for r in results if r.get("nir")]
    if not runs:
        return
    print("\n| seed | normal right bin: NIR / camera alone | own spectra: NIR / camera | stand-in: NIR / camera "
          "| wrong product bin: NIR / camera | hard safe: NIR | assigned scans right / edge / belt / other / pair "
          "| loop ratio |")
    print("|---|---|---|---|---|---|---|---|")
    keys = ("right_nir", "right_camera", "normal", "wrong_nir", "wrong_camera", "safe_nir", "hard")
    sums = {g: dict.fromkeys(keys, 0) for g in ("total", "own", "stand-in")}
    assoc_sum: dict[str, int] = {}
    for r in runs:
        nir = r["nir"]
        parts = {"total": nir["total"], "own": nir["groups"]["own"], "stand-in": nir["groups"]["stand-in"]}
        for g, counts in parts.items():
            for k in keys:
                sums[g][k] += counts[k]
        for k, v in nir["association"].items():
            assoc_sum[k] = assoc_sum.get(k, 0) + v
        print(_nir_row(str(r["seed"]), parts, nir["association"], r["loop_ratio"]))
    print(_nir_row("all", sums, assoc_sum, None))


def _nir_row(seed: str, parts: dict[str, dict], assoc: dict[str, int], ratio: float | None) -> str:
    t, own, other = parts["total"], parts["own"], parts["stand-in"]
    rate = f" ({t['right_nir'] / max(1, t['normal']):.1%} / {t['right_camera'] / max(1, t['normal']):.1%})"
    a = " / ".join(str(assoc.get(k, 0)) for k in ("right", "edge", "belt", "other", "other_pair"))
    return (f"| {seed} | {t['right_nir']} / {t['right_camera']} of {t['normal']}{rate if seed == 'all' else ''} | "
            f"{own['right_nir']} / {own['right_camera']} of {own['normal']} | {other['right_nir']} / "
            f"{other['right_camera']} of {other['normal']} | {t['wrong_nir']} / {t['wrong_camera']} | "
            f"{t['safe_nir']}/{t['hard']} | {a} | {'' if ratio is None else f'{ratio:.2f}x'} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX model (default: the GT oracle)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(TUNING_SEEDS))
    parser.add_argument("--out", type=Path, help="write the results (with fingerprints) to this JSON")
    parser.add_argument("--compare", type=Path, help="a JSON written earlier: report clips that decide differently")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-sorter/clips"))
    parser.add_argument("extra", nargs="*", help="more bench-sorter arguments after --, e.g. -- --oracle-layout")
    args = parser.parse_args()
    results = [run_clip(s, args.model, args.work / f"seed{s}", args.extra) for s in args.seeds]
    total = {k: sum(r[k] for r in results) for k in ("non_hard_correct", "non_hard_total", "hard_safe", "hard_items",
                                                      "lost", "duplicated", "phantom")}
    print("| seed | normal right bin | hard safe | lost / dup / phantom | frames/s | loop ratio |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = "n/a" if r["loop_ratio"] is None else f"{r['loop_ratio']:.2f}x"
        print(f"| {r['seed']} | {r['non_hard_correct']}/{r['non_hard_total']} | {r['hard_safe']}/{r['hard_items']} | "
              f"{r['lost']} / {r['duplicated']} / {r['phantom']} | {r['fps']:.0f} | {ratio} |")
    print(f"| all | {total['non_hard_correct']}/{total['non_hard_total']} "
          f"({total['non_hard_correct'] / max(1, total['non_hard_total']):.1%}) | {total['hard_safe']}/{total['hard_items']}"
          f" | {total['lost']} / {total['duplicated']} / {total['phantom']} | | |")
    print_nir(results)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": str(args.model), "clips": results, "total": total}, indent=1))
    if args.compare:
        old = {c["seed"]: c["decisions"] for c in json.loads(args.compare.read_text())["clips"]}
        differ = [r["seed"] for r in results if r["seed"] in old and old[r["seed"]] != r["decisions"]]
        print("decisions identical on every clip" if not differ else f"decisions differ on clips {differ}")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
