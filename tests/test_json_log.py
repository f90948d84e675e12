"""The --log-json file: per-frame events written whole, one write per batch; bounded by rotation, reopened on demand."""

import io
import os

from twisted.logger import Logger, LogLevel, eventsFromJSONLogFile, formatEvent

from parkd.daemon import JsonLogService
from parkd.events import FRAME_EVENTS, FrameEvents, json_file_sink


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


class _CountingFile:
    """A file that remembers each write (each is one system call on the unbuffered LogFile)."""

    def __init__(self):
        self.writes = []

    def write(self, data):
        self.writes.append(data)


def test_a_batchs_events_go_out_in_one_write_and_read_back_whole():
    file = _CountingFile()
    events = FrameEvents()
    events.sink = json_file_sink(file)
    rows = [("frame_applied", 7, seq, 'nor"th\u00e9') for seq in (1, 2, 3)]
    events.emit_rows("parkd.node", "applied frame {seq}", ("parkd_event", "camera_id", "seq", "lot"), rows)
    events.emit("parkd.camera", "acked frame {seq}", parkd_event="frame_acked", seq=4)
    events.emit("parkd.camera", "no fields of its own")
    assert len(file.writes) == 3 and events.emitted == 5
    read_back = list(eventsFromJSONLogFile(io.StringIO("".join(file.writes))))
    assert [(e["log_namespace"], e.get("seq")) for e in read_back] == [
        ("parkd.node", 1), ("parkd.node", 2), ("parkd.node", 3), ("parkd.camera", 4), ("parkd.camera", None)]
    assert read_back[-1]["log_format"] == "no fields of its own"
    assert read_back[0]["lot"] == 'nor"th\u00e9' and read_back[0]["log_format"] == "applied frame {seq}"
    assert read_back[0]["log_level"] == LogLevel.info and isinstance(read_back[0]["log_time"], float)
    assert formatEvent(read_back[2]) == "applied frame 3"


def test_each_kind_of_value_reads_back_as_it_was_given():
    file = _CountingFile()
    events = FrameEvents()
    events.sink = json_file_sink(file)
    fields = {"count": -12, "big": 1 << 64, "ratio": 0.1, "none": None, "yes": True, "no": False,
              "text": 'a "quoted" \\ line\nwith \u00e9 and \U0001f697', "list": [1, "two"], "100% sure": 1}  # fmt: skip
    events.emit("parkd.test", "every kind", **fields)
    events.emit("parkd.test", "again, from the same template", **fields)
    read_back = list(eventsFromJSONLogFile(io.StringIO("".join(file.writes))))
    assert len(read_back) == 2
    for event in read_back:
        assert {name: event[name] for name in fields} == fields
        assert type(event["yes"]) is bool and type(event["ratio"]) is float
