#!/usr/bin/env bash
# Token interop with PyJWT, an implementation no one here wrote (issue 3, "Must show").
#
#  1. openssl makes an issuer key; gatelet builds a bundle trusting it.
#  2. PyJWT (with the cryptography package) mints tokens with that key: valid ones and ones that
#     must be refused (expired, wrong audience, other key, HS256 with the public key as secret,
#     RS256 and ES256 against an Ed25519 key, alg none, revoked, unsubscribed, missing scope,
#     tampered, ...). RSA and EC issuers are covered by tests/idp_tokens.rs.
#  3. `gatelet token verify` must accept exactly the valid ones, refusing the others with the
#     expected WSO2 fault code and reason label.
#  4. PyJWT must verify a token from `gatelet token mint` (and refuse it once tampered), and the
#     kid gatelet puts in it must be the RFC 7638 thumbprint PyJWT's side computes.
#
# Installs PyJWT and cryptography from PyPI into a venv under the cargo target directory.
# Exits non-zero on any mismatch. Run from anywhere: bash tests/interop/pyjwt.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-$PWD/target}

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  # Debian splits venv/ensurepip out of python3.
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
venv=$target/interop-venv
if ! "$venv/bin/python" -c 'import jwt, cryptography' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check 'PyJWT[crypto]' cryptography
fi
py=$venv/bin/python
"$py" -c 'import jwt, cryptography; print(f"PyJWT {jwt.__version__}, cryptography {cryptography.__version__}")'

cargo build --locked --quiet --bin gatelet
gatelet=$target/debug/gatelet

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
iss="https://pyjwt.interop.example/"

# 1. Keys and bundle.
openssl genpkey -algorithm ed25519 -out "$work/issuer.key"
openssl genpkey -algorithm ed25519 -out "$work/outsider.key"
mkdir -p "$work/project/keys" "$work/project/apis"
openssl pkey -in "$work/issuer.key" -pubout -out "$work/project/keys/issuer.pub"
cat >"$work/project/gatelet.toml" <<EOF
label = "pyjwt-interop"
[[issuer]]
name = "pyjwt"
issuer = "$iss"
audience = "gatelet"
keys = ["keys/issuer.pub"]
validate_subscription = true
[revoked]
jti = ["revoked-1"]
EOF
cat >"$work/project/apis/shop.yaml" <<'EOF'
openapi: 3.0.3
info: {title: Shop, version: 1.0.0}
x-wso2-basePath: /shop/{version}
x-wso2-production-endpoints: {urls: ["http://127.0.0.1:9/shop"]}
paths:
  /items:
    get:
      security: [{default: [items:read]}]
      responses: {'200': {description: ok}}
components:
  securitySchemes:
    default:
      type: oauth2
      flows:
        implicit:
          authorizationUrl: https://pyjwt.interop.example/authorize
          scopes: {items:read: read items}
EOF
"$gatelet" keygen --out "$work/publisher" >/dev/null
"$gatelet" bundle build "$work/project" --key "$work/publisher.key" --out "$work/b.glb" --serial 1 >/dev/null

# 2. Tokens from PyJWT: one "name<TAB>expected<TAB>token" line each; expected is "allow" or
# "FAULT_CODE/reason".
cat >"$work/mint.py" <<'EOF'
import base64, hashlib, json, sys, time
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

work, iss = sys.argv[1], sys.argv[2]
def load(name):
    with open(f"{work}/{name}", "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)
key, outsider = load("issuer.key"), load("outsider.key")
raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
# RFC 7638 thumbprint of the OKP JWK: the kid gatelet gives a PEM issuer key.
kid = b64(hashlib.sha256(json.dumps({"crv": "Ed25519", "kty": "OKP", "x": b64(raw)},
                                    separators=(",", ":"), sort_keys=True).encode()).digest())
with open(f"{work}/kid", "w") as f:
    f.write(kid)

now = int(time.time())
def claims(**over):
    c = {"iss": iss, "sub": "alice", "aud": "gatelet", "iat": now, "exp": now + 600,
         "jti": f"j-{len(cases)}", "scope": "items:read", "keytype": "PRODUCTION",
         "application": {"id": 1, "name": "DefaultApplication", "tier": "Unlimited", "owner": "alice"},
         "subscribedAPIs": [{"name": "Shop", "version": "1.0.0", "context": "/shop/1.0.0",
                             "subscriptionTier": "Gold", "publisher": "admin"}]}
    for k, v in over.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c
cases = []
def case(name, expect, token):
    cases.append((name, expect, token))
def ed(c, k=key, **headers):
    return jwt.encode(c, k, algorithm="EdDSA", headers=headers or None)

case("valid, kid", "allow", ed(claims(), kid=kid))
case("valid, no kid", "allow", ed(claims()))
case("valid, typ at+jwt", "allow", ed(claims(), kid=kid, typ="at+jwt"))
case("valid, aud as a list", "allow", ed(claims(aud=["other", "gatelet"])))
case("valid, fractional exp", "allow", ed(claims(exp=time.time() + 600)))
case("valid, subscribed to every version", "allow",
     ed(claims(subscribedAPIs=[{"name": "Shop", "version": "*", "subscriptionTier": "Silver"}])))
case("valid, sandbox", "allow", ed(claims(keytype="SANDBOX")))
case("expired", "900903/expired", ed(claims(exp=now - 3600, iat=now - 7200)))
case("nbf in the future", "900901/not_yet_valid", ed(claims(nbf=now + 3600)))
case("iat far in the future", "900901/issued_in_future", ed(claims(iat=now + 86400)))
case("wrong audience", "900901/wrong_audience", ed(claims(aud="someone-else")))
case("no audience", "900901/wrong_audience", ed(claims(aud=None)))
case("wrong issuer", "900901/unknown_issuer", ed(claims(iss="https://evil.example/")))
case("other key under the issuer's kid", "900901/bad_signature", ed(claims(), k=outsider, kid=kid))
case("other key, no kid", "900901/bad_signature", ed(claims(), k=outsider))
case("unknown kid", "900901/unknown_kid", ed(claims(), kid="nope"))
case("HS256 with the public key as secret", "900901/alg_refused", jwt.encode(claims(), raw, algorithm="HS256"))
# An RSA or EC token against an issuer whose only key is Ed25519: no key may verify it.
case("RS256", "900901/key_alg_mismatch",
     jwt.encode(claims(), rsa.generate_private_key(public_exponent=65537, key_size=2048), algorithm="RS256"))
case("ES256", "900901/key_alg_mismatch", jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"))
case("alg none", "900901/alg_refused", jwt.encode(claims(), None, algorithm="none"))
case("crit header", "900901/crit_refused", ed(claims(), kid=kid, crit=["exp"]))
case("revoked jti", "900901/revoked", ed(claims(jti="revoked-1")))
case("not subscribed", "900908/not_subscribed",
     ed(claims(subscribedAPIs=[{"name": "Other", "version": "1.0.0", "subscriptionTier": "Gold"}])))
case("other version subscribed", "900908/not_subscribed",
     ed(claims(subscribedAPIs=[{"name": "Shop", "version": "2.0.0", "subscriptionTier": "Gold"}])))
case("missing scope", "900910/missing_scope", ed(claims(scope="items:write")))
case("missing sub", "900901/missing_claim", ed(claims(sub=None)))
case("missing exp", "900901/missing_claim", ed(claims(exp=None)))
h, p, s = ed(claims(), kid=kid).split(".")
forged = b64(json.dumps(claims(sub="admin")).encode())
case("payload tampered", "900901/bad_signature", f"{h}.{forged}.{s}")
sig = bytearray(base64.urlsafe_b64decode(s + "=="))
sig[0] ^= 1
case("signature tampered", "900901/bad_signature", f"{h}.{p}.{b64(bytes(sig))}")
case("two segments", "900901/malformed", f"{h}.{p}")
case("padded base64", "900901/malformed", f"{h}.{p}=.{s}")
for name, expect, token in cases:
    print(f"{name}\t{expect}\t{token}")
EOF

cat >"$work/check_minted.py" <<'EOF'
import sys
import jwt
token, pub, iss, kid = sys.argv[1:5]
with open(pub, "rb") as f:
    key = f.read()
c = jwt.decode(token, key, algorithms=["EdDSA"], audience="gatelet", issuer=iss,
               options={"require": ["exp", "iat", "sub", "jti"]})
assert c["sub"] == "minted-by-gatelet", c
assert c["subscribedAPIs"] == [{"name": "Shop", "version": "1.0.0", "subscriptionTier": "Gold"}], c
assert c["scope"] == "items:read", c
header = jwt.get_unverified_header(token)
assert header["alg"] == "EdDSA" and header["kid"] == kid, (header, kid)
h, p, s = token.split(".")
try:
    jwt.decode(f"{h}.{p[:-2]}{'A' if p[-2] != 'A' else 'B'}{p[-1]}.{s}", key, algorithms=["EdDSA"],
               audience="gatelet", issuer=iss)
except jwt.InvalidTokenError:
    pass
else:
    sys.exit("PyJWT accepted a tampered gatelet token")
EOF

passed=0
failed=0
ok() { passed=$((passed + 1)); printf 'ok    %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"; }

# 3. gatelet decides on each PyJWT token.
"$py" "$work/mint.py" "$work" "$iss" >"$work/cases.tsv"
while IFS=$'\t' read -r name expect token; do
  set +e
  out=$("$gatelet" token verify --bundle "$work/b.glb" --trusted-key "$work/publisher.pub" \
    --api Shop:1.0.0 --method GET --path /items "$token" 2>&1)
  rc=$?
  set -e
  got=$("$py" -c 'import json,sys
try:
    d = json.loads(sys.argv[1])
    print("allow" if d["decision"] == "allow" else "%s/%s" % (d["fault_code"], d["reason"]))
except Exception:
    print("error")' "$out")
  if { [ "$expect" = allow ] && [ $rc -eq 0 ]; } || { [ "$expect" != allow ] && [ $rc -eq 1 ]; }; then
    rc_ok=1
  else
    rc_ok=0
  fi
  if [ "$got" = "$expect" ] && [ $rc_ok -eq 1 ]; then
    ok "PyJWT token, $name: $got"
  else
    fail "PyJWT token, $name: expected $expect, got $got (exit $rc): $out"
  fi
done <"$work/cases.tsv"

# 4. PyJWT verifies gatelet's tokens.
minted=$("$gatelet" token mint --key "$work/issuer.key" --issuer "$iss" --subject minted-by-gatelet \
  --audience gatelet --api Shop:1.0.0 --tier Gold --scope items:read --ttl 300)
if "$py" "$work/check_minted.py" "$minted" "$work/project/keys/issuer.pub" "$iss" "$(cat "$work/kid")"; then
  ok "gatelet token mint, verified by PyJWT (and refused once tampered; kid = RFC 7638 thumbprint)"
else
  fail "gatelet token mint, verified by PyJWT"
fi
# ... and by gatelet itself, to close the loop.
if "$gatelet" token verify --bundle "$work/b.glb" --trusted-key "$work/publisher.pub" \
  --api Shop:1.0.0 --path /items "$minted" >/dev/null; then
  ok "gatelet token mint, verified by gatelet"
else
  fail "gatelet token mint, verified by gatelet"
fi

printf '\npyjwt interop: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
