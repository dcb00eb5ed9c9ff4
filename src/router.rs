//! Routing: request path → (API, operation). Pure, built once per bundle.
//!
//! The path is normalised once ([`normalize_path`]) and the same normalised path is used for
//! routing and for forwarding, so what is checked is what is sent. Contexts are matched longest
//! first; within an API, literal segments beat `{param}` segments, left to right; then the method.

use crate::bundle::model::{Api, Manifest, Method, Operation, TemplatePart, template_parts};

/// Longest request path accepted (after the request line's own limits).
pub const MAX_PATH: usize = 4096;

/// Why a path was refused before routing. The fault is the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not an origin-form path (`/...`).
    NotOrigin,
    /// A `%` not followed by two hex digits, or an encoded NUL.
    BadEncoding,
    /// An encoded `/` or `\`, a raw `\`, or a dot segment with parameters (`..;x`): shapes a
    /// backend may resolve differently from the router, so they are refused, not forwarded.
    Ambiguous,
    /// A `;` in a segment (a path parameter, `/admin;x/users`). Servlet containers (Tomcat,
    /// Jetty, Spring) strip parameters before they resolve a path, so `/admin;x` is `/admin` to
    /// them while a literal `admin` does not match it here: the request would fall through to a
    /// less protected route and still reach the protected resource. Refused, never forwarded.
    PathParameter,
    /// Longer than [`MAX_PATH`].
    TooLong,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::NotOrigin => "request target is not an absolute path",
            PathError::BadEncoding => "bad percent-encoding in the path",
            PathError::Ambiguous => {
                "path with an encoded slash or backslash, or a dot segment with parameters"
            }
            PathError::PathParameter => {
                "path parameter (';') in a path segment; percent-encode it as %3B if it is data"
            }
            PathError::TooLong => "path too long",
        })
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 normalisation of an origin-form path: percent-encoded unreserved characters are
/// decoded, other escapes upper-cased, raw non-ASCII bytes percent-encoded, empty segments
/// (duplicate slashes) dropped, and dot segments resolved without climbing above the root. A
/// trailing slash is dropped. The result starts with `/`.
///
/// Shapes that backends resolve differently from each other — an encoded `/` or `\`, a raw `\`,
/// a dot segment with path parameters (`..;x`, which servlet containers treat as `..`) — are
/// refused ([`PathError::Ambiguous`]) rather than forwarded: what the router matched must be what
/// the backend serves. For the same reason a raw `;` (a path parameter, which servlet containers
/// strip before resolving) is refused ([`PathError::PathParameter`]); `%3B` is data to every
/// backend and passes.
pub fn normalize_path(raw: &str) -> Result<String, PathError> {
    if raw.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotOrigin);
    }
    // One string, written segment by segment: a segment never holds `/` (`%2F` is refused), so
    // `..` removes back to the last `/` written.
    let mut path = String::with_capacity(raw.len() + 1);
    for seg in raw.split('/') {
        let mark = path.len();
        path.push('/');
        let bytes = seg.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'%' {
                let (Some(h), Some(l)) = (
                    bytes.get(i + 1).copied().and_then(hex_val),
                    bytes.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err(PathError::BadEncoding);
                };
                let v = h * 16 + l;
                if v == 0 {
                    return Err(PathError::BadEncoding);
                }
                if v == b'/' || v == b'\\' {
                    return Err(PathError::Ambiguous);
                }
                if is_unreserved(v) {
                    path.push(char::from(v));
                } else {
                    path.push('%');
                    path.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    path.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
            } else if b == b'\\' {
                return Err(PathError::Ambiguous);
            } else if b >= 0x80 {
                // Raw non-ASCII bytes (hyper passes UTF-8 through) are percent-encoded, so the
                // path stays ASCII and byte-exact.
                path.push('%');
                path.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                path.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
                i += 1;
            } else {
                path.push(char::from(b));
                i += 1;
            }
        }
        let written = path.get(mark + 1..).unwrap_or("");
        // `admin;x` is `admin` to a servlet container (and `..;x` is `..`): routing on `admin;x`
        // would check one resource and forward to another.
        if written.contains(';') {
            return Err(PathError::PathParameter);
        }
        match written {
            "" | "." => path.truncate(mark),
            ".." => {
                path.truncate(mark);
                let parent = path.rfind('/').unwrap_or(0);
                path.truncate(parent);
            }
            _ => {}
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    // Percent-encoding raw non-ASCII triples its length: the limit holds for what is routed and
    // forwarded too, which also keeps normalisation idempotent (found by fuzz/ `router`).
    if path.len() > MAX_PATH {
        return Err(PathError::TooLong);
    }
    Ok(path)
}

/// A successful route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub api: usize,
    pub operation: usize,
}

/// Why no operation matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No context or no path template matches.
    NotFound,
    /// The path matches, the method does not; carries the API index for the `Allow` header.
    MethodNotAllowed { api: usize, path_template: usize },
}

#[derive(Debug)]
struct Template {
    segments: Vec<Segment>,
    /// Indices into the API's operations with this path, by method.
    by_method: Vec<(Method, usize)>,
}

#[derive(Debug, PartialEq)]
enum Segment {
    Literal(String),
    /// Literals and parameters inside one segment (`test.{id}`, `{name}.{ext}`).
    Mixed(Vec<TemplatePart>),
    Param,
}

impl Segment {
    fn parse(seg: &str) -> Segment {
        if !seg.contains('{') {
            return Segment::Literal(seg.to_owned());
        }
        match template_parts(seg) {
            Ok(parts) if parts == [TemplatePart::Param] => Segment::Param,
            Ok(parts) => Segment::Mixed(parts),
            // The bundle's checks refuse such a template; match it literally rather than panic.
            Err(_) => Segment::Literal(seg.to_owned()),
        }
    }

    fn matches(&self, seg: &str) -> bool {
        match self {
            Segment::Literal(l) => l == seg,
            Segment::Param => true,
            Segment::Mixed(parts) => mixed_matches(parts, seg),
        }
    }

    /// Literal beats mixed beats a whole parameter.
    fn rank(&self) -> u128 {
        match self {
            Segment::Literal(_) => 2,
            Segment::Mixed(_) => 1,
            Segment::Param => 0,
        }
    }
}

/// Whether `seg` matches literals and parameters (each parameter one or more characters), in
/// time linear in the segment per part: the set of positions reachable after each part.
fn mixed_matches(parts: &[TemplatePart], seg: &str) -> bool {
    let s = seg.as_bytes();
    let n = s.len();
    let mut reach = vec![false; n + 1];
    reach[0] = true;
    for part in parts {
        let mut next = vec![false; n + 1];
        match part {
            TemplatePart::Literal(l) => {
                let l = l.as_bytes();
                for p in (0..=n).filter(|&p| reach[p]) {
                    if s[p..].starts_with(l) {
                        next[p + l.len()] = true;
                    }
                }
            }
            TemplatePart::Param => {
                if let Some(first) = reach.iter().position(|&r| r) {
                    for q in next.iter_mut().skip(first + 1) {
                        *q = true;
                    }
                }
            }
        }
        reach = next;
    }
    reach[n]
}

#[derive(Debug)]
struct ApiRoutes {
    context: String,
    api: usize,
    templates: Vec<Template>,
}

/// The routing table of one bundle.
#[derive(Debug)]
pub struct Router {
    /// Longest context first.
    apis: Vec<ApiRoutes>,
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

impl Router {
    pub fn new(manifest: &Manifest) -> Router {
        let mut apis: Vec<ApiRoutes> = manifest
            .apis
            .iter()
            .enumerate()
            .map(|(i, api)| ApiRoutes { context: api.context.clone(), api: i, templates: templates(api) })
            .collect();
        apis.sort_by(|a, b| b.context.len().cmp(&a.context.len()).then_with(|| a.context.cmp(&b.context)));
        Router { apis }
    }

    /// The resource path (after the context) of a normalised path under `context`, or `None`.
    pub fn strip_context<'p>(context: &str, path: &'p str) -> Option<&'p str> {
        let rest = path.strip_prefix(context)?;
        if rest.is_empty() {
            Some("/")
        } else if rest.starts_with('/') {
            Some(rest)
        } else {
            None
        }
    }

    /// Routes a normalised path and method.
    pub fn route(&self, path: &str, method: &str) -> Result<Route, Miss> {
        let Some(api) = self.apis.iter().find(|a| Self::strip_context(&a.context, path).is_some()) else {
            return Err(Miss::NotFound);
        };
        let resource = Self::strip_context(&api.context, path).unwrap_or("/");
        let segs: Vec<&str> = split(resource).collect();
        // Most specific template: compare literal-vs-param left to right.
        let mut best: Option<(usize, &Template)> = None;
        for (ti, t) in api.templates.iter().enumerate() {
            if t.segments.len() != segs.len() {
                continue;
            }
            let matches = t.segments.iter().zip(&segs).all(|(s, p)| s.matches(p));
            if !matches {
                continue;
            }
            let better = match best {
                None => true,
                Some((_, b)) => specificity(t) > specificity(b),
            };
            if better {
                best = Some((ti, t));
            }
        }
        let Some((ti, t)) = best else { return Err(Miss::NotFound) };
        let Some(m) = Method::parse(method).filter(|_| method.bytes().all(|b| b.is_ascii_uppercase())) else {
            return Err(Miss::MethodNotAllowed { api: api.api, path_template: ti });
        };
        match t.by_method.iter().find(|(tm, _)| *tm == m) {
            Some(&(_, op)) => Ok(Route { api: api.api, operation: op }),
            None => Err(Miss::MethodNotAllowed { api: api.api, path_template: ti }),
        }
    }

    /// The methods allowed on a template, for an `Allow` header.
    pub fn allowed(&self, api: usize, path_template: usize) -> Vec<&'static str> {
        self.apis
            .iter()
            .find(|a| a.api == api)
            .and_then(|a| a.templates.get(path_template))
            .map(|t| t.by_method.iter().map(|(m, _)| m.as_str()).collect())
            .unwrap_or_default()
    }
}

/// Segment ranks as digits from the left: `/a/{x}` beats `/{x}/b`, and `/f/{n}.json` beats
/// `/f/{n}`; between templates that rank alike, the one with more literal characters inside its
/// segments (`readme.{ext}` over `{name}.{ext}`).
fn specificity(t: &Template) -> (u128, usize) {
    let ranks = t.segments.iter().take(63).fold(0u128, |acc, s| (acc << 2) | s.rank());
    let literal_bytes = t
        .segments
        .iter()
        .map(|s| match s {
            Segment::Mixed(parts) => {
                parts.iter().map(|p| if let TemplatePart::Literal(l) = p { l.len() } else { 0 }).sum()
            }
            _ => 0,
        })
        .sum();
    (ranks, literal_bytes)
}

fn templates(api: &Api) -> Vec<Template> {
    let mut out: Vec<Template> = Vec::new();
    for (i, op) in api.operations.iter().enumerate() {
        let segments: Vec<Segment> = split(&op.path).map(Segment::parse).collect();
        match out.iter_mut().find(|t| t.segments == segments) {
            Some(t) => t.by_method.push((op.method, i)),
            None => out.push(Template { segments, by_method: vec![(op.method, i)] }),
        }
    }
    out
}

/// The operation a route points at.
pub fn operation(manifest: &Manifest, route: Route) -> Option<(&Api, &Operation)> {
    let api = manifest.apis.get(route.api)?;
    Some((api, api.operations.get(route.operation)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::model::*;

    #[test]
    fn parameters_inside_a_segment() {
        let m = Manifest {
            label: String::new(),
            serial: 1,
            created_at: 0,
            issuers: vec![],
            policies: vec![],
            apis: vec![api(
                "/f",
                vec![
                    op(Method::Get, "/pet/test.{petId}"),
                    op(Method::Get, "/files/{name}.{ext}"),
                    op(Method::Get, "/files/{name}"),
                    op(Method::Get, "/files/readme.{ext}"),
                    op(Method::Get, "/files/readme.txt"),
                ],
            )],
            revoked_jti: vec![],
            scope_rule: ScopeRule::AllOf,
            default_subscription_tier: None,
        };
        let r = Router::new(&m);
        let at = |p: &str| r.route(p, "GET").map(|x| x.operation);
        assert_eq!(at("/f/pet/test.42"), Ok(0));
        assert_eq!(at("/f/pet/test."), Err(Miss::NotFound), "a parameter is at least one character");
        assert_eq!(at("/f/pet/42"), Err(Miss::NotFound));
        assert_eq!(at("/f/files/a.tar.gz"), Ok(1));
        assert_eq!(at("/f/files/noext"), Ok(2), "a whole-segment parameter when no dot");
        assert_eq!(at("/f/files/.x"), Ok(2), "an empty name does not match {{name}}.{{ext}}");
        assert_eq!(at("/f/files/readme.md"), Ok(3), "more literal beats less");
        assert_eq!(at("/f/files/readme.txt"), Ok(4), "a literal segment beats every template");
        // Linear work on a long hostile segment.
        let long = format!("/f/files/{}", "a.".repeat(1500));
        assert_eq!(at(&long), Ok(1));
    }

    #[test]
    fn normalisation() {
        let ok = [
            ("/", "/"),
            ("//a///b/", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/../../a", "/a"),
            ("/%61%62c", "/abc"),
            ("/a%2e%2e/b", "/a../b"),
            ("/x/%2E%2E/y", "/y"),
            ("/a%20b", "/a%20b"),
            ("/caf\u{e9}", "/caf%C3%A9"),
            ("/a%3Bb/c", "/a%3Bb/c"),
            ("/a%3bb", "/a%3Bb"),
        ];
        for (raw, want) in ok {
            assert_eq!(normalize_path(raw).as_deref(), Ok(want), "{raw}");
        }
        assert_eq!(normalize_path("a/b"), Err(PathError::NotOrigin));
        assert_eq!(normalize_path("/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("/a%0"), Err(PathError::BadEncoding));
        assert_eq!(normalize_path("/a%00b"), Err(PathError::BadEncoding));
        for ambiguous in ["/a%2fb", "/a%2Fb", "/a%5cb", "/a\\b"] {
            assert_eq!(normalize_path(ambiguous), Err(PathError::Ambiguous), "{ambiguous}");
        }
        for param in
            ["/files/..;/admin", "/x/.;y/z", "/svc/1/admin;x/users", "/a;", "/;/a", "/a/b;jsessionid=1"]
        {
            assert_eq!(normalize_path(param), Err(PathError::PathParameter), "{param}");
        }
        assert_eq!(normalize_path(&"/a".repeat(3000)), Err(PathError::TooLong));
        // Within the limit as received, over it once non-ASCII is percent-encoded (2,049 bytes
        // become 6,145): refused, not routed and forwarded longer than the limit.
        let wide = format!("/{}", "\u{e9}".repeat(1024));
        assert!(wide.len() <= MAX_PATH);
        assert_eq!(normalize_path(&wide), Err(PathError::TooLong));
        let at_limit = format!("/{}", "%C3%A9".repeat((MAX_PATH - 1) / 6));
        assert_eq!(normalize_path(&at_limit).as_deref(), Ok(at_limit.as_str()), "idempotent at the limit");
    }

    fn op(method: Method, path: &str) -> Operation {
        Operation {
            method,
            path: path.into(),
            tier: None,
            disable_security: false,
            scopes: vec![],
            production: None,
            sandbox: None,
            bearer: true,
            api_key: false,
        }
    }

    fn api(context: &str, ops: Vec<Operation>) -> Api {
        Api {
            name: context.into(),
            version: "1".into(),
            context: context.into(),
            tier: None,
            disable_security: false,
            auth_header: None,
            production: Some(Endpoints {
                kind: EndpointKind::Single,
                urls: vec![HttpUrl::parse("http://127.0.0.1:1").expect("valid")],
                timeout_ms: None,
                retries: 0,
                basic_auth: None,
            }),
            sandbox: None,
            cors: None,
            operations: ops,
            https_only: false,
            api_key_locations: Vec::new(),
        }
    }

    #[test]
    fn longest_context_then_template_then_method() {
        let m = Manifest {
            label: String::new(),
            serial: 1,
            created_at: 0,
            issuers: vec![],
            policies: vec![],
            apis: vec![
                api("/shop", vec![op(Method::Get, "/"), op(Method::Get, "/v2/x")]),
                api("/shop/v2", vec![op(Method::Get, "/x"), op(Method::Post, "/x")]),
                api(
                    "/p",
                    vec![
                        op(Method::Get, "/order/{id}"),
                        op(Method::Get, "/order/latest"),
                        op(Method::Delete, "/order/{id}"),
                        op(Method::Get, "/{a}/b"),
                        op(Method::Get, "/a/{b}"),
                    ],
                ),
            ],
            revoked_jti: vec![],
            scope_rule: ScopeRule::AllOf,
            default_subscription_tier: None,
        };
        let r = Router::new(&m);
        assert_eq!(r.route("/shop/v2/x", "GET"), Ok(Route { api: 1, operation: 0 }));
        assert_eq!(r.route("/shop/v2/x", "POST"), Ok(Route { api: 1, operation: 1 }));
        assert_eq!(r.route("/shop", "GET"), Ok(Route { api: 0, operation: 0 }));
        assert_eq!(r.route("/shopping", "GET"), Err(Miss::NotFound));
        assert_eq!(r.route("/p/order/latest", "GET"), Ok(Route { api: 2, operation: 1 }));
        assert_eq!(r.route("/p/order/42", "GET"), Ok(Route { api: 2, operation: 0 }));
        assert_eq!(r.route("/p/order/42", "DELETE"), Ok(Route { api: 2, operation: 2 }));
        assert_eq!(r.route("/p/a/b", "GET"), Ok(Route { api: 2, operation: 4 }), "left literal wins");
        let miss = r.route("/p/order/42", "PUT").expect_err("405");
        let Miss::MethodNotAllowed { api, path_template } = miss else { panic!("{miss:?}") };
        assert_eq!(r.allowed(api, path_template), ["GET", "DELETE"]);
        assert_eq!(r.route("/p/order/42", "get"), Err(miss), "methods are case-sensitive");
        assert_eq!(r.route("/p/order", "GET"), Err(Miss::NotFound));
        assert_eq!(r.route("/nope", "GET"), Err(Miss::NotFound));
    }

    /// The segment-by-segment normaliser this one replaced (a string per segment), kept as the
    /// reference: on any path, both give the same answer.
    fn reference(raw: &str) -> Result<String, PathError> {
        if raw.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        if !raw.starts_with('/') {
            return Err(PathError::NotOrigin);
        }
        let mut segments: Vec<String> = Vec::new();
        for seg in raw.split('/') {
            let mut out = String::with_capacity(seg.len());
            let bytes = seg.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                let b = bytes[i];
                if b == b'%' {
                    let (Some(h), Some(l)) = (
                        bytes.get(i + 1).copied().and_then(hex_val),
                        bytes.get(i + 2).copied().and_then(hex_val),
                    ) else {
                        return Err(PathError::BadEncoding);
                    };
                    let v = h * 16 + l;
                    if v == 0 {
                        return Err(PathError::BadEncoding);
                    }
                    if v == b'/' || v == b'\\' {
                        return Err(PathError::Ambiguous);
                    }
                    if is_unreserved(v) {
                        out.push(char::from(v));
                    } else {
                        out.push('%');
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                        out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                    }
                    i += 3;
                } else if b == b'\\' {
                    return Err(PathError::Ambiguous);
                } else if b >= 0x80 {
                    // Raw non-ASCII bytes (hyper passes UTF-8 through) are percent-encoded, so the
                    // path stays ASCII and byte-exact.
                    out.push('%');
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
                    out.push(char::from(b"0123456789ABCDEF"[usize::from(b & 0xf)]));
                    i += 1;
                } else {
                    out.push(char::from(b));
                    i += 1;
                }
            }
            // `admin;x` is `admin` to a servlet container (and `..;x` is `..`): routing on `admin;x`
            // would check one resource and forward to another.
            if out.contains(';') {
                return Err(PathError::PathParameter);
            }
            match out.as_str() {
                "" | "." => {}
                ".." => {
                    segments.pop();
                }
                _ => segments.push(out),
            }
        }
        if segments.is_empty() {
            return Ok("/".into());
        }
        let mut path = String::with_capacity(raw.len());
        for s in &segments {
            path.push('/');
            path.push_str(s);
        }
        // Percent-encoding raw non-ASCII triples its length: the limit holds for what is routed and
        // forwarded too, which also keeps normalisation idempotent (found by fuzz/ `router`).
        if path.len() > MAX_PATH {
            return Err(PathError::TooLong);
        }
        Ok(path)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        #[test]
        fn normalisation_matches_the_reference(
            parts in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::Just("/"), proptest::prelude::Just("."), proptest::prelude::Just(".."),
                    proptest::prelude::Just("a"), proptest::prelude::Just("%2e"), proptest::prelude::Just("%2E%2e"),
                    proptest::prelude::Just("%2F"), proptest::prelude::Just("%41"), proptest::prelude::Just("%3b"),
                    proptest::prelude::Just(";"), proptest::prelude::Just("\\"), proptest::prelude::Just("é"),
                    proptest::prelude::Just("%"), proptest::prelude::Just("%0"), proptest::prelude::Just("%00"),
                    proptest::prelude::Just("~x-_"), proptest::prelude::Just("%7e"), proptest::prelude::Just("//"),
                ],
                0..24,
            ),
            lead in proptest::bool::weighted(0.9),
        ) {
            let raw = format!("{}{}", if lead { "/" } else { "" }, parts.concat());
            proptest::prop_assert_eq!(normalize_path(&raw), reference(&raw), "{}", raw);
        }
    }
}
