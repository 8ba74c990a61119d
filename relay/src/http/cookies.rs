//! Credentials on the way in (the `token` query parameter, our cookies, a
//! Bearer header) and our cookies on the way out, kept from the session's
//! apps in both directions. Plain functions on strings.
use std::time::{SystemTime, UNIX_EPOCH};

use pingora::http::RequestHeader;

/// The cookie holding the session token on a session's host over plain
/// HTTP (`warren up`'s loopback listener).
pub const COOKIE: &str = "warren_token";
/// The same over HTTPS: a `__Host-` cookie is host-only, Secure and Path=/
/// by the browser's rules, so no sibling host (a preview of another session)
/// can set or shadow it.
pub const HOST_COOKIE: &str = "__Host-warren_token";
/// The refresh grant's cookie (plain HTTP, loopback only) and over HTTPS.
pub const REFRESH_COOKIE: &str = "warren_refresh";
pub const HOST_REFRESH_COOKIE: &str = "__Host-warren_refresh";
/// At most this many of our cookies are tried per request.
pub const MAX_COOKIE_CANDIDATES: usize = 4;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The session token's cookie name: HTTPS reads and sets only the
/// `__Host-` cookie (no sibling host can set it); plain HTTP (loopback)
/// the plain one.
pub fn token_cookie_name(tls: bool) -> &'static str {
    if tls { HOST_COOKIE } else { COOKIE }
}

/// The refresh grant's cookie name, likewise.
pub fn refresh_cookie_name(tls: bool) -> &'static str {
    if tls {
        HOST_REFRESH_COOKIE
    } else {
        REFRESH_COOKIE
    }
}

/// The `token` query parameter, if any.
pub fn query_token(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
}

/// The query without `token`, for the redirect and for upstream requests.
pub fn strip_token(query: Option<&str>) -> Option<String> {
    let q = query?;
    let kept: Vec<(String, String)> = url::form_urlencoded::parse(q.as_bytes())
        .filter(|(k, _)| k != "token")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        return None;
    }
    Some(
        url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(kept)
            .finish(),
    )
}

/// Our token from a `Cookie` header (the first, for tests and tools).
pub fn cookie_token(cookie_header: Option<&str>) -> Option<String> {
    cookie_tokens(cookie_header, COOKIE).into_iter().next()
}

/// Every value of cookie `name` (a sibling host may have planted others
/// beside ours over plain HTTP; each is tried, the first that opens this
/// session wins).
pub fn cookie_tokens(cookie_header: Option<&str>, name: &str) -> Vec<String> {
    let Some(h) = cookie_header else {
        return Vec::new();
    };
    h.split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .take(MAX_COOKIE_CANDIDATES)
        .collect()
}

/// Our cookie's values across every `Cookie` header of the request.
pub fn all_cookie_tokens(req: &RequestHeader, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for v in req.headers.get_all("cookie") {
        let v = String::from_utf8_lossy(v.as_bytes());
        out.extend(cookie_tokens(Some(&v), name));
    }
    out.truncate(MAX_COOKIE_CANDIDATES);
    out
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(authorization: Option<&str>) -> Option<String> {
    authorization?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_string())
}

fn is_our_cookie(name: &str) -> bool {
    name == COOKIE || name == HOST_COOKIE || name == REFRESH_COOKIE || name == HOST_REFRESH_COOKIE
}

/// The `Cookie` header without ours (upstream apps never see the token).
pub fn strip_cookie(cookie_header: &str) -> Option<String> {
    let kept: Vec<&str> = cookie_header
        .split(';')
        .map(str::trim)
        .filter(|kv| {
            !kv.is_empty()
                && kv
                    .split_once('=')
                    .is_none_or(|(k, _)| !is_our_cookie(k.trim()))
        })
        .collect();
    if kept.is_empty() {
        None
    } else {
        Some(kept.join("; "))
    }
}

/// An upstream `Set-Cookie` as it may reach the browser: ours are dropped
/// (`None`) and a `Domain` attribute is removed, so an app's cookie stays on
/// its own preview host and can neither cover Warren's hosts nor another
/// session's (cookie tossing).
pub fn filter_set_cookie(v: &str) -> Option<String> {
    let mut parts = v.split(';');
    let first = parts.next()?.trim();
    let name = first
        .split_once('=')
        .map(|(k, _)| k.trim())
        .unwrap_or(first);
    let lower = name.to_ascii_lowercase();
    if is_our_cookie(name) || lower.contains("warren_token") || lower.contains("warren_refresh") {
        return None;
    }
    let mut out = first.to_string();
    for attr in parts {
        let a = attr.trim();
        let key = a.split_once('=').map(|(k, _)| k.trim()).unwrap_or(a);
        if key.eq_ignore_ascii_case("domain") || a.is_empty() {
            continue;
        }
        out.push_str("; ");
        out.push_str(a);
    }
    Some(out)
}

/// The URL query names a command (`mode=exec`, `command=`): never taken
/// from a browser's URL (a link could otherwise run code in the session).
pub fn names_command(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "command" || k == "mode")
    })
}

/// A redirect target on our own host: leading slashes and backslashes
/// collapse to one, so `//evil.example/` never becomes a protocol-relative
/// URL to another site.
pub fn local_location(path: &str, query: Option<String>) -> String {
    let rest = path.trim_start_matches(['/', '\\']);
    match query {
        Some(q) => format!("/{rest}?{q}"),
        None => format!("/{rest}"),
    }
}

/// The session token's cookie. Plain HTTP is served on loopback only
/// (`warren up`), where browsers would drop a Secure cookie set over http
/// (and a `__Host-` cookie needs Secure).
pub fn token_cookie(token: &str, exp: u64, tls: bool) -> String {
    let max_age = exp.saturating_sub(now());
    if tls {
        format!("{HOST_COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax")
    } else {
        format!("{COOKIE}={token}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax")
    }
}

/// The refresh grant's cookie: sent only to this host, never to another
/// site's requests (Strict), read only by the refresh endpoint.
pub fn refresh_cookie(grant: &str, exp: i64, tls: bool) -> String {
    let max_age = (exp.max(0) as u64).saturating_sub(now());
    if tls {
        format!(
            "{HOST_REFRESH_COOKIE}={grant}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
        )
    } else {
        format!("{REFRESH_COOKIE}={grant}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_query_and_cookie_handling() {
        assert_eq!(
            query_token(Some("a=1&token=xyz&b=2")).as_deref(),
            Some("xyz")
        );
        assert_eq!(
            strip_token(Some("a=1&token=xyz&b=2")).as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_token(Some("token=xyz")), None);
        assert_eq!(
            cookie_token(Some("x=1; warren_token=abc; y=2")).as_deref(),
            Some("abc")
        );
        assert_eq!(cookie_token(Some("warren_tokenx=abc")), None);
        assert_eq!(
            strip_cookie("x=1; warren_token=abc; y=2").as_deref(),
            Some("x=1; y=2")
        );
        assert_eq!(strip_cookie("warren_token=abc"), None);
    }
}
