//! The data plane: listeners, the request pipeline, forwarding, faults, the admin endpoints,
//! reload and shutdown.
//!
//! ```text
//! listeners: accept (connection limit, TCP_NODELAY, TLS) ─► guard (smuggling shapes → 400 + close)
//!   ─► hyper HTTP/1.1 (head timeout, head size → 431) ─► forward: Gateway::handle
//!        ─► pipeline::decide (no sockets, time injected): Host, path, preflight, route (404/405),
//!           HTTPS-only (403), token or API key (401/403), throttle (429/500), endpoint, size (413)
//!        ─► forward: backend request built and sent through the pool (502/504), answer relayed
//!        ─► faults: a refusal → status, fault code, body, metric ─► usage record when the body ends
//! ```
//!
//! | file | job |
//! |---|---|
//! | `gateway.rs` | the bundle in force ([`Active`]), start-up ([`prepare`]), reload, clock floor |
//! | `pipeline.rs` | [`pipeline::decide`]: a request head → forward, preflight or refusal |
//! | `forward.rs` | [`Gateway::handle`]: the backend request, the relayed answer, the usage record |
//! | `faults.rs` | a refusal → status, fault code, body and metric |
//! | `admin.rs` | `/healthz`, `/readyz`, `/metrics` |
//! | `listeners.rs` | [`serve`], a connection's life, [`Role`], [`Shutdown`] |
//! | `rt.rs` | the workers' runtime: epoll, run queue, timers, sockets, the connection limit |
//! | `upstream.rs` | per-worker backend pools, connect, retries, the response deadline |

pub mod admin;
pub mod backend_jwt;
pub mod body;
pub mod faults;
pub mod forward;
pub mod forwarded;
pub mod gateway;
pub mod guard;
pub mod io;
pub mod listeners;
pub mod metrics;
pub mod pipeline;
pub mod rt;
pub mod tls;
pub mod upstream;

pub use body::{BoxError, ProxyBody};
pub use gateway::{
    Active, Gateway, PLAUSIBLE_WALL_CLOCK_S, Prepared, Settings, StartError, UsageSink, backend_root, prepare,
};
pub use listeners::{Role, Shutdown, ShutdownTrigger, serve, tls_acceptor};
pub use tls::TlsAcceptor;
