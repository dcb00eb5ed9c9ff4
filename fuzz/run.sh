#!/usr/bin/env bash
# Builds every gatelet fuzz target and runs each for a bounded time; exits non-zero on a crash.
#
#   fuzz/run.sh                      # every target, 30 s each
#   FUZZ_SECONDS=600 fuzz/run.sh     # longer
#   FUZZ_TARGETS="router token" fuzz/run.sh
#
# Environment: FUZZ_SECONDS (per target, default 30), FUZZ_TARGETS (default: all),
# FUZZ_SANITIZER (default none: gatelet forbids unsafe code, so a sanitizer mostly slows the
# search; use `address` to watch dependencies' unsafe code too), CARGO_BUILD_JOBS (e.g. 1 on a
# busy machine). cargo-fuzz needs nightly flags: RUSTC_BOOTSTRAP=1 lets the stable toolchain
# take them. The corpus grows in fuzz/corpus/<target> (not committed); the committed seeds are
# fuzz/seeds/<target>, the bundle test vectors and the saved findings in tests/data/fuzz/<target>.
# A crash leaves its input in fuzz/artifacts/<target>/ and prints how to replay it.
set -euo pipefail
cd "$(dirname "$0")"
root=$(cd .. && pwd)
seconds=${FUZZ_SECONDS:-30}
targets=${FUZZ_TARGETS:-bundle token router config framing}
sanitizer=${FUZZ_SANITIZER:-none}
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz not found: installing it from crates.io"
  cargo install cargo-fuzz --locked
fi

start=$(date +%s)
echo "==> building fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build --sanitizer "$sanitizer" >/dev/null
echo "    built in $(( $(date +%s) - start )) s"
bin=target/$(rustc -vV | sed -n 's/^host: //p')/release
mkdir -p target/run-logs

failed=()
printf '%-8s %12s %8s %8s  %s\n' target executions seconds exec/s result
for t in $targets; do
  [ -x "$bin/$t" ] || { echo "no fuzz target $t" >&2; exit 2; }
  mkdir -p "corpus/$t" "artifacts/$t"
  dirs=("corpus/$t")
  for d in "seeds/$t" "$root/tests/data/fuzz/$t"; do [ -d "$d" ] && dirs+=("$d"); done
  if [ "$t" = bundle ]; then dirs+=("$root/bundle-format/vectors" "$root/bundle-format/vectors/invalid"); fi
  log=target/run-logs/$t.log
  t0=$(date +%s)
  # -timeout: an input running 10 s is a hang and counts as a crash.
  if "$bin/$t" "${dirs[@]}" -max_total_time="$seconds" -timeout=10 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$log" 2>&1; then
    result=ok
  else
    result="CRASH (log: fuzz/$log)"
    failed+=("$t")
  fi
  took=$(( $(date +%s) - t0 ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  execs=${execs:-0}
  printf '%-8s %12s %8s %8s  %s\n' "$t" "$execs" "$took" "$(( execs / (took > 0 ? took : 1) ))" "$result"
done

for t in "${failed[@]}"; do
  echo
  echo "==> $t crashed:"
  grep -E "panicked at|^ +(left|right):|assertion|SUMMARY|Test unit written" "target/run-logs/$t.log" | head -12 | cut -c1-400 || true
  artifact=$(sed -n 's/.*Test unit written to //p' "target/run-logs/$t.log" | tail -1)
  echo "replay: fuzz/$bin/$t fuzz/$artifact"
  echo "then save the input under tests/data/fuzz/$t/ (see fuzz/README.md) and fix it"
done
echo "total $(( $(date +%s) - start )) s"
[ ${#failed[@]} -eq 0 ]
