//! The admin listener's endpoints: `/healthz`, `/readyz` and `/metrics`.

use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::body::{ProxyBody, full};
use super::gateway::Gateway;

impl Gateway {
    /// The admin endpoints: `/healthz`, `/readyz`, `/metrics`.
    pub fn admin(&self, req: &Request<Incoming>) -> Response<ProxyBody> {
        let json = |status: StatusCode, body: &str| {
            let mut r = Response::new(full(body.to_owned()));
            *r.status_mut() = status;
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        };
        if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
            return json(StatusCode::METHOD_NOT_ALLOWED, r#"{"status":"method not allowed"}"#);
        }
        match req.uri().path() {
            "/healthz" => json(StatusCode::OK, r#"{"status":"healthy"}"#),
            "/readyz" if self.is_ready() => {
                let a = self.active();
                json(
                    StatusCode::OK,
                    &serde_json::json!({"status": "ready", "bundle_serial": a.bundle.serial()}).to_string(),
                )
            }
            "/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not ready"}"#),
            "/metrics" => {
                let mut r = Response::new(full(self.render_metrics()));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            _ => json(StatusCode::NOT_FOUND, r#"{"status":"not found"}"#),
        }
    }

    /// The `/metrics` text: the gateway's counters, the active bundle's, and every module's
    /// gauges, one block per family.
    pub fn render_metrics(&self) -> String {
        let active = self.active();
        self.metrics.clock_floor_seconds.store(active.clock.floor().0, Ordering::Relaxed);
        let t = active.throttle.metrics(active.now().now_ms());
        let (cached, capacity) = active.validator.cache_usage();
        let mut extra: Vec<(String, &'static str, &'static str, u64)> = vec![
            (
                "gatelet_throttle_memory_bytes".into(),
                "gauge",
                "Memory held by throttling tables.",
                t.bytes as u64,
            ),
            ("gatelet_token_cache_entries".into(), "gauge", "Verified tokens cached.", cached as u64),
            (
                "gatelet_token_cache_capacity".into(),
                "gauge",
                "Capacity of the verified-token cache.",
                capacity as u64,
            ),
            (
                "gatelet_head_memory_bytes".into(),
                "gauge",
                "Memory held by unfinished request heads (charged to the head budget).",
                self.head_budget.used() as u64,
            ),
            (
                "gatelet_head_memory_budget_bytes".into(),
                "gauge",
                "The budget for unfinished request heads (server.max_head_memory_bytes).",
                self.head_budget.limit() as u64,
            ),
            (
                "gatelet_heads_shed_total".into(),
                "counter",
                "Connections closed because unfinished heads exceeded their budget (oldest first).",
                self.head_budget.shed_total(),
            ),
            (
                "gatelet_backend_idle_connections".into(),
                "gauge",
                "Pooled idle backend connections.",
                self.upstreams.idle() as u64,
            ),
            (
                "gatelet_backend_connects_total".into(),
                "counter",
                "Backend connections opened (steady load within the pool opens none).",
                self.upstreams.connects(),
            ),
        ];
        for table in &t.tables {
            extra.push((
                format!(
                    "gatelet_throttle_table_entries{{table=\"{}\",state=\"live\"}}",
                    table.level.as_str()
                ),
                "gauge",
                "Throttling table entries, by table and state.",
                table.live as u64,
            ));
            extra.push((
                format!(
                    "gatelet_throttle_table_entries{{table=\"{}\",state=\"capacity\"}}",
                    table.level.as_str()
                ),
                "gauge",
                "Throttling table entries, by table and state.",
                table.capacity as u64,
            ));
            extra.push((
                format!("gatelet_throttle_table_full_total{{table=\"{}\"}}", table.level.as_str()),
                "counter",
                "New keys refused because their throttling table was full.",
                table.full,
            ));
            extra.push((
                format!("gatelet_throttle_table_overflow_total{{table=\"{}\"}}", table.level.as_str()),
                "counter",
                "New keys admitted under a shared overflow bucket because their throttling table was full.",
                table.overflow,
            ));
        }
        if let Some(u) = &self.usage {
            extra.extend(u.metrics());
        }
        let borrowed: Vec<(&str, &str, &str, u64)> =
            extra.iter().map(|(n, k, h, v)| (n.as_str(), *k, *h, *v)).collect();
        self.metrics.render(&active.counters, &borrowed)
    }
}
