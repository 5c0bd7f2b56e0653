#!/usr/bin/env bash
# Build compose-validate into .cache/bin: compose-go's loader (the one Docker Compose itself uses),
# pinned by go.mod/go.sum. `make install` runs this; the tests in tests/unit/deploy run it too when
# the binary is missing or older than its sources. Needs Go and the Go module proxy, nothing else.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
mkdir -p "$root/.cache/bin"
cd "$here"
GOFLAGS="-mod=readonly -buildvcs=false" go build -trimpath -o "$root/.cache/bin/compose-validate" .
