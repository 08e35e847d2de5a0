#!/usr/bin/env python3
"""Regenerate format/vectors/ from the real sanlock (`sanlock direct init`).

For each geometry it initialises a lockspace and a resource area in a scratch file, keeps the
sectors that carry records (delta host 1, paxos leader, request), the sha256 of each whole area,
and writes format/vectors/manifest.json with the fields those sectors decode to.
Run as root with sanlock installed: `python3 tools/make_vectors.py`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from leasestore.ondisk.leader import decode_leader  # noqa: E402
from leasestore.ondisk.request import decode_request  # noqa: E402

MiB = 1 << 20
# (sector_size, align, io_timeout, flags given to sanlock)
CASES = [
    (512, 1 * MiB, 10, False),
    (512, 1 * MiB, 10, True),
    (4096, 1 * MiB, 5, True),
    (4096, 2 * MiB, 10, True),
    (4096, 4 * MiB, 10, True),
    (4096, 8 * MiB, 10, True),
]


def sanlock_init(args: list[str]) -> None:
    subprocess.run(["sanlock", "direct", "init", *args], check=True, capture_output=True)


def make_case(
    out: Path, scratch: Path, ss: int, align: int, io: int, flags: bool
) -> dict[str, Any]:
    tag = f"{ss}-{align // MiB}M" + ("" if flags else "-legacy")
    image = scratch / f"{tag}.img"
    image.write_bytes(b"")
    with image.open("r+b") as f:
        f.truncate(2 * align)
    geo = ["-Z", str(ss), "-A", f"{align // MiB}M"] if flags else []
    ls_args = ["-s", f"vec{ss}:0:{image}:0", *geo, "-o", str(io)]
    res_args = ["-r", f"vec{ss}:res{align // MiB}:{image}:{align}", *geo]
    sanlock_init(ls_args)
    sanlock_init(res_args)
    data = image.read_bytes()
    files = {
        "delta": (data[:ss], f"{tag}-delta.bin"),
        "paxos": (data[align:align + ss], f"{tag}-paxos.bin"),
        "request": (data[align + ss:align + 2 * ss], f"{tag}-request.bin"),
    }
    for sector, name in files.values():
        (out / name).write_bytes(sector)
    delta = decode_leader(files["delta"][0])
    paxos = decode_leader(files["paxos"][0])
    request = decode_request(files["request"][0])
    return {
        "case": tag,
        "sector_size": ss,
        "align": align,
        "io_timeout": io,
        "geometry_flags_given": flags,
        "sanlock_lockspace_args": [a.replace(str(image), "IMAGE") for a in ls_args],
        "sanlock_resource_args": [a.replace(str(image), "IMAGE") for a in res_args],
        "lockspace_area_sha256": hashlib.sha256(data[:align]).hexdigest(),
        "resource_area_sha256": hashlib.sha256(data[align:]).hexdigest(),
        "sectors": {kind: name for kind, (_, name) in files.items()},
        "delta": {"space_name": delta.space_name, "flags": delta.flags,
                  "sector_size": delta.sector_size, "max_hosts": delta.max_hosts,
                  "io_timeout": delta.io_timeout,
                  "checksum": int.from_bytes(files["delta"][0][168:172], "little")},
        "paxos": {"space_name": paxos.space_name, "resource_name": paxos.resource_name,
                  "flags": paxos.flags, "num_hosts": paxos.num_hosts,
                  "max_hosts": paxos.max_hosts,
                  "checksum": int.from_bytes(files["paxos"][0][168:172], "little")},
        "request": {"lver": request.lver, "force_mode": request.force_mode},
    }


def main() -> int:
    out = ROOT / "format" / "vectors"
    out.mkdir(parents=True, exist_ok=True)
    version = subprocess.run(["sanlock", "version"], capture_output=True, text=True).stdout
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        cases = [make_case(out, Path(tmp), *case) for case in CASES]
    manifest = {"made_by": "tools/make_vectors.py", "sanlock_version": version.strip(),
                "cases": cases}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
