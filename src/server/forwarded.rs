//! What the backend is told about the client: the request's host (RFC 9112 §3.2) and the
//! forwarding headers. Pure: headers in, headers out.
//!
//! The rule, one for all five headers (`X-Forwarded-For`, `X-Forwarded-Proto`,
//! `X-Forwarded-Host`, `Forwarded`, `X-Real-IP`): gatelet **replaces** whatever the client sent
//! with what it saw itself (the TCP peer, the listener's scheme, the request's host). A client
//! can therefore never make a backend believe it comes from another address. Only when the TCP
//! peer is one of `server.trusted_proxies` (a load balancer in front of gatelet) is the chain
//! kept: gatelet **appends** the peer to the proxy's `X-Forwarded-For` and `Forwarded`, and keeps
//! the proxy's `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Real-IP` (which describe the
//! original client) when it sent exactly one of each.

use std::net::IpAddr;

use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Uri, Version};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Why a request's host was refused (400). The fault is the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// An HTTP/1.1 request without `Host` (RFC 9112 §3.2).
    Missing,
    /// More than one `Host` line.
    Repeated,
    /// A list-valued `Host` (`a, b`): which one the backend would take is anyone's guess.
    List,
    /// Not `host[:port]`: userinfo, spaces, a bad port.
    Malformed,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HostError::Missing => "an HTTP/1.1 request needs a Host header",
            HostError::Repeated => "more than one Host header",
            HostError::List => "a Host header with several values",
            HostError::Malformed => "a Host header that is not host[:port]",
        })
    }
}

fn valid_authority(v: &[u8]) -> Result<(), HostError> {
    if v.contains(&b',') {
        return Err(HostError::List);
    }
    if v.contains(&b'@') {
        return Err(HostError::Malformed);
    }
    let a = hyper::http::uri::Authority::try_from(v).map_err(|_| HostError::Malformed)?;
    // The parser above is lenient about ports: require 1-5 digits after the host's last ':'.
    let text = a.as_str();
    let after_host = if text.starts_with('[') {
        text.find(']').map_or(text.len(), |i| i + 1)
    } else {
        text.find(':').unwrap_or(text.len())
    };
    let port_ok = match &text[after_host..] {
        "" => true,
        p => p
            .strip_prefix(':')
            .is_some_and(|d| !d.is_empty() && d.len() <= 5 && d.bytes().all(|b| b.is_ascii_digit())),
    };
    if a.host().is_empty() || !port_ok {
        return Err(HostError::Malformed);
    }
    Ok(())
}

/// The request's host by RFC 9112 §3.2: exactly one valid `Host` line (none is allowed only
/// before HTTP/1.1, and an empty one names no host); in absolute form (`GET http://h/p`) the
/// URI's authority wins over `Host`. `None` when the request names no host.
pub fn request_host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, HostError> {
    let mut lines = headers.get_all(header::HOST).iter();
    let host = lines.next();
    if lines.next().is_some() {
        return Err(HostError::Repeated);
    }
    let host = match host {
        None if version >= Version::HTTP_11 => return Err(HostError::Missing),
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => {
            valid_authority(v.as_bytes())?;
            Some(v.clone())
        }
    };
    if let Some(authority) = uri.authority() {
        valid_authority(authority.as_str().as_bytes())?;
        return HeaderValue::from_str(authority.as_str()).map(Some).map_err(|_| HostError::Malformed);
    }
    Ok(host)
}

/// Addresses whose forwarding headers are believed: `server.trusted_proxies`, each an address
/// or a CIDR block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `10.0.0.1`, `10.0.0.0/8`, `fd00::/8`, `::1`.
    pub fn parse(list: &[String]) -> Result<TrustedProxies, String> {
        let mut out = Vec::with_capacity(list.len());
        for item in list {
            let bad = || {
                format!("server.trusted_proxies: {item:?} is not an address or a CIDR block like 10.0.0.0/8")
            };
            let (addr, bits) = match item.split_once('/') {
                Some((a, b)) => (a, Some(b.parse::<u8>().map_err(|_| bad())?)),
                None => (item.as_str(), None),
            };
            let ip: IpAddr = addr.trim().parse().map_err(|_| bad())?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = bits.unwrap_or(max);
            if bits > max {
                return Err(bad());
            }
            out.push((ip, bits));
        }
        Ok(TrustedProxies(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 form) is listed.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|&(net, bits)| match (canonical(net), ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            (IpAddr::V6(n), IpAddr::V6(a)) => prefix_eq(&n.octets(), &a.octets(), bits),
            _ => false,
        })
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

/// One `Forwarded` element (RFC 7239 §4) for this hop.
fn forwarded_element(peer: IpAddr, proto: &str, host: Option<&HeaderValue>) -> String {
    use std::fmt::Write as _;
    let host = host.and_then(|h| h.to_str().ok());
    let mut e = String::with_capacity(64 + host.map_or(0, str::len));
    let _ = match canonical(peer) {
        IpAddr::V4(v4) => write!(e, "for={v4}"),
        IpAddr::V6(v6) => write!(e, "for=\"[{v6}]\""),
    };
    if let Some(h) = host {
        // A valid authority has no '"' or '\\'; quoted because ':' is not a token character.
        e.push_str(";host=\"");
        e.push_str(h);
        e.push('"');
    }
    e.push_str(";proto=");
    e.push_str(proto);
    e
}

/// All values of `name`, joined as one list (`None` when absent or not text).
fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
        let v = v.to_str().ok()?.trim();
        if v.is_empty() {
            continue;
        }
        match &mut out {
            None => out = Some(v.to_owned()),
            Some(o) => {
                o.push_str(", ");
                o.push_str(v);
            }
        }
    }
    out
}

/// The single value of `name`, if the client sent exactly one.
fn single(headers: &HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    let mut it = headers.get_all(name).iter();
    let first = it.next()?.clone();
    it.next().is_none().then_some(first)
}

/// Sets the forwarding headers for the backend (see the module doc for the rule).
pub fn set_forwarding(
    headers: &mut HeaderMap,
    peer: IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
    from_trusted_proxy: bool,
) {
    let proto = if tls { "https" } else { "http" };
    let peer_text = canonical(peer).to_string();
    let ours = forwarded_element(peer, proto, host);
    let (xff, fwd, xfp, xfh, real) = if from_trusted_proxy {
        (
            joined(headers, &X_FORWARDED_FOR)
                .map_or_else(|| peer_text.clone(), |p| format!("{p}, {peer_text}")),
            joined(headers, &header::FORWARDED).map_or_else(|| ours.clone(), |p| format!("{p}, {ours}")),
            single(headers, &X_FORWARDED_PROTO),
            single(headers, &X_FORWARDED_HOST),
            single(headers, &X_REAL_IP),
        )
    } else {
        (peer_text.clone(), ours, None, None, None)
    };
    // `insert` replaces every value the client sent; a header with nothing to say is removed.
    // The strings become the values without a copy.
    let text = |s: String| HeaderValue::try_from(s).ok();
    let real = real.or_else(|| text(peer_text));
    let values = [
        (X_FORWARDED_FOR, text(xff)),
        (header::FORWARDED, text(fwd)),
        (X_FORWARDED_PROTO, Some(xfp.unwrap_or(HeaderValue::from_static(proto)))),
        (X_FORWARDED_HOST, xfh.or_else(|| host.cloned())),
        (X_REAL_IP, real),
    ];
    for (name, value) in values {
        match value {
            Some(v) => {
                headers.insert(name, v);
            }
            None => {
                headers.remove(name);
            }
        }
    }
}

/// The caller's address: the TCP peer, unless the peer is one of `server.trusted_proxies`; then
/// the nearest address in `X-Forwarded-For` (read right to left) that is not itself a trusted
/// proxy. Only the trusted proxies' own appends are believed, so a client cannot choose it.
/// `None` when a trusted proxy does not say who it forwards for (no `X-Forwarded-For`, or an
/// entry that is not an address, `ip:port` and `[v6]:port` being read as addresses): the caller
/// is then unknown, and a restriction to some addresses is not met (the proxy's own address
/// would meet one meant for its network).
pub fn client_address(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> Option<IpAddr> {
    if trusted.is_empty() || !trusted.contains(peer) {
        return Some(peer);
    }
    let chain = joined(headers, &X_FORWARDED_FOR)?;
    let mut caller = None;
    for hop in chain.rsplit(',') {
        let ip = hop_address(hop.trim())?;
        caller = Some(ip);
        if !trusted.contains(ip) {
            break;
        }
    }
    caller
}

/// An `X-Forwarded-For` entry: an address, `a.b.c.d:port` or `[v6]:port`.
fn hop_address(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        let (v6, port) = rest.split_once("]:")?;
        port.parse::<u16>().ok()?;
        return v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
    }
    let (v4, port) = hop.split_once(':')?;
    port.parse::<u16>().ok()?;
    v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn host(version: Version, uri: &str, pairs: &[(&str, &str)]) -> Result<Option<String>, HostError> {
        let uri: Uri = uri.parse().expect("uri");
        request_host(version, &uri, &map(pairs)).map(|h| h.map(|v| v.to_str().expect("text").to_owned()))
    }

    #[test]
    fn host_rules_of_rfc_9112() {
        let v11 = Version::HTTP_11;
        assert_eq!(host(v11, "/p", &[("host", "a.example:8080")]), Ok(Some("a.example:8080".into())));
        assert_eq!(host(v11, "/p", &[]), Err(HostError::Missing));
        assert_eq!(host(Version::HTTP_10, "/p", &[]), Ok(None));
        assert_eq!(host(v11, "/p", &[("host", "")]), Ok(None));
        assert_eq!(host(v11, "/p", &[("host", "a"), ("host", "a")]), Err(HostError::Repeated));
        assert_eq!(host(v11, "/p", &[("host", "a, b")]), Err(HostError::List));
        assert_eq!(host(v11, "/p", &[("host", "u@a")]), Err(HostError::Malformed));
        assert_eq!(host(v11, "/p", &[("host", "a:x")]), Err(HostError::Malformed));
        assert_eq!(host(v11, "/p", &[("host", "a b")]), Err(HostError::Malformed));
        // Absolute form: the URI's authority wins, but Host must still be there and valid.
        assert_eq!(host(v11, "http://b.example/p", &[("host", "a.example")]), Ok(Some("b.example".into())));
        assert_eq!(host(v11, "http://b.example/p", &[]), Err(HostError::Missing));
        assert_eq!(
            host(v11, "http://b.example/p", &[("host", "a"), ("host", "b")]),
            Err(HostError::Repeated)
        );
    }

    #[test]
    fn trusted_proxies_by_address_and_block() {
        let t = TrustedProxies::parse(&[
            "10.1.0.0/16".into(),
            "::1".into(),
            "fd00::/8".into(),
            "192.0.2.7".into(),
        ])
        .expect("parses");
        for yes in ["10.1.200.3", "::1", "fd12::5", "192.0.2.7", "::ffff:10.1.0.9"] {
            assert!(t.contains(yes.parse().expect("ip")), "{yes}");
        }
        for no in ["10.2.0.1", "::2", "fe80::1", "192.0.2.8", "127.0.0.1"] {
            assert!(!t.contains(no.parse().expect("ip")), "{no}");
        }
        for bad in ["10.0.0.0/33", "::/129", "example.com", "10.0.0.1/x", ""] {
            assert!(TrustedProxies::parse(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(TrustedProxies::parse(&[]).expect("empty").is_empty());
    }

    fn forwarded(pairs: &[(&str, &str)], trusted: bool) -> HeaderMap {
        let mut h = map(pairs);
        let host = HeaderValue::from_static("gw.example:9090");
        set_forwarding(&mut h, "10.0.0.5".parse().expect("ip"), false, Some(&host), trusted);
        h
    }

    fn all(h: &HeaderMap, name: &str) -> Vec<String> {
        h.get_all(name).iter().map(|v| v.to_str().expect("text").to_owned()).collect()
    }

    #[test]
    fn a_client_never_chooses_what_the_backend_is_told() {
        let spoofed = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "7.7.7.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=6.6.6.6"),
            ("x-real-ip", "6.6.6.6"),
        ];
        let h = forwarded(&spoofed, false);
        assert_eq!(all(&h, "x-forwarded-for"), ["10.0.0.5"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["http"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["gw.example:9090"]);
        assert_eq!(all(&h, "forwarded"), ["for=10.0.0.5;host=\"gw.example:9090\";proto=http"]);
        assert_eq!(all(&h, "x-real-ip"), ["10.0.0.5"]);
        // Without a host of its own, the client's X-Forwarded-Host is still gone.
        let mut h = map(&spoofed);
        set_forwarding(&mut h, "::1".parse().expect("ip"), true, None, false);
        assert!(h.get("x-forwarded-host").is_none());
        assert_eq!(all(&h, "forwarded"), ["for=\"[::1]\";proto=https"]);
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended() {
        let h = forwarded(
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "198.51.100.1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "api.example"),
                ("forwarded", "for=203.0.113.9;proto=https"),
                ("x-real-ip", "203.0.113.9"),
            ],
            true,
        );
        assert_eq!(all(&h, "x-forwarded-for"), ["203.0.113.9, 198.51.100.1, 10.0.0.5"]);
        assert_eq!(all(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&h, "x-forwarded-host"), ["api.example"]);
        assert_eq!(
            all(&h, "forwarded"),
            ["for=203.0.113.9;proto=https, for=10.0.0.5;host=\"gw.example:9090\";proto=http"]
        );
        assert_eq!(all(&h, "x-real-ip"), ["203.0.113.9"]);
        // A proxy that sent nothing: gatelet's own view.
        let h = forwarded(&[], true);
        assert_eq!(all(&h, "x-forwarded-for"), ["10.0.0.5"]);
        assert_eq!(all(&h, "x-real-ip"), ["10.0.0.5"]);
    }

    #[test]
    fn the_caller_behind_trusted_proxies() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).expect("valid");
        let peer: IpAddr = "10.0.0.1".parse().expect("ip");
        let h = |xff: &str| map(&[("x-forwarded-for", xff)]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let at = |xff: &str| client_address(&h(xff), peer, &trusted);
        assert_eq!(at("203.0.113.9, 10.1.1.1"), Some(ip("203.0.113.9")));
        assert_eq!(at("198.51.100.1, 203.0.113.9"), Some(ip("203.0.113.9")));
        assert_eq!(at("203.0.113.9:51234, 10.1.1.1"), Some(ip("203.0.113.9")));
        assert_eq!(at("[2001:db8::7]:443"), Some(ip("2001:db8::7")));
        assert_eq!(at("10.3.3.3, 10.2.2.2"), Some(ip("10.3.3.3")), "a caller inside the trusted network");
        // A trusted proxy that does not say who it forwards for: unknown, never the proxy itself.
        assert_eq!(client_address(&map(&[]), peer, &trusted), None);
        assert_eq!(at("garbage, 10.2.2.2"), None);
        assert_eq!(at("unknown"), None);
        // From an untrusted peer, the header is the client's word: ignored.
        let outsider = ip("192.0.2.1");
        assert_eq!(client_address(&h("203.0.113.9"), outsider, &trusted), Some(outsider));
        assert_eq!(client_address(&h("203.0.113.9"), peer, &TrustedProxies::default()), Some(peer));
    }
}
