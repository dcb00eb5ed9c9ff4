"""Tokens and key sets shaped like the identity providers gatelet users run, made with PyJWT and
the cryptography package (implementations no one here wrote), for tests/idp_tokens.rs.

    python idp_tokens.py WORK NOW

WORK holds PEM keys and certificates made by the openssl CLI (see tests/idp_tokens.rs). Writes
WORK/project/keys/keycloak.jwks.json and entra.jwks.json, then prints one line per token:
name TAB expected status TAB expected fault code TAB text the fault description holds TAB token.
"""
import base64, hashlib, hmac, json, sys
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

work, now = sys.argv[1], int(sys.argv[2])
keys_dir = f"{work}/project/keys"


def key(name):
    with open(f"{work}/{name}", "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def cert(name):
    with open(f"{work}/{name}", "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def der(c):
    return c.public_bytes(serialization.Encoding.DER)


wso2, ec256, ed, other = key("wso2.key"), key("ec256.key"), key("ed.key"), key("other.key")
kc, kc_ec, entra = key("kc.key"), key("ec384.key"), key("entra.key")
wso2_crt, kc_crt, entra_crt = cert("wso2.crt"), cert("kc.crt"), cert("entra.crt")


def public_jwk(k):
    if isinstance(k, rsa.RSAPrivateKey):
        return json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key()))
    if isinstance(k, ec.EllipticCurvePrivateKey):
        return json.loads(jwt.algorithms.ECAlgorithm.to_jwk(k.public_key()))
    return json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(k.public_key()))


def jwk(k, **members):
    d = public_jwk(k)
    d.update(members)
    return d


# Keycloak: kid, kty, alg, use sig, n, e, x5c, x5t, x5t#S256; an encryption key beside it.
kc_der = der(kc_crt)
keycloak = {"keys": [
    jwk(kc, kid="kc-rsa-sig", alg="RS256", use="sig", x5c=[base64.b64encode(kc_der).decode()],
        x5t=b64u(hashlib.sha1(kc_der).digest()), **{"x5t#S256": b64u(hashlib.sha256(kc_der).digest())}),
    jwk(other, kid="kc-rsa-enc", alg="RSA-OAEP", use="enc"),
    jwk(kc_ec, kid="kc-ec-sig", alg="ES384", use="sig"),
]}
# Entra ID: kid (= x5t), kty, use, n, e, x5t, x5c, issuer; no alg.
entra_der = der(entra_crt)
entra_x5t = b64u(hashlib.sha1(entra_der).digest())
entra_jwk = jwk(entra, kid=entra_x5t, use="sig", x5t=entra_x5t,
                x5c=[base64.b64encode(entra_der).decode()],
                issuer="https://login.microsoftonline.com/tenant/v2.0")
entra_jwk.pop("alg", None)
for name, doc in (("keycloak", keycloak), ("entra", {"keys": [entra_jwk]})):
    with open(f"{keys_dir}/{name}.jwks.json", "w") as f:
        json.dump(doc, f, indent=1)


def thumbprint(k):
    """RFC 7638, computed here from PyJWT's JWK: the kid gatelet gives a key from a PEM file."""
    d = public_jwk(k)
    required = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x")}[d["kty"]]
    canonical = json.dumps({m: d[m] for m in required}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canonical.encode()).digest())


WSO2 = "https://wso2.example/oauth2/token"
KEYCLOAK = "https://keycloak.example/realms/shop"
ENTRA = "https://login.microsoftonline.com/tenant/v2.0"


def wso2_claims(**over):
    """An API Manager 3.x access token's claims."""
    c = {"sub": "admin@carbon.super", "aut": "APPLICATION", "aud": "Tu0xNBKmV0FNT3QovOTHBh5jENka",
         "nbf": now, "azp": "Tu0xNBKmV0FNT3QovOTHBh5jENka", "scope": "default", "iss": WSO2,
         "keytype": "PRODUCTION", "exp": now + 600, "iat": now, "jti": f"w-{len(cases)}",
         "application": {"owner": "admin", "tier": "Unlimited", "name": "DefaultApplication", "id": 1,
                         "uuid": "a1b2c3d4-0000-4000-8000-000000000001"},
         "tierInfo": {"Gold": {"stopOnQuotaReach": True, "spikeArrestLimit": 0, "spikeArrestUnit": None}},
         "subscribedAPIs": [{"subscriberTenantDomain": "carbon.super", "name": "Shop", "context": "/shop/1.0.0",
                             "publisher": "admin", "version": "1.0.0", "subscriptionTier": "Gold"}]}
    c.update(over)
    return c


def idp_claims(iss):
    return {"iss": iss, "sub": "f:1234:bob", "exp": now + 600, "iat": now, "jti": f"i-{len(cases)}",
            "scope": "openid profile", "azp": "shop-app"}


cases = []


def case(name, status, code, text, token):
    cases.append((name, status, code, text, token))


wso2_sha1 = hashlib.sha1(der(wso2_crt)).digest()
x5t_rfc = b64u(wso2_sha1)
x5t_wso2 = base64.b64encode(wso2_sha1.hex().encode()).decode()  # "ZjRmYTMwNTJj...==" style
assert x5t_wso2.endswith("=") or len(x5t_wso2) % 4 == 0

# Valid, the WSO2 claim shape, through the WSO2 issuer (certificate, P-256 and Ed25519 keys).
case("RS256, x5t RFC 7515 form", 200, 0, "", jwt.encode(wso2_claims(), wso2, "RS256", headers={"x5t": x5t_rfc}))
case("RS256, x5t WSO2 form (base64 of hex)", 200, 0, "",
     jwt.encode(wso2_claims(), wso2, "RS256", headers={"x5t": x5t_wso2}))
case("RS256, WSO2 3.2 kid beside x5t", 200, 0, "",
     jwt.encode(wso2_claims(), wso2, "RS256", headers={"x5t": x5t_wso2, "kid": x5t_wso2.rstrip("=") + "_RS256"}))
case("PS256, x5t", 200, 0, "", jwt.encode(wso2_claims(), wso2, "PS256", headers={"x5t": x5t_rfc}))
case("ES256, kid", 200, 0, "", jwt.encode(wso2_claims(), ec256, "ES256", headers={"kid": thumbprint(ec256)}))
case("ES256, no kid", 200, 0, "", jwt.encode(wso2_claims(), ec256, "ES256"))
case("EdDSA, kid", 200, 0, "", jwt.encode(wso2_claims(), ed, "EdDSA", headers={"kid": thumbprint(ed)}))
case("RS256, string application.id", 200, 0, "",
     jwt.encode(wso2_claims(application={"owner": "admin", "tier": "Unlimited", "name": "App", "id": "7"}),
                wso2, "RS256", headers={"x5t": x5t_rfc}))
# Keycloak and Entra shapes.
case("Keycloak RS256", 200, 0, "", jwt.encode(idp_claims(KEYCLOAK), kc, "RS256", headers={"kid": "kc-rsa-sig"}))
case("Keycloak ES384", 200, 0, "", jwt.encode(idp_claims(KEYCLOAK), kc_ec, "ES384", headers={"kid": "kc-ec-sig"}))
case("Entra RS256, kid and x5t", 200, 0, "",
     jwt.encode(idp_claims(ENTRA), entra, "RS256", headers={"kid": entra_x5t, "x5t": entra_x5t}))

# Broken ones.
case("RS256 signed by another key", 401, 900901, "signature does not verify",
     jwt.encode(wso2_claims(), other, "RS256", headers={"x5t": x5t_rfc}))
case("Keycloak kid, another key", 401, 900901, "signature does not verify",
     jwt.encode(idp_claims(KEYCLOAK), other, "RS256", headers={"kid": "kc-rsa-sig"}))
h, p, s = jwt.encode(wso2_claims(), wso2, "RS256", headers={"x5t": x5t_rfc}).split(".")
case("payload tampered", 401, 900901, "signature does not verify",
     f"{h}.{b64u(json.dumps(wso2_claims(sub='root')).encode())}.{s}")
case("RS256 under the EC key's kid (key confusion)", 401, 900901, "cannot be verified by the issuer key",
     jwt.encode(wso2_claims(), wso2, "RS256", headers={"kid": thumbprint(ec256)}))
case("ES384 under the P-256 key's kid (wrong curve)", 401, 900901, "cannot be verified by the issuer key",
     jwt.encode(wso2_claims(), kc_ec, "ES384", headers={"kid": thumbprint(ec256)}))
case("ES256 under Keycloak's P-384 key (wrong curve)", 401, 900901, "cannot be verified by the issuer key",
     jwt.encode(idp_claims(KEYCLOAK), ec256, "ES256", headers={"kid": "kc-ec-sig"}))
case("PS256 under Keycloak's RS256 key (JWK alg)", 401, 900901, "cannot be verified by the issuer key",
     jwt.encode(idp_claims(KEYCLOAK), kc, "PS256", headers={"kid": "kc-rsa-sig"}))
case("Entra PS256, not in the pin", 401, 900901, "not among the issuer's pinned algorithms",
     jwt.encode(idp_claims(ENTRA), entra, "PS256", headers={"kid": entra_x5t}))
case("alg none", 401, 900901, "refused (only", jwt.encode(wso2_claims(), None, "none"))
pem = wso2.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
hs_input = f"{b64u(json.dumps({'alg': 'HS256', 'typ': 'JWT', 'x5t': x5t_rfc}).encode())}.{b64u(json.dumps(wso2_claims()).encode())}"
case("HS256 with the RSA public key as secret", 401, 900901, "refused (only",
     f"{hs_input}.{b64u(hmac.new(pem, hs_input.encode(), hashlib.sha256).digest())}")
es_input = f"{b64u(json.dumps({'alg': 'ES256', 'kid': thumbprint(ec256)}).encode())}.{b64u(json.dumps(wso2_claims()).encode())}"
case("ES256 signature in DER", 401, 900901, "signature length does not fit",
     f"{es_input}.{b64u(ec256.sign(es_input.encode(), ec.ECDSA(hashes.SHA256())))}")
case("x5t of another certificate", 401, 900901, "certificate thumbprint",
     jwt.encode(wso2_claims(), wso2, "RS256", headers={"x5t": b64u(hashlib.sha1(der(kc_crt)).digest())}))

for c in cases:
    print("\t".join(str(x) for x in c))
