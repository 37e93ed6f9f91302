#!/usr/bin/env bash
# Mutation testing with cargo-mutants on the modules where a test that passes
# a broken gateway hurts most: the queue (leases, acks, at-least-once), the
# commit path (durability before the answer), identity and auth (who may call),
# and the record rules. Each surviving ("missed") mutant is a change to the code
# that no test notices. Not in CI: it takes minutes to hours.
#
# Usage:
#   scripts/mutants.sh                     # every module below, whole
#   SHARD=1/6 scripts/mutants.sh           # a sample: every 6th mutant (round robin)
#   BUDGET_MIN=20 scripts/mutants.sh src/store/queue.rs   # one module, at most 20 min
#   ITERATE=1 scripts/mutants.sh           # retest only what the last run missed
#   RE='ack_blocking|release_blocking' scripts/mutants.sh src/store/queue.rs  # some functions
#
# Needs `cargo install cargo-mutants --locked`. Output: target/mutants/<module>/
# mutants.out/{caught,missed,timeout,unviable}.txt, and a summary line per
# module at the end.
#
# The mutants are applied in a scratch copy of this tree (SCRATCH, default
# /tmp/schakel-mutants-<folder name>), never in the tree itself: the source is copied fresh
# on each run, the scratch target/ is kept between runs and starts as a copy
# of ours with its timestamps (cargo-mutants' own copy loses them, and then
# rebuilds every dependency: minutes per module). Each module runs only the test binaries that can see it
# (faster builds); the store rewrite can be held to the same bar by running
# this before and after and comparing the missed lists.
#
# Knobs (environment): BUDGET_MIN per module (default 60), SHARD (e.g. 1/6),
# TIMEOUT per test run in seconds
# (default 120), NICE (default 10), ITERATE=1, RE (a regex over mutant names).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-mutants >/dev/null || {
  echo "cargo-mutants is not installed: cargo install cargo-mutants --locked" >&2
  exit 2
}

budget_min=${BUDGET_MIN:-60}
timeout_s=${TIMEOUT:-120}
nice_n=${NICE:-10}
here=$PWD
scratch=${SCRATCH:-${TMPDIR:-/tmp}/schakel-mutants-$(basename "$here")}
mkdir -p "$scratch"
# The source as it is now (tracked and untracked files, not ignored ones).
# (SCRATCH=. runs in this tree itself: only for a disposable copy.)
if [ "$(cd "$scratch" && pwd)" != "$here" ]; then
  git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$scratch"
fi
if [ ! -d "$scratch/target" ]; then
  echo "copying target/ to $scratch (once; later runs reuse it)"
  mkdir -p "$scratch/target"
  tar -cf - --exclude=./mutants -C target . | tar -xf - -C "$scratch/target"
fi

# module -> the test binaries that exercise it (cargo test arguments).
tests_for() {
  case "$1" in
    src/store/queue.rs)  echo "--lib --test=core --test=crash" ;;
    src/store/commit.rs) echo "--lib --test=core --test=storage_faults --test=admin" ;;
    src/service/auth.rs) echo "--lib --test=admin --test=mtls --test=core" ;;
    src/schema/mod.rs)   echo "--lib --test=core" ;;
    src/server.rs)       echo "--lib --test=admin --test=operations" ;;
    *)                   echo "" ;;
  esac
}

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(src/store/queue.rs src/store/commit.rs src/service/auth.rs src/schema/mod.rs)

for m in "${modules[@]}"; do
  name=$(basename "$(dirname "$m")")-$(basename "$m" .rs)
  out=$here/target/mutants/$name
  mkdir -p "$out"
  args=(--file "$m" --output "$out" --timeout "$timeout_s" --build-timeout 900
        --baseline skip --in-place --no-shuffle)
  # The target selection goes to every cargo call (the build too: only those
  # binaries are rebuilt per mutant). No --cap-lints: it changes RUSTFLAGS and
  # so rebuilds every dependency from scratch.
  for a in $(tests_for "$m"); do args+=(--cargo-arg "$a"); done
  [ -n "${SHARD:-}" ] && args+=(--shard "$SHARD" --sharding round-robin)
  [ -n "${ITERATE:-}" ] && args+=(--iterate)
  [ -n "${RE:-}" ] && args+=(--re "$RE")
  echo "=== $m (budget ${budget_min} min, tests: $(tests_for "$m"))"
  (cd "$scratch" && timeout --signal=INT "$((budget_min * 60))" \
    nice -n "$nice_n" cargo mutants "${args[@]}") || true
done

echo "=== summary (caught / missed / timeout / unviable)"
for m in "${modules[@]}"; do
  name=$(basename "$(dirname "$m")")-$(basename "$m" .rs)
  d=$here/target/mutants/$name/mutants.out
  count() { if [ -f "$d/$1.txt" ]; then wc -l <"$d/$1.txt"; else echo 0; fi; }
  printf '%-24s %4s / %4s / %4s / %4s\n' "$m" "$(count caught)" "$(count missed)" "$(count timeout)" "$(count unviable)"
done
