#!/usr/bin/env bash
# Installs FerretDB (SQLite backend) into .cache/bin, once.
#
# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.x` compiles but the binary panics at
# start: the module zip lacks build/version/version.txt, which FerretDB's own build task generates.
# So we take the same module from the Go module proxy, add that one file, and build it unchanged.
set -euo pipefail
VERSION="${FERRETDB_VERSION:-v1.24.2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.cache/bin/ferretdb"
if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "package: medunion-idx"; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "medunion: Go is needed to build the embedded FerretDB store (or set MONGODB_URI to a MongoDB server)." >&2
  echo "          Install Go >= 1.22 (Debian: apt-get install golang) and run again." >&2
  exit 3
fi
export GOFLAGS="-mod=mod" GOTOOLCHAIN=local
SRC="$(go mod download -json "github.com/FerretDB/FerretDB@${VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
WORK="$ROOT/.cache/ferretdb-src-${VERSION}"
rm -rf "$WORK"
cp -r "$SRC" "$WORK"
chmod -R u+w "$WORK"
echo "${VERSION}" > "$WORK/build/version/version.txt"
echo "medunion-idx" > "$WORK/build/version/package.txt"
# SQLite backend: the _id lookup is written `sjson->'$._id'` while the _id index is built on `sjson->"_id"`;
# SQLite uses an expression index only for the identical expression, so every find/update/delete by _id
# scanned the whole table (O(n)). Write the lookup the way the index is built (same value, same order).
sed -i "s|IDColumn = DefaultColumn + \"->'\$._id'\"|IDColumn = DefaultColumn + \\\`->\"_id\"\\\`|" \
  "$WORK/internal/backends/sqlite/metadata/metadata.go"
grep -q 'IDColumn = DefaultColumn + `->"_id"`' "$WORK/internal/backends/sqlite/metadata/metadata.go" \
  || { echo "medunion: FerretDB _id index patch did not apply" >&2; exit 1; }
mkdir -p "$ROOT/.cache/bin"
echo "medunion: building FerretDB ${VERSION} (first time only, about a minute)..." >&2
(cd "$WORK" && go build -trimpath -tags ferretdb_no_postgresql -o "$BIN.tmp" ./cmd/ferretdb)
mv "$BIN.tmp" "$BIN"
rm -rf "$WORK"
