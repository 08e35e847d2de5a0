#!/usr/bin/env python3
"""Simulation campaign: the real host-lease and Disk Paxos code (L1) in virtual time.

Each seed builds a `PaxosCluster` (hosts contending for resource leases on one simulated shared
disk), runs a fault phase with every fault the simulator has (machine crashes and restarts,
process pauses longer than host_dead, I/O errors, timeouts whose writes land late, torn
multi-sector writes), then a fault-free liveness phase in which every host must be granted a
lease. Checkers run after every step; a violation names the seed that replays it.

    python3 tools/simulate.py --seeds 1000 --jobs 2 --json

Exit status 1 when any seed violates safety or liveness.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from leasestore.testing.campaign import Shape, Totals, run_campaign


def replay_hint(seed: int, shape: Shape) -> str:
    return (f"replay: python3 tools/simulate.py --seeds 1 --first-seed {seed} "
            f"--hosts {shape.hosts} --resources {shape.resources} "
            f"--chaos-seconds {shape.chaos_s:g}"
            + (f" --settle-seconds {shape.settle_s:g}" if shape.settle_s is not None else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, required=True, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--resources", type=int, default=2)
    parser.add_argument("--chaos-seconds", type=float, default=200.0,
                        help="virtual seconds of the fault phase (io_timeout is 10 s)")
    parser.add_argument("--settle-seconds", type=float, default=None,
                        help="virtual seconds of the liveness phase (default 4 × host_dead)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.hosts < 2 or args.resources < 1:
        parser.error("need --seeds ≥ 1, --hosts ≥ 2, --resources ≥ 1")

    shape = Shape(args.hosts, args.resources, args.chaos_seconds, args.settle_seconds)
    totals = Totals()
    started = time.monotonic()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    for result in run_campaign(seeds, shape, args.jobs):
        totals.add(result)
        for violation in result.violations:
            print(f"VIOLATION seed {result.seed}: {violation}", flush=True)
        if result.violations:
            print(replay_hint(result.seed, shape), flush=True)
        if totals.seeds % 1000 == 0:
            print(f"{totals.seeds}/{args.seeds} seeds, {len(totals.failed)} failing, "
                  f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    summary = totals.summary()
    print(f"{totals.seeds} seeds × {args.hosts} hosts × {args.resources} resources: "
          f"{summary['violations']} violations, {totals.acquisitions} acquisitions, "
          f"{totals.steps} steps in {time.monotonic() - started:.1f} s; "
          f"faults {summary['faults']}")
    if args.json:
        print(json.dumps(summary))
    return 1 if totals.failed else 0


if __name__ == "__main__":
    sys.exit(main())
