#!/usr/bin/env bash
# Builds versitygw (an S3 server over a local folder, Apache-2.0) from the Go module proxy into $1
# (default: <repo>/.bin/versitygw-<version>). Skips the build when the binary is already there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=v1.8.0
out=${1:-$(cd "$here/../.." && pwd)/.bin/versitygw-$version}
if [ ! -x "$out/versitygw" ]; then
  mkdir -p "$out"
  started=$SECONDS
  echo "dev-stack: building versitygw $version from Go modules (first run only; later runs reuse $out) ..." >&2
  # GOFLAGS cleared: `go install pkg@version` builds outside any module, whatever the caller sets.
  GOBIN="$out/.tmp" CGO_ENABLED=0 GOFLAGS= go install -trimpath -ldflags "-s -w" \
    "github.com/versity/versitygw/cmd/versitygw@$version"
  mv "$out/.tmp/versitygw" "$out/versitygw"
  rmdir "$out/.tmp"
  echo "dev-stack: built versitygw in $((SECONDS - started))s" >&2
fi
echo "$out"
