"""Entry point: `leasestore SUBCOMMAND ...`. Each subcommand lives in its own module and
registers its parser here. Errors from leasestore print one line and exit 1; usage errors exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from leasestore.cli import area_cmds, client_cmds, daemon_cmd, demo_cmd
from leasestore.errors import LeasestoreError, UsageError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leasestore",
        description="Cluster-wide leases over shared storage (sanlock-compatible).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    area_cmds.register(sub)
    daemon_cmd.register(sub)
    client_cmds.register(sub)
    demo_cmd.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except UsageError as exc:
        print(f"leasestore {args.command}: {exc}", file=sys.stderr)
        return 2
    except LeasestoreError as exc:
        print(f"leasestore {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141
    except OSError as exc:  # the system refused something no check above foresaw
        print(f"leasestore {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
