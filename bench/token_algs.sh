#!/usr/bin/env bash
# Token signature checks per algorithm (benches/token.rs, group "alg") against `openssl speed`
# on the same machine in the same run, as ratios: gatelet's verify / OpenSSL's own verify.
# A ratio near 1 means the token path adds nothing to the library's cost.
#
#   bash bench/token_algs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cargo bench --locked --bench token -- 'alg/' 2>/dev/null | tee "$work/criterion.txt" >/dev/null
openssl speed -seconds 1 rsa2048 rsa4096 ecdsap256 ecdsap384 ed25519 2>/dev/null >"$work/speed.txt"

# criterion: "alg/RS256 rsa2048  time:   [a b c]" (mid value and unit) -> microseconds.
us() {
  awk -v name="alg/$1" '
    index($0, name) == 1 || (prev && index(prev, name) == 1) {
      if (match($0, /time: +\[[^]]*\]/)) {
        split(substr($0, RSTART, RLENGTH), f, /[][ ]+/)
        v = f[4]; u = f[5]
        if (u == "ns") v /= 1000; else if (u == "ms") v *= 1000
        printf "%.1f", v; exit
      }
    }
    { prev = $0 }' "$work/criterion.txt"
}
# openssl speed: verifies per second -> microseconds per verify.
rsa_us() { awk -v b="$1" '$1 == "rsa" && $2 == b"" && $3 == "bits" { printf "%.1f", 1e6 / $7; exit }' "$work/speed.txt"; }
ec_us() { awk -v c="$1" '$0 ~ c && $0 ~ /ecdsa/ { printf "%.1f", 1e6 / $NF; exit }' "$work/speed.txt"; }
ed_us() { awk '$0 ~ /Ed25519/ && $0 ~ /EdDSA/ { printf "%.1f", 1e6 / $NF; exit }' "$work/speed.txt"; }

row() { # name gatelet_us openssl_us
  printf '| %s | %s µs | %s µs | %sx |\n' "$1" "$2" "$3" "$(awk -v a="$2" -v b="$3" 'BEGIN { printf "%.2f", a / b }')"
}
echo "| token signature check | gatelet (jws::verify) | openssl speed verify | ratio |"
echo "|---|---|---|---|"
row "RS256, RSA 2048" "$(us 'RS256 rsa2048')" "$(rsa_us 2048)"
row "PS256, RSA 2048" "$(us 'PS256 rsa2048')" "$(rsa_us 2048)"
row "RS256, RSA 4096" "$(us 'RS256 rsa4096')" "$(rsa_us 4096)"
row "ES256, P-256" "$(us 'ES256 p256')" "$(ec_us nistp256)"
row "ES384, P-384" "$(us 'ES384 p384')" "$(ec_us nistp384)"
row "EdDSA, Ed25519 (ed25519-dalek verify_strict)" "$(us 'EdDSA ed25519')" "$(ed_us)"
