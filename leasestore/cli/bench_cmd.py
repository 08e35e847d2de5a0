"""`leasestore bench`: renewal latency of the operator's own storage, and the io_timeout it
supports. The timing is `renewal_timing`'s, the judgement `latency`'s; this module parses,
shows progress, prints and plots."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from leasestore import client
from leasestore.cli.area_cmds import parse_dump_target
from leasestore.errors import LeasestoreError, UsageError
from leasestore.latency import (
    HEADROOM,
    PERCENTILES,
    RenewalTiming,
    Summary,
    histogram,
    io_timeout_verdicts,
    recommended_io_timeout,
)
from leasestore.ondisk.geometry import Geometry
from leasestore.renewal_timing import Plan, Run, time_renewals
from leasestore.units import decimal_float, decimal_int, format_size, parse_size

DEFAULT_COUNT = 200
BAR_WIDTH = 40


def register(sub: Any) -> None:
    bench = sub.add_parser(
        "bench", help="time the renewal I/O pattern on a device and judge io_timeouts",
        description="Times host-lease renewals (a whole-area O_DIRECT read, then a one-sector "
                    "O_DIRECT write) on PATH at OFFSET. Writes only to an unused area (all "
                    "zeros) and zeroes its sector again at the end; --read-only times the "
                    "reads of any area, a live lockspace's too.")
    bench.add_argument("target", metavar="PATH[:OFFSET]")
    bench.add_argument("-Z", "--sector-size", type=decimal_int, choices=(512, 4096))
    bench.add_argument("-A", "--align", type=parse_size, metavar="1M|2M|4M|8M")
    amount = bench.add_mutually_exclusive_group()
    amount.add_argument("--count", type=decimal_int,
                        help=f"renewals to time (default {DEFAULT_COUNT})")
    amount.add_argument("--seconds", type=decimal_float, help="time renewals for this long")
    bench.add_argument("--interval", type=decimal_float, default=0.0, metavar="SECONDS",
                       help="between renewal starts (default 0: back to back; the daemon "
                            "renews every 2 × io_timeout)")
    bench.add_argument("--read-only", action="store_true", help="time the reads alone")
    bench.add_argument("--lockspace", metavar="NAME",
                       help="also show the running daemon's renewal history of NAME")
    bench.add_argument("--run-dir", help="that daemon's run dir")
    bench.add_argument("--plot", metavar="FILE.png", help="draw the timings (needs matplotlib)")
    bench.add_argument("--json", action="store_true", help="print one JSON document")
    bench.set_defaults(handler=run_bench)


def _plan(args: argparse.Namespace) -> Plan:
    path, offset, length = parse_dump_target(args.target)
    if length is not None:
        raise UsageError(f"expected PATH[:OFFSET], not {args.target!r}")
    if (args.sector_size is None) != (args.align is None):
        raise UsageError("sector size (-Z) and align (-A) must be given together (or neither)")
    geometry = None if args.sector_size is None else Geometry(args.sector_size, args.align)
    if args.count == 0 or args.seconds == 0:
        raise UsageError("--count and --seconds must be above 0")
    count = args.count if args.count is not None or args.seconds is not None else DEFAULT_COUNT
    return Plan(path, offset, geometry, args.read_only, count, args.seconds, args.interval)


def _daemon_timings(lockspace: str, run_dir: str | None) -> list[RenewalTiming]:
    with client.using(run_dir or client.run_dir()):
        history = client.renewal_history(lockspace)
    timings = [RenewalTiming(r["read_us"] / 1e6, r["write_us"] / 1e6)
               for r in history if not r["error"]]
    if not timings:
        raise LeasestoreError(f"the daemon has no successful renewal of {lockspace!r} yet")
    return timings


def run_bench(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if args.run_dir and not args.lockspace:
        raise UsageError("--run-dir goes with --lockspace (whose daemon to ask)")
    daemon = _daemon_timings(args.lockspace, args.run_dir) if args.lockspace else None
    draw = _plotter(args.plot) if args.plot else None
    with tqdm(total=plan.count if plan.count is not None else plan.seconds,
              unit=" renewals" if plan.count is not None else " s", file=sys.stderr,
              disable=args.json or not sys.stderr.isatty(), leave=False) as progress:
        started = time.monotonic()

        def advance(_: RenewalTiming) -> None:
            if plan.count is not None:
                progress.update(1)
            else:
                progress.n = min(time.monotonic() - started, plan.seconds or 0.0)
                progress.refresh()

        run = time_renewals(plan, advance)
    if args.json:
        json.dump(_document(run, daemon), sys.stdout, indent=1)
        print()
    else:
        _print_report(run, daemon)
    if draw is not None:
        draw(run, args.plot)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0


def _summaries(timings: Sequence[RenewalTiming]) -> dict[str, Summary]:
    kinds = {"read": [t.read_s for t in timings], "total": [t.total_s for t in timings]}
    writes = [t.write_s for t in timings if t.write_s is not None]
    if writes:
        kinds["write"] = writes
    return {kind: Summary.of(kinds[kind]) for kind in ("read", "write", "total") if kind in kinds}


def _document(run: Run, daemon: list[RenewalTiming] | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "path": run.path, "offset": run.offset_b,
        "geometry": {"sector_size": run.geometry.sector_size,
                     "align_size": run.geometry.align_size},
        "read_only": run.read_only, "area_holds": run.holds,
        "renewals": len(run.timings), "elapsed_s": round(run.elapsed_s, 3),
        "timed_out_ios": run.timed_out_ios,
        **{kind: s.to_json() for kind, s in _summaries(run.timings).items()},
        "io_timeouts": [v.to_json() for v in io_timeout_verdicts(run.timings)],
        "recommended_io_timeout": recommended_io_timeout(run.timings),
    }
    if daemon is not None:
        document["daemon"] = {kind: s.to_json() for kind, s in _summaries(daemon).items()}
    return document


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:9.3f}"


def _print_report(run: Run, daemon: list[RenewalTiming] | None) -> None:
    g = run.geometry
    pattern = f"read {format_size(g.area_size)}" + ("" if run.read_only else
                                                    f", write {g.sector_size} B")
    print(f"renewal I/O on {run.path}:{run.offset_b} ({g}: {pattern}): "
          f"{len(run.timings)} renewals in {run.elapsed_s:.2f} s"
          + (f"; the area holds {run.holds}" if run.holds else ""))
    if run.timed_out_ios:
        print(f"{run.timed_out_ios} I/O(s) took longer than 60 s (counted as 60 s)")
    header = "".join(f"{'p' + format(p, 'g'):>10}" for p in PERCENTILES)
    print(f"\n{'ms':<14}{header}{'max':>10}")
    rows = [("", _summaries(run.timings))]
    if daemon is not None:
        rows.append(("daemon ", _summaries(daemon)))
    for prefix, summaries in rows:
        for kind, summary in summaries.items():
            cells = "".join(f" {_ms(v)}" for v in summary.percentiles_s)
            print(f"{prefix + kind:<14}{cells} {_ms(summary.max_s)}")
    print("\nrenewal time (read + write), ms")
    buckets = histogram([t.total_s for t in run.timings])
    widest = max(b.count for b in buckets)
    for b in buckets:
        bar = "#" * round(BAR_WIDTH * b.count / widest) if widest else ""
        print(f"{_ms(b.low_s)} - {_ms(b.high_s)}  {bar:<{BAR_WIDTH}} {b.count}")
    print("\nio_timeout  failed renewals  margin of the slowest I/O")
    for verdict in io_timeout_verdicts(run.timings):
        print(f"{verdict.io_timeout_s:>8} s  {verdict.failed_renewals:>15}  "
              f"{verdict.margin_s * 1e3:>12.1f} ms")
    slowest = max(t.slowest_io_s for t in run.timings)
    recommended = recommended_io_timeout(run.timings)
    if recommended is None:
        print(f"\nno io_timeout up to 20 s leaves half of it unused by the slowest I/O "
              f"({slowest * 1e3:.1f} ms): look at the storage before using it for leases")
    else:
        print(f"\nrecommended io_timeout: {recommended} s (at least {HEADROOM:g} × the slowest "
              f"I/O, {slowest * 1e3:.1f} ms; host_dead is then {8 * recommended} s + the "
              "watchdog fire timeout)")


def _plotter(path: str) -> Any:
    """A function drawing a run to `path`; fails before any I/O if matplotlib is missing."""
    if not path.lower().endswith(".png"):
        raise UsageError(f"--plot writes PNG: {path!r} does not end in .png")
    try:  # an optional dependency, imported only when a plot is asked for
        importlib.import_module("matplotlib").use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'leasestore[plot]'") from None

    def draw(run: Run, target: str) -> None:
        figure, (timeline, spread) = plt.subplots(1, 2, figsize=(11, 4))
        totals = [t.total_s * 1e3 for t in run.timings]
        timeline.plot(totals, ".", markersize=3, label="read + write")
        timeline.plot([t.read_s * 1e3 for t in run.timings], ".", markersize=2, label="read")
        timeline.set_xlabel("renewal")
        timeline.set_ylabel("ms")
        timeline.set_yscale("log")
        timeline.legend()
        spread.hist(totals, bins=40)
        spread.set_xlabel("renewal time, ms")
        spread.set_ylabel("renewals")
        figure.suptitle(f"renewal I/O on {run.path}:{run.offset_b} ({run.geometry})")
        figure.tight_layout()
        try:
            figure.savefig(target)
        except OSError as exc:
            raise LeasestoreError(f"cannot write {target}: {exc.strerror}") from None
        finally:
            plt.close(figure)

    return draw
