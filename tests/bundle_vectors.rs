//! Runs every test vector in `bundle-format/vectors/` (see `bundle-format/SPEC.md`, "Test vectors").
//!
//! Regenerate them with `GATELET_REGEN_VECTORS=1 cargo test --test bundle_vectors`: the valid
//! bundle is compiled from `examples/pizzashack` with a fixed serial and build time and signed with
//! the RFC 8032 test-1 key; every invalid variant is derived from it.

use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::SigningKey;
use gatelet::bundle::{self, format};

/// RFC 8032 section 7.1, TEST 1 secret key: the fixed signing key of the vectors.
const KEY_1: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// RFC 8032 section 7.1, TEST 2 secret key: the "wrong key".
const KEY_2: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
const SERIAL: u64 = 42;
const CREATED_AT: u64 = 1_795_000_000;

fn key(hex: &str) -> SigningKey {
    let bytes: Vec<u8> =
        (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
    SigningKey::from_bytes(&bytes.try_into().expect("32 bytes"))
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bundle-format/vectors")
}

/// (file name, expected error kind) for every invalid vector, derived from the valid bytes.
fn invalid_variants(valid: &[u8], manifest: &bundle::Manifest) -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let k1 = key(KEY_1);
    let k2 = key(KEY_2);
    let payload_at = format::HEADER_LEN + 10;
    let sig_at = valid.len() - 10;
    let mut v = Vec::new();
    let mut edit = |name, kind, f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = valid.to_vec();
        f(&mut b);
        v.push((name, kind, b));
    };
    edit("bad-magic.glb", "bad-magic", &|b| b[1] = b'X');
    edit("unknown-version.glb", "unsupported-version", &|b| b[8] = 3);
    edit("unknown-flags.glb", "unknown-flags", &|b| b[10] = 1);
    edit("truncated.glb", "truncated", &|b| b.truncate(b.len() - 1));
    edit("truncated-header.glb", "truncated", &|b| b.truncate(20));
    edit("payload-flipped.glb", "bad-signature", &|b| b[payload_at] ^= 0x01);
    edit("signature-flipped.glb", "bad-signature", &|b| b[sig_at] ^= 0x01);
    edit("key-id-flipped.glb", "untrusted-key", &|b| b[12] ^= 0x01);
    edit("trailing-bytes.glb", "trailing-bytes", &|b| b.push(0));
    edit("oversized-length.glb", "too-large", &|b| {
        b[20..24].copy_from_slice(&(format::MAX_PAYLOAD + 1).to_le_bytes())
    });
    edit("length-short-by-one.glb", "trailing-bytes", &|b| {
        let n = u32::from_le_bytes([b[20], b[21], b[22], b[23]]) - 1;
        b[20..24].copy_from_slice(&n.to_le_bytes());
    });
    // S replaced by S + l: the same signature in non-canonical form, refused by verify_strict.
    edit("signature-s-plus-l.glb", "bad-signature", &|b| {
        let s_at = b.len() - 32;
        add_l(&mut b[s_at..]);
    });
    v.push(("wrong-key.glb", "untrusted-key", bundle::seal(manifest, &k2).expect("seals")));
    // Header claims key 1, signature made by key 2.
    let mut forged = bundle::seal(manifest, &k2).expect("seals");
    forged[12..20].copy_from_slice(&gatelet::keys::key_id(&k1.verifying_key()));
    v.push(("key-id-of-trusted-key-signed-by-other.glb", "bad-signature", forged));
    v.push((
        "signed-garbage-payload.glb",
        "decode",
        format::danger_seal_unchecked_payload(b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", &k1),
    ));
    let mut bad = manifest.clone();
    bad.apis[0].tier = Some("NoSuchTier".into());
    let payload = postcard::to_stdvec(&bad).expect("encodes");
    v.push(("signed-unknown-tier.glb", "invalid", format::danger_seal_unchecked_payload(&payload, &k1)));
    // "No scope" said as an empty alternative: a JWT would meet it without any scope.
    let mut bad = manifest.clone();
    bad.apis[0].operations[0].scopes.insert(0, vec![]);
    let payload = postcard::to_stdvec(&bad).expect("encodes");
    v.push((
        "signed-empty-scope-alternative.glb",
        "invalid",
        format::danger_seal_unchecked_payload(&payload, &k1),
    ));
    let mut extra = postcard::to_stdvec(manifest).expect("encodes");
    extra.push(0);
    v.push((
        "signed-payload-trailing-byte.glb",
        "decode",
        format::danger_seal_unchecked_payload(&extra, &k1),
    ));
    v
}

/// Adds the group order l to a 32-byte little-endian scalar.
fn add_l(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for i in 0..32 {
        let t = u16::from(s[i]) + u16::from(L[i]) + carry;
        s[i] = t.to_le_bytes()[0];
        carry = t >> 8;
    }
}

fn regenerate() {
    let d = dir();
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("invalid")).expect("vectors dir");
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pizzashack");
    let mut manifest = gatelet::project::compile(&project, SERIAL).expect("example compiles").manifest;
    manifest.created_at = CREATED_AT;
    let k1 = key(KEY_1);
    let valid = bundle::seal(&manifest, &k1).expect("seals");
    fs::write(d.join("valid.glb"), &valid).expect("write");
    let pem = |k: &SigningKey| {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        k.verifying_key().to_public_key_pem(Default::default()).expect("pem")
    };
    fs::write(d.join("signer.pub"), pem(&k1)).expect("write");
    fs::write(d.join("other.pub"), pem(&key(KEY_2))).expect("write");
    let (header, m) = format::decode_unverified(&valid).expect("decodes");
    let json = serde_json::to_string_pretty(&bundle::inspect_json(&header, &m, true)).expect("json");
    fs::write(d.join("valid.inspect.json"), json + "\n").expect("write");
    let mut expected =
        String::from("# file\texpected error kind (BundleError::kind) when verified with signer.pub\n");
    for (name, kind, bytes) in invalid_variants(&valid, &manifest) {
        fs::write(d.join("invalid").join(name), bytes).expect("write");
        expected.push_str(&format!("{name}\t{kind}\n"));
    }
    fs::write(d.join("invalid/EXPECTED.tsv"), expected).expect("write");
}

fn trusted() -> Vec<ed25519_dalek::VerifyingKey> {
    vec![gatelet::keys::load_verifying_key(&dir().join("signer.pub")).expect("signer.pub")]
}

#[test]
fn vectors() {
    if std::env::var_os("GATELET_REGEN_VECTORS").is_some() {
        regenerate();
    }
    let d = dir();
    let valid = fs::read(d.join("valid.glb")).expect("valid.glb");
    let b = bundle::verify(&valid, &trusted()).expect("valid.glb verifies");
    assert_eq!(b.serial(), SERIAL);

    // The vector is the example as this builder compiles it today (regenerate after a change).
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pizzashack");
    let mut compiled = gatelet::project::compile(&project, SERIAL).expect("example compiles").manifest;
    compiled.created_at = CREATED_AT;
    assert!(&compiled == b.manifest(), "valid.glb is stale against examples/pizzashack; regenerate");

    // Determinism: re-sealing the decoded manifest with the same key gives the same bytes.
    assert_eq!(bundle::seal(b.manifest(), &key(KEY_1)).expect("seals"), valid);

    // The inspect view.
    let header = format::parse_header(&valid).expect("header");
    let got = bundle::inspect_json(&header, b.manifest(), true);
    let want: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(d.join("valid.inspect.json")).expect("json")).expect("json");
    assert_eq!(got, want, "inspect output differs from valid.inspect.json");

    // Every invalid vector fails with its expected kind, and so does every derived variant
    // (checks that EXPECTED.tsv lists them all).
    let expected = fs::read_to_string(d.join("invalid/EXPECTED.tsv")).expect("EXPECTED.tsv");
    let mut listed = 0;
    for line in expected.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, kind) = line.split_once('\t').expect("tab-separated");
        let bytes = fs::read(d.join("invalid").join(name)).expect(name);
        let err = bundle::verify(&bytes, &trusted()).expect_err(name);
        assert_eq!(err.kind(), kind, "{name}: {err}");
        listed += 1;
    }
    let derived = invalid_variants(&valid, b.manifest());
    assert_eq!(listed, derived.len(), "EXPECTED.tsv and the generator disagree; regenerate");
    for (name, _, bytes) in derived {
        assert_eq!(fs::read(d.join("invalid").join(name)).expect(name), bytes, "{name} is stale; regenerate");
    }

    // The valid bundle with only the other key trusted.
    let other = gatelet::keys::load_verifying_key(&d.join("other.pub")).expect("other.pub");
    assert_eq!(bundle::verify(&valid, &[other]).expect_err("wrong key").kind(), "untrusted-key");
}

/// A device upgraded to this gatelet keeps serving the version-1 bundle it holds:
/// `bundle-format/v1/valid.glb` is the pizzashack example as the last version-1 toolkit signed it.
#[test]
fn version_1_bundles_are_still_read_with_version_1_meaning() {
    let v1 = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("bundle-format/v1/valid.glb")).expect("v1");
    assert_eq!(format::parse_header(&v1).expect("header").version, 1);
    let b = bundle::verify(&v1, &trusted()).expect("a version-1 bundle verifies");
    let m = b.manifest();
    assert_eq!(m.serial, SERIAL);
    assert_eq!(m.scope_rule, bundle::model::ScopeRule::AllOf, "version 1 needed every scope");
    assert_eq!(m.default_subscription_tier, None);
    assert!(m.issuers.iter().all(|i| i.tokens && !i.api_keys && i.algorithms.is_empty()));
    assert!(m.apis.iter().all(|a| !a.https_only && a.api_key_locations.is_empty()));
    assert!(m.apis.iter().flat_map(|a| &a.operations).all(|o| o.bearer && !o.api_key));
    assert!(m.apis.iter().flat_map(|a| &a.operations).any(|o| !o.scopes.is_empty()));

    // The version number is signed, and each version signs under its own domain: a version-1
    // bundle relabelled as version 2 (or the reverse) fails its signature.
    let mut relabelled = v1.clone();
    relabelled[8] = 2;
    assert_eq!(bundle::verify(&relabelled, &trusted()).expect_err("relabelled").kind(), "bad-signature");
    let v2 = fs::read(dir().join("valid.glb")).expect("valid.glb");
    let mut relabelled = v2.clone();
    relabelled[8] = 1;
    assert_eq!(bundle::verify(&relabelled, &trusted()).expect_err("relabelled").kind(), "bad-signature");
    let mut v3 = v2;
    v3[8] = 3;
    assert_eq!(bundle::verify(&v3, &trusted()).expect_err("version 3").kind(), "unsupported-version");
}
