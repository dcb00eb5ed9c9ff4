//! Faults: the one place a refusal becomes a status, a fault code, a JSON fault body and a
//! metric. The codes are WSO2 Microgateway's, so clients written for it read them unchanged.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode};

use crate::throttle::{self, Decision};
use crate::token::TokenError;
use crate::usage::UsageEvent;

use super::body::{ProxyBody, full};
use super::forward::insert_ratelimit;
use super::gateway::Gateway;
use super::pipeline::Refusal;
use super::upstream::UpstreamError;

fn fault_body(code: u32, message: &str, description: &str) -> Bytes {
    let v = serde_json::json!({"fault": {"code": code, "message": message, "description": description}});
    Bytes::from(v.to_string())
}

impl Gateway {
    /// The one place a refusal becomes a response and a metric.
    pub(super) fn fault(&self, refusal: &Refusal, record: &mut UsageEvent) -> Response<ProxyBody> {
        let (status, code, message, description): (u16, u32, &str, String) = match refusal {
            Refusal::BadPath(e) => (400, 900906, "Bad Request", e.to_string()),
            Refusal::BadHost(e) => (400, 900906, "Bad Request", e.to_string()),
            Refusal::NotFound => (
                404,
                900906,
                "No matching resource found for given API Request",
                "the method and path match no API resource".into(),
            ),
            Refusal::MethodNotAllowed(_) => {
                (405, 900906, "Method not allowed", "the resource does not accept this method".into())
            }
            Refusal::Token(e) => {
                self.metrics.auth_failure(e.reason());
                let message = match e.fault_code() {
                    900902 => "Missing Credentials",
                    900903 => "Invalid Credentials",
                    900908 => "Resource forbidden",
                    900910 => "The access token does not allow you to access the requested resource",
                    _ => "Invalid Credentials",
                };
                (e.http_status(), e.fault_code(), message, e.to_string())
            }
            Refusal::NoEndpointForKeyType(k) => {
                self.metrics.auth_failure("no_endpoint_for_keytype");
                (403, 900908, "Resource forbidden", format!("this API has no {} endpoint", k.as_str()))
            }
            Refusal::Throttled(t) => {
                self.metrics.throttled(t.level.as_str());
                record.throttled = true;
                (429, t.level.fault_code(), "Message throttled out", "You have exceeded your quota".into())
            }
            Refusal::ThrottleFailed(u) => {
                (throttle::FAIL_STATUS, throttle::FAIL_CODE, "Internal Server Error", u.to_string())
            }
            Refusal::BodyTooLarge => (
                413,
                900906,
                "Payload Too Large",
                format!("request body larger than {} bytes", self.config.server.max_body_bytes),
            ),
            // The client's faults: no backend metric moves.
            Refusal::BadBody(detail) => {
                record.error_detail = Some(detail.clone());
                (400, 900906, "Bad Request", "the request body is malformed or incomplete".into())
            }
            Refusal::BodyStalled => (
                408,
                900906,
                "Request Timeout",
                format!("no request body bytes for {} ms", self.config.server.body_idle_timeout_ms),
            ),
            Refusal::Upstream(UpstreamError::Timeout) => {
                self.metrics.backend_timeouts.fetch_add(1, Ordering::Relaxed);
                (504, 101504, "Gateway Timeout", "the backend did not answer in time".into())
            }
            Refusal::Upstream(e) => {
                self.metrics.backend_errors.fetch_add(1, Ordering::Relaxed);
                // The caller learns that the backend failed, never where it lives or what the OS
                // said: that goes to the log and the usage record.
                record.error_detail = Some(e.to_string());
                (502, 101503, "Runtime Error", "the backend could not be reached or failed to answer".into())
            }
            Refusal::NotReady => (503, 101503, "Service Unavailable", "no verified bundle is active".into()),
            // 403, not a redirect: whatever the request carried has already crossed the network in
            // clear, and a redirect would have clients resend it silently instead of fixing the
            // URL. Not 421 either: the HTTPS listener is another origin, not another connection
            // to this one. 900906 is what Microgateway answered (the API was not on its HTTP
            // listener at all).
            Refusal::HttpsRequired => (
                403,
                900906,
                "HTTPS Required",
                "this API is served over HTTPS only (x-wso2-transports); call the gateway's HTTPS listener"
                    .into(),
            ),
        };
        record.status = status;
        record.error_code = Some(code);
        let mut resp = Response::new(full(fault_body(code, message, &description)));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if status == 401 {
            // RFC 6750 §3: error="invalid_token" only when a token was presented.
            let presented = !matches!(refusal, Refusal::Token(TokenError::Missing));
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(if presented { "Bearer error=\"invalid_token\"" } else { "Bearer" }),
            );
        }
        if let Refusal::MethodNotAllowed(allowed) = refusal {
            if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                h.insert(header::ALLOW, v);
            }
        }
        if let Refusal::Throttled(t) = refusal {
            if let Some(rl) = Decision::Throttle(t.clone()).headers(true) {
                insert_ratelimit(h, &rl);
            }
        }
        resp
    }
}
