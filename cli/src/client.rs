//! The API client (shared with the load-test harness): the control URL and
//! key from flags, then `WARREN_CONTROL_URL` / `WARREN_API_KEY`, then
//! `.warren/up.json`.
pub use warren_client::{Client, Error};
