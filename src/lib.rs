//! gatelet: an offline API microgateway for Linux ARM boards, and the toolkit that feeds it.
//!
//! # The path of a request
//!
//! ```text
//!  client ─► server::serve on a worker (server::rt: one thread, epoll, run queue, timer table and
//!            SO_REUSEPORT socket each): accept (max_connections, TCP_NODELAY, TLS 1.3/1.2)
//!         ─► server::guard: first head read before hyper starts, charged to the head budget;
//!                           smuggling shapes (CL+TE, odd codings, obs-fold, bad chunks) → 400
//!         ─► hyper HTTP/1.1 on the worker (server::io): head timeout, head size (431)
//!         ─► Gateway::handle ─► Host rules (400); router: normalise path once (`;` → 400);
//!                               longest context, template, method (404/405);
//!                               an HTTPS-only API on the plain listener (403)
//!                            ─► token: a bearer JWT (EdDSA, RS*, PS*, ES256/384) or a WSO2 API
//!                               key (header or query; permittedIP/Referer), cached, no network
//!                               (401/403)
//!                            ─► throttle: fixed in-memory buckets, counted before forwarding (429)
//!                            ─► server::forwarded: X-Forwarded-*/Forwarded/X-Real-IP set by gatelet;
//!                               API key removed; server::backend_jwt: forward, none or a signed JWT
//!                            ─► server::upstream: the worker's own pool, HTTP/1.1 to the backend (502/504), the
//!                               endpoint's timeout, basic credentials, retries of unsent requests;
//!                               a broken or stalled client body is the client's (400/408)
//!                            ─► response streams back; when it ends, a usage record
//!         ─► usage: bounded queue, polled by the writer (no wake per record) ─► gzip NDJSON spool
//!            on flash ─► upload or `usage export`
//! ```
//!
//! Every refusal, including those made before the pipeline (guard, hyper's parser), leaves one
//! usage record and a `gatelet_requests_total` count.
//!
//! Where does a request get throttled? In [`server::pipeline::decide`], after authentication and
//! before forwarding, by [`throttle::Throttle::check`]. Where does a refusal become a status and
//! a fault body? In one place, `Gateway::fault` (src/server/faults.rs), except the framing guard's
//! own 400 and hyper's 400/431, which are answered before the pipeline sees the request.
//!
//! Everything a device runs comes from one verified [`bundle::Bundle`]: it exists only after
//! [`bundle::verify`] checked framing, signature, decoding and every semantic rule, and
//! [`state::StateStore`] accepted it as not older than the last one. A reload builds a new
//! [`server::Active`] (routes, validator, throttle) and swaps it in; requests in flight keep
//! the one they started with.
//!
//! # Modules
//!
//! - [`keys`] — key files: Ed25519 (PKCS#8/SPKI PEM) for bundles; RSA/EC/Ed25519 SPKI PEM, X.509
//!   certificates and JWKS for issuers; key ids and JWK thumbprints.
//! - [`bundle`] — the signed bundle: manifest model, file format v2 (v1 still read), the one verification path,
//!   the `inspect` JSON view. Byte-level spec: `bundle-format/SPEC.md`.
//! - [`project`] — the toolkit's compiler: `gatelet.toml` + OpenAPI (`x-wso2-*`) + keys →
//!   manifest, every reference resolved at build time.
//! - [`state`] — the device's durable facts (anti-rollback mark, clock floor) in two checksummed
//!   slot files, fsynced before anything relies on them.
//! - [`config`] — the device's `gatelet.toml`: defaults, file, `GATELET_<SECTION>_<KEY>`,
//!   command line, resolved in one place.
//! - [`router`] — path normalisation and routing. Pure.
//! - [`token`] — self-contained tokens: JWS parsing with hard limits (EdDSA, RS*, PS*, ES256/384),
//!   the WSO2 claim profile, WSO2 API keys, the verified-token cache, the clock floor, `token mint`. Pure: no sockets, no files.
//! - [`throttle`] — the throttling decision: WSO2's API/resource/subscription/application levels,
//!   exact fixed windows, fixed-size tables, IETF `RateLimit` headers. Pure: time is passed in.
//! - [`server`] — the data plane: listeners, framing guard, pipeline, backend pool, admin
//!   endpoints, metrics. Only it (and `usage`, and `provision` before the first bundle) touches sockets.
//! - [`daemon`] — `run` and `check`: start-up order, signals, inbox and SIGHUP reloads, drain,
//!   systemd notifications.
//! - [`provision`] — first boot: no bundle yet but an inbox; 503s until the first bundle arrives.
//! - [`demo`] — `gatelet demo`: the embedded default with an echo backend.
//! - [`usage`] — usage records: bounded queue, gzip NDJSON spool on flash (one fsynced member per
//!   flush, crash recovery, hard cap), uploader with backoff, `usage export`.
//! - [`url`] — the one URL type, parsed once where a URL enters (bundle, configuration,
//!   project).
//! - [`toolkit`] — the workstation commands (`keygen`, `bundle`, `token`), as `main.rs` calls them.

pub mod bundle;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod keys;
pub mod project;
pub mod provision;
pub mod router;
pub mod server;
pub mod state;
pub mod throttle;
pub mod token;
pub mod toolkit;
pub mod url;
pub mod usage;
