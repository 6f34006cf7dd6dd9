#!/usr/bin/env bash
# Installs FerretDB (SQLite backend) into .cache/bin, once.
#
# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.x` compiles but the binary panics at
# start: the module zip lacks build/version/version.txt, which FerretDB's own build task generates.
# So we take the same module from the Go module proxy, add that file, apply our patch, and build it.
set -euo pipefail
VERSION="${FERRETDB_VERSION:-v1.24.2}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.cache/bin/ferretdb"
if [[ -x "$BIN" ]] && "$BIN" --version 2>/dev/null | grep -q "package: medunion-idx13"; then
  exit 0
fi
if ! command -v go >/dev/null 2>&1; then
  echo "medunion: Go is needed to build the embedded FerretDB store (or set MONGODB_URI to a MongoDB server)." >&2
  echo "          Install Go >= 1.22 (Debian: apt-get install golang) and run again." >&2
  exit 3
fi
if ! command -v patch >/dev/null 2>&1; then
  echo "medunion: 'patch' is needed to build the embedded FerretDB store (Debian: apt-get install patch)." >&2
  exit 3
fi
export GOFLAGS="-mod=mod" GOTOOLCHAIN=local
SRC="$(go mod download -json "github.com/FerretDB/FerretDB@${VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
WORK="$ROOT/.cache/ferretdb-src-${VERSION}"
rm -rf "$WORK"
mkdir -p "$ROOT/.cache"
cp -r "$SRC" "$WORK"
chmod -R u+w "$WORK"
echo "${VERSION}" > "$WORK/build/version/version.txt"
echo "medunion-idx13" > "$WORK/build/version/package.txt"
# Our patches (scripts/ferretdb-*.patch), applied in name order (each file says why at its top):
# - sqlite-id-pushdown: two changes to the SQLite backend.
#   1. The _id lookup was written `sjson->'$._id'` while the _id index is built on `sjson->"_id"`; SQLite uses
#      an expression index only for the identical expression, so every find/update/delete by _id scanned the
#      table (O(n)). The lookup is now written like the index.
#   2. A filter {_id: {$gt/$gte/$lt/$lte/$in: string(s)}} is pushed down to that index (FerretDB pushed down
#      only _id equality; everything else scans), and such a find sorted by _id is ordered and limited by
#      SQLite (FerretDB fetched the whole range and sorted it in memory). The hub's search index is _id ranges
#      (docs/operations.md); a page of it costs the same at any depth.
# - resource-tracking-debug-only: FerretDB's leak tracker (a stack trace and a finalizer per iterator) and its
#   reflection check of arguments run only in debug builds; they were 11-17 % and 5 % of FerretDB's CPU.
# - sjson-fast-decode: stored documents are decoded in one pass (strings, binary and integers directly, schemas
#   cached) instead of several encoding/json passes: 44 -> 5 us per Patient document; half of FerretDB's CPU on
#   pages of results. Anything it does not recognise goes to FerretDB's own decoder; its tests (run below, with
#   FerretDB's own sjson tests) check both give the same documents and errors.
# - id-in-filter-set: FerretDB re-checks every returned document against the filter, and $in compared the
#   document's _id with each element in turn (a batched find of 500 _ids: 125,000 comparisons). A filter
#   {_id: {$in: [strings]}} is now checked by set membership; its test compares it with FilterDocument.
# - nan-check-requests-only: every reply was decoded again after encoding, to look for NaNs (wire.CheckNaNs);
#   requests are checked once as they are read, replies not (5-6 % of FerretDB's CPU on pages of resources).
# - no-projection-copy: a find without a projection deep-copied every document twice to return it unchanged
#   (11 %); now returned as stored. Its test compares both.
# - unformatted-debug-logs: every query formatted its SQL and arguments (fmt.Sprintf, slog With) and every
#   find its parameters (%+v, by reflection) for debug logs that are off: ~5 % of FerretDB's CPU. Now only
#   when the debug level is enabled.
# - union-of-id-ranges: a find of {$or: [{_id: <range>}, ...]} sorted by _id with a limit (the hub's scans of the
#   search index from concurrent requests, in one command) is one SQL UNION of each range read by the _id index
#   in order, at most `limit` keys from each; FerretDB pushed no $or down and scanned the whole table. Explain
#   shows the same query (tests/test_embedded_store.py checks plan and results).
# - sqlite-id-substring: a filter {_id: {<range>, $regex: <literals>}} (the hub's substring scans of the search
#   index: string :contains, token system|) was a scan of the whole table; the range and an instr() test of
#   each literal now go to SQLite, which evaluates them on the _id index alone (8.4 s -> 72 ms for 500,000 keys).
# - sqlite-id-without-substring: a filter {_id: {<range>, $not: {$regex: <literals>}}} (a sort's walk leaving out
#   the keys marked as not standing for their resource in its order) was a scan of the whole table; the range
#   now goes to the _id index and each literal to an instr() test on _id that must fail.
# - writers-take-turns: writes to a database file take turns on a mutex instead of racing for SQLite's lock and
#   losing into its busy handler, which sleeps 1, 2, 5, 10... ms between tries and woke late: concurrent
#   insert_one calls 1,600-1,700 -> 2,350-2,550/s. An insert encodes its documents before its transaction.
for p in "$ROOT"/scripts/ferretdb-*.patch; do
  (cd "$WORK" && patch -p1 --quiet < "$p") || { echo "medunion: the FerretDB patch $(basename "$p") did not apply" >&2; exit 1; }
done
# FerretDB's test helpers look for the repository root (.git); these packages' tests cover our patches too
(cd "$WORK" && mkdir -p .git && go test -count=1 ./internal/handler/sjson/ ./internal/handler/common/ ./internal/backends/sqlite/ ./internal/backends/sqlite/metadata/ ./internal/backends/sqlite/metadata/pool/ >&2) \
  || { echo "medunion: FerretDB's tests failed with our patches" >&2; exit 1; }
mkdir -p "$ROOT/.cache/bin"
echo "medunion: building FerretDB ${VERSION} (first time only, about a minute)..." >&2
(cd "$WORK" && go build -trimpath -tags ferretdb_no_postgresql -o "$BIN.tmp" ./cmd/ferretdb)
mv "$BIN.tmp" "$BIN"
rm -rf "$WORK"
mkdir -p "$ROOT/.cache"
