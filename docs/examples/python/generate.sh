#!/bin/sh
# Generates the Python protobuf modules of the Omnid stream schema
# (proto/omni/v1/*.proto) into ./gen, where consumer.py looks for them.
# Generated code is not committed: run this after every schema update.
# Needs the packages of requirements.txt (grpcio-tools bundles protoc and the
# google/protobuf/*.proto well-known types).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
proto="$here/../../../proto"
out="$here/gen"
mkdir -p "$out"
python3 -m grpc_tools.protoc -I "$proto" --python_out="$out" --pyi_out="$out" \
  "$proto"/omni/v1/*.proto
echo "generated $(find "$out" -name '*_pb2.py' | wc -l) modules in $out"
