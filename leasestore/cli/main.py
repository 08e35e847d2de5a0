"""Entry point: `leasestore SUBCOMMAND ...`. Each subcommand lives in its own module and
registers its parser here. Errors from leasestore print one line and exit 1; usage errors exit 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from leasestore import __version__
from leasestore.cli import (
    area_cmds,
    bench_cmd,
    client_cmds,
    daemon_cmd,
    demo_cmd,
    direct_cmd,
    systemd_cmd,
    who_holds_cmd,
)
from leasestore.errors import LeasestoreError, UsageError

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leasestore",
        description="Cluster-wide leases over shared storage (sanlock-compatible).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    area_cmds.register(sub)
    direct_cmd.register(sub)
    bench_cmd.register(sub)
    who_holds_cmd.register(sub)
    daemon_cmd.register(sub)
    client_cmds.register(sub)
    demo_cmd.register(sub)
    systemd_cmd.register(sub)
    parser.add_argument("--version", action="version", version=f"leasestore {__version__}")
    _name_parsers(parser)
    return parser


def _name_parsers(parser: argparse.ArgumentParser) -> None:
    """Let every (sub)command's parser find itself in the parsed arguments, so that an
    unknown option is reported with that subcommand's usage rather than the top level's."""
    parser.set_defaults(parser_of_command=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _name_parsers(child)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        args.parser_of_command.error(f"unrecognized arguments: {' '.join(unknown)}")
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
