"""What the image header check of an ImageFolder tree costs per image.

Builds (once) a tree of small JPEGs, then times :func:`taylorprune.data.check_image_headers` over
it with 1 and 4 threads, warm (files in the page cache) and, where this process may drop the
page cache (root on Linux), cold.

    python tools/bench_image_check.py --root /tmp/imgtree --images 20000
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _cli as cli

from taylorprune.data import check_image_headers


def make_tree(root: Path, n: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"c{i % 10}" / f"{i}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
    return sorted(str(p) for p in root.rglob("*.jpg"))[:n]


def drop_page_cache() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/taylorprune-imgtree"))
    parser.add_argument("--images", type=int, default=20000)
    args = parser.parse_args(argv)
    paths = make_tree(args.root, args.images)
    for cache in ("cold", "warm"):
        for workers in (1, 4):
            if cache == "cold" and not drop_page_cache():
                print("cold: cannot drop the page cache here (needs root on Linux); skipped")
                break
            t = time.perf_counter()
            check_image_headers(paths, workers=workers)
            dt = time.perf_counter() - t
            print(
                f"{cache} {workers} thread(s): {len(paths)} images in {dt:.2f} s, "
                f"{1e6 * dt / len(paths):.0f} µs an image ({os.cpu_count()} CPUs)"
            )


if __name__ == "__main__":
    cli.run(main)
