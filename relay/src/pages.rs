//! Short error pages a person understands, or JSON for programs.
use bytes::Bytes;

/// An answer the relay gives itself (not proxied).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub code: &'static str,
    pub title: &'static str,
    pub message: String,
}

impl Answer {
    pub fn new(
        status: u16,
        code: &'static str,
        title: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            code,
            title,
            message: message.into(),
        }
    }

    /// `(content type, body)`; HTML when the client asked for it.
    pub fn render(&self, html: bool) -> (&'static str, Bytes) {
        if html {
            let body = format!(
                "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
                 <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
                 <title>{status} {title}</title><style>body{{font-family:system-ui,sans-serif;background:#101418;color:#d8dee9;\
                 display:flex;min-height:100vh;margin:0;align-items:center;justify-content:center}}main{{max-width:34em;padding:2em}}\
                 h1{{font-size:1.3em}}code{{color:#8fbcbb}}</style></head><body><main><h1>{title}</h1><p>{message}</p>\
                 <p><small>{status} · <code>{code}</code> · Warren relay</small></p></main></body></html>\n",
                status = self.status,
                title = esc(self.title),
                message = esc(&self.message),
                code = self.code,
            );
            ("text/html; charset=utf-8", Bytes::from(body))
        } else {
            let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
            ("application/json", Bytes::from(format!("{body}\n")))
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_json() {
        let a = Answer::new(404, "session_not_found", "No such session", "<script>");
        let (t, b) = a.render(true);
        assert!(t.starts_with("text/html"));
        assert!(String::from_utf8_lossy(&b).contains("&lt;script&gt;"));
        let (t, b) = a.render(false);
        assert_eq!(t, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "session_not_found");
    }
}
