"""A PNG of a detect checkpoint's predictions drawn on dataset images (for READMEs and run reports):

    python jobs/detect_examples.py --checkpoint runs/detect/train/best --data data/scenes --out detections.png

Runs in this process on a local Ray (Ray Data reads the split); no job submission needed.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="a detect dataset (raycv synth folder or COCO)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--count", type=int, default=8, help="images in the sheet")
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--out", default="detections.png")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from raycv.checkpoint import load_model
    from raycv.data.images import decode_image
    from raycv.synth import open_dataset
    from raycv.devices import default_device
    from raycv.inference import predict
    from raycv.runtime import init_ray
    from raycv.tasks.detect import draw_detections

    init_ray()
    loaded = load_model(args.checkpoint, "detect", default_device())
    splits, _ = open_dataset(loaded.task, args.data)
    images = [decode_image(row["image"]) for row in splits[args.split].take(args.count)]
    drawn = [draw_detections(image, answer) for image, answer in zip(images, predict(loaded, images), strict=False)]
    # Pad to the largest image so a COCO split of mixed sizes still tiles.
    height, width = max(d.shape[0] for d in drawn), max(d.shape[1] for d in drawn)
    tiles = [np.pad(d, ((0, height - d.shape[0]), (0, width - d.shape[1]), (0, 0))) for d in drawn]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % args.columns)
    rows = [np.concatenate(tiles[i:i + args.columns], axis=1) for i in range(0, len(tiles), args.columns)]
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out)
    print(f"{len(drawn)} images with predictions: {args.out}")


if __name__ == "__main__":
    main()
