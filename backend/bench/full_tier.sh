#!/usr/bin/env bash
# The full tier: load, overload and fault drills (each against servers of its own) and the email
# fault tests, with their figures written to bench/results/full-tier.txt (commit it with the code
# it ran on: the file's first lines name that commit). Run from anywhere: `backend/bench/full_tier.sh`
# or `.ci/run --full`. Takes ~10 minutes; exits 1 when any drill fails, after running all of them.
# TEST_DATABASE_URL/TEST_REDIS_URL are only for the pytest part (as in the fast tier).
set -uo pipefail

BACKEND="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$BACKEND/bench/results/full-tier.txt"
SECONDS_OF_LOAD="${FULL_TIER_SECONDS:-60}"
cd "$BACKEND"
failed=()

run() {
  local name=$1
  shift
  printf '\n##### %s: %s\n' "$name" "$*"
  local began=$SECONDS
  if "$@" 2>&1; then
    printf '##### %s: passed in %ss\n' "$name" $((SECONDS - began))
  else
    printf '##### %s: FAILED in %ss\n' "$name" $((SECONDS - began))
    failed+=("$name")
  fi
}

{
  echo "c3po full tier, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!bench/results' || echo ' (with uncommitted changes)')"
  echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at the start"
  run load uv run python bench/load.py --seconds "$SECONDS_OF_LOAD"
  run overload uv run python bench/overload.py
  run faults uv run python bench/faults.py --drill all
  run email-faults uv run pytest -n 0 --no-cov -p no:cacheprovider -q \
    tests/e2e/test_email_faults.py tests/e2e/test_database_outage.py tests/integration/test_overload.py
  echo
  echo "load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
  if [ ${#failed[@]} -eq 0 ]; then echo "FULL TIER: PASS"; else echo "FULL TIER: FAIL (${failed[*]})"; fi
} | tee "$OUT"
grep -q '^FULL TIER: PASS' "$OUT"
