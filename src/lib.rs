//! gatelet: an offline API microgateway for Linux ARM boards, and the toolkit that feeds it.
//!
//! # The path of a request (the data plane, landing module by module)
//!
//! ```text
//!  client ──► listener (HTTP/HTTPS, limits) ──► route (longest context, template, method)
//!         ──► authenticate (self-contained EdDSA JWT, no network)
//!         ──► throttle (fixed in-memory buckets, decided before forwarding)
//!         ──► forward (pooled HTTP/1.1 to the local backend) ──► respond
//!         ──► usage event (bounded queue ──► gzip NDJSON spool on flash ──► upload)
//! ```
//!
//! Everything a device runs comes from one verified [`bundle::Bundle`]: it exists only after
//! [`bundle::verify`] checked framing, signature, decoding and every semantic rule, and
//! [`state::StateStore`] accepted it as not older than the last one.
//!
//! # Modules
//!
//! - [`keys`] — Ed25519 key files (PKCS#8/SPKI PEM, JWKS), key ids and JWK thumbprints.
//! - [`bundle`] — the signed bundle: manifest model, v1 file format, the one verification path,
//!   the `inspect` JSON view. Byte-level spec: `bundle-format/SPEC.md`.
//! - [`project`] — the toolkit's compiler: `gatelet.toml` + OpenAPI (`x-wso2-*`) + keys →
//!   manifest, every reference resolved at build time.
//! - [`token`] — self-contained tokens: JWS/EdDSA parsing with hard limits, the WSO2 claim
//!   profile, the verified-token cache, the clock floor, `token mint`. Pure: no sockets, no files.
//! - [`state`] — the only module over sled: anti-rollback mark and clock floor, flushed before
//!   anything relies on them.
//! - [`throttle`] — the throttling decision: WSO2's API/resource/subscription/application levels,
//!   exact fixed windows, fixed-size tables, IETF `RateLimit` headers. Pure: time is passed in.
//! - [`toolkit`] — the `keygen` and `bundle` commands, as `main.rs` calls them.
//! - [`usage`] — usage records: bounded queue, gzip NDJSON spool on flash (one fsynced member per
//!   flush, crash recovery, hard cap), uploader with backoff, `usage export`.

pub mod bundle;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod keys;
pub mod project;
pub mod router;
pub mod server;
pub mod state;
pub mod throttle;
pub mod token;
pub mod toolkit;
pub mod usage;
