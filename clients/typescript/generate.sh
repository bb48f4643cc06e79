#!/usr/bin/env bash
# Regenerate openapi.json (from the app, no database needed) and src/schema.d.ts (openapi-typescript,
# default options). Run from anywhere; CI runs it and fails when the committed files differ.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE/../../backend"
env -u DATABASE_URL -u REDIS_URL uv run --frozen python -m app openapi > "$HERE/openapi.json"
cd "$HERE"
npx --no-install openapi-typescript openapi.json -o src/schema.d.ts
