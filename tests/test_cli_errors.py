"""Bad input to every `leasestore` subcommand: one line on stderr naming the problem, exit 2 for
usage (bad arguments) and 1 for failures, never a traceback, and nothing written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from leasestore.cli.main import main
from leasestore.testing.procs import make_file

USAGE, FAILURE = 2, 1

# (arguments, with {file} a 4 MiB file, {missing} a path that does not exist and {{}} a
#  literal {}; exit code; what stderr's last line must say)
CASES: list[tuple[str, int, str]] = [
    ("dump {missing}", FAILURE, "no such file"),
    ("dump {file}:0:²M", USAGE, "not a size: '²M'"),
    ("dump {file}:0:-1", USAGE, "not a size: '-1'"),
    ("dump {file}:٣", USAGE, "not a size"),
    ("dump {file}:0x200", USAGE, "not a size"),
    ("dump", USAGE, "required"),
    ("format -s LS:0:{file}:٣", USAGE, "offset must be a non-negative integer"),
    ("format -s LS:0:{file}:²", USAGE, "offset must be a non-negative integer"),
    ("format -s LS:0:{file}:-512", USAGE, "offset must be a non-negative integer"),
    ("format -r LS:r:{file}:1e6", USAGE, "offset must be a non-negative integer"),
    ("format -s LS:0:{file}:0 -o 0", USAGE, "io_timeout (-o) must be a whole number"),
    ("format -s LS:0:{file}:0 -o 256", USAGE, "io_timeout (-o) must be a whole number"),
    ("format -s LS:0:{file}:0 -o ٣", USAGE, "invalid decimal_int value: '٣'"),
    ("format -s LS:0:{file}:0 -Z 1000", USAGE, "invalid choice"),
    ("format -s LS:0:{file}:0 -Z 4096", USAGE, "sector size and align must be given together"),
    ("format -s LS:0:{file}:0 --bogus", USAGE, "unrecognized arguments: --bogus"),
    ("format -s LS:0:{file}:1", FAILURE, "not a multiple"),
    ("format -s LS:0:{missing}:0", FAILURE, "no such file"),
    ("format -r LS:r:{file}:0 --num-hosts ٣", USAGE, "invalid decimal_int value"),
    ("daemon --run-dir {file}", USAGE, "run dir"),
    ("daemon --run-dir /proc/leasestore-test/run", USAGE, "run dir"),
    ("daemon --io-timeout ٣", USAGE, "invalid decimal_int value"),
    ("daemon --io-timeout 0", USAGE, "io_timeout must be a whole number"),
    ("daemon --watchdog-fire-timeout nan", USAGE, "invalid decimal_float value: 'nan'"),
    ("daemon --config {missing}", USAGE, "No such file"),
    ("client --run-dir {missing} status", FAILURE, "cannot reach the leasestore daemon"),
    ("client --run-dir {missing} inquire -p ٣", USAGE, "invalid decimal_int value"),
    ("client --run-dir {missing} add_lockspace -s LS:1:{file}:x", USAGE,
     "offset must be a non-negative integer"),
    ("client --run-dir {missing} request -r LS:r:{file}:0 -f 3", USAGE, "invalid choice"),
    ("bench {file} --count 0", USAGE, "--count and --seconds must be above 0"),
    ("bench {file} --count 3 --seconds 1", USAGE, "not allowed with argument"),
    ("bench {file} --seconds nan", USAGE, "invalid decimal_float value: 'nan'"),
    ("bench {file} --interval -1", USAGE, "invalid decimal_float value: '-1'"),
    ("bench {file}:0:1M", USAGE, "expected PATH[:OFFSET]"),
    ("bench {file}:٣", USAGE, "not a size"),
    ("bench {file} -Z 512", USAGE, "must be given together"),
    ("bench {file} --plot out.jpg", USAGE, "--plot writes PNG"),
    ("bench {file} --run-dir {missing}", USAGE, "--run-dir goes with --lockspace"),
    ("bench {file} --lockspace LS --run-dir {missing}", FAILURE,
     "cannot reach the leasestore daemon"),
    ("bench {missing}", FAILURE, "no such file"),
    ("bench {file}:1", FAILURE, "not a multiple of 512"),
    ("bench {file}:4M", FAILURE, "is beyond"),
    ("bench {file}:3M -Z 4096 -A 2M", FAILURE, "does not fit"),
    ("client --run-dir {missing} status --bogus", USAGE,
     "leasestore client status: error: unrecognized arguments: --bogus"),
    ("client --run-dir {missing} command -r LS:r:{file}:0 -c {missing}/prog", USAGE,
     "is not found or not executable; nothing was acquired"),
    ("dump {file} --bogus", USAGE, "leasestore dump: error: unrecognized arguments"),
    ("who-holds {file}:٣", USAGE, "not a size"),
    ("who-holds -r LS:r:{file}:0:SH", USAGE, "(no :LVER or :SH)"),
    ("who-holds {file} --no-daemon --run-dir {missing}", USAGE, "contradict"),
    ("who-holds {file} --watch -1", USAGE, "invalid decimal_float value"),
    ("who-holds {missing}", FAILURE, "no such file"),
    ("who-holds -r LS:r:{file}:0", FAILURE, "magic 0x00000000, expected 0x06152010"),
    ("direct write_leader -r LS:r:{file}:0:{file}:1048576 --set lver=1", USAGE,
     "name that disk alone"),
    ("direct read_leader -r LS:r:{file}:0:{file}:1048576", FAILURE,
     "magic 0x00000000, expected 0x06152010"),
    ("daemon --metrics-address 9127", USAGE, "metrics address must be HOST:PORT"),
    ("systemd", USAGE, "one of the arguments --unit --config is required"),
    ("format -r LS:vm:{file}:0 --count 3", USAGE, "must hold {} once for the number"),
    ("format -r LS:vm{{}}{{}}:{file}:0 --count 2", USAGE, "must hold {} once for the number"),
    ("format -r LS:vm{{}}:{file}:0 --count 0", USAGE, "--count must be at least 1"),
    ("format -r LS:vm{{}}:{file}:1048576 --count 4", FAILURE, "4 areas of 1048576 from 1048576 "
     "do not fit"),
    ("format -r LS:" + "n" * 47 + "{{}}:{file}:0 --count 11 -Z 512 -A 1M", USAGE, "longer than 48"),
    ("demo --bogus", USAGE, "unrecognized arguments"),
    ("nosuchcommand", USAGE, "invalid choice"),
]


@pytest.mark.parametrize(("line", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_an_exit_code(
        line: str, code: int, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    lease_file = make_file(tmp_path / "disk.img", 4 << 20)
    before = hashlib.sha256(Path(lease_file).read_bytes()).digest()
    argv = line.format(file=lease_file, missing=tmp_path / "missing").split()
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert status == code, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("leasestore") and message in last, err
    assert hashlib.sha256(Path(lease_file).read_bytes()).digest() == before, "input was written"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("leasestore 0.")
