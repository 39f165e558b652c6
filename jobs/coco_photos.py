"""A COCO set of real photographs (coins and a fur-textured horse pasted on crops of other photographs, 320-640
pixels, several aspect ratios), in the COCO 2017 layout; raycv/data/coin_scenes.py says how it is made:

    python jobs/coco_photos.py --out data/coins [--train 1500] [--val 200] [--seed 0]

Runs in this process, without Ray, so the files land on this machine's disk.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the folder to create (must not exist)")
    parser.add_argument("--train", type=int, default=1500, help="training photos")
    parser.add_argument("--val", type=int, default=200, help="validation photos (their own seed stream)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from raycv.data.coin_scenes import write_coin_scenes
    from raycv.errors import RaycvError

    try:
        summary = write_coin_scenes(args.out, {"train": args.train, "val": args.val}, args.seed)
    except RaycvError as error:
        parser.error(str(error))
    print(f"{summary['images']['train']} train and {summary['images']['val']} val photos with "
          f"{summary['objects']['train']} and {summary['objects']['val']} objects in {summary['out']}, "
          f"seed {summary['seed']}, {summary['seconds']} s")


if __name__ == "__main__":
    main()
