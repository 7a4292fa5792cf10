"""What listing one flat directory costs before the first row: peak memory and seconds.

A directory's listing is sorted (rows come in path order, and --resume depends on it), so
the largest directory is held whole once; everything else streams. Run:

    python bench/listing.py --files 1000000 [--dir /tmp/flat]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def make(directory: Path, files: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    have = sum(1 for _ in os.scandir(directory))
    for i in range(have, files):
        os.close(os.open(directory / f"scan-{i:08d}.png", os.O_CREAT | os.O_WRONLY, 0o644))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mnist-serving-flat"))
    args = parser.parse_args()
    make(args.dir, args.files)
    from mnist_serving.client.batch.sources import Inputs, chunks

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    first = next(chunks([str(args.dir)], 1024, Inputs()))
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "files": args.files,
        "first_chunk_rows": len(first),
        "seconds_to_first_chunk": round(seconds, 2),
        "rss_before_mb": round(before / 2**20, 1),
        "peak_rss_mb": round(peak / 2**20, 1),
        "bytes_per_file": round((peak - before) / args.files),
    }
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
