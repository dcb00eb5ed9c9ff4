//! Throttling: the bundle's policies, a request's keys and the time in; a decision out.
//!
//! Sans-IO: no sockets, no files, no clock of its own. The data plane routes and authenticates a
//! request, then calls [`Throttle::check`] with a [`Request`] and the time, *before* forwarding,
//! and answers from the [`Decision`]. A new bundle gets a new [`Throttle`] (see "Bundle swaps").
//!
//! # Levels and keys
//!
//! The levels and key shapes of WSO2 API Microgateway, checked in WSO2's order:
//!
//! | level | partition (WSO2 key) | tier | fault code |
//! |---|---|---|---|
//! | API | `context:version` | the API's `x-wso2-throttling-tier` | 900800 |
//! | resource | `context/version/resource:method` | the operation's `x-wso2-throttling-tier` | 900802 |
//! | subscription | `appId:context:version` | the token's `subscriptionTier` for this API | 900804 |
//! | application | `appId:username` (the token's `sub`) | the token's `application.tier` | 900803 |
//! | unauthenticated | `clientIp:context:version` (IPv6: the /64) | the `Unauthenticated` subscription policy | 900804 |
//!
//! - API and resource tiers name [`PolicyLevel::Api`] policies (WSO2's "resource policies" serve
//!   both). As in WSO2, an API-level tier **overrides** the resource-level ones: when an API has a
//!   tier, its operations' tiers are not checked.
//! - Unauthenticated routes (`x-wso2-disable-security`) are what WSO2 makes them: the subscription
//!   level with the client address as the application id and the `Unauthenticated` tier, so a
//!   refusal there carries the subscription code 900804. 900806 (custom/global policies) is not
//!   produced: bundles have no custom policies.
//! - [`UNLIMITED`] skips a level. A token without a tier for a level (no `application`, or an API
//!   missing from `subscribedAPIs` when the issuer does not validate subscriptions) is not limited
//!   at that level, as WSO2 treats a missing tier as `Unlimited`; the route levels still apply.
//! - **A tier the bundle does not define** (a token names `"Platinum"`, or a hand-built manifest
//!   lacks `Unauthenticated`) fails closed: [`Decision::Fail`], which the proxy answers with 500 and
//!   WSO2's code 900809 ("throttling policy not found") and a description naming the level. The
//!   request is neither passed unchecked nor counted anywhere. It is the issuer's and the bundle
//!   author's mismatch, not the caller's, and a retry cannot fix it, hence 500 rather than 4xx;
//!   route tiers can never hit it because the bundle's own check resolves them at build time.
//!
//! A request passes only if every level that applies allows it. A throttled [`Decision`] names
//! the *binding* level: of the levels that refuse, the one whose window ends last (ties go to
//! WSO2's order), because that is when a retry can succeed; its code, the `Retry-After` and the
//! headers all describe that one level.
//!
//! # Algorithm: fixed windows, counted exactly
//!
//! Each counter counts requests in a fixed window of the policy's length, aligned to multiples
//! of that length since the Unix epoch — WSO2's semantic (`ts - ts % unit`), so a per-minute quota
//! resets on the minute. `Retry-After` is then exact: the time to the window's end, rounded up to
//! the second, at least 1. What a user sees at a window edge: a client may spend its whole quota in
//! the last second of one window and again in the first second of the next, so up to 2N requests
//! can pass within a short span straddling a boundary, while never more than N in any one window.
//! That is the price of WSO2's semantics and of exact, predictable resets; a sliding window or GCRA
//! would smooth it but would no longer reset where WSO2 users expect.
//!
//! Decision and count happen together, before the request passes. All counters the request
//! touches are locked, in one fixed order (the subscription or unauthenticated table's shard —
//! for a new anonymous key that finds its shard full, the shard is released and its overflow
//! bucket locked instead —, the application table's shard, then the route counter — the hot one,
//! last, so it is held shortest),
//! every level is checked, and only if all allow is each counted. So a limit of N admits exactly N
//! per window, never N+1, under any concurrency; and a request refused at one level consumes
//! nothing at the others. A request refused does not count either: a client hammering a closed
//! window does not push its next window back.
//!
//! `stop_on_quota_reach = false` tiers never refuse: over quota the request passes, is still
//! counted, and [`Allowed::over_quota`] marks it for the usage record.
//!
//! # Memory: fixed tables
//!
//! The route levels have one counter per API or per operation with a tier, sized from the bundle.
//! The caller levels (subscription, application, unauthenticated) each have their own fixed
//! table, sized from [`ThrottleConfig`] within [`MIN_TABLE_ENTRIES`]..=[`MAX_TABLE_ENTRIES`],
//! allocated once; a check never allocates. Separate tables mean a flood of anonymous addresses
//! cannot crowd out authenticated applications. Key strings are never stored: a key is a 64-bit
//! SipHash under a per-process random key (std's `RandomState`), and a table slot holds that hash
//! and a count (24 bytes). Two keys with the same hash would share a counter (one could spend the
//! other's quota). With 64-bit hashes and at most [`MAX_TABLE_ENTRIES`] live keys per table, the
//! chance that any two live keys collide is below 10^-9; a client trying a trillion keys has under
//! one chance in 10^7 of hitting one given key; and since the hash key is secret and differs per
//! process, nobody can aim a collision.
//!
//! When a key is new and its shard has no free slot, a slot whose key is done with is reused —
//! dropping a count that no longer matters. In the subscription and application tables that is
//! as soon as the key's window has ended; when every slot is live, the **new key is refused** at
//! that level with 429 ([`Cause::TableFull`], `Retry-After` = when the first slot frees), or
//! passes, marked over quota, if its tier does not stop. Established keys are never evicted, so
//! no live count is ever reset and no abusive key starts over.
//!
//! The unauthenticated table is the one a flood can fill cheaply: its keys cost an attacker only
//! addresses. So, there:
//!
//! - an IPv6 caller is keyed by its /64 ([`V6_KEY_BYTES`]), an IPv4 one by its address, an
//!   IPv4-mapped one as IPv4;
//! - a slot stays its key's for one window after its own: a caller seen in the current or the
//!   previous window keeps its slot and its exact quota, whatever the flood, and a flood takes
//!   only slots that are empty or whose key was silent for a whole window;
//! - a new key that finds its shard full is counted in one of [`OVERFLOW_BUCKETS`] shared
//!   buckets, each with the `Unauthenticated` quota, picked by the caller's network (/24 or
//!   /48) and API. It is throttled there ([`Cause::TableFull`] once the bucket is spent), never
//!   locked out by the table alone, and never gets more than the quota a caller with its own
//!   slot would. The README's "Throttling" section computes what locking every newcomer out
//!   costs.
//!
//! [`Throttle::metrics`] reports the overflow admissions and the refusals. Size the token tables
//! for about 1.25× the distinct keys expected per window and the unauthenticated table for
//! 1.25× the distinct callers over two windows (shards fill unevenly near capacity).
//!
//! # Headers
//!
//! [`Decision::headers`] renders `RateLimit-Policy` and `RateLimit` as in
//! draft-ietf-httpapi-ratelimit-headers-11 (Structured Field lists: `"subscription";q=5000;w=60`
//! and `"subscription";r=0;t=17`), named by level, plus `Retry-After` when throttled (equal to
//! `t`, as the draft asks). On a pass they describe the tightest applicable policy (fewest requests
//! left, then the latest reset), if the caller wants them on successful responses.
//!
//! # Time
//!
//! The caller passes Unix milliseconds, as the gateway knows the time (with its clock floor).
//! A clock stepped forward rolls windows early (at most one extra quota per step); a clock stepped
//! back never resets a count, and never delays a caller by more than one window.
//!
//! # Bundle swaps
//!
//! Counters live in the [`Throttle`] built for one bundle; a new bundle starts from zero. Swaps
//! are operator actions (signed bundles), so this grants at most one extra window per swap.

mod headers;
mod table;

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

pub use headers::{RATELIMIT, RATELIMIT_POLICY, RETRY_AFTER, RateLimitHeaders};
pub use table::SHARD_SLOTS;

use crate::bundle::model::{Manifest, PolicyLevel, UNLIMITED};
use table::{Counter, Probe, Shard, Table, as_key, window_end};

/// Smallest table: one shard.
pub const MIN_TABLE_ENTRIES: usize = SHARD_SLOTS;
/// Largest table: 131,072 entries, 3 MiB — the RSS budget of a small board, per level.
pub const MAX_TABLE_ENTRIES: usize = 1 << 17;
/// Default entries per caller table (about 100 KiB each).
pub const DEFAULT_TABLE_ENTRIES: usize = 4096;

/// Overflow buckets of the unauthenticated table: shared counters, each with the `Unauthenticated`
/// quota, for new callers that find the table full. A caller's bucket is picked by its network
/// ([`V4_NETWORK_BYTES`], [`V6_NETWORK_BYTES`]) and API under the secret hash, so newcomers share a
/// bucket with about 1/64 of the other newcomers, and locking every newcomer out means spending
/// 64 quotas a window from networks that cover all 64 buckets (README, "Throttling"). 1.5 KiB.
pub const OVERFLOW_BUCKETS: usize = 64;

/// Leading bytes of an IPv6 address that key an anonymous caller: its /64. A /64 is the smallest
/// network a site is given (RFC 6177) and SLAAC lets any host in it pick any of its 2^64
/// addresses, so keying by address would let one host be as many callers as it likes.
pub const V6_KEY_BYTES: usize = 8;
/// Leading bytes of an IPv4 address whose newcomers share an overflow bucket: its /24.
pub const V4_NETWORK_BYTES: usize = 3;
/// Leading bytes of an IPv6 address whose newcomers share an overflow bucket: its /48, the
/// usual allocation to a site, so one site cannot spread over many buckets.
pub const V6_NETWORK_BYTES: usize = 6;

/// The name of the subscription policy for unauthenticated routes.
pub const UNAUTHENTICATED_TIER: &str = "Unauthenticated";

/// HTTP status and WSO2 code when a request cannot be checked ([`Decision::Fail`]).
pub const FAIL_STATUS: u16 = 500;
/// WSO2's "throttling policy not found".
pub const FAIL_CODE: u32 = 900809;

/// Most levels that apply to one request: a route level, subscription or unauthenticated, and
/// application.
pub const MAX_LEVELS: usize = 3;

/// The limits that applied to a request, in WSO2's order.
pub type Limits = heapless::Vec<Limit, MAX_LEVELS>;

/// A throttling level, as WSO2 names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    Api,
    Resource,
    Subscription,
    Application,
    /// A route with security disabled: the subscription level, keyed by client address.
    Unauthenticated,
}

impl Level {
    /// Lower-case name: metrics labels and the headers' policy identifier.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Api => "api",
            Level::Resource => "resource",
            Level::Subscription => "subscription",
            Level::Application => "application",
            Level::Unauthenticated => "unauthenticated",
        }
    }

    /// WSO2's fault code for a request throttled at this level (HTTP 429).
    pub fn fault_code(self) -> u32 {
        match self {
            Level::Api => 900800,
            Level::Resource => 900802,
            Level::Application => 900803,
            Level::Subscription | Level::Unauthenticated => 900804,
        }
    }

    /// WSO2's `throttledOutReason` for usage and throttle events.
    pub fn reason(self) -> &'static str {
        match self {
            Level::Api => "API_LIMIT_EXCEEDED",
            Level::Resource => "RESOURCE_LIMIT_EXCEEDED",
            Level::Subscription | Level::Unauthenticated => "SUBSCRIPTION_LIMIT_EXCEEDED",
            Level::Application => "APPLICATION_LIMIT_EXCEEDED",
        }
    }
}

/// Who is calling, as the data plane knows after authentication. Strings are borrowed from the
/// validated token for the duration of the check; none is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// A validated token.
    Token {
        /// The issuer that vouched for the token (its bundle name): callers of different
        /// issuers never share a counter, even when their application ids coincide.
        issuer: &'a str,
        /// `application.id`; empty when the token carries no application (the subscription
        /// level then keys on `sub`, so app-less tokens do not share one bucket).
        app_id: &'a str,
        /// `sub`: the end user the application acts for (WSO2's `username` in `appId:username`).
        subject: &'a str,
        /// `application.tier`, the application level's tier; `None` when absent.
        application_tier: Option<&'a str>,
        /// The `subscriptionTier` of this API's `subscribedAPIs` entry; `None` when absent.
        subscription_tier: Option<&'a str>,
    },
    /// A route with security disabled: keyed by client address (an IPv6 one by its /64; an
    /// IPv4-mapped one as IPv4), `Unauthenticated` tier.
    Anonymous { client_ip: IpAddr },
}

/// One request, routed and authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// Index of the matched API in the manifest's `apis`.
    pub api: usize,
    /// Index of the matched operation in that API's `operations`.
    pub operation: usize,
    pub caller: Caller<'a>,
}

/// The state of one applicable level, after the decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub level: Level,
    /// Requests per window.
    pub quota: u64,
    pub window_s: u32,
    /// Requests left in the current window (after this one, when it passed).
    pub remaining: u64,
    /// Whole seconds until the window ends, rounded up; at least 1.
    pub reset_s: u64,
    pub stop_on_quota_reach: bool,
}

/// Why a request was throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The key used its quota for this window.
    QuotaExceeded,
    /// The key is new and its table has no free entry until `Retry-After`.
    TableFull,
}

/// A request that may be forwarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// Passed over quota at a level whose tier does not stop (`stop_on_quota_reach = false`):
    /// mark the usage record (WSO2's `ALLOWED_ON_QUOTA_REACHED`).
    pub over_quota: bool,
    pub limits: Limits,
}

/// A request to answer with 429.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    /// The binding level: its [`Level::fault_code`] goes in the fault body.
    pub level: Level,
    pub cause: Cause,
    /// Whole seconds until the binding level can admit the request again; at least 1.
    pub retry_after_s: u64,
    pub limits: Limits,
}

/// Why a request could not be checked. Each is a configuration mismatch, never the caller's
/// doing: answer [`FAIL_STATUS`] with [`FAIL_CODE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchecked {
    /// The token (or, for [`Level::Unauthenticated`], the bundle) names a tier the bundle does not
    /// define at this level.
    UnknownTier(Level),
    /// The request's API or operation index is not in the bundle this throttle was built from
    /// (a data-plane bug: the router and the throttle disagree on the bundle).
    UnknownRoute,
}

impl fmt::Display for Unchecked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unchecked::UnknownTier(level) => {
                write!(f, "the {} throttling tier is not defined in the bundle", level.as_str())
            }
            Unchecked::UnknownRoute => f.write_str("the route is not in the active bundle"),
        }
    }
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Forward it; it has been counted.
    Allow(Allowed),
    /// Answer 429 with the binding level's code; nothing was counted.
    Throttle(Throttled),
    /// Answer 500 / 900809; nothing was counted and nothing passes unchecked.
    Fail(Unchecked),
}

impl Decision {
    /// The IETF rate-limit headers for this decision: always for a throttled request (with
    /// `Retry-After`), for a passed one only when `on_success` and a limit applies, never for
    /// [`Decision::Fail`].
    pub fn headers(&self, on_success: bool) -> Option<RateLimitHeaders> {
        match self {
            Decision::Throttle(t) => {
                let limit = t.limits.iter().find(|l| l.level == t.level)?;
                RateLimitHeaders::render(limit, 0, t.retry_after_s, true)
            }
            Decision::Allow(a) if on_success => {
                let tightest = a
                    .limits
                    .iter()
                    .min_by(|x, y| x.remaining.cmp(&y.remaining).then_with(|| y.reset_s.cmp(&x.reset_s)))?;
                RateLimitHeaders::render(tightest, tightest.remaining, tightest.reset_s, false)
            }
            Decision::Allow(_) | Decision::Fail(_) => None,
        }
    }
}

/// Sizes of the caller tables (device configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleConfig {
    /// Entries for `appId:context:version` subscription counters.
    pub subscription_entries: usize,
    /// Entries for `appId:sub` application counters.
    pub application_entries: usize,
    /// Entries for client-address counters on unauthenticated routes.
    pub unauthenticated_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            subscription_entries: DEFAULT_TABLE_ENTRIES,
            application_entries: DEFAULT_TABLE_ENTRIES,
            unauthenticated_entries: DEFAULT_TABLE_ENTRIES,
        }
    }
}

/// Why a [`Throttle`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThrottleError {
    /// A table size outside the bounds. The device configuration is at fault.
    TableSize { level: Level, entries: usize },
    /// An API or operation names a tier that is not an API-level policy, or a policy has an empty
    /// window. The bundle is at fault (a verified bundle never does this).
    BadTier { api: String, tier: String },
}

impl fmt::Display for ThrottleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ThrottleError::TableSize { level, entries } => write!(
                f,
                "{} throttling table of {entries} entries: must be {MIN_TABLE_ENTRIES} to {MAX_TABLE_ENTRIES}",
                level.as_str()
            ),
            ThrottleError::BadTier { api, tier } => {
                write!(f, "API {api:?}: tier {tier:?} is not a usable API-level policy")
            }
        }
    }
}

impl std::error::Error for ThrottleError {}

/// Memory and occupancy, for `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// Bytes held by throttling: tables, route counters, compiled policies and tier names. All of
    /// it is allocated when the [`Throttle`] is built; checks allocate nothing.
    pub bytes: usize,
    /// Counters for API- and resource-level tiers.
    pub route_counters: usize,
    /// Subscription, application and unauthenticated tables, in that order.
    pub tables: [TableMetrics; 3],
}

/// One caller table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableMetrics {
    pub level: Level,
    pub capacity: usize,
    /// Entries whose window has not ended.
    pub live: usize,
    /// Entries holding a key, including ended windows not reused yet.
    pub occupied: usize,
    /// Requests of new keys that met a full table, and no room in their overflow bucket where
    /// the table has them, since start: refused (or passed over quota on a non-stopping tier).
    pub full: u64,
    /// Requests of new keys that met a full table and were admitted under an overflow bucket,
    /// since start (unauthenticated table only; 0 for the others).
    pub overflow: u64,
    pub bytes: usize,
}

#[derive(Debug, Clone, Copy)]
struct Policy {
    quota: u64,
    window_s: u32,
    window_ms: u64,
    stop: bool,
}

impl Policy {
    fn of(p: &crate::bundle::model::Policy) -> Option<Policy> {
        (p.window_s > 0).then_some(Policy {
            quota: p.requests,
            window_s: p.window_s,
            window_ms: u64::from(p.window_s) * 1000,
            stop: p.stop_on_quota_reach,
        })
    }
}

/// The route level of one operation.
#[derive(Debug, Clone, Copy)]
struct RouteCheck {
    level: Level,
    policy: Policy,
    counter: usize,
}

#[derive(Debug)]
struct ApiRoutes {
    /// Hash of `context:version`: the API part of subscription and unauthenticated keys.
    key: u64,
    /// Index of the first operation in `Throttle::ops`.
    first_op: usize,
    ops: usize,
}

/// Throttling state for one bundle. `Sync`: share it between request handlers.
pub struct Throttle {
    hasher: RandomState,
    apis: Vec<ApiRoutes>,
    ops: Vec<Option<RouteCheck>>,
    route_counters: Box<[Mutex<Counter>]>,
    subscription_tiers: HashMap<Box<str>, Policy>,
    application_tiers: HashMap<Box<str>, Policy>,
    unauthenticated: Option<Policy>,
    subscriptions: Table,
    applications: Table,
    anonymous: Table,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Throttle")
            .field("apis", &self.apis.len())
            .field("route_counters", &self.route_counters.len())
            .field("subscriptions", &self.subscriptions)
            .field("applications", &self.applications)
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

// Domain separation between the kinds of key hashed with the same hasher.
const TAG_API: u8 = 1;
const TAG_SUBSCRIPTION: u8 = 2;
const TAG_APPLICATION: u8 = 3;
const TAG_ANONYMOUS: u8 = 4;
const TAG_OVERFLOW: u8 = 5;

/// An anonymous caller's key bytes and the network bytes that pick its overflow bucket, with
/// the address family (see [`V6_KEY_BYTES`] and [`V4_NETWORK_BYTES`]).
fn anonymous_identity(ip: IpAddr) -> (u8, [u8; 16], usize, usize) {
    match ip.to_canonical() {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (4, b, 4, V4_NETWORK_BYTES)
        }
        IpAddr::V6(a) => (6, a.octets(), V6_KEY_BYTES, V6_NETWORK_BYTES),
    }
}

/// What a caller level counts in: its level, policy, table, key hash, and the hash that picks
/// its overflow bucket when the table has them.
type TableKey<'t> = (Level, Policy, &'t Table, u64, Option<u64>);

/// A counter locked for the duration of one decision.
enum Place<'t> {
    Route(MutexGuard<'t, Counter>),
    Table {
        shard: MutexGuard<'t, Shard>,
        probe: Probe,
        key: u64,
        table: &'t Table,
    },
    /// A new key that found its shard full, counted in a shared overflow bucket.
    Overflow {
        bucket: MutexGuard<'t, Counter>,
        table: &'t Table,
    },
}

struct Hold<'t> {
    level: Level,
    policy: Policy,
    place: Place<'t>,
}

/// A level's count before this request.
#[derive(Clone, Copy)]
struct View {
    count: u64,
    end_ms: u64,
    /// A new key, its table full, and no overflow bucket to count it in.
    full: bool,
    /// A new key, its table full, counted in an overflow bucket.
    overflow: bool,
}

impl<'t> Hold<'t> {
    /// Locks `key`'s shard in `table` and finds its slot; for a new key that finds the shard
    /// full, releases the shard and locks the overflow bucket `spill` picks, if the table has
    /// them.
    fn table((level, policy, table, key, spill): TableKey<'t>, now_ms: u64) -> Hold<'t> {
        let key = as_key(key);
        let shard = table.lock(key);
        let probe = shard.probe(key, now_ms, table.hold_ms());
        let bucket = match probe {
            Probe::Full { .. } => spill.and_then(|s| table.overflow(s)),
            Probe::Found(_) | Probe::Vacant(_) => None,
        };
        if let Some(bucket) = bucket {
            drop(shard);
            let bucket = bucket.lock().unwrap_or_else(PoisonError::into_inner);
            return Hold { level, policy, place: Place::Overflow { bucket, table } };
        }
        Hold { level, policy, place: Place::Table { shard, probe, key, table } }
    }

    fn view(&self, now_ms: u64) -> View {
        let w = self.policy.window_ms;
        let (count, end_ms, full) = match &self.place {
            Place::Route(c) | Place::Overflow { bucket: c, .. } => {
                let (count, end) = c.current(now_ms, w);
                (count, end, false)
            }
            Place::Table { shard, probe, .. } => match *probe {
                Probe::Found(i) => {
                    let (count, end) = shard.counter(i).current(now_ms, w);
                    (count, end, false)
                }
                Probe::Vacant(_) => (0, window_end(now_ms, w), false),
                Probe::Full { next_free_ms } => (0, next_free_ms, true),
            },
        };
        View { count, end_ms, full, overflow: matches!(self.place, Place::Overflow { .. }) }
    }

    fn over(&self, v: View) -> bool {
        v.full || v.count >= self.policy.quota
    }

    /// Counts this request. A full table has nowhere to count it; only a non-stopping tier gets
    /// here with one, and the request is marked over quota instead.
    fn count(&mut self, v: View) {
        let next = Counter { end_ms: v.end_ms, count: v.count.saturating_add(1) };
        match &mut self.place {
            Place::Route(c) => **c = next,
            Place::Overflow { bucket, table } => {
                **bucket = next;
                if v.count < self.policy.quota {
                    table.note_overflow();
                }
            }
            Place::Table { shard, probe, key, .. } => match *probe {
                Probe::Found(i) | Probe::Vacant(i) => shard.set(i, *key, next),
                Probe::Full { .. } => {}
            },
        }
    }

    /// On a refusal: a counter ending after the current window (the clock was stepped back) is
    /// moved onto the current window, count kept, so the caller waits at most one window.
    fn rebase(&mut self, v: View) {
        let stored = match &self.place {
            Place::Route(c) | Place::Overflow { bucket: c, .. } => **c,
            Place::Table { shard, probe: Probe::Found(i), .. } => shard.counter(*i),
            Place::Table { .. } => return,
        };
        if stored.end_ms > v.end_ms {
            let next = Counter { end_ms: v.end_ms, count: stored.count };
            match &mut self.place {
                Place::Route(c) | Place::Overflow { bucket: c, .. } => **c = next,
                Place::Table { shard, probe: Probe::Found(i), key, .. } => shard.set(*i, *key, next),
                Place::Table { .. } => {}
            }
        }
    }

    fn limit(&self, v: View, counted: bool, now_ms: u64) -> Limit {
        let used = if counted { v.count.saturating_add(1) } else { v.count };
        Limit {
            level: self.level,
            quota: self.policy.quota,
            window_s: self.policy.window_s,
            remaining: if v.full { 0 } else { self.policy.quota.saturating_sub(used) },
            reset_s: seconds_until(v.end_ms, now_ms),
            stop_on_quota_reach: self.policy.stop,
        }
    }
}

/// Whole seconds from `now_ms` to `end_ms`, rounded up, at least 1.
fn seconds_until(end_ms: u64, now_ms: u64) -> u64 {
    end_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
}

impl Throttle {
    /// Compiles the manifest's tiers and allocates every counter and table. The only allocation
    /// throttling ever makes.
    pub fn new(manifest: &Manifest, config: &ThrottleConfig) -> Result<Throttle, ThrottleError> {
        for (level, entries) in [
            (Level::Subscription, config.subscription_entries),
            (Level::Application, config.application_entries),
            (Level::Unauthenticated, config.unauthenticated_entries),
        ] {
            if !(MIN_TABLE_ENTRIES..=MAX_TABLE_ENTRIES).contains(&entries) {
                return Err(ThrottleError::TableSize { level, entries });
            }
        }
        let hasher = RandomState::new();
        let tiers = |level: PolicyLevel| -> HashMap<Box<str>, Policy> {
            manifest
                .policies
                .iter()
                .filter(|p| p.level == level)
                .filter_map(|p| Some((Box::from(p.name.as_str()), Policy::of(p)?)))
                .collect()
        };
        let api_tiers = tiers(PolicyLevel::Api);
        let subscription_tiers = tiers(PolicyLevel::Subscription);
        let application_tiers = tiers(PolicyLevel::Application);
        let unauthenticated = subscription_tiers.get(UNAUTHENTICATED_TIER).copied();

        let mut apis = Vec::with_capacity(manifest.apis.len());
        let mut ops = Vec::new();
        let mut counters = 0usize;
        for api in &manifest.apis {
            let route_policy =
                |tier: &Option<String>| -> Result<Option<Policy>, ThrottleError> {
                    match tier.as_deref() {
                        None | Some(UNLIMITED) => Ok(None),
                        Some(t) => api_tiers.get(t).copied().map(Some).ok_or_else(|| {
                            ThrottleError::BadTier { api: api.name.clone(), tier: t.to_owned() }
                        }),
                    }
                };
            let first_op = ops.len();
            if api.tier.is_some() {
                // The API-level tier overrides resource tiers, and one counter serves the API.
                let check = route_policy(&api.tier)?.map(|policy| {
                    counters += 1;
                    RouteCheck { level: Level::Api, policy, counter: counters - 1 }
                });
                ops.extend(api.operations.iter().map(|_| check));
            } else {
                for op in &api.operations {
                    let check = route_policy(&op.tier)?.map(|policy| {
                        counters += 1;
                        RouteCheck { level: Level::Resource, policy, counter: counters - 1 }
                    });
                    ops.push(check);
                }
            }
            apis.push(ApiRoutes {
                key: hasher.hash_one((TAG_API, api.context.as_str(), api.version.as_str())),
                first_op,
                ops: api.operations.len(),
            });
        }
        ops.shrink_to_fit();

        Ok(Throttle {
            hasher,
            apis,
            ops,
            route_counters: (0..counters).map(|_| Mutex::new(Counter::default())).collect(),
            subscription_tiers,
            application_tiers,
            unauthenticated,
            // Token tables: a slot is offered again as soon as its window ends (their keys need an
            // issuer's signature, and tiers of different windows share them).
            subscriptions: Table::new(config.subscription_entries, 0, 0),
            applications: Table::new(config.application_entries, 0, 0),
            // Anonymous keys cost an attacker only addresses: a slot stays its key's for one
            // window after its own, so an established caller keeps it across a window boundary
            // whatever the flood, and newcomers that find it full share the overflow buckets.
            anonymous: Table::new(
                config.unauthenticated_entries,
                unauthenticated.map_or(0, |p| p.window_ms),
                OVERFLOW_BUCKETS,
            ),
        })
    }

    /// Decides whether `request` may pass at `now_ms` (Unix milliseconds), and counts it if so.
    pub fn check(&self, request: &Request<'_>, now_ms: u64) -> Decision {
        let Some((api_key, route)) = self
            .apis
            .get(request.api)
            .filter(|a| request.operation < a.ops)
            .and_then(|a| Some((a.key, self.ops.get(a.first_op + request.operation)?)))
        else {
            return Decision::Fail(Unchecked::UnknownRoute);
        };
        // Built together in `new`: every route check has its counter; fail closed regardless.
        let route = match route {
            None => None,
            Some(r) => match self.route_counters.get(r.counter) {
                Some(counter) => Some((r, counter)),
                None => return Decision::Fail(Unchecked::UnknownRoute),
            },
        };

        // Resolve every tier before touching a counter, so a failure counts nothing.
        let tier = |tier: Option<&str>, tiers: &HashMap<Box<str>, Policy>, level| match tier {
            None | Some(UNLIMITED) => Ok(None),
            Some(t) => tiers.get(t).copied().map(Some).ok_or(Unchecked::UnknownTier(level)),
        };
        let (caller, application) = match request.caller {
            Caller::Token { issuer, app_id, subject, application_tier, subscription_tier } => {
                // Who holds the subscription: the application, or the subject when there is none
                // (the flag keeps an application id from colliding with an equal subject).
                let (holder_is_app, holder) =
                    if app_id.is_empty() { (false, subject) } else { (true, app_id) };
                let sub = match tier(subscription_tier, &self.subscription_tiers, Level::Subscription) {
                    Ok(p) => p,
                    Err(e) => return Decision::Fail(e),
                };
                let app = match tier(application_tier, &self.application_tiers, Level::Application) {
                    Ok(p) => p,
                    Err(e) => return Decision::Fail(e),
                };
                (
                    sub.map(|p| {
                        let key =
                            self.hasher.hash_one((TAG_SUBSCRIPTION, issuer, holder_is_app, holder, api_key));
                        (Level::Subscription, p, &self.subscriptions, key, None)
                    }),
                    app.map(|p| {
                        let key = self.hasher.hash_one((TAG_APPLICATION, issuer, app_id, subject));
                        (Level::Application, p, &self.applications, key, None)
                    }),
                )
            }
            Caller::Anonymous { client_ip } => {
                let Some(p) = self.unauthenticated else {
                    return Decision::Fail(Unchecked::UnknownTier(Level::Unauthenticated));
                };
                let (key, spill) = self.anonymous_hashes(client_ip, api_key);
                (Some((Level::Unauthenticated, p, &self.anonymous, key, Some(spill))), None)
            }
        };

        // Lock in the fixed order: caller table, application table, route counter.
        let caller = caller.map(|c| Hold::table(c, now_ms));
        let application = application.map(|c| Hold::table(c, now_ms));
        let route = route.map(|(r, counter)| {
            let guard = counter.lock().unwrap_or_else(PoisonError::into_inner);
            Hold { level: r.level, policy: r.policy, place: Place::Route(guard) }
        });
        let mut holds: heapless::Vec<(Hold<'_>, View), MAX_LEVELS> = heapless::Vec::new();
        for hold in [route, caller, application].into_iter().flatten() {
            let view = hold.view(now_ms);
            match &hold.place {
                Place::Table { table, .. } if view.full => table.note_full(),
                Place::Overflow { table, .. } if hold.over(view) => table.note_full(),
                _ => {}
            }
            // At most MAX_LEVELS holds exist; a push cannot fail.
            let _ = holds.push((hold, view));
        }

        // The binding refusal: the stopping level over quota whose window ends last.
        let mut binding: Option<(Level, u64, bool)> = None;
        for (hold, view) in &holds {
            if hold.policy.stop && hold.over(*view) && binding.is_none_or(|(_, end, _)| view.end_ms > end) {
                binding = Some((hold.level, view.end_ms, view.full || view.overflow));
            }
        }
        let mut limits = Limits::new();
        if let Some((level, end_ms, full)) = binding {
            for (hold, view) in &mut holds {
                hold.rebase(*view);
                let _ = limits.push(hold.limit(*view, false, now_ms));
            }
            return Decision::Throttle(Throttled {
                level,
                cause: if full { Cause::TableFull } else { Cause::QuotaExceeded },
                retry_after_s: seconds_until(end_ms, now_ms),
                limits,
            });
        }
        let mut over_quota = false;
        for (hold, view) in &mut holds {
            over_quota |= hold.over(*view);
            hold.count(*view);
            let _ = limits.push(hold.limit(*view, true, now_ms));
        }
        Decision::Allow(Allowed { over_quota, limits })
    }

    /// An anonymous caller's key in the unauthenticated table, and the hash that picks its
    /// overflow bucket, on the API whose key is `api_key`.
    fn anonymous_hashes(&self, client_ip: IpAddr, api_key: u64) -> (u64, u64) {
        let (family, bytes, key_len, network_len) = anonymous_identity(client_ip);
        (
            self.hasher.hash_one((TAG_ANONYMOUS, family, &bytes[..key_len], api_key)),
            self.hasher.hash_one((TAG_OVERFLOW, family, &bytes[..network_len], api_key)),
        )
    }

    /// Memory and occupancy at `now_ms`. Locks each table shard briefly: call it per scrape.
    pub fn metrics(&self, now_ms: u64) -> Metrics {
        let table = |level, t: &Table| TableMetrics {
            level,
            capacity: t.capacity(),
            live: t.live(now_ms),
            occupied: t.occupied(),
            full: t.full_count(),
            overflow: t.overflow_count(),
            bytes: t.bytes(),
        };
        let tables = [
            table(Level::Subscription, &self.subscriptions),
            table(Level::Application, &self.applications),
            table(Level::Unauthenticated, &self.anonymous),
        ];
        let names = |m: &HashMap<Box<str>, Policy>| {
            m.capacity() * (size_of::<(Box<str>, Policy)>() + 1) + m.keys().map(|k| k.len()).sum::<usize>()
        };
        let bytes = size_of::<Throttle>()
            + self.apis.capacity() * size_of::<ApiRoutes>()
            + self.ops.capacity() * size_of::<Option<RouteCheck>>()
            + self.route_counters.len() * size_of::<Mutex<Counter>>()
            + names(&self.subscription_tiers)
            + names(&self.application_tiers)
            + tables.iter().map(|t| t.bytes).sum::<usize>();
        Metrics { bytes, route_counters: self.route_counters.len(), tables }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::bundle::model::{
        self, Api, EndpointKind, Endpoints, Method, Operation, PolicyLevel, ScopeRule,
    };

    /// 10:00:00 UTC on some day: a minute boundary, so windows of 1, 10 and 60 s start here.
    const T0: u64 = 1_764_000_000_000;

    fn policy(level: PolicyLevel, name: &str, requests: u64, window_s: u32, stop: bool) -> model::Policy {
        model::Policy { level, name: name.into(), requests, window_s, stop_on_quota_reach: stop }
    }

    fn op(method: Method, path: &str, tier: Option<&str>) -> Operation {
        Operation {
            method,
            path: path.into(),
            tier: tier.map(Into::into),
            disable_security: false,
            scopes: vec![],
            production: None,
            sandbox: None,
            bearer: true,
            api_key: false,
        }
    }

    fn api(name: &str, tier: Option<&str>, operations: Vec<Operation>) -> Api {
        Api {
            name: name.into(),
            version: "1.0.0".into(),
            context: format!("/{name}/1.0.0"),
            tier: tier.map(Into::into),
            disable_security: false,
            auth_header: None,
            production: Some(Endpoints {
                kind: EndpointKind::Single,
                urls: vec![crate::url::HttpUrl::parse("http://127.0.0.1:8080").expect("valid")],
                timeout_ms: None,
                retries: 0,
                basic_auth: None,
            }),
            sandbox: None,
            cors: None,
            operations,
            https_only: false,
            api_key_locations: Vec::new(),
        }
    }

    /// API 0 `shop`: GET /items (resource tier res3), POST /items (none).
    /// API 1 `metered`: API tier api4, which overrides GET /a's res3.
    /// API 2 `free`: API tier Unlimited, which overrides GET /x's res3.
    fn manifest() -> Manifest {
        use PolicyLevel::{Api as A, Application as P, Subscription as S};
        Manifest {
            label: "test".into(),
            serial: 1,
            created_at: 0,
            issuers: vec![],
            policies: vec![
                policy(A, "res3", 3, 60, true),
                policy(A, "api4", 4, 10, true),
                policy(S, "Gold", 5, 60, true),
                policy(S, "Meter", 3, 60, false),
                policy(S, "Conc", 500, 60, true),
                policy(S, UNAUTHENTICATED_TIER, 2, 60, true),
                policy(P, "App3", 3, 60, true),
                policy(P, "App100", 100, 60, true),
            ],
            apis: vec![
                api(
                    "shop",
                    None,
                    vec![op(Method::Get, "/items", Some("res3")), op(Method::Post, "/items", None)],
                ),
                api(
                    "metered",
                    Some("api4"),
                    vec![op(Method::Get, "/a", Some("res3")), op(Method::Get, "/b", None)],
                ),
                api("free", Some(UNLIMITED), vec![op(Method::Get, "/x", Some("res3"))]),
            ],
            revoked_jti: vec![],
            scope_rule: ScopeRule::AllOf,
            default_subscription_tier: None,
        }
    }

    fn throttle() -> Throttle {
        Throttle::new(&manifest(), &ThrottleConfig::default()).expect("valid")
    }

    fn token<'a>(
        app_id: &'a str,
        subject: &'a str,
        sub: Option<&'a str>,
        app: Option<&'a str>,
    ) -> Caller<'a> {
        Caller::Token { issuer: "test", app_id, subject, application_tier: app, subscription_tier: sub }
    }

    fn anon(ip: [u8; 4]) -> Caller<'static> {
        Caller::Anonymous { client_ip: IpAddr::V4(Ipv4Addr::from(ip)) }
    }

    fn req(api: usize, operation: usize, caller: Caller<'_>) -> Request<'_> {
        Request { api, operation, caller }
    }

    fn allowed(t: &Throttle, r: &Request<'_>, now: u64, n: usize) -> usize {
        (0..n).filter(|_| matches!(t.check(r, now), Decision::Allow(_))).count()
    }

    fn throttled(d: Decision) -> Throttled {
        match d {
            Decision::Throttle(t) => t,
            other => panic!("expected a throttle, got {other:?}"),
        }
    }

    #[test]
    fn exactly_n_of_n_plus_k_at_every_level() {
        let cases: [(Request<'_>, Level, usize, u64); 5] = [
            (req(1, 1, token("a", "u", None, None)), Level::Api, 4, 10),
            (req(0, 0, token("a", "u", None, None)), Level::Resource, 3, 60),
            (req(0, 1, token("a", "u", Some("Gold"), None)), Level::Subscription, 5, 60),
            (req(0, 1, token("a", "u", None, Some("App3"))), Level::Application, 3, 60),
            (req(0, 1, anon([10, 0, 0, 1])), Level::Unauthenticated, 2, 60),
        ];
        for (r, level, n, window_s) in cases {
            let t = throttle();
            for window in 0..3 {
                let start = T0 + window * window_s * 1000;
                // Spread over the window, up to its last millisecond.
                for i in 0..n {
                    let d = t.check(&r, start + i as u64 * 7);
                    assert!(matches!(d, Decision::Allow(_)), "{level:?} request {i}: {d:?}");
                }
                for k in 0..5u64 {
                    let end = start + window_s * 1000 - 1;
                    let th = throttled(t.check(&r, end - k));
                    assert_eq!((th.level, th.cause), (level, Cause::QuotaExceeded));
                    assert_eq!(th.level.fault_code(), level.fault_code());
                }
            }
        }
        assert_eq!(
            [Level::Api, Level::Resource, Level::Subscription, Level::Application, Level::Unauthenticated]
                .map(Level::fault_code),
            [900800, 900802, 900804, 900803, 900804]
        );
    }

    #[test]
    fn callers_of_different_issuers_or_without_application_do_not_share_counters() {
        let t = throttle();
        let gold = |issuer, app_id, subject| Caller::Token {
            issuer,
            app_id,
            subject,
            application_tier: None,
            subscription_tier: Some("Gold"),
        };
        // Gold is 5 per minute on (holder, API).
        assert_eq!(allowed(&t, &req(0, 1, gold("central", "1", "u")), T0, 10), 5);
        assert_eq!(
            allowed(&t, &req(0, 1, gold("partner", "1", "u")), T0, 10),
            5,
            "same app id, other issuer"
        );
        // Without an application, the subject holds the subscription.
        assert_eq!(allowed(&t, &req(0, 1, gold("central", "", "alice")), T0, 10), 5);
        assert_eq!(allowed(&t, &req(0, 1, gold("central", "", "bob")), T0, 10), 5);
        assert_eq!(allowed(&t, &req(0, 1, gold("central", "", "alice")), T0, 10), 0);
        // An application id equal to a subject is still another holder.
        assert_eq!(allowed(&t, &req(0, 1, gold("central", "alice", "x")), T0, 10), 5);
    }

    #[test]
    fn window_rolls_on_its_boundary_and_not_before() {
        let t = throttle();
        let r = req(0, 0, token("a", "u", None, None)); // res3: 3 per 60 s
        assert_eq!(allowed(&t, &r, T0 + 59_000, 10), 3);
        // 59.999 s: still the same window. 60.000 s: a new one, with a fresh quota of exactly 3
        // (the 2N burst across the boundary that fixed windows allow).
        assert_eq!(allowed(&t, &r, T0 + 59_999, 10), 0);
        assert_eq!(allowed(&t, &r, T0 + 60_000, 10), 3);
        assert_eq!(allowed(&t, &r, T0 + 119_999, 10), 0);
        // A window with no traffic in between does not carry anything over.
        assert_eq!(allowed(&t, &r, T0 + 300_500, 10), 3);
    }

    #[test]
    fn retry_after_is_exact_to_the_second() {
        let r = req(0, 0, token("a", "u", None, None)); // res3: 3 per 60 s
        for (at_ms, expect_s) in
            [(0, 60), (1, 60), (999, 60), (1_000, 59), (12_345, 48), (59_000, 1), (59_001, 1), (59_999, 1)]
        {
            let t = throttle();
            assert_eq!(allowed(&t, &r, T0 + at_ms, 3), 3);
            let th = throttled(t.check(&r, T0 + at_ms));
            assert_eq!(th.retry_after_s, expect_s, "at +{at_ms} ms");
            // Waiting exactly that long gets through; a millisecond less does not.
            let back = T0 + at_ms + expect_s * 1000;
            if at_ms % 1000 == 0 {
                assert!(matches!(t.check(&r, back - 1), Decision::Throttle(_)), "at +{at_ms} ms");
            }
            assert!(matches!(t.check(&r, back), Decision::Allow(_)), "at +{at_ms} ms");

            let h = Decision::Throttle(th).headers(false).expect("throttled responses carry headers");
            assert_eq!(h.retry_after(), Some(expect_s.to_string().as_str()));
            assert_eq!(h.limit(), format!("\"resource\";r=0;t={expect_s}"));
            assert_eq!(h.policy(), "\"resource\";q=3;w=60");
        }
    }

    #[test]
    fn tighter_level_wins_and_looser_quota_is_not_burned() {
        let t = throttle();
        // Gold subscription (5 per app and API) and App3 (3 per app and user).
        let alice = req(0, 1, token("app1", "alice", Some("Gold"), Some("App3")));
        let bob = req(0, 1, token("app1", "bob", Some("Gold"), Some("App3")));
        assert_eq!(allowed(&t, &alice, T0, 3), 3);
        for _ in 0..10 {
            assert_eq!(throttled(t.check(&alice, T0)).level, Level::Application);
        }
        // Had alice's ten refusals counted at the subscription level, bob would get nothing.
        assert_eq!(allowed(&t, &bob, T0, 2), 2);
        let th = throttled(t.check(&bob, T0));
        assert_eq!(th.level, Level::Subscription);
        assert_eq!(
            th.limits.iter().map(|l| (l.level, l.remaining)).collect::<Vec<_>>(),
            [(Level::Subscription, 0), (Level::Application, 1)]
        );
        // Another application has its own subscription counter.
        let carol = req(0, 1, token("app2", "carol", Some("Gold"), Some("App3")));
        assert_eq!(allowed(&t, &carol, T0, 3), 3);
    }

    #[test]
    fn binding_level_is_the_one_that_frees_last() {
        let t = throttle();
        // metered: api4 (4 per 10 s) overrides GET /a's res3; App3 is 3 per 60 s per user.
        let alice = req(1, 0, token("app1", "alice", None, Some("App3")));
        let bob = req(1, 0, token("app1", "bob", None, Some("App3")));
        assert_eq!(allowed(&t, &alice, T0, 5), 3);
        assert_eq!(allowed(&t, &bob, T0, 1), 1); // the API's 4th
        let th = throttled(t.check(&bob, T0 + 2_000));
        assert_eq!((th.level, th.retry_after_s), (Level::Api, 8));
        // Both levels refuse alice: the application window ends last, so it binds.
        let th = throttled(t.check(&alice, T0 + 2_000));
        assert_eq!((th.level, th.retry_after_s), (Level::Application, 58));
        assert_eq!(th.level.fault_code(), 900803);
        // The API window rolls: bob passes, alice still waits for hers.
        assert!(matches!(t.check(&bob, T0 + 10_000), Decision::Allow(_)));
        assert_eq!(throttled(t.check(&alice, T0 + 10_000)).level, Level::Application);
    }

    #[test]
    fn api_tier_overrides_resource_tiers() {
        let t = throttle();
        // metered GET /a declares res3, but the API's api4 governs: 4, shared with GET /b.
        let a = req(1, 0, token("x", "u", None, None));
        let b = req(1, 1, token("x", "u", None, None));
        assert_eq!(allowed(&t, &a, T0, 2) + allowed(&t, &b, T0, 2) + allowed(&t, &a, T0, 5), 4);
        // free: API tier Unlimited overrides GET /x's res3: nothing applies.
        let x = req(2, 0, token("x", "u", None, None));
        assert_eq!(allowed(&t, &x, T0, 100), 100);
    }

    #[test]
    fn unlimited_and_absent_tiers_skip_their_level() {
        let t = throttle();
        let r = req(0, 1, token("a", "u", Some(UNLIMITED), Some(UNLIMITED)));
        assert_eq!(allowed(&t, &r, T0, 1000), 1000);
        let Decision::Allow(a) = t.check(&r, T0) else { panic!("unlimited") };
        assert!(a.limits.is_empty() && !a.over_quota);
        assert_eq!(Decision::Allow(a).headers(true), None);
        let r = req(0, 1, token("a", "u", None, None));
        assert_eq!(allowed(&t, &r, T0, 1000), 1000);
        // ...while the route level still applies to such a token.
        let r = req(0, 0, token("a", "u", Some(UNLIMITED), None));
        assert_eq!(allowed(&t, &r, T0, 10), 3);
    }

    #[test]
    fn unknown_tiers_fail_closed_and_count_nothing() {
        let t = throttle();
        let bad_sub = req(0, 0, token("a", "u", Some("Platinum"), Some("App3")));
        let bad_app = req(0, 0, token("a", "u", Some("Gold"), Some("Gold")));
        for _ in 0..10 {
            assert_eq!(t.check(&bad_sub, T0), Decision::Fail(Unchecked::UnknownTier(Level::Subscription)));
            assert_eq!(t.check(&bad_app, T0), Decision::Fail(Unchecked::UnknownTier(Level::Application)));
        }
        assert_eq!(t.check(&bad_sub, T0).headers(true), None);
        // Nothing was counted at the resource, subscription or application level.
        let good = req(0, 0, token("a", "u", Some("Gold"), Some("App3")));
        let Decision::Allow(a) = t.check(&good, T0) else { panic!("allowed") };
        assert_eq!(a.limits.iter().map(|l| l.remaining).collect::<Vec<_>>(), [2, 4, 2]);

        assert_eq!(t.check(&req(3, 0, anon([1, 2, 3, 4])), T0), Decision::Fail(Unchecked::UnknownRoute));
        assert_eq!(t.check(&req(0, 2, anon([1, 2, 3, 4])), T0), Decision::Fail(Unchecked::UnknownRoute));

        let mut m = manifest();
        m.policies.retain(|p| p.name != UNAUTHENTICATED_TIER);
        let t = Throttle::new(&m, &ThrottleConfig::default()).expect("valid");
        assert_eq!(
            t.check(&req(0, 1, anon([1, 2, 3, 4])), T0),
            Decision::Fail(Unchecked::UnknownTier(Level::Unauthenticated))
        );
        assert_eq!(
            Unchecked::UnknownTier(Level::Subscription).to_string(),
            "the subscription throttling tier is not defined in the bundle"
        );
    }

    #[test]
    fn non_stopping_tier_passes_over_quota_marked() {
        let t = throttle();
        let r = req(0, 1, token("a", "u", Some("Meter"), None)); // 3 per 60 s, stop = false
        let marks: Vec<bool> = (0..6)
            .map(|_| match t.check(&r, T0) {
                Decision::Allow(a) => a.over_quota,
                other => panic!("a non-stopping tier refused: {other:?}"),
            })
            .collect();
        assert_eq!(marks, [false, false, false, true, true, true]);
        // A new window starts unmarked.
        let Decision::Allow(a) = t.check(&r, T0 + 60_000) else { panic!("allowed") };
        assert!(!a.over_quota);
        assert_eq!(a.limits[0].remaining, 2);
    }

    #[test]
    fn success_headers_show_the_tightest_policy() {
        let t = throttle();
        let r = req(0, 1, token("a", "u", Some("Gold"), Some("App3")));
        let d = t.check(&r, T0 + 15_200);
        let h = d.headers(true).expect("limits apply");
        assert_eq!(h.policy(), "\"application\";q=3;w=60");
        assert_eq!(h.limit(), "\"application\";r=2;t=45");
        assert_eq!(h.retry_after(), None);
        assert_eq!(d.headers(false), None);
        // Equal remaining: the later reset is the tighter one.
        let r = req(1, 1, token("b", "u", None, Some("App3"))); // api4 per 10 s, App3 per 60 s
        t.check(&r, T0);
        let h = t.check(&r, T0).headers(true).expect("limits apply");
        assert_eq!(h.limit(), "\"application\";r=1;t=60");
        let h = t.check(&r, T0).headers(true).expect("limits apply");
        assert_eq!(h.limit(), "\"application\";r=0;t=60");
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_same_client() {
        let t = throttle();
        let v4 = req(0, 1, anon([192, 0, 2, 7]));
        let mapped = req(
            0,
            1,
            Caller::Anonymous { client_ip: IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped()) },
        );
        assert_eq!(allowed(&t, &v4, T0, 1) + allowed(&t, &mapped, T0, 5), 2);
        let v6 = req(0, 1, Caller::Anonymous { client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST) });
        assert_eq!(allowed(&t, &v6, T0, 5), 2);
        // Per API: the same address has its own quota on another API.
        assert_eq!(allowed(&t, &req(1, 1, anon([192, 0, 2, 7])), T0, 5), 2);
    }

    #[test]
    fn clock_stepped_back_never_resets_a_count() {
        let t = throttle();
        let r = req(0, 0, token("a", "u", None, None)); // res3
        assert_eq!(allowed(&t, &r, T0 + 150_000, 3), 3);
        // Back into the previous window: the count stands, until that window's end and no
        // longer — the Retry-After holds even though the clock will pass 150 s again.
        let th = throttled(t.check(&r, T0 + 61_000));
        assert_eq!(th.retry_after_s, 59);
        assert_eq!(allowed(&t, &r, T0 + 119_999, 10), 0);
        assert_eq!(allowed(&t, &r, T0 + 120_000, 10), 3);
        // Without the step back, the same counter stays closed until its own window ends.
        let t = throttle();
        assert_eq!(allowed(&t, &r, T0 + 150_000, 3), 3);
        assert_eq!(throttled(t.check(&r, T0 + 150_000)).retry_after_s, 30);
        assert_eq!(allowed(&t, &r, T0 + 179_999, 10), 0);
    }

    fn v6(s: &str) -> Caller<'static> {
        Caller::Anonymous { client_ip: IpAddr::V6(s.parse().expect("IPv6 literal")) }
    }

    #[test]
    fn ipv6_callers_in_one_64_share_a_bucket() {
        let t = throttle();
        // Unauthenticated: 2 per 60 s. Four addresses of 2001:db8:1:2::/64 are one caller.
        let same: Vec<Request<'_>> = [
            "2001:db8:1:2::1",
            "2001:db8:1:2::2",
            "2001:db8:1:2:ffff:ffff:ffff:ffff",
            "2001:db8:1:2:abcd::9",
        ]
        .into_iter()
        .map(|a| req(0, 1, v6(a)))
        .collect();
        assert_eq!(same.iter().map(|r| allowed(&t, r, T0, 3)).sum::<usize>(), 2);
        // The next /64 over is another caller, with its own quota.
        assert_eq!(allowed(&t, &req(0, 1, v6("2001:db8:1:3::1")), T0, 3), 2);
        assert_eq!(allowed(&t, &req(0, 1, v6("2001:db8:1:1:ffff:ffff:ffff:ffff")), T0, 3), 2);
        // IPv4-mapped addresses are their IPv4 address, not a /64 of ::ffff:0:0/96.
        assert_eq!(allowed(&t, &req(0, 1, v6("::ffff:192.0.2.7")), T0, 3), 2);
        assert_eq!(allowed(&t, &req(0, 1, v6("::ffff:192.0.2.8")), T0, 3), 2);
        assert_eq!(allowed(&t, &req(0, 1, anon([192, 0, 2, 8])), T0, 3), 0);
    }

    /// A throttle whose unauthenticated table is one shard (64 entries), Unauthenticated 2 per
    /// 60 s.
    fn small_table() -> Throttle {
        let config =
            ThrottleConfig { unauthenticated_entries: MIN_TABLE_ENTRIES, ..ThrottleConfig::default() };
        Throttle::new(&manifest(), &config).expect("valid")
    }

    /// An anonymous request from IPv4 address `n` to `shop`'s `POST /items` (no route tier).
    fn from(n: u32) -> Request<'static> {
        req(0, 1, Caller::Anonymous { client_ip: IpAddr::V4(Ipv4Addr::from(n)) })
    }

    #[test]
    fn established_callers_keep_their_slots_through_a_flood_at_the_window_boundary() {
        let t = small_table();
        // 40 callers, each seen once in the first window (10.0.0.0/24).
        let established = |i: u32| from(0x0a00_0000 + i);
        for i in 0..40 {
            assert_eq!(allowed(&t, &established(i), T0 + 30_000, 1), 1);
        }
        // The next window opens with a flood of 10,000 new addresses, before any established
        // caller is back. Their windows have ended, but they were seen in the previous one.
        for n in 0..10_000 {
            t.check(&from(0x6440_0000 + n), T0 + 60_000);
        }
        // Each established caller gets its whole quota, counted in its own slot, and no more.
        for i in 0..40 {
            assert_eq!(allowed(&t, &established(i), T0 + 61_000, 5), 2, "established caller {i}");
            assert_eq!(throttled(t.check(&established(i), T0 + 61_000)).cause, Cause::QuotaExceeded);
        }
    }

    #[test]
    fn a_full_table_throttles_newcomers_under_an_overflow_bucket_instead_of_locking_them_out() {
        let t = small_table();
        // 64 established callers fill the one shard.
        for i in 0..slots() {
            assert_eq!(allowed(&t, &from(0x0a00_0000 + i), T0 + 5_000, 1), 1);
        }
        // Newcomers from 192.0.2.0/24 share one overflow bucket with the Unauthenticated quota.
        let newcomer = |host: u8| req(0, 1, anon([192, 0, 2, host]));
        assert_eq!(allowed(&t, &newcomer(1), T0 + 20_000, 1), 1, "a newcomer is served");
        assert_eq!(allowed(&t, &newcomer(2), T0 + 20_000, 5), 1);
        for host in 1..=3 {
            let th = throttled(t.check(&newcomer(host), T0 + 20_000));
            assert_eq!(
                (th.level, th.cause, th.retry_after_s),
                (Level::Unauthenticated, Cause::TableFull, 40)
            );
        }
        // The established callers are untouched: one more each, then their quota.
        for i in 0..slots() {
            assert_eq!(allowed(&t, &from(0x0a00_0000 + i), T0 + 30_000, 3), 1);
        }
        // The next window: the bucket is fresh.
        assert_eq!(allowed(&t, &newcomer(3), T0 + 60_000, 5), 2);
    }

    #[test]
    fn a_slot_is_offered_to_newcomers_only_after_its_key_was_silent_for_a_whole_window() {
        let t = small_table();
        // Unauthenticated: 2 per 60 s. Fill the single shard with 64 established addresses.
        for n in 0..slots() {
            assert_eq!(allowed(&t, &from(n), T0 + 5_000, 1), 1);
        }
        // Established keys keep exactly their quota: one more each, then refused for quota.
        for n in 0..slots() {
            assert_eq!(allowed(&t, &from(n), T0 + 30_000, 3), 1);
            assert_eq!(throttled(t.check(&from(n), T0 + 30_000)).cause, Cause::QuotaExceeded);
        }
        let m = t.metrics(T0 + 30_000).tables[2];
        assert_eq!((m.live, m.occupied, m.full, m.overflow), (SHARD_SLOTS, SHARD_SLOTS, 0, 0));
        // The next window: their windows have ended, but they were seen in the previous one, so a
        // newcomer still finds the table full and is counted in its overflow bucket.
        let newcomer = from(0xc000_0207); // 192.0.2.7
        assert_eq!(allowed(&t, &newcomer, T0 + 60_000, 1), 1);
        let m = t.metrics(T0 + 60_000).tables[2];
        assert_eq!((m.live, m.overflow), (0, 1));
        // A window later, silent keys give their slots up: the newcomer gets one of its own,
        // with a fresh quota of its own.
        assert_eq!(allowed(&t, &newcomer, T0 + 120_000, 3), 2);
        let m = t.metrics(T0 + 120_000).tables[2];
        assert_eq!((m.live, m.overflow), (1, 1));
    }

    #[test]
    fn full_table_on_a_non_stopping_tier_passes_under_the_overflow_then_marked() {
        let mut m = manifest();
        for p in &mut m.policies {
            if p.name == UNAUTHENTICATED_TIER {
                p.stop_on_quota_reach = false;
            }
        }
        let config =
            ThrottleConfig { unauthenticated_entries: MIN_TABLE_ENTRIES, ..ThrottleConfig::default() };
        let t = Throttle::new(&m, &config).expect("valid");
        for n in 0..slots() {
            assert_eq!(
                t.check(&from(n), T0),
                Decision::Allow(Allowed { over_quota: false, limits: t_limits(2 - 1) })
            );
        }
        // A newcomer's overflow bucket has the quota of 2, then passes marked.
        let marks: Vec<bool> = (0..4)
            .map(|_| match t.check(&from(0xc000_0263), T0) {
                Decision::Allow(a) => a.over_quota,
                other => panic!("a non-stopping tier refused: {other:?}"),
            })
            .collect();
        assert_eq!(marks, [false, false, true, true]);
        let m = t.metrics(T0).tables[2];
        assert_eq!((m.overflow, m.full), (2, 2));
    }

    /// Whether two callers of API 0 share an overflow bucket.
    fn same_bucket(t: &Throttle, a: IpAddr, b: IpAddr) -> bool {
        let api = t.apis[0].key;
        let bucket = |ip| t.anonymous.overflow(t.anonymous_hashes(ip, api).1).expect("a bucket") as *const _;
        std::ptr::eq(bucket(a), bucket(b))
    }

    #[test]
    fn a_flood_of_distinct_networks_gets_at_most_the_overflow_buckets_quota() {
        let t = small_table();
        // 32 established callers, then a flood from 20,000 distinct /24 networks, 3 requests
        // each, in one window: the flood takes the 32 free slots, and the rest of it can spend
        // only the overflow buckets' quota, 64 × 2.
        let established = |i: u32| from(0x0a00_0000 + i);
        for i in 0..32 {
            assert_eq!(allowed(&t, &established(i), T0 + 1_000, 1), 1);
        }
        let flood = |n: u32| from(0x6440_0000 + (n << 8));
        let mut passed = 0;
        for n in 0..20_000 {
            passed += allowed(&t, &flood(n), T0 + 2_000, 3);
        }
        let q = 2;
        // 32 keys got slots and their quota; with 20,000 networks every bucket was reached
        // (the chance that one was missed is below 10^-60).
        assert_eq!(passed, 32 * q + OVERFLOW_BUCKETS * q);
        let m = t.metrics(T0 + 2_000).tables[2];
        assert_eq!((m.live, m.overflow), (SHARD_SLOTS, (OVERFLOW_BUCKETS * q) as u64));
        // Refused for a full table: all the rest but the slot holders' third tries (quota).
        assert_eq!(m.full, 20_000 * 3 - (32 + OVERFLOW_BUCKETS) as u64 * 2 - 32);
        // Refused newcomers learn when the buckets refill: at the window's end.
        let th = throttled(t.check(&from(0xc633_6401), T0 + 2_000)); // 198.51.100.1
        assert_eq!((th.level, th.cause, th.retry_after_s), (Level::Unauthenticated, Cause::TableFull, 58));
        // The established callers were not touched: exactly their quota.
        for i in 0..32 {
            assert_eq!(allowed(&t, &established(i), T0 + 3_000, 3), 1, "established caller {i}");
        }

        // The next window: every key of the first (the flood's 32 included) still holds its slot,
        // and newcomers have the buckets again.
        assert_eq!(allowed(&t, &from(0xc633_6401), T0 + 60_000, 3), 2);
        for i in 0..32 {
            assert_eq!(allowed(&t, &established(i), T0 + 61_000, 3), 2);
        }
        // To keep its 32 slots one more window, the flood must send again: one request per key
        // per two windows is the least it can spend to hold them. It did not: the window after,
        // its slots are newcomers' again.
        let overflowed = t.metrics(T0 + 120_000).tables[2].overflow;
        assert_eq!(overflowed, (OVERFLOW_BUCKETS * q) as u64 + 2);
        for n in 0..32 {
            assert_eq!(allowed(&t, &from(0x0b00_0000 + (n << 8)), T0 + 120_000, 1), 1);
        }
        // ...while the established callers, seen in the previous window, keep theirs.
        for i in 0..32 {
            assert_eq!(allowed(&t, &established(i), T0 + 121_000, 3), 2);
        }
        let m = t.metrics(T0 + 121_000).tables[2];
        assert_eq!((m.live, m.overflow), (SHARD_SLOTS, overflowed), "all in slots, none in overflow");
    }

    #[test]
    fn one_ipv6_site_fills_the_table_but_spends_only_its_own_overflow_bucket() {
        let t = small_table();
        // A /48 holds 65,536 /64s: plenty to fill a table. Newcomers from it share one bucket.
        let site = |n: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xaaaa, n, 0, 0, 0, 1));
        let from_site = |n: u16| req(0, 1, Caller::Anonymous { client_ip: site(n) });
        let mut passed = 0;
        for n in 0..10_000u16 {
            passed += allowed(&t, &from_site(n), T0, 2);
        }
        assert_eq!(passed, SHARD_SLOTS * 2 + 2, "64 slots, then the site's one bucket");
        // A newcomer from another site, in another bucket, is served.
        let other = (1..u16::MAX)
            .map(|n| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 1)))
            .find(|&ip| !same_bucket(&t, ip, site(0)))
            .expect("64 buckets");
        assert_eq!(allowed(&t, &req(0, 1, Caller::Anonymous { client_ip: other }), T0, 3), 2);
        // One in the site's bucket is refused until the window ends.
        let unlucky = (1..u16::MAX)
            .map(|n| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 1)))
            .find(|&ip| same_bucket(&t, ip, site(0)) && ip != site(0))
            .expect("64 buckets");
        let th = throttled(t.check(&req(0, 1, Caller::Anonymous { client_ip: unlucky }), T0));
        assert_eq!((th.cause, th.retry_after_s), (Cause::TableFull, 60));
    }

    fn slots() -> u32 {
        u32::try_from(SHARD_SLOTS).expect("small")
    }

    fn t_limits(remaining: u64) -> Limits {
        let mut l = Limits::new();
        let _ = l.push(Limit {
            level: Level::Unauthenticated,
            quota: 2,
            window_s: 60,
            remaining,
            reset_s: 60,
            stop_on_quota_reach: false,
        });
        l
    }

    #[test]
    fn eight_threads_on_one_key_admit_exactly_n() {
        let t = throttle();
        // Conc: 500 per 60 s for app1 on shop; 8 threads × 200 attempts.
        let passed = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let r = req(0, 1, token("app1", "u", Some("Conc"), None));
                    let n = allowed(&t, &r, T0 + 1_000, 200);
                    passed.fetch_add(n as u64, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 500);
    }

    #[test]
    fn eight_threads_over_two_levels_admit_exactly_the_tighter_sum() {
        let t = throttle();
        // Shared subscription Conc (500) and, per thread, its own user on App100 (100): 8 × 100
        // would allow 800, the subscription caps at 500, and no thread exceeds its 100.
        let passed = AtomicU64::new(0);
        let users: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
        std::thread::scope(|s| {
            for user in &users {
                let (t, passed) = (&t, &passed);
                s.spawn(move || {
                    let r = req(0, 1, token("app1", user, Some("Conc"), Some("App100")));
                    let n = allowed(t, &r, T0, 300);
                    assert!(n <= 100, "{user} passed {n}");
                    passed.fetch_add(n as u64, Ordering::Relaxed);
                });
            }
        });
        assert_eq!(passed.load(Ordering::Relaxed), 500);
    }

    #[test]
    fn config_and_bundle_errors() {
        for entries in [0, MIN_TABLE_ENTRIES - 1, MAX_TABLE_ENTRIES + 1] {
            let config = ThrottleConfig { application_entries: entries, ..ThrottleConfig::default() };
            assert_eq!(
                Throttle::new(&manifest(), &config).map(|_| ()),
                Err(ThrottleError::TableSize { level: Level::Application, entries })
            );
        }
        let config = ThrottleConfig {
            subscription_entries: MIN_TABLE_ENTRIES,
            application_entries: MAX_TABLE_ENTRIES,
            unauthenticated_entries: 100,
        };
        let m = Throttle::new(&manifest(), &config).expect("in bounds").metrics(T0);
        assert_eq!(m.tables.map(|t| t.capacity), [64, MAX_TABLE_ENTRIES, 128]);

        let mut m = manifest();
        m.apis[0].operations[1].tier = Some("Gold".into()); // a subscription policy, not an API one
        let e = Throttle::new(&m, &ThrottleConfig::default()).map(|_| ()).expect_err("bad tier");
        assert_eq!(e.to_string(), "API \"shop\": tier \"Gold\" is not a usable API-level policy");
    }

    #[test]
    fn metrics_report_fixed_memory() {
        let t = throttle();
        let before = t.metrics(T0);
        assert_eq!(before.route_counters, 2); // shop GET /items, metered
        assert!(before.bytes >= 3 * DEFAULT_TABLE_ENTRIES * 24, "{before:?}");
        for n in 0..5_000u32 {
            t.check(&req(0, 1, Caller::Anonymous { client_ip: IpAddr::V4(Ipv4Addr::from(n)) }), T0);
            t.check(&req(0, 1, token("app", &n.to_string(), None, Some("App3"))), T0);
        }
        let after = t.metrics(T0);
        assert_eq!(after.bytes, before.bytes);
        assert_eq!(after.tables[0].live, 0); // no subscription tier in these tokens
        assert!(after.tables[1].live > 3_000 && after.tables[1].live <= DEFAULT_TABLE_ENTRIES);
        assert_eq!(after.tables[1].live + usize::try_from(after.tables[1].full).expect("small"), 5_000);
        assert_eq!(after.tables[2].occupied, after.tables[2].live);
    }
}
