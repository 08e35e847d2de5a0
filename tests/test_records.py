"""L0 records: checksums, encode/decode round trips, validation, and fuzzing."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leasestore.errors import (
    BadChecksum,
    BadDblockChecksum,
    BadMagic,
    BadRequestMagic,
    BadVersion,
    CorruptRecord,
    TruncatedRecord,
    UsageError,
)
from leasestore.ondisk.bitmap import host_bit_is_set, hosts_in_bitmap, set_host_bits
from leasestore.ondisk.checksum import sanlock_crc
from leasestore.ondisk.dblock import (
    DBLOCK_LAYOUT,
    MODE_BLOCK_LAYOUT,
    Dblock,
    ModeBlock,
    decode_dblock,
    decode_mode_block,
    encode_dblock_sector,
)
from leasestore.ondisk.geometry import Geometry, all_geometries
from leasestore.ondisk.layout import Packer
from leasestore.ondisk.leader import (
    LEADER_LAYOUT,
    LEADER_SIZE,
    Leader,
    LeaderMagic,
    decode_leader,
    encode_delta_sector,
    fire_timeout_word,
    new_delta_leader,
    new_paxos_leader,
    published_fire_timeout_s,
)
from leasestore.ondisk.names import decode_name, encode_name
from leasestore.ondisk.request import REQUEST_LAYOUT, Request, decode_request
from leasestore.timeouts import Timeouts

MiB = 1 << 20
G512 = Geometry(512, MiB)


def test_checksum_matches_sanlock_golden_values() -> None:
    # Checksums sanlock 3.8.5 wrote for `direct init` of lockspace/resource "golden"/"res1".
    assert sanlock_crc(new_delta_leader("golden", G512, 10).encode()[:168]) == 0x90857339
    assert sanlock_crc(new_paxos_leader("golden", "res1", G512).encode()[:168]) == 0x2B7C3CDA


def test_checksum_of_live_records_sanlock_wrote() -> None:
    live_delta = new_delta_leader("golden", G512, 10).replace(
        owner_id=1, owner_generation=1, resource_name="slk-host-A", timestamp=0x2A34
    )
    assert int.from_bytes(live_delta.encode()[168:172], "little") == 0xFC6A7ABA
    dblock = Dblock(mbal=1, bal=1, inp=1, inp2=1, inp3=0x2A7F, lver=1, flags=1)
    assert int.from_bytes(dblock.encode()[48:52], "little") == 0xCEDEC278


def test_leader_round_trip_keeps_every_field() -> None:
    leader = new_paxos_leader("ls", "r" * 48, Geometry(4096, 8 * MiB)).replace(
        owner_id=7, owner_generation=3, lver=99, timestamp=12345, flags=0x81,
        write_id=7, write_generation=3, write_timestamp=12346, io_timeout=10,
    )
    raw = leader.encode()
    assert len(raw) == LEADER_SIZE
    assert decode_leader(raw) == leader
    assert decode_leader(raw).short_hold


def test_leader_rejects_bad_magic_version_and_checksum() -> None:
    raw = bytearray(new_delta_leader("ls", G512, 10).encode())
    with pytest.raises(BadMagic):
        decode_leader(bytes(200))
    with pytest.raises(BadMagic):
        decode_leader(bytes(raw), (LeaderMagic.PAXOS,))
    bad_version = bytearray(raw)
    bad_version[6] = 9  # major version 9
    with pytest.raises(BadVersion):
        decode_leader(bytes(bad_version))
    raw[60] ^= 0x01  # flip a bit inside the lockspace name
    with pytest.raises(BadChecksum, match="checksum mismatch"):
        decode_leader(bytes(raw))
    with pytest.raises(TruncatedRecord):
        decode_leader(bytes(raw[:100]))


def test_minor_version_change_is_accepted() -> None:
    leader = new_delta_leader("ls", G512, 10).replace(version=0x00030001)
    assert decode_leader(leader.encode()).version == 0x00030001


def test_corrupt_record_names_its_location() -> None:
    try:
        decode_leader(bytes(512))
    except CorruptRecord as exc:
        located = exc.at(4096)
        assert "offset 4096" in str(located)
        assert isinstance(located, BadMagic)
    else:
        pytest.fail("an all-zero sector decoded as a leader")


def test_names_pad_truncate_and_reject() -> None:
    assert encode_name("abc") == b"abc" + bytes(45)
    assert decode_name(b"x" * 48) == "x" * 48
    assert decode_name(b"ab\0cd" + bytes(43)) == "ab"
    with pytest.raises(UsageError):
        encode_name("y" * 49)
    with pytest.raises(UsageError):
        encode_name("a\0b")


def test_delta_sector_layout() -> None:
    sector = encode_delta_sector(new_delta_leader("ls", G512, 10), 512, set_host_bits({1, 10}))
    assert len(sector) == 512
    assert sector[200:256] == bytes(56)
    assert sector[256] == 0x01 and sector[257] == 0x02
    assert host_bit_is_set(sector, 10) and not host_bit_is_set(sector, 2)
    assert hosts_in_bitmap(sector) == [1, 10]
    assert len(encode_delta_sector(new_delta_leader("ls", G512, 10), 4096)) == 4096


def test_bitmap_bounds() -> None:
    assert hosts_in_bitmap(bytes(256) + set_host_bits({2048})) == [2048]
    with pytest.raises(ValueError):
        set_host_bits({2049})
    with pytest.raises(ValueError):
        set_host_bits({0})


def test_dblock_and_mode_block_round_trip() -> None:
    dblock = Dblock(mbal=200001, bal=200001, inp=1, inp2=4, inp3=99, lver=101, flags=1)
    sector = encode_dblock_sector(dblock, 512, ModeBlock(flags=1, generation=4))
    assert decode_dblock(sector) == dblock
    assert decode_dblock(sector).released
    mode = decode_mode_block(sector)
    assert mode.shared and mode.generation == 4
    assert sector[128:144] == bytes.fromhex("01000000000000000400000000000000")
    assert decode_mode_block(encode_dblock_sector(dblock, 512)) == ModeBlock()


def test_dblock_all_zero_is_valid_other_zero_checksum_is_not() -> None:
    assert decode_dblock(bytes(56)) == Dblock()
    raw = bytearray(Dblock(mbal=1).encode())
    raw[48:52] = bytes(4)
    with pytest.raises(BadDblockChecksum):
        decode_dblock(bytes(raw))


def test_request_round_trip_and_validation() -> None:
    request = Request(lver=106, force_mode=1)
    raw = request.encode()
    assert raw[:8] == bytes.fromhex("1120290801000100")
    assert decode_request(raw) == request
    with pytest.raises(BadRequestMagic):
        decode_request(bytes(24))


@pytest.mark.parametrize("geometry", all_geometries(), ids=str)
def test_geometry_offsets(geometry: Geometry) -> None:
    assert geometry.delta_offset(1) == 0
    assert geometry.delta_offset(geometry.max_hosts) < geometry.area_size
    assert geometry.dblock_offset(1) == 2 * geometry.sector_size
    assert Geometry.from_leader_fields(geometry.sector_size, geometry.align_flag) == geometry
    with pytest.raises(UsageError):
        geometry.delta_offset(geometry.max_hosts + 1)


def test_geometry_rejects_invalid_pairs_and_uses_legacy_align() -> None:
    with pytest.raises(UsageError, match="invalid sector_size/align_size"):
        Geometry(512, 8 * MiB)
    assert Geometry.from_leader_fields(4096, 0).align_size == 8 * MiB
    assert Geometry.from_leader_fields(512, 0).max_hosts == 2000
    assert G512.dblock_offset(2000) == 0xFA200


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_decode_or_raise_corrupt_record(data: bytes) -> None:
    for decode in (decode_leader, decode_dblock, decode_request, decode_mode_block):
        with contextlib.suppress(CorruptRecord):
            decode(data)


@settings(max_examples=200, deadline=None)
@given(
    st.binary(min_size=200, max_size=200),
    st.sampled_from([m.value for m in LeaderMagic]),
)
def test_random_leaders_with_valid_header_round_trip_or_fail_checksum(
    body: bytes, magic: int
) -> None:
    raw = bytearray(body)
    raw[0:4] = magic.to_bytes(4, "little")
    raw[6:8] = (3 if magic == LeaderMagic.DELTA else 6).to_bytes(2, "little")
    raw[168:172] = sanlock_crc(bytes(raw[:168])).to_bytes(4, "little")
    try:
        leader = decode_leader(bytes(raw))
    except CorruptRecord:
        return
    assert isinstance(leader, Leader)
    assert dataclasses.replace(leader).lver == leader.lver


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_struct_codecs_give_the_construct_layouts_bytes(data: st.DataObject) -> None:
    """The fast codecs are derived from the construct layouts: same fields, same bytes."""
    for layout in (LEADER_LAYOUT, DBLOCK_LAYOUT, MODE_BLOCK_LAYOUT, REQUEST_LAYOUT):
        packer = Packer(layout)
        raw = data.draw(st.binary(min_size=packer.size, max_size=packer.size))
        parsed = layout.parse(raw)
        fields = packer.unpack(raw)
        assert fields == {name: parsed[name] for name in packer.names}
        rebuilt = packer.pack(fields)
        assert rebuilt == layout.build(fields)
        # Padding is written as zeros by both; every named byte survives the round trip.
        assert packer.unpack(rebuilt) == fields


def test_a_delta_leader_publishes_its_fire_timeout_and_peers_wait_for_the_longer() -> None:
    assert published_fire_timeout_s(fire_timeout_word(60)) == 60.0
    assert published_fire_timeout_s(fire_timeout_word(2.5)) == 2.5
    assert published_fire_timeout_s(0) == 0.0  # what sanlock writes: nothing published
    assert published_fire_timeout_s(12345) == 0.0  # no tag: not ours
    ours = Timeouts(1, 5)
    assert ours.for_other(10, 60.0).host_dead_s == 8 * 10 + 60
    # Nothing published (a sanlock host): its watchdog fires after sanlock's 60 s, not our 5.
    assert ours.for_other(10, 0.0).host_dead_s == 8 * 10 + 60
    assert ours.for_other(0, 2.0) is ours  # a shorter published timeout changes nothing
