//! The browser terminal, embedded at build time (see `build.rs`).
include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// `(content type, bytes)` of an embedded file.
pub fn get(name: &str) -> Option<(&'static str, &'static [u8])> {
    ASSETS
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, t, b)| (*t, *b))
}
