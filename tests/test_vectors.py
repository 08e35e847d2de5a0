"""Our encoder against sectors the real sanlock wrote (format/vectors, tools/make_vectors.py)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from leasestore.ondisk.areas import lockspace_area_image, resource_area_image
from leasestore.ondisk.geometry import Geometry
from leasestore.ondisk.leader import decode_leader
from leasestore.ondisk.request import decode_request

VECTORS = Path(__file__).resolve().parent.parent / "format" / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())


def _names(case: dict[str, Any]) -> tuple[str, str]:
    space = case["delta"]["space_name"]
    return space, case["paxos"]["resource_name"]


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: c["case"])
def test_our_areas_are_byte_identical_to_sanlock(case: dict[str, Any]) -> None:
    geometry = Geometry(case["sector_size"], case["align"])
    space, resource = _names(case)
    ls_image = lockspace_area_image(space, geometry, case["io_timeout"])
    res_image = resource_area_image(space, resource, geometry)
    ss = case["sector_size"]
    assert ls_image[:ss] == (VECTORS / case["sectors"]["delta"]).read_bytes()
    assert res_image[:ss] == (VECTORS / case["sectors"]["paxos"]).read_bytes()
    assert res_image[ss:2 * ss] == (VECTORS / case["sectors"]["request"]).read_bytes()
    assert hashlib.sha256(ls_image).hexdigest() == case["lockspace_area_sha256"]
    assert hashlib.sha256(res_image).hexdigest() == case["resource_area_sha256"]


@pytest.mark.parametrize("case", MANIFEST["cases"], ids=lambda c: c["case"])
def test_sanlock_sectors_decode_to_the_manifest(case: dict[str, Any]) -> None:
    delta = decode_leader((VECTORS / case["sectors"]["delta"]).read_bytes())
    paxos = decode_leader((VECTORS / case["sectors"]["paxos"]).read_bytes())
    request = decode_request((VECTORS / case["sectors"]["request"]).read_bytes())
    for field, value in case["delta"].items():
        if field != "checksum":
            assert getattr(delta, field) == value, field
    for field, value in case["paxos"].items():
        if field != "checksum":
            assert getattr(paxos, field) == value, field
    assert (request.lver, request.force_mode) == (case["request"]["lver"],
                                                  case["request"]["force_mode"])
    assert delta.geometry() == Geometry(case["sector_size"], case["align"])
