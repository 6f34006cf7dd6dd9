#!/usr/bin/env bash
# Fetches the official FHIR R4 examples (npm package hl7.fhir.r4.examples@4.0.1, CC0) into .cache, once.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/.cache/fhir-r4-examples"
if [[ -f "$DEST/package/package.json" ]]; then exit 0; fi
mkdir -p "$DEST"
TMP="$(mktemp -d)"
(cd "$TMP" && npm pack --silent hl7.fhir.r4.examples@4.0.1 >/dev/null)
tar -xzf "$TMP"/hl7.fhir.r4.examples-4.0.1.tgz -C "$DEST"
rm -rf "$TMP"
