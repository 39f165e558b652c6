"""A real-photo classification set: crops of the photographs scikit-image and scikit-learn ship, as an
ImageFolder tree of camera-sized JPEGs, the class being the photograph a crop comes from; validation crops
come only from each photograph's held-out quadrant (raycv/data/photo_crops.py says why):

    python jobs/photo_crops.py --out data/photo-crops [--train-per-class 200] [--val-per-class 40] [--seed 0]

Runs in this process, without Ray: the default 3,600 JPEGs take about 17 s on one core, and Ray Data tasks
on a cluster's other nodes would write into their own disks, not into this machine's folder.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from raycv.data.photos import PHOTO_NAMES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the folder to create (must not exist)")
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--val-per-class", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classes", nargs="+", default=list(PHOTO_NAMES), metavar="PHOTO",
                        help=f"the photographs to use as classes (default: all): {' '.join(PHOTO_NAMES)}")
    args = parser.parse_args()

    from raycv.data.photo_crops import write_photo_crops
    from raycv.errors import RaycvError

    try:
        summary = write_photo_crops(args.out, tuple(args.classes), args.train_per_class, args.val_per_class,
                                    args.seed)
    except RaycvError as error:
        parser.error(str(error))
    print(f"{summary['train']} train and {summary['val']} val crops of {len(summary['classes'])} photos "
          f"({summary['megabytes']} MB, {summary['held_out']} held out for val) in {summary['out']}, "
          f"seed {summary['seed']}, {summary['seconds']} s")


if __name__ == "__main__":
    main()
