//! Request bodies: one extractor for every JSON body the API takes.
//!
//! axum's `Json` answers a missing content type and a body it cannot read
//! in plain text that quotes serde, and serde reads a JSON array into a
//! struct by position. Here a body must be one JSON object (whatever the
//! content type says: `curl -d` sends a form type, and the API key in the
//! `Authorization` header, not a cookie, is what authenticates, so the type
//! guards nothing), and every refusal is the API's JSON error naming the
//! field at fault.
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;

/// A JSON object body read into `T`.
pub struct Body<T>(pub T);

/// A body that may be empty (then `None`); otherwise as [`Body`].
pub struct OptionalBody<T>(pub Option<T>);

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Reads `bytes` as one JSON object into `T`; the error names the problem
/// (and the field) without serde's positions or type names.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        bad(match e.classify() {
            serde_json::error::Category::Eof => "the body is not complete JSON".to_string(),
            _ => "the body is not valid JSON".to_string(),
        })
    })?;
    if !value.is_object() {
        return Err(bad("the body must be a JSON object"));
    }
    serde_json::from_value(value).map_err(|e| bad(describe(&e.to_string())))
}

/// serde's message without its position suffix, and with Rust type names
/// said as JSON ones.
fn describe(msg: &str) -> String {
    let msg = msg.split(" at line ").next().unwrap_or(msg);
    let msg = msg
        .replace("i64", "an integer")
        .replace("u64", "a non-negative integer")
        .replace("u32", "a non-negative integer")
        .replace("f64", "a number")
        .replace("struct ", "object ");
    format!("invalid body: {msg}")
}

async fn read(req: Request) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the body is larger than this endpoint takes",
            )
        } else {
            bad("the body could not be read")
        }
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes = read(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(bad("a JSON object body is required"));
        }
        parse(&bytes).map(Body)
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let bytes = read(req).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalBody(None));
        }
        parse(&bytes).map(|v| OptionalBody(Some(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_proto::api::CreateSession;

    fn msg(r: Result<CreateSession, ApiError>) -> String {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST);
                e.message
            }
        }
    }

    #[test]
    fn only_objects_are_bodies() {
        assert!(parse::<CreateSession>(br#"{"memory_mb": 512}"#).is_ok());
        assert_eq!(
            msg(parse(br#"["img", 512]"#)),
            "the body must be a JSON object"
        );
        assert_eq!(msg(parse(b"512")), "the body must be a JSON object");
        assert_eq!(msg(parse(b"{")), "the body is not complete JSON");
        assert_eq!(msg(parse(b"memory_mb=512")), "the body is not valid JSON");
    }

    #[test]
    fn errors_name_the_field_not_serde() {
        let m = msg(parse(br#"{"memory_mb": "lots"}"#));
        assert!(m.contains("an integer") && !m.contains("line"), "{m}");
        let m = msg(parse(br#"{"imgae": "x"}"#));
        assert!(m.contains("imgae"), "{m}");
    }
}
