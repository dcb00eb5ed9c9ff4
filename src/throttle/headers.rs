//! `RateLimit-Policy`, `RateLimit` and `Retry-After` values, rendered into fixed buffers.
//!
//! Form of draft-ietf-httpapi-ratelimit-headers-11: each field is a Structured Field List
//! (RFC 9651) of Items whose value is a String naming the policy — here the level — with
//! Integer parameters: `q` (quota) and `w` (window, seconds) on the policy, `r` (remaining) and
//! `t` (seconds until the window ends) on the limit. `qu` is omitted (the default unit is
//! requests) and so is `pk` (the partition key would reveal key material for nothing).
//!
//! When both `RateLimit` and `Retry-After` are sent, the draft wants `Retry-After` no earlier than
//! the end of the effective window; they are equal here.

use std::fmt::Write;

use super::Limit;

/// Field name of the policy header.
pub const RATELIMIT_POLICY: &str = "RateLimit-Policy";
/// Field name of the current-limit header.
pub const RATELIMIT: &str = "RateLimit";
/// Field name of the standard retry delay (RFC 9110 §10.2.3), in seconds.
pub const RETRY_AFTER: &str = "Retry-After";

/// Longest value: `"unauthenticated";r=<u64>;t=<u64>` is 17 + 23 + 23 = 63 bytes; the policy
/// field (`;q=<u64>;w=<u32>`) is shorter.
const VALUE_MAX: usize = 64;
/// `Retry-After`: a u64 in decimal.
const SECONDS_MAX: usize = 20;

/// The header values for one decision. Fixed-size: rendering never allocates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    policy: heapless::String<VALUE_MAX>,
    limit: heapless::String<VALUE_MAX>,
    retry_after: Option<heapless::String<SECONDS_MAX>>,
}

impl RateLimitHeaders {
    /// `None` only if a value did not fit, which the bounds above rule out.
    pub(super) fn render(limit: &Limit, remaining: u64, reset_s: u64, throttled: bool) -> Option<Self> {
        let name = limit.level.as_str();
        let mut policy = heapless::String::new();
        write!(policy, "\"{name}\";q={};w={}", limit.quota, limit.window_s).ok()?;
        let mut current = heapless::String::new();
        write!(current, "\"{name}\";r={remaining};t={reset_s}").ok()?;
        let retry_after = if throttled {
            let mut s = heapless::String::new();
            write!(s, "{reset_s}").ok()?;
            Some(s)
        } else {
            None
        };
        Some(RateLimitHeaders { policy, limit: current, retry_after })
    }

    /// The `RateLimit-Policy` value.
    pub fn policy(&self) -> &str {
        &self.policy
    }

    /// The `RateLimit` value.
    pub fn limit(&self) -> &str {
        &self.limit
    }

    /// The `Retry-After` value, on throttled responses only.
    pub fn retry_after(&self) -> Option<&str> {
        self.retry_after.as_deref()
    }

    /// Every field as (name, value), in the order to write them.
    pub fn fields(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (RATELIMIT_POLICY, Some(self.policy())),
            (RATELIMIT, Some(self.limit())),
            (RETRY_AFTER, self.retry_after()),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value?)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::Level;
    use super::*;

    fn limit(level: Level, quota: u64, window_s: u32) -> Limit {
        Limit { level, quota, window_s, remaining: 0, reset_s: 1, stop_on_quota_reach: true }
    }

    #[test]
    fn draft_11_form() {
        let h =
            RateLimitHeaders::render(&limit(Level::Subscription, 5000, 60), 4999, 37, false).expect("fits");
        assert_eq!(h.policy(), "\"subscription\";q=5000;w=60");
        assert_eq!(h.limit(), "\"subscription\";r=4999;t=37");
        assert_eq!(h.retry_after(), None);
        assert_eq!(
            h.fields().collect::<Vec<_>>(),
            [
                ("RateLimit-Policy", "\"subscription\";q=5000;w=60"),
                ("RateLimit", "\"subscription\";r=4999;t=37")
            ]
        );

        let h = RateLimitHeaders::render(&limit(Level::Api, 10, 1), 0, 1, true).expect("fits");
        assert_eq!(h.limit(), "\"api\";r=0;t=1");
        assert_eq!(h.retry_after(), Some("1"));
        assert_eq!(h.fields().count(), 3);
    }

    #[test]
    fn largest_values_fit() {
        let h = RateLimitHeaders::render(
            &limit(Level::Unauthenticated, u64::MAX, u32::MAX),
            u64::MAX,
            u64::MAX,
            true,
        )
        .expect("the buffers hold the largest values");
        assert_eq!(h.limit(), format!("\"unauthenticated\";r={};t={}", u64::MAX, u64::MAX));
        assert_eq!(h.limit().len(), VALUE_MAX - 1);
        assert_eq!(h.policy(), format!("\"unauthenticated\";q={};w={}", u64::MAX, u32::MAX));
        assert_eq!(h.retry_after(), Some(u64::MAX.to_string().as_str()));
    }
}
