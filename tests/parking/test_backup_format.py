"""The backup file (CONTRACT §10 "Backup"): its bytes round-trip, and every kind of damage is refused."""

from __future__ import annotations

import filecmp
import hashlib
import struct

import pytest

from parkd.parking import backup
from parkd.parking.backup import (
    BackupError,
    BackupHeader,
    BackupVerifier,
    backup_chunks,
    extract_payload,
    read_backup,
    restored_cluster_id,
    write_backup,
)
from parkd.parking.snapshot import read_snapshot_meta

from backups import backup_file, header_for


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A backup file of a 300-frame state, made once (read it, never change it): (backup path, header, payload path)."""
    return backup_file(tmp_path_factory.mktemp("backup"))


def damaged(path, out, edit) -> str:
    data = bytearray(path.read_bytes())
    out.write_bytes(bytes(edit(data)))
    return str(out)


# -- round trip -----------------------------------------------------------------------------------


def test_a_backup_round_trips_its_header_and_payload(made, tmp_path):
    path, header, payload = made
    data = path.read_bytes()
    assert data[:8] == b"PARKDBAK" and struct.unpack(">I", data[8:12]) == (1,)
    assert len(data) == header.total_bytes
    assert data[-32:] == hashlib.sha256(data[:-32]).digest()  # the digest of everything before it, last
    checked = read_backup(path)
    assert checked.header == header and checked.size == len(data) and checked.sha256 == data[-32:].hex()
    out = tmp_path / "payload.db"
    assert extract_payload(path, out).header == header
    assert filecmp.cmp(out, payload, shallow=False)
    assert read_snapshot_meta(out).meta.index == header.index == 300


def test_the_verifier_takes_the_stream_in_any_pieces(made):
    path, header, payload = made
    data = path.read_bytes()
    for size in (1, 7, 4096, len(data)):
        verifier = BackupVerifier()
        got = b"".join(verifier.feed(data[i : i + size]) for i in range(0, len(data), size))
        assert verifier.finish() == header
        assert got == payload.read_bytes()
        assert verifier.sha256 == data[-32:].hex()


def test_the_chunks_a_node_streams_are_the_file(made):
    path, header, payload = made
    chunks = list(backup_chunks(header, payload, chunk_size=1000))
    assert b"".join(chunks) == path.read_bytes()
    assert max(len(c) for c in chunks[1:-1]) == 1000 and len(chunks[-1]) == 32


def test_the_header_says_its_fields_as_json(made):
    path, header, _ = made
    length = struct.unpack(">I", path.read_bytes()[12:16])[0]
    raw = path.read_bytes()[16 : 16 + length]
    assert BackupHeader.decode(raw) == header
    assert b'"cluster_id":"c0ffee' in raw and b'"voters":[1,2,3]' in raw and b'"index":300' in raw


def test_a_payload_that_is_not_the_size_the_header_says_is_not_streamed(made, tmp_path):
    path, header, payload = made
    for size in (header.payload_bytes - 1, header.payload_bytes + 1):
        wrong = header_for(read_snapshot_meta(payload).meta, payload, payload_bytes=size)
        with pytest.raises(BackupError, match="payload size"):
            write_backup(tmp_path / "x.pkb", wrong, payload)


def test_the_restored_cluster_id_is_the_same_for_one_file_and_differs_between_files(made):
    path, _, _ = made
    checked = read_backup(path)
    assert restored_cluster_id(checked.sha256) == restored_cluster_id(read_backup(path).sha256)
    assert len(restored_cluster_id(checked.sha256)) == 32
    other = "00" * 32
    assert restored_cluster_id(other) != restored_cluster_id(checked.sha256)


# -- refusals ---------------------------------------------------------------------------------------


def flip(at):
    def edit(data):
        data[at] ^= 0x01
        return data

    return edit


@pytest.mark.parametrize("where", ["magic", "version", "header", "payload-start", "payload-middle", "payload-end",
                                   "digest"])  # fmt: skip
def test_one_flipped_byte_anywhere_is_refused(made, tmp_path, where):
    path, header, _ = made
    head = header.head_bytes
    at = {
        "magic": 3, "version": 11, "header": 16 + 20, "payload-start": head,
        "payload-middle": head + header.payload_bytes // 2, "payload-end": head + header.payload_bytes - 1,
        "digest": header.total_bytes - 5,
    }[where]  # fmt: skip
    bad = damaged(path, tmp_path / "bad.pkb", flip(at))
    with pytest.raises(BackupError) as refused:
        read_backup(bad)
    message = str(refused.value)
    assert "\n" not in message
    expected = {
        "magic": "not a parkd backup",  # which file is it?
        "version": "corrupt: its format version 0 is unknown and its sha256 does not match",  # not "newer"
    }.get(where, "corrupt")
    assert expected in message
    with pytest.raises(BackupError):
        extract_payload(bad, tmp_path / "out.db")
    assert not (tmp_path / "out.db").exists()


@pytest.mark.parametrize("keep", [0, 5, 15, 40, "head", "half", "all-but-1"])
def test_a_truncated_file_is_refused(made, tmp_path, keep):
    path, header, _ = made
    size = {"head": header.head_bytes, "half": header.total_bytes // 2, "all-but-1": header.total_bytes - 1}.get(
        keep, keep
    )
    bad = damaged(path, tmp_path / "short.pkb", lambda data: data[:size])
    with pytest.raises(BackupError, match="truncated") as refused:
        read_backup(bad)
    assert "\n" not in str(refused.value)
    if size >= header.head_bytes:
        assert f"{size} bytes of {header.total_bytes}" in str(refused.value)


def test_bytes_after_the_end_are_refused(made, tmp_path):
    path, _, _ = made
    bad = damaged(path, tmp_path / "long.pkb", lambda data: data + b"\0")
    with pytest.raises(BackupError, match="corrupt: more than"):
        read_backup(bad)


def test_a_future_format_version_is_refused_even_with_a_good_digest(made, tmp_path):
    path, _, _ = made

    def version_2(data):
        data[8:12] = struct.pack(">I", 2)
        data[-32:] = hashlib.sha256(bytes(data[:-32])).digest()
        return data

    bad = damaged(path, tmp_path / "v2.pkb", version_2)
    with pytest.raises(BackupError, match=r"backup format version 2; this parkd reads version 1 \(was it written by a "
                                          r"newer parkd\?\)"):  # fmt: skip
        read_backup(bad)


def test_another_file_is_not_a_backup(made, tmp_path):
    _, _, payload = made  # a snapshot file: SQLite, not a backup
    with pytest.raises(BackupError, match="not a parkd backup"):
        read_backup(payload)
    with pytest.raises(BackupError, match="cannot read"):
        read_backup(tmp_path / "missing.pkb")


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"index": 1}', "lacks"),
    ],
)
def test_a_header_that_does_not_parse_is_refused(raw, message):
    with pytest.raises(BackupError, match=message):
        BackupHeader.decode(raw)


@pytest.mark.parametrize(
    "field, value",
    [("index", -1), ("term", "3"), ("voters", [0]), ("voters", "1,2"), ("members", [1]), ("payload_bytes", 1.5),
     ("cluster_id", 7), ("created_at", True)],
)  # fmt: skip
def test_each_header_field_is_checked(made, field, value):
    _, header, _ = made
    import json

    doc = json.loads(header.encode())
    doc[field] = value
    with pytest.raises(BackupError, match=f"header field {field}"):
        BackupHeader.decode(json.dumps(doc).encode())


def test_a_header_length_above_the_limit_is_refused_before_reading_it():
    verifier = BackupVerifier()
    with pytest.raises(BackupError, match="header length"):
        verifier.feed(struct.pack(">8sII", b"PARKDBAK", 1, backup.MAX_HEADER + 1))
