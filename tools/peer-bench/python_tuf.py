#!/usr/bin/env python3
"""The `peer-bench run` measurement for python-tuf's ngclient.

    python_tuf.py --metadata-url URL --targets-url URL --root FILE --runs K \
        --download NAME [--workdir DIR] [--only-download]

K times, each from a fresh empty metadata directory with the trusted root given as
`bootstrap` (python-tuf's recommended initialization): a timed `Updater(...)` + `refresh()`,
then, from another fresh directory, a timed `Updater(...)` + `refresh()` + `get_targetinfo()`
+ `download_target()` into a file. Prints one JSON line shaped like peer-bench's.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import tuf
from tuf.ngclient import Updater


def summary(samples):
    if not samples:
        return None
    return {
        "median": round(statistics.median(samples), 3),
        "min": round(min(samples), 3),
        "samples": [round(s, 3) for s in samples],
    }


def once(args, root, download):
    """One refresh (and download) from a fresh state; returns the number of targets listed."""
    tmp = tempfile.mkdtemp(prefix="peer-bench-py-", dir=args.workdir)
    try:
        metadata_dir = os.path.join(tmp, "metadata")
        out_dir = os.path.join(tmp, "out")
        os.makedirs(metadata_dir)
        os.makedirs(out_dir)
        dest = os.path.join(out_dir, args.download)

        started = time.perf_counter()
        updater = Updater(
            metadata_dir=metadata_dir,
            metadata_base_url=args.metadata_url,
            target_dir=out_dir,
            target_base_url=args.targets_url,
            bootstrap=root,
        )
        updater.refresh()
        if download:
            info = updater.get_targetinfo(args.download)
            if info is None:
                raise SystemExit(f"target {args.download!r} not found")
            updater.download_target(info, filepath=dest)
        elapsed = (time.perf_counter() - started) * 1000.0

        # Outside the timing: what was verified, and that the file is there.
        count = len(updater._trusted_set.targets.targets)
        size = os.path.getsize(dest) if download else None
        return elapsed, count, size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metadata-url", required=True)
    parser.add_argument("--targets-url", required=True)
    parser.add_argument("--root", required=True, help="the trusted root (version 1)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--download", required=True, help="the target to download")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--only-download", action="store_true")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    with open(args.root, "rb") as f:
        root = f.read()

    refresh, download = [], []
    targets, downloaded = None, None
    for _ in range(args.runs):
        if not args.only_download:
            ms, targets, _ = once(args, root, False)
            refresh.append(ms)
        ms, listed, downloaded = once(args, root, True)
        if targets is not None and listed != targets:
            raise SystemExit(f"refreshes disagree: {listed} then {targets} targets")
        targets = listed
        download.append(ms)

    print(
        json.dumps(
            {
                "client": "python-tuf",
                "version": tuf.__version__,
                "runs": args.runs,
                "targets": targets,
                "downloaded_bytes": downloaded,
                "refresh_ms": summary(refresh),
                "refresh_download_ms": summary(download),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
