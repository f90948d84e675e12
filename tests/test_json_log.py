"""The --log-json file stays bounded: rotated by size with a kept count, reopened on demand."""

import os

from twisted.logger import Logger, eventsFromJSONLogFile

from parkd.daemon import JsonLogService
from parkd.events import FRAME_EVENTS


def emit_frames(count: int) -> None:
    for seq in range(count):
        FRAME_EVENTS.emit("test", "applied frame {seq}", parkd_event="frame_applied", camera_id=1, seq=seq)


def read(path):
    with open(path, encoding="utf-8") as f:
        return list(eventsFromJSONLogFile(f))


def test_the_json_log_rotates_by_size_and_keeps_a_bounded_number_of_files(tmp_path):
    path = str(tmp_path / "node.json")
    service = JsonLogService(path, max_bytes=2000, keep=3)
    service.startService()
    try:
        emit_frames(400)  # ~120 bytes each: about 24 rotations' worth
        Logger(namespace="test").info("after the frames", parkd_event="marker")
    finally:
        service.stopService()
    names = sorted(os.listdir(tmp_path))
    assert names == ["node.json", "node.json.1", "node.json.2", "node.json.3"]  # the oldest were deleted
    assert all(os.path.getsize(tmp_path / name) <= 2000 + 300 for name in names)  # past the size by one record
    kept = [e for name in ("node.json.3", "node.json.2", "node.json.1", "node.json") for e in read(str(tmp_path / name))]
    seqs = [e["seq"] for e in kept if "seq" in e]
    assert seqs == list(range(seqs[0], 400)) and seqs[0] > 0  # the newest, in order, none lost between files
    assert kept[-1]["parkd_event"] == "marker"


def test_reopen_follows_logrotate_moving_the_file_away(tmp_path):
    path = str(tmp_path / "camera.json")
    service = JsonLogService(path, max_bytes=1 << 20, keep=2)
    service.startService()
    try:
        emit_frames(3)
        os.rename(path, path + ".rotated-by-logrotate")
        service.reopen()
        emit_frames(2)
    finally:
        service.stopService()
    assert [e["seq"] for e in read(path + ".rotated-by-logrotate")] == [0, 1, 2]
    assert [e["seq"] for e in read(path)] == [0, 1]
