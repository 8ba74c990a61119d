//! `GET /openapi.json`: an OpenAPI 3.1 document whose every `$ref`
//! resolves, whose every operation the router serves, and which lists
//! every public route docs/api.md names.
#![allow(clippy::unwrap_used)]
mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{Value, json};
use warren_config::Strategy;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// `(method, path template)` of every operation in `doc`.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut ops = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in METHODS {
            if item.get(m).is_some() {
                ops.insert((m.to_string(), path.clone()));
            }
        }
    }
    ops
}

/// Every `$ref` in `v`, each as found.
fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|x| refs(x, out));
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

/// A template's path with its parameters filled with values no handler
/// has: `{action}` takes a real action so the handler, not a 404 for the
/// action, answers.
fn concrete(template: &str) -> String {
    template
        .split('/')
        .map(|seg| match seg {
            "{action}" => "drain",
            s if s.starts_with('{') => "zzzzzzzzzzzzzzzz",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether `path` (concrete) fits `template`.
fn fits(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
}

/// `(method if named, path)` of the public routes docs/api.md names:
/// backquoted `METHOD[/METHOD] /path…` and bare `/v1/…` paths before its
/// internal section, `a\|b` alternatives expanded, `<x>`/`{x}` as parameters.
fn documented_routes() -> Vec<(Option<String>, String)> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api.md")).unwrap();
    let public = text.split("## Internal API").next().unwrap();
    let mut out = Vec::new();
    for (i, span) in public.split('`').enumerate() {
        if i % 2 == 0 {
            continue; // outside backquotes
        }
        let (methods, path) = match span.split_once(' ') {
            Some((m, rest))
                if m.split('/')
                    .all(|x| METHODS.contains(&x.to_lowercase().as_str())) =>
            {
                (m.split('/').map(|x| Some(x.to_lowercase())).collect(), rest)
            }
            _ => (vec![None], span),
        };
        let path = path.split([' ', '?']).next().unwrap();
        let public_path = [
            "/v1/",
            "/.well-known/",
            "/healthz",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ]
        .iter()
        .any(|p| path.starts_with(p));
        // (`/v1/*` says "every path under /v1/", not a route.)
        if !public_path || path.contains('*') {
            continue;
        }
        let (head, last) = path.rsplit_once('/').unwrap();
        for alt in last.split("\\|") {
            for m in &methods {
                out.push((m.clone(), format!("{head}/{alt}")));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_the_router() {
    let url = database(Db::Sqlite, "openapi").await;
    let c = TestControl::start(config(&url, Strategy::Spread)).await;
    // No key needed.
    let r = c
        .http
        .get(format!("{}/openapi.json", c.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let text = r.text().await.unwrap();

    // An OpenAPI 3.1 document, as a parser made for 3.1 reads it.
    let spec = oas3::from_json(&text).unwrap_or_else(|e| panic!("not OpenAPI 3.1: {e}"));
    assert!(spec.openapi.starts_with("3.1."), "{}", spec.openapi);
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in &all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "$ref {r} resolves to nothing"
        );
    }

    // Every operation is served: a handler answers (a 404 of its own, for
    // the made-up ids, is fine; the router's fallback is not).
    let ops = operations(&doc);
    assert!(ops.len() >= 23, "{ops:?}");
    for (method, template) in &ops {
        assert!(
            !template.starts_with("/internal/"),
            "{template} is internal"
        );
        let op = &doc["paths"][template][method];
        let responses = op["responses"].as_object().unwrap();
        assert!(!responses.is_empty(), "{method} {template}");
        // 3.1 requires a description on every response.
        for (code, r) in responses {
            let described = r["description"].as_str().is_some_and(|d| !d.is_empty());
            assert!(described, "{method} {template} {code} has no description");
        }
        let path = concrete(template);
        let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let mut req = c
            .http
            .request(m, format!("{}{path}", c.url))
            .bearer_auth(ADMIN);
        if method == "post" {
            req = req.json(&json!({}));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let stream = resp
            .headers()
            .get("content-type")
            .is_some_and(|t| t == "text/event-stream");
        // (A stream is not read: it never ends.)
        let body: Value = if stream {
            Value::Null
        } else {
            serde_json::from_str(&resp.text().await.unwrap()).unwrap_or(Value::Null)
        };
        assert_ne!(status, 405, "{method} {path}: {body}");
        let fallback = status == 404 && body["error"]["message"] == "no such endpoint";
        assert!(
            !fallback,
            "{method} {template} is documented but not served"
        );
        assert!(
            op["responses"].get(status.to_string()).is_some(),
            "{method} {template} answered {status}, which its document does not list: {body}"
        );
        // Methods it does not document are not served there either.
        for other in METHODS
            .iter()
            .filter(|o| !ops.contains(&(o.to_string(), template.clone())))
        {
            let m = reqwest::Method::from_bytes(other.to_uppercase().as_bytes()).unwrap();
            let s = c
                .http
                .request(m, format!("{}{path}", c.url))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(s, 405, "{other} {path} is served but not documented");
        }
    }
    // The internal API is served, and is not in the document.
    let (s, _) = c
        .call("GET", "/internal/v1/routes/zzzzzzzzzzzzzzzz", "x", None)
        .await;
    assert_eq!(s, 401);

    // Every public route docs/api.md names is in the document.
    let named = documented_routes();
    assert!(named.len() >= 20, "{named:?}");
    for (method, path) in named {
        let found = ops
            .iter()
            .any(|(m, t)| fits(t, &path) && method.as_ref().is_none_or(|x| x == m));
        assert!(
            found,
            "docs/api.md names {method:?} {path}, which /openapi.json lacks"
        );
    }
}
