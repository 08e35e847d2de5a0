#!/usr/bin/env python3
"""leasestore beside the real sanlock daemon, on twin loop devices, in one run.

Phase 1 (renewal), in two halves so that neither daemon's renewals land in lockstep beside the
other's on the shared disk: (a) our daemon renews its host lease (io_timeout 1 s: every 2 s)
while this tool times the raw O_DIRECT pattern of a renewal (1 MiB read + 512 B write) on the
same device, at random phases with the same mean cadence; (b) sanlock joins and renews beside a
raw sample on its own device. (Twin devices are files in different places on the host's disk,
and on this VM one file can be steadily faster than another: only the same device is a fair
baseline.) Phase 2 (acquire/release): one registered helper per side acquires and
releases a free resource lease, in batches alternating A B A B so that drift cancels; sanlock's
helper uses python3-sanlock under /usr/bin/python3.

Prints medians, p99s and ratios; `--json` adds one JSON line; `--plot FILE.png` draws the
renewal-latency distributions (needs the `plot` extra: matplotlib). Stops every process it
started and detaches every loop device.

    python3 tools/vs_sanlock.py --seconds 120 --rounds 10 --batch 20 --json --plot renewal.png
"""

from __future__ import annotations

import argparse
import importlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from leasestore.ondisk.geometry import Geometry
from leasestore.testing.sidebyside import (
    RawRenewal,
    our_renewals_s,
    prerequisites_missing,
    ratio,
    sanlock_renewals_s,
    summary,
    twins,
)

MiB = 1 << 20
MAX_HOSTS = 2000


def sample_raw(device: str, seconds: float, mean_interval_s: float = 2.0) -> list[float]:
    """Time the raw pattern on `device` for `seconds`, at random phases (uniform gaps with the
    renewal cadence as their mean): a fixed 2 s cadence would lock the baseline's phase to the
    daemon's renewals and so always, or never, land beside them. It rewrites the last host's
    sector with what it read there (no host of the run uses that slot)."""
    samples: list[float] = []
    raw = RawRenewal(device, MiB, 512, Geometry(512, MiB).delta_offset(MAX_HOSTS))
    end_s = time.monotonic() + seconds
    try:
        while True:
            time.sleep(random.uniform(0.5, 1.5) * mean_interval_s)
            if time.monotonic() >= end_s:
                return samples
            samples.append(raw.time_once())
    finally:
        raw.close()


def plot(path: str, renewals: dict[str, list[float]]) -> None:
    try:  # an optional extra: imported only when a plot is asked for
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("--plot needs matplotlib: pip install 'leasestore[plot]'", file=sys.stderr)
        return
    figure, axis = plt.subplots(figsize=(8, 4.5))
    for name, samples in renewals.items():
        ordered = sorted(s * 1e3 for s in samples)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axis.step(ordered, fractions, where="post", label=f"{name} (n={len(ordered)})")
    axis.set_xscale("log")
    axis.set_xlabel("renewal I/O time, ms (read 1 MiB + write 512 B; sanlock keeps whole ms)")
    axis.set_ylabel("fraction of renewals ≤ x")
    axis.set_title("Host-lease renewal latency, io_timeout 1 s, twin loop devices")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "seconds": args.seconds,
                              "rounds": args.rounds, "batch": args.batch}
    with tempfile.TemporaryDirectory(prefix="leasestore-vs-") as tmp, \
            twins(Path(tmp), join=("leasestore",)) as t:
        print(f"phase 1a: {args.seconds:g} s of leasestore renewals …", file=sys.stderr)
        since_s = time.monotonic()
        raw = sample_raw(t.devices["leasestore"], args.seconds)
        ours = our_renewals_s(t.ours, since_s)
        print(f"phase 1b: {args.seconds:g} s of sanlock renewals …", file=sys.stderr)
        t.join("sanlock")
        raw_beside_sanlock = sample_raw(t.devices["sanlock"], args.seconds)
        renewals = {"raw O_DIRECT": raw, "sanlock": sanlock_renewals_s(t.sanlock),
                    "leasestore": ours}
        report["renewal"] = {name: summary(s) for name, s in renewals.items() if s}
        report["renewal"]["raw O_DIRECT beside sanlock"] = summary(raw_beside_sanlock)
        print("phase 2: acquire + release …", file=sys.stderr)
        helpers = t.start_helpers()
        samples: dict[str, dict[str, list[float]]] = {
            side: {"acquire": [], "release": []} for side in helpers}
        for helper in helpers.values():
            helper.batch(5)  # warm-up
        for _ in range(args.rounds):
            for side, helper in helpers.items():
                batch = helper.batch(args.batch)
                for op in ("acquire", "release"):
                    samples[side][op].extend(batch[op])
        for op in ("acquire", "release"):
            report[op] = {side: summary(samples[side][op]) for side in samples}
    if args.plot:
        plot(args.plot, renewals)
    return report


def print_table(report: dict[str, Any]) -> None:
    rows: list[tuple[str, str, dict[str, float], dict[str, float]]] = []
    renewal = report["renewal"]
    for baseline in ("raw O_DIRECT", "sanlock"):
        if baseline in renewal and "leasestore" in renewal:
            rows.append(("renewal", baseline, renewal["leasestore"], renewal[baseline]))
    for op in ("acquire", "release"):
        rows.append((op, "sanlock", report[op]["binding→leasestore"], report[op]["sanlock"]))
        rows.append((f"{op} (own client)", "sanlock", report[op]["leasestore"],
                     report[op]["sanlock"]))
    print(f"{'workload':<10} {'baseline':<14} {'baseline med (p99) µs':>24} "
          f"{'leasestore med (p99) µs':>25} {'ratio med (p99)':>17}")
    for workload, baseline, ours, theirs in rows:
        r = ratio(ours, theirs)
        print(f"{workload:<10} {baseline:<14} "
              f"{theirs['median_us']:>12.0f} ({theirs['p99_us']:>8.0f}) "
              f"{ours['median_us']:>13.0f} ({ours['p99_us']:>8.0f}) "
              f"{r['median']:>8.2f} ({r['p99']:.2f})")
        report.setdefault("ratios", {})[f"{workload} vs {baseline}"] = r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="renewal phase length")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--plot", metavar="PNG")
    args = parser.parse_args(argv)
    missing = prerequisites_missing()
    if missing:
        print(f"vs_sanlock: {missing}", file=sys.stderr)
        return 2
    report = run(args)
    print_table(report)
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
