"""Writes a small labelled image folder for the own-data example: coloured shapes on noise.

    python examples/own_data/make_images.py            # -> examples/own_data/images/{train,test}/CLASS/*.png

Four classes (circle, square, triangle, cross), each drawn at a random place, size and colour on
a noisy background, so the label is in the shape and nowhere else. The layout is the one
torchvision's ImageFolder reads, which is what ``data.dataset = "folder"`` expects.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchvision.io import write_png

CLASSES = ("circle", "square", "triangle", "cross")


def shape_mask(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    """A boolean [size, size] mask of one shape at a random centre and radius."""
    r = int(torch.randint(size // 6, size // 3, (1,), generator=g))
    cy, cx = (int(v) for v in torch.randint(r, size - r, (2,), generator=g))
    y, x = torch.meshgrid(torch.arange(size) - cy, torch.arange(size) - cx, indexing="ij")
    if kind == "circle":
        return x**2 + y**2 <= r**2
    if kind == "square":
        return (x.abs() <= r * 0.8) & (y.abs() <= r * 0.8)
    if kind == "triangle":  # apex up: the width grows from the top row down
        return (y >= -r) & (y <= r) & (x.abs() <= (y + r) / 2)
    return ((x.abs() <= r // 3) & (y.abs() <= r)) | ((y.abs() <= r // 3) & (x.abs() <= r))


def image(kind: str, size: int, g: torch.Generator) -> torch.Tensor:
    """uint8 [3, size, size]: noise, then the shape in a random bright colour."""
    picture = torch.randint(0, 110, (3, size, size), generator=g, dtype=torch.uint8)
    colour = torch.randint(140, 256, (3, 1), generator=g, dtype=torch.uint8)
    mask = shape_mask(kind, size, g)
    picture[:, mask] = colour.expand(3, int(mask.sum()))
    return picture


def main(argv=None) -> None:
    here = Path(__file__).resolve().parent
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=here / "images", help="folder to write (default: %(default)s)")
    ap.add_argument("--train", type=int, default=300, help="training images per class (default: %(default)s)")
    ap.add_argument("--test", type=int, default=75, help="test images per class (default: %(default)s)")
    ap.add_argument("--size", type=int, default=32, help="image side in pixels (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    for split, count in (("train", args.train), ("test", args.test)):
        for kind in CLASSES:
            folder = args.out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                write_png(image(kind, args.size, g), str(folder / f"{i:04d}.png"))
    total = (args.train + args.test) * len(CLASSES)
    print(f"wrote {total} images of {len(CLASSES)} classes to {args.out}")


if __name__ == "__main__":
    main()
