//! What the relay answers itself: refusals as [`Answer`]s (plain mappings
//! from a host error or a [`Denial`]), embedded assets, and a refused
//! WebSocket told by its close code. Every such response carries the same
//! security headers.
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::access::Denial;
use crate::auth::AuthError;
use crate::host::HostError;
use crate::pages::Answer;

/// The policy on every page the relay serves itself. `connect-src 'self'`
/// covers the page's own WebSocket (same host and port).
const PAGE_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'none'; object-src 'none'";

/// The answer to a Host (or SNI) that names no route of ours.
pub fn host_answer(e: &HostError) -> Answer {
    match e {
        HostError::Missing => Answer::new(400, "bad_host", "Bad request", e.to_string()),
        HostError::Invalid(_) => Answer::new(400, "bad_host", "Bad request", e.to_string()),
        HostError::Foreign => Answer::new(
            404,
            "unknown_host",
            "Not found",
            "This relay does not serve that host.",
        ),
        HostError::Misdirected => {
            Answer::new(421, "misdirected", "Misdirected request", e.to_string())
        }
        HostError::PreviewElsewhere => {
            Answer::new(404, "preview_elsewhere", "Not found", e.to_string())
        }
    }
}

/// The answer to a refused access check.
pub fn denial_answer(d: &Denial) -> Answer {
    match d {
        Denial::Token(e @ AuthError::MissingScope(_)) => {
            Answer::new(403, "forbidden", "Not allowed", e.to_string())
        }
        Denial::Token(e) => Answer::new(401, "unauthorized", "Sign-in needed", e.to_string()),
        Denial::OtherSession => Answer::new(
            403,
            "forbidden",
            "Not your session",
            "This token opens another session.",
        ),
        Denial::Lookup(e) => Answer::new(
            503,
            "unavailable",
            "Try again",
            format!("Sessions cannot be looked up right now ({e})."),
        ),
        Denial::NoSession => Answer::new(
            404,
            "session_not_found",
            "No such session",
            "This session does not exist or has ended.",
        ),
        Denial::OtherTenant => Answer::new(
            403,
            "forbidden",
            "Not your session",
            "This session belongs to another tenant.",
        ),
        Denial::NodeDown => Answer::new(
            503,
            "node_unavailable",
            "Session unreachable",
            "The machine running this session is not connected right now. Try again in a moment.",
        ),
    }
}

/// The terminal close code that means the same as an HTTP refusal.
pub fn close_code_for(status: u16) -> u16 {
    use warren_proto::terminal::close;
    match status {
        401 => close::AUTH,
        403 => close::FORBIDDEN,
        404 | 410 => close::SESSION_GONE,
        502..=504 => close::NODE_LOST,
        400..=499 => close::BAD_REQUEST,
        _ => close::INTERNAL,
    }
}

/// A server's (unmasked) WebSocket close frame with `code` and as much of
/// `reason` as fits in 120 bytes.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = Frame::close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason[..end].into(),
    }));
    let mut out = Vec::with_capacity(4 + end);
    // Writing to a Vec does not fail.
    let _ = frame.format(&mut out);
    Bytes::from(out)
}

fn wants_html(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"))
}

/// `Strict-Transport-Security` max-age for HTTPS answers, in seconds (0:
/// none). One value per process: set by [`set_hsts_max_age`] from the
/// relay's config when it starts (`https.hsts_max_age_secs`).
static HSTS_MAX_AGE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(31_536_000);

pub fn set_hsts_max_age(secs: u64) {
    HSTS_MAX_AGE.store(secs, std::sync::atomic::Ordering::Relaxed);
}

/// The `Strict-Transport-Security` value, if one is sent.
pub fn hsts() -> Option<String> {
    match HSTS_MAX_AGE.load(std::sync::atomic::Ordering::Relaxed) {
        0 => None,
        secs => Some(format!("max-age={secs}")),
    }
}

/// Whether the client reached the relay over TLS.
pub fn over_tls(session: &Session) -> bool {
    session.digest().is_some_and(|d| d.ssl_digest.is_some())
}

/// Writes a whole response the relay makes itself.
pub async fn send(
    session: &mut Session,
    status: u16,
    headers: &[(&str, String)],
    ctype: &str,
    body: Bytes,
) -> pingora::Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 9))?;
    resp.insert_header("content-type", ctype)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    // Everything the relay answers itself (the terminal page, its
    // assets, error pages): never framed (clickjacking from a preview),
    // no Referer (session ids in URLs), scripts and connections only to
    // this host.
    resp.insert_header("content-security-policy", PAGE_CSP)?;
    resp.insert_header("x-frame-options", "DENY")?;
    resp.insert_header("referrer-policy", "no-referrer")?;
    resp.insert_header("x-content-type-options", "nosniff")?;
    resp.insert_header("cross-origin-opener-policy", "same-origin")?;
    // Browsers then refuse plain HTTP and certificate bypasses for the
    // host (never over plain HTTP, where it would mean nothing).
    if over_tls(session)
        && let Some(v) = hsts()
    {
        resp.insert_header("strict-transport-security", v)?;
    }
    for (k, v) in headers {
        resp.append_header(k.to_string(), v.as_str())?;
    }
    let head_only = session.req_header().method == pingora::http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(true)
}

/// An [`Answer`], as HTML when the client asked for it, else JSON.
pub async fn answer(session: &mut Session, a: Answer) -> pingora::Result<bool> {
    let (ctype, body) = a.render(wants_html(session));
    let mut headers = Vec::new();
    if a.status == 401 {
        headers.push(("www-authenticate", "Bearer realm=\"warren\"".to_string()));
    }
    if a.status == 429 {
        headers.push(("retry-after", "60".to_string()));
    }
    send(session, a.status, &headers, ctype, body).await
}

/// One of the terminal page's embedded files.
pub async fn asset(session: &mut Session, name: &str) -> pingora::Result<bool> {
    match crate::assets::get(name) {
        Some((ctype, bytes)) => send(session, 200, &[], ctype, Bytes::from_static(bytes)).await,
        None => {
            answer(
                session,
                Answer::new(404, "not_found", "Not found", "No such file."),
            )
            .await
        }
    }
}

/// Accepts a WebSocket handshake only to close it at once with the close
/// code that stands for `a` (4401, 4403, 4404, ...), so a browser page can
/// tell "signed out" from "network down".
pub async fn close_upgrade(session: &mut Session, a: Answer) -> pingora::Result<bool> {
    let key = session
        .req_header()
        .headers
        .get("sec-websocket-key")
        .map(|k| k.as_bytes().to_vec());
    let Some(key) = key.filter(|k| !k.is_empty() && k.len() <= 64) else {
        return answer(session, a).await;
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let mut resp = ResponseHeader::build(101, Some(4))?;
    resp.insert_header("upgrade", "websocket")?;
    resp.insert_header("connection", "Upgrade")?;
    resp.insert_header("sec-websocket-accept", accept)?;
    session.write_response_header(Box::new(resp), false).await?;
    let frame = close_frame(close_code_for(a.status), &a.message);
    session.write_response_body(Some(frame), true).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_are_what_the_wire_wants() {
        // FIN + close, the length, the code big-endian, the reason.
        assert_eq!(
            close_frame(4401, "signed out").as_ref(),
            [&[0x88, 12, 0x11, 0x31][..], b"signed out"].concat()
        );
        // Reasons are cut at 120 bytes, on a character boundary.
        let long = "é".repeat(100);
        let f = close_frame(4403, &long);
        assert_eq!((f[0], f[1]), (0x88, 2 + 120));
        assert_eq!(f.len(), 4 + 120);
        let f = close_frame(4404, &format!("x{long}"));
        assert_eq!(f[1], 2 + 119);
        assert_eq!(close_frame(1000, "").as_ref(), [0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn refusals_map_to_close_codes() {
        use warren_proto::terminal::close;
        for (d, status, code) in [
            (Denial::Token(AuthError::Expired), 401, close::AUTH),
            (
                Denial::Token(AuthError::MissingScope(crate::auth::Scope::Terminal)),
                403,
                close::FORBIDDEN,
            ),
            (Denial::OtherSession, 403, close::FORBIDDEN),
            (Denial::OtherTenant, 403, close::FORBIDDEN),
            (Denial::NoSession, 404, close::SESSION_GONE),
            (Denial::Lookup("x".into()), 503, close::NODE_LOST),
            (Denial::NodeDown, 503, close::NODE_LOST),
        ] {
            let a = denial_answer(&d);
            assert_eq!(
                (a.status, close_code_for(a.status)),
                (status, code),
                "{d:?}"
            );
        }
        assert_eq!(close_code_for(400), close::BAD_REQUEST);
        assert_eq!(close_code_for(500), close::INTERNAL);
    }
}
