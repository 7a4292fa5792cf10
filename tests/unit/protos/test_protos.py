"""The committed stubs are what `python -m mnist_serving.protos.generate` produces now."""

import json
import subprocess
import sys
from pathlib import Path

from mnist_serving.protos import generate

GEN = Path(generate.__file__).parent / "gen"


def test_committed_stubs_are_up_to_date(tmp_path):
    written = generate.generate(tmp_path)
    assert written
    for path in written:
        committed = GEN / path.relative_to(tmp_path)
        assert committed.is_file(), f"{committed} missing: run `make protos`"
        assert committed.read_text() == path.read_text(), f"{committed} is stale: run `make protos`"


def test_v2_messages_are_wire_compatible_with_tritons(tmp_path):
    """Field numbers and types equal those of Triton's own client (checked in its own process)."""
    script = r"""
import json
from tritonclient.grpc import service_pb2 as theirs
from google.protobuf import descriptor_pb2, descriptor_pool
from pathlib import Path
import grpc_tools.protoc as protoc, tempfile, sys
src = sys.argv[1]
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "set.pb"
    assert protoc.main(["protoc", f"-I{src}", f"--descriptor_set_out={out}",
                        "inference/grpc_service.proto"]) == 0
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
problems = []
def compare(ours, prefix):
    theirs_desc = theirs.DESCRIPTOR.message_types_by_name.get(prefix.split(".")[0])
    for part in prefix.split(".")[1:]:
        theirs_desc = theirs_desc.nested_types_by_name[part]
    if theirs_desc is None:
        problems.append(f"{prefix}: not in Triton's proto"); return
    for field in ours.field:
        other = theirs_desc.fields_by_name.get(field.name)
        if other is None or other.number != field.number or other.type != field.type:
            problems.append(f"{prefix}.{field.name}")
    for nested in ours.nested_type:
        if not nested.options.map_entry:
            compare(nested, prefix + "." + nested.name)
for message in fds.file[0].message_type:
    compare(message, message.name)
ours_methods = {m.name: (m.input_type, m.output_type) for m in fds.file[0].service[0].method}
service = theirs.DESCRIPTOR.services_by_name["GRPCInferenceService"]
for name, (i, o) in ours_methods.items():
    m = service.methods_by_name[name]
    if "." + m.input_type.full_name != i or "." + m.output_type.full_name != o:
        problems.append(name)
problems += [f"missing {name}" for name in service.methods_by_name if name not in ours_methods]
print(json.dumps(problems))
"""
    root = generate.sources(tmp_path)  # the vendored text with the generator's edits
    done = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Every method of Triton's service is ours; our one addition (MLServer has it too) is
    # field 6, which Triton's clients skip as unknown.
    assert json.loads(done.stdout) == ["ModelMetadataResponse.parameters"]
