"""Fix the development / held-out split of the real conveyor photos (written once, before any setting is chosen).

The photos are numbered in the order they were taken (``color_img<N>.jpg``); neighbouring numbers show
the same scene with one garment moved, added or taken away. So the split is by *scene group*: blocks of
ten consecutive numbers (``N // 10``), never by image. A seeded shuffle puts 30 % of the groups in the
held-out part. Every setting of the belt segmentation is chosen on ``dev``; ``heldout`` is scored once.

    python benchmarks/belt_split.py ../shared/data/conveyor-photos/boxes.csv   # writes benchmarks/belt_split.json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
from pathlib import Path

SEED = 14  # the number
HELDOUT_SHARE = 0.3
GROUP_SIZE = 10


def group_of(image: str) -> int:
    """Scene group of an image name: its number // GROUP_SIZE."""
    found = re.findall(r"\d+", Path(image).stem)
    if not found:
        raise ValueError(f"no number in image name {image}")
    return int(found[-1]) // GROUP_SIZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("boxes", type=Path, help="boxes.csv of the conveyor photos")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("belt_split.json"))
    args = parser.parse_args()
    with args.boxes.open(newline="") as fh:
        images = sorted({row["image"] for row in csv.DictReader(fh)})
    groups = sorted({group_of(name) for name in images})
    rng = random.Random(SEED)
    shuffled = groups[:]
    rng.shuffle(shuffled)
    held = set(shuffled[: round(HELDOUT_SHARE * len(groups))])
    split = {
        "what": "development / held-out split of conveyor-photos by scene group (image number // 10)",
        "seed": SEED, "heldout_share": HELDOUT_SHARE, "group_size": GROUP_SIZE,
        "heldout_groups": sorted(held),
        "dev": [n for n in images if group_of(n) not in held],
        "heldout": [n for n in images if group_of(n) in held],
    }
    args.out.write_text(json.dumps(split, indent=1) + "\n")
    print(f"{len(images)} images in {len(groups)} groups: dev {len(split['dev'])}, held-out {len(split['heldout'])} "
          f"(groups {sorted(held)}) -> {args.out}")


if __name__ == "__main__":
    main()
