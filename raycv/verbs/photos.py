"""The flags and the table of every `eval-photos` verb (superres, inpaint, compress_ae): scores on the
held-out photographs of raycv/data/photos.py."""

from __future__ import annotations

import argparse
import json
import os


def add_photo_arguments(parser: argparse.ArgumentParser, checkpoint_help: str, repeat_checkpoint: bool = False) -> None:
    """The checkpoint(s), a subset of the photos, an output folder."""
    from raycv.data.photos import PHOTO_NAMES

    parser.add_argument("--checkpoint", required=True, help=checkpoint_help,
                        action="append" if repeat_checkpoint else "store")
    parser.add_argument("--photos", default="", help=f"comma-separated subset of {', '.join(PHOTO_NAMES)} "
                                                     "(default: all those the checkpoint's dataset did not train on)")
    parser.add_argument("--out", default="", help="folder for side-by-side PNGs and photos.json (default: none)")


def photo_names(photos: str) -> tuple[str, ...] | None:
    """`--photos` as real_photos takes it (None: all)."""
    return tuple(name.strip() for name in photos.split(",") if name.strip()) or None


def report_photos(rows: list[dict], title: str, out: str) -> int:
    """Print an `eval-photos` table and, with `out`, save it as photos.json beside the PNGs."""
    from raycv.report import table

    print(table(rows, title))
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "photos.json"), "w") as file:
            json.dump(rows, file, indent=2)
        print(f"side-by-side PNGs and photos.json: {out}")
    return 0
