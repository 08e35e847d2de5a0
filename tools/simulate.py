#!/usr/bin/env python3
"""Simulation campaign: the shipped daemon code (lockspaces, resource service, supervisor) over
the real host-lease and Disk Paxos algorithms, in virtual time.

Each seed draws a configuration (hosts, host_ids, resources, processes per host, per-host and
format io_timeouts, watchdog fire timeout, geometry, shared mode) unless --fixed, builds a
`PaxosCluster` on one simulated shared disk, runs a fault phase (machine crashes, daemon stalls
and machine suspends longer than host_dead, processes that exit or ignore SIGTERM or SIGKILL,
watchdog resets, I/O errors, timeouts whose writes land late, torn multi-sector writes), then a
fault-free phase in which every host must be granted a lease, then looks for orphaned leases.
Checkers run after every step; a failure names the seed that replays it.

    python3 tools/simulate.py --seeds 1000 --jobs 2 --json

Exit status 1 when any seed violates safety or liveness, or leaves an orphan.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from leasestore.testing.campaign import Shape, Totals, run_campaign


def replay_hint(seed: int, shape: Shape) -> str:
    return (f"replay: python3 tools/simulate.py --seeds 1 --first-seed {seed}"
            + (f" --hosts {shape.hosts}" if shape.hosts is not None else "")
            + (f" --resources {shape.resources}" if shape.resources is not None else "")
            + f" --chaos-seconds {shape.chaos_s:g}"
            + (f" --settle-seconds {shape.settle_s:g}" if shape.settle_s is not None else "")
            + ("" if shape.varied else " --fixed")
            + (" --disks drawn" if shape.lease_disks is None
               else f" --disks {shape.lease_disks}" if shape.lease_disks != 1 else ""))


_MAIN_PID = os.getpid()


def _stop(signum: int, frame: object) -> None:
    """In the campaign's own process, end the run with the totals so far; a worker process
    (which inherits this handler) just exits."""
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, required=True, help="how many seeds to run")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--hosts", type=int, default=None, help="default: drawn, 2..8")
    parser.add_argument("--resources", type=int, default=None, help="default: drawn, 1..6")
    parser.add_argument("--fixed", action="store_true",
                        help="sanlock's defaults for every seed (io_timeout 10 s everywhere, "
                             "fire timeout 60 s, 512/1M, host_ids 1..n; 4 hosts, 2 resources "
                             "unless given)")
    parser.add_argument("--chaos-seconds", type=float, default=200.0,
                        help="virtual seconds of the fault phase")
    parser.add_argument("--settle-seconds", type=float, default=None,
                        help="virtual seconds of the liveness phase (default 6 × host_dead × "
                             "(1 + resources); it ends once every host and resource has been "
                             "granted)")
    parser.add_argument("--disks", choices=("1", "2", "3", "4", "drawn"), default="1",
                        help="disks per resource lease (drawn: 2-4 per seed; default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--json", action="store_true", help="end with one JSON summary line")
    args = parser.parse_args(argv)
    if (args.seeds < 1 or (args.hosts is not None and args.hosts < 2)
            or (args.resources is not None and args.resources < 1)):
        parser.error("need --seeds ≥ 1, --hosts ≥ 2, --resources ≥ 1")

    shape = Shape(args.hosts, args.resources, args.chaos_seconds, args.settle_seconds,
                  varied=not args.fixed,
                  lease_disks=None if args.disks == "drawn" else int(args.disks))
    totals = Totals()
    started = time.monotonic()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    stopped = False
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        for result in run_campaign(seeds, shape, args.jobs):
            totals.add(result)
            for failure in result.failures:
                print(f"VIOLATION seed {result.seed}: {failure}", flush=True)
            if result.failures:
                print(replay_hint(result.seed, shape), flush=True)
            if totals.seeds % 1000 == 0:
                print(f"{totals.seeds}/{args.seeds} seeds, {len(totals.failed)} failing, "
                      f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    except KeyboardInterrupt:  # SIGINT or SIGTERM: report the seeds that completed
        stopped = True
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    summary = totals.summary()
    if stopped:
        summary["stopped"] = True
        print(f"stopped by a signal after {totals.seeds} of {args.seeds} seeds", file=sys.stderr)
    print(f"{totals.seeds} seeds: {totals.violations} violations, {totals.liveness_failures} "
          f"liveness failures, {totals.orphans} orphans, {totals.acquisitions} acquisitions, "
          f"{totals.steps} steps in {time.monotonic() - started:.1f} s; "
          f"faults {summary['faults']}")
    if args.json:
        print(json.dumps(summary))
    return 1 if totals.failed else 0


if __name__ == "__main__":
    sys.exit(main())
