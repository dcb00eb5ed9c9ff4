//! The one URL type: an absolute `http://` or `https://` URL, parsed once, where it enters
//! gatelet (a bundle's endpoint lists as the bundle decodes, `usage.upload_url` as the
//! configuration resolves, a project's server URLs as it compiles). Nothing re-parses it later.
//!
//! Rules, one set for every use:
//! - the scheme is `http` or `https`, in any case (RFC 3986 §3.1);
//! - no spaces, control or non-ASCII bytes anywhere; no user info (it would be logged); no
//!   fragment (never sent to a server);
//! - the host is a name of letters, digits, `-`, `.` and `_`, or an IPv6 literal in brackets that
//!   parses as one; it is kept in lower case (RFC 3986 §3.2.2). An IPv6 address without brackets
//!   (`http://::1:80/`) is refused: where its port starts is a guess;
//! - the port is 1–65535, 80 or 443 by scheme when absent.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest URL accepted: far above any real one, and a bound on what a bundle may make us hold.
pub const MAX_URL_LEN: usize = 2048;

/// An absolute HTTP(S) URL. Prints (and serialises) as written.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpUrl {
    pub tls: bool,
    /// Lower case; an IPv6 literal without its brackets.
    pub host: String,
    pub port: u16,
    /// The path without its trailing slash (empty for the root): a backend's base path.
    pub path: String,
    /// The query, without `?` (empty when none).
    pub query: String,
    text: String,
    /// Where the path (or the query, when there is no path) starts in `text`.
    target_at: usize,
}

impl HttpUrl {
    pub fn parse(url: &str) -> Result<HttpUrl, String> {
        if url.len() > MAX_URL_LEN {
            return Err(format!("longer than {MAX_URL_LEN} bytes"));
        }
        if url.bytes().any(|b| b <= b' ' || b == 0x7f || b >= 0x80) {
            return Err(format!("{url:?}: contains spaces or control or non-ASCII characters"));
        }
        let scheme_end = url.find("://").ok_or_else(|| format!("{url:?}: not an http:// or https:// URL"))?;
        let tls = match &url[..scheme_end] {
            s if s.eq_ignore_ascii_case("http") => false,
            s if s.eq_ignore_ascii_case("https") => true,
            _ => return Err(format!("{url:?}: not an http:// or https:// URL")),
        };
        let rest = &url[scheme_end + 3..];
        if rest.contains('#') {
            return Err(format!("{url:?}: a fragment is never sent to a server"));
        }
        let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(authority_len);
        if authority.contains('@') {
            return Err(format!("{url:?}: credentials in URLs are not allowed"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']').ok_or_else(|| format!("{url:?}: unclosed IPv6 literal"))?;
            let host = &v6[..end];
            host.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{url:?}: bad IPv6 literal"))?;
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{url:?}: junk after IPv6 literal")),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(format!(
                        "{url:?}: write an IPv6 address in brackets, e.g. http://[::1]:8080/"
                    ));
                }
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let bracketed = authority.starts_with('[');
        if !bracketed
            && !host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(format!("{url:?}: bad host name"));
        }
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(format!("{url:?}: bad port {p:?}")),
                Ok(n) => n,
            },
            None if tls => 443,
            None => 80,
        };
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        Ok(HttpUrl {
            tls,
            host: host.to_ascii_lowercase(),
            port,
            path: path.trim_end_matches('/').to_owned(),
            query: query.to_owned(),
            text: url.to_owned(),
            target_at: scheme_end + 3 + authority_len,
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Path and query as written (`/p/?q`, `?q` or empty): what follows the authority.
    pub fn target(&self) -> &str {
        &self.text[self.target_at..]
    }

    /// The value of a `Host` header for this URL: the port only when it is not the scheme's,
    /// an IPv6 literal in brackets.
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        match (self.host.contains(':'), self.port == default_port) {
            (true, true) => format!("[{}]", self.host),
            (true, false) => format!("[{}]:{}", self.host, self.port),
            (false, true) => self.host.clone(),
            (false, false) => format!("{}:{}", self.host, self.port),
        }
    }

    /// Scheme, host and port: which server this is (a password given for one origin is never
    /// sent to another).
    pub fn origin(&self) -> (bool, &str, u16) {
        (self.tls, &self.host, self.port)
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

impl std::str::FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<HttpUrl, String> {
        HttpUrl::parse(s)
    }
}

/// On the wire (the bundle's payload) a URL is its text, as before this type existed: bundles
/// built by earlier toolkits read unchanged.
impl Serialize for HttpUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<HttpUrl, D::Error> {
        let text = String::deserialize(d)?;
        HttpUrl::parse(&text).map_err(|e| serde::de::Error::custom(format!("endpoint URL: {e}")))
    }
}

impl PartialEq<str> for HttpUrl {
    fn eq(&self, other: &str) -> bool {
        self.text == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/api/v1/").expect("valid");
        assert_eq!((u.tls, u.host.as_str(), u.port, u.path.as_str()), (false, "127.0.0.1", 8080, "/api/v1"));
        assert_eq!((u.target(), u.host_header()), ("/api/v1/", "127.0.0.1:8080".to_owned()));
        let u = HttpUrl::parse("https://[::1]/x").expect("valid");
        assert_eq!((u.tls, u.host.as_str(), u.port, u.host_header()), (true, "::1", 443, "[::1]".to_owned()));
        let u = HttpUrl::parse("http://Backend.local").expect("valid");
        assert_eq!((u.host.as_str(), u.port, u.path.as_str(), u.target()), ("backend.local", 80, "", ""));
        assert_eq!(u.as_str(), "http://Backend.local", "prints as written");
        let u = HttpUrl::parse("http://a:81/api/?key=k&v=2").expect("a query is allowed");
        assert_eq!((u.path.as_str(), u.query.as_str()), ("/api", "key=k&v=2"));
        let u = HttpUrl::parse("http://a?x=1/y").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.path.as_str(), u.query.as_str(), u.target()),
            ("a", "", "x=1/y", "?x=1/y")
        );
        for bad in [
            "ftp://x",
            "http://",
            "http://:80",
            "http://a:0",
            "http://a:",
            "http://a:99999",
            "http://u:p@a/",
            "http://a/#frag",
            "http://a/?q#frag",
            "http://a b/",
            "http://[::1",
            "http://[::g]/",
            "http://[::1]x/",
            "http://a/é",
            "localhost:80",
            "http://a%2f/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad} accepted");
        }
    }

    /// The differences between the two parsers this type replaced, and how each was resolved.
    #[test]
    fn resolved_disagreements() {
        // The scheme's case: the usage uploader took `HTTPS://`, the bundle refused it. RFC 3986
        // says a scheme is case-insensitive: both take it now.
        let u = HttpUrl::parse("HTTPS://Example.com/x").expect("scheme in upper case");
        assert_eq!((u.tls, u.host.as_str(), u.port), (true, "example.com", 443));
        // An IPv6 address without brackets: the bundle read `http://::1:80/` as host `::1`, port
        // 80 (a guess at where the port starts, and a host that skipped the name check); the
        // uploader refused it. Refused everywhere now.
        for bad in ["http://::1:80/", "http://a:b:80/", "http://fe80::1/"] {
            let e = HttpUrl::parse(bad).expect_err(bad);
            assert!(e.contains("brackets"), "{bad}: {e}");
        }
        // A bracketed literal must be an IPv6 address (the uploader took any text).
        assert!(HttpUrl::parse("http://[not-v6]/").is_err());
        // The host is kept in lower case (the uploader kept it as written).
        assert_eq!(
            HttpUrl::parse("http://UP.example:8123/").expect("valid").host_header(),
            "up.example:8123"
        );
    }

    #[test]
    fn serialised_as_written() {
        let u = HttpUrl::parse("http://a:81/x/?q=1").expect("valid");
        let json = serde_json::to_string(&u).expect("serialises");
        assert_eq!(json, "\"http://a:81/x/?q=1\"");
        assert_eq!(serde_json::from_str::<HttpUrl>(&json).expect("reads back"), u);
        assert!(serde_json::from_str::<HttpUrl>("\"ftp://x\"").is_err());
    }
}
