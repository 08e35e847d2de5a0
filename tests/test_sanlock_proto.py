"""sanlock's wire structs, checked against bytes captured between real sanlock clients and
sanlock's daemon (SANLOCK-WIRE.md §8), and round trips of every struct."""

from __future__ import annotations

import struct

import pytest

from leasestore.daemon import sanlock_proto as sp
from leasestore.daemon.sanlock_proto import Cmd, Header


def _hex(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def test_struct_sizes_are_sanlocks() -> None:
    assert (sp.HEADER_B, sp.DISK_B, sp.RESOURCE_B, sp.LOCKSPACE_B, sp.OPTIONS_B, sp.HOST_B,
            sp.STATE_B, sp.KILLPATH_B) == (32, 1040, 128, 1104, 56, 32, 80, 256)


def test_captured_add_lockspace_header_and_its_reply() -> None:
    request = _hex("10202804 01000000 02000000 00000000 70040000 00000000 01000000 00000000")
    header = Header.decode(request)
    assert (header.cmd, header.length, header.data, header.data2) == (Cmd.ADD_LOCKSPACE,
                                                                      32 + 1104, 1, 0)
    assert header.acceptable()
    assert header.reply(0) == _hex("10202804 01000000 02000000 00000000 20000000 00000000 "
                                   "00000000 00000000")
    assert header.encode() == request


def test_self_target_and_negative_results_survive_encoding() -> None:
    acquire = _hex("10202804 01000000 07000000 00000000 e8040000 00000000 01000000 ffffffff")
    header = Header.decode(acquire)
    assert header.data2 == sp.SELF and header.length == 32 + 128 + 1040 + 56
    reply = Header.decode(header.reply(-17))
    assert reply.data == -17
    assert header.reply(-17)[24:28] == _hex("efffffff")  # -EEXIST as captured


def test_captured_version_reply() -> None:
    reply = _hex("10202804 01000000 1c000000 00000000 20000000 00000000 00000000 00050803")
    assert Header.decode(reply).data2 == sp.VERSION_WORD


@pytest.mark.parametrize(("magic", "version", "cmd", "answered"), [
    (sp.SM_MAGIC, 1, Cmd.STATUS, True),
    (sp.SM_MAGIC, 0, Cmd.STATUS, True),  # version 0 passes
    (sp.SM_MAGIC, 0x00020000, Cmd.STATUS, False),  # a newer major is ignored
    (sp.SM_MAGIC, 0x00020000, Cmd.VERSION, True),  # ... except by VERSION
    (sp.SM_MAGIC, 0x63, Cmd.VERSION, True),
    (0x04282011, 1, Cmd.STATUS, False),  # bad magic
])
def test_which_headers_sanlock_answers(magic: int, version: int, cmd: int,
                                       answered: bool) -> None:
    assert Header(magic, version, cmd, 0, 32, 0, 0, 0).acceptable() is answered


def test_captured_gethosts_host_record() -> None:
    raw = _hex("01000000 00000000 01000000 00000000 a3010000 00000000 01000000 03000000")
    host = sp.Host.decode(raw)
    assert (host.host_id, host.generation, host.timestamp, host.io_timeout, host.flags) == (
        1, 1, 419, 1, 3)
    assert host.encode() == raw


def test_resource_lockspace_disk_round_trip_and_full_length_names() -> None:
    name48 = "n" * 48  # a full-length name has no NUL, and keeps all 48 bytes
    resource = sp.Resource("LS", name48, lver=7, data64=9, data32=3,
                           flags=sp.RES_SHARED | sp.RES_LVER, num_disks=1)
    raw = resource.encode()
    assert len(raw) == 128 and raw[48:96] == name48.encode()
    assert sp.Resource.decode(raw) == resource
    disk = sp.Disk("/dev/sdb", 1 << 20, 512, sp.SELF)
    assert sp.Disk.decode(disk.encode()) == disk
    assert disk.encode()[1024:1032] == struct.pack("<Q", 1 << 20)
    lockspace = sp.LockspaceStruct("LS", 1, sp.LSF_ADD, disk)
    raw_ls = lockspace.encode()
    assert raw_ls[48:56] == struct.pack("<Q", 1) and raw_ls[64:72] == b"/dev/sdb"
    assert sp.LockspaceStruct.decode(raw_ls) == lockspace


def test_state_record_layout_counts_the_nul() -> None:
    record = sp.state_record(sp.StateType.RESOURCE, "R1", "list=held", data32=5858,
                             data64=2)
    kind, _flags, data32, _pad, data64, name, str_len, _pad2 = struct.unpack(
        "=IIIIQ48sII", record[:80])
    assert (kind, data32, data64, name.rstrip(b"\0"), str_len) == (4, 5858, 2, b"R1", 10)
    assert record[80:] == b"list=held\0"


def test_killpath_args_split_on_unescaped_spaces() -> None:
    body = sp.fixed("/usr/lib/helper", 128) + sp.fixed(r"qemu:///system a\ b c\\d poweroff",
                                                       128)
    assert sp.decode_killpath(body) == ("/usr/lib/helper",
                                        ["qemu:///system", "a b", "c\\d", "poweroff"])


def test_geometry_flags_round_trip() -> None:
    for sector, align in ((512, 1 << 20), (4096, 8 << 20), (4096, 2 << 20)):
        flags = sp.flags_of_geometry(sector, align)
        assert sp.geometry_flags(flags) == (sector, align)
    assert sp.geometry_flags(0) == (None, None)
    assert sp.flags_of_geometry(512, 1 << 20) == 0x110  # what python3-sanlock sends
