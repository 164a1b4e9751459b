"""What the operator's console costs the sorter: frames/s of ``bench-sorter`` on the same clip and threads,
with the console off and on (``--console``: attached as ``serve --console`` does, with a viewer reading its
camera stream the whole time), runs alternated so that a busy machine hurts both alike.

    python benchmarks/console_cost.py --model runs/demo/model.onnx --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def fps(model: Path, console: bool, threads: int, seed: int, out: Path) -> float:
    cmd = [sys.executable, "-m", "sorting", "bench-sorter", "--model", str(model), "--threads", str(threads),
           "--seed", str(seed), "--out", str(out), "--no-progress", *(["--console"] if console else [])]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return float(json.loads((out / "bench.json").read_text())["fps"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-sorter/console-cost"))
    args = parser.parse_args()
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for console in (False, True):
            runs[console].append(fps(args.model, console, args.threads, args.seed, args.work / str(console)))
            print(f"console {'on ' if console else 'off'}: {runs[console][-1]:.1f} frames/s", flush=True)
    off, on = statistics.mean(runs[False]), statistics.mean(runs[True])
    print(f"mean frames/s: off {off:.1f}, on {on:.1f} ({on / off - 1:+.1%}) over {args.rounds} alternated rounds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
