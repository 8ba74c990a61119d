//! Which route a request's Host (and TLS SNI) names. A plain function,
//! tested on its own; the Pingora layer only calls it.
use std::fmt;

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `<sid>.<domain>`: the terminal page and `/_warren/terminal`.
    Terminal { session: String },
    /// `<port>-<sid>.<domain>`: everything to that port of the session.
    Port { session: String, port: u16 },
    /// `api.<domain>`: the control plane.
    Api,
    /// `<domain>` itself.
    Apex,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostError {
    /// No Host header (nor `:authority`).
    Missing,
    /// Not a valid host name for Warren (bad characters, label too long, …).
    Invalid(&'static str),
    /// A well-formed host of somebody else's domain.
    Foreign,
    /// TLS SNI names another host than the request (421 Misdirected Request).
    Misdirected,
    /// A preview asked for under the main domain while previews have a
    /// domain of their own.
    PreviewElsewhere,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::Missing => f.write_str("the request names no host"),
            HostError::Invalid(why) => write!(f, "invalid host: {why}"),
            HostError::Foreign => f.write_str("this relay does not serve that host"),
            HostError::Misdirected => f.write_str("the TLS server name does not match the host"),
            HostError::PreviewElsewhere => {
                f.write_str("previews are served on this relay's preview domain, not here")
            }
        }
    }
}

/// Normalises a host: strips a `:port`, one trailing dot, and lowercases.
/// Refuses IP literals, non-ASCII (IDN must arrive as punycode) and names
/// longer than DNS allows.
pub fn normalize(host: &str) -> Result<String, HostError> {
    let host = host.trim();
    if host.is_empty() {
        return Err(HostError::Missing);
    }
    if host.starts_with('[') {
        return Err(HostError::Foreign);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && port.len() <= 5 =>
        {
            name
        }
        Some(_) => return Err(HostError::Invalid("bad port")),
        None => host,
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(HostError::Missing);
    }
    if !name.is_ascii() {
        return Err(HostError::Invalid("non-ASCII name (use punycode)"));
    }
    if name.len() > 253 {
        return Err(HostError::Invalid("name longer than 253 bytes"));
    }
    let name = name.to_ascii_lowercase();
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::Invalid("empty label"));
        }
        if label.len() > 63 {
            return Err(HostError::Invalid("label longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(HostError::Invalid("bad character"));
        }
    }
    Ok(name)
}

pub use warren_proto::is_session_id;

/// Resolves the route for `host` under `domain`; `sni` is the TLS server
/// name, when the request came over TLS.
pub fn route(host: &str, sni: Option<&str>, domain: &str) -> Result<Route, HostError> {
    route_in(host, sni, domain, None)
}

/// [`route`] where previews may live on a domain of their own: there only
/// `<port>-<sid>.<preview_domain>` exists, and under `domain` previews do not.
pub fn route_in(
    host: &str,
    sni: Option<&str>,
    domain: &str,
    preview_domain: Option<&str>,
) -> Result<Route, HostError> {
    let name = normalize(host)?;
    if let Some(sni) = sni {
        let sni = normalize(sni)?;
        if sni != name {
            return Err(HostError::Misdirected);
        }
    }
    if let Some(pd) = preview_domain {
        if let Some(prefix) = name.strip_suffix(pd).and_then(|p| p.strip_suffix('.')) {
            return match label_route(prefix)? {
                r @ Route::Port { .. } => Ok(r),
                _ => Err(HostError::Foreign),
            };
        }
        if name == pd {
            return Err(HostError::Foreign);
        }
    }
    let r = main_route(&name, domain)?;
    if preview_domain.is_some() && matches!(r, Route::Port { .. }) {
        return Err(HostError::PreviewElsewhere);
    }
    Ok(r)
}

fn main_route(name: &str, domain: &str) -> Result<Route, HostError> {
    if name == domain {
        return Ok(Route::Apex);
    }
    let Some(prefix) = name.strip_suffix(domain).and_then(|p| p.strip_suffix('.')) else {
        return Err(HostError::Foreign);
    };
    if prefix.contains('.') {
        return Err(HostError::Foreign);
    }
    if prefix == "api" {
        return Ok(Route::Api);
    }
    label_route(prefix)
}

/// The route one label under a domain names: `<port>-<sid>` or `<sid>`.
fn label_route(prefix: &str) -> Result<Route, HostError> {
    if prefix.contains('.') {
        return Err(HostError::Foreign);
    }
    if let Some((port, session)) = prefix.split_once('-') {
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 && !port.starts_with('0') => p,
            _ => return Err(HostError::Invalid("bad port in preview host")),
        };
        if !is_session_id(session) {
            return Err(HostError::Invalid("bad session id"));
        }
        return Ok(Route::Port {
            session: session.into(),
            port,
        });
    }
    if !is_session_id(prefix) {
        return Err(HostError::Invalid("bad session id"));
    }
    Ok(Route::Terminal {
        session: prefix.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    const D: &str = "warren.localhost";

    #[test]
    fn a_preview_domain_of_its_own() {
        let p = Some("warren-preview.localhost");
        assert_eq!(
            route_in("8080-abcdefghijkl.warren-preview.localhost", None, D, p),
            Ok(Route::Port {
                session: "abcdefghijkl".into(),
                port: 8080
            })
        );
        // Terminals, the API and the apex do not exist there.
        for h in [
            "abcdefghijkl.warren-preview.localhost",
            "api.warren-preview.localhost",
            "warren-preview.localhost",
            "x.8080-abcdefghijkl.warren-preview.localhost",
        ] {
            assert_eq!(route_in(h, None, D, p), Err(HostError::Foreign), "{h}");
        }
        // Previews do not exist under the main domain; terminals still do.
        assert_eq!(
            route_in("8080-abcdefghijkl.warren.localhost", None, D, p),
            Err(HostError::PreviewElsewhere)
        );
        assert_eq!(
            route_in("abcdefghijkl.warren.localhost", None, D, p),
            term("abcdefghijkl")
        );
    }

    fn term(s: &str) -> Result<Route, HostError> {
        Ok(Route::Terminal { session: s.into() })
    }

    #[test]
    fn plain_routes() {
        assert_eq!(route("abc123.warren.localhost", None, D), term("abc123"));
        assert_eq!(
            route("8080-abc123.warren.localhost", None, D),
            Ok(Route::Port {
                session: "abc123".into(),
                port: 8080
            })
        );
        assert_eq!(route("api.warren.localhost", None, D), Ok(Route::Api));
        assert_eq!(route("warren.localhost", None, D), Ok(Route::Apex));
    }

    #[test]
    fn ports_case_and_trailing_dots() {
        assert_eq!(
            route("abc123.warren.localhost:8443", None, D),
            term("abc123")
        );
        assert_eq!(route("ABC123.Warren.LocalHost", None, D), term("abc123"));
        assert_eq!(route("abc123.warren.localhost.", None, D), term("abc123"));
        assert_eq!(
            route("abc123.warren.localhost.:8443", None, D),
            term("abc123")
        );
        assert_eq!(
            route("abc123.warren.localhost:", None, D),
            Err(HostError::Invalid("bad port"))
        );
        assert_eq!(
            route("abc123.warren.localhost:99999999", None, D),
            Err(HostError::Invalid("bad port"))
        );
    }

    #[test]
    fn bad_names() {
        assert_eq!(route("", None, D), Err(HostError::Missing));
        assert_eq!(
            route(&format!("{}.warren.localhost", "a".repeat(64)), None, D),
            Err(HostError::Invalid("label longer than 63 bytes"))
        );
        assert_eq!(
            route("a..warren.localhost", None, D),
            Err(HostError::Invalid("empty label"))
        );
        assert_eq!(
            route("a_b.warren.localhost", None, D),
            Err(HostError::Invalid("bad character"))
        );
        assert_eq!(
            route("ab-c.warren.localhost", None, D),
            Err(HostError::Invalid("bad port in preview host"))
        );
        assert_eq!(
            route("0-abc.warren.localhost", None, D),
            Err(HostError::Invalid("bad port in preview host"))
        );
        assert_eq!(
            route("70000-abc.warren.localhost", None, D),
            Err(HostError::Invalid("bad port in preview host"))
        );
        assert_eq!(
            route("08080-abc.warren.localhost", None, D),
            Err(HostError::Invalid("bad port in preview host"))
        );
        assert_eq!(route("[::1]:8443", None, D), Err(HostError::Foreign));
        assert_eq!(route("127.0.0.1:8443", None, D), Err(HostError::Foreign));
    }

    #[test]
    fn idn_must_be_punycode_and_is_not_a_session() {
        assert_eq!(
            route("bücher.warren.localhost", None, D),
            Err(HostError::Invalid("non-ASCII name (use punycode)"))
        );
        assert_eq!(
            route("xn--bcher-kva.warren.localhost", None, D),
            Err(HostError::Invalid("bad port in preview host"))
        );
    }

    #[test]
    fn other_domains_and_deeper_names() {
        assert_eq!(route("abc.example.com", None, D), Err(HostError::Foreign));
        assert_eq!(
            route("abc.evilwarren.localhost", None, D),
            Err(HostError::Foreign)
        );
        assert_eq!(
            route("x.abc.warren.localhost", None, D),
            Err(HostError::Foreign)
        );
    }

    #[test]
    fn sni_must_match_host() {
        assert_eq!(
            route("abc.warren.localhost", Some("abc.warren.localhost"), D),
            term("abc")
        );
        assert_eq!(
            route("abc.warren.localhost:8443", Some("ABC.warren.localhost"), D),
            term("abc")
        );
        // A connection opened for one session must not carry another's requests.
        assert_eq!(
            route(
                "victim.warren.localhost",
                Some("attacker.warren.localhost"),
                D
            ),
            Err(HostError::Misdirected)
        );
    }
}
