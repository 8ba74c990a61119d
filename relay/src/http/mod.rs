//! The HTTP(S) edge on Pingora, in the shape of pingora's gateway example:
//! the callbacks gather a request's [`Facts`], call the pure [`decide`] and
//! act on its [`Decision`].
//!
//! - [`policy`]: facts, the decision, same-origin and cross-site rules;
//! - [`cookies`]: credentials in (query, cookie, Bearer) and our cookies
//!   kept from the session's apps;
//! - [`refresh`]: the `?token=` exchange and token renewal;
//! - [`answers`]: responses the relay makes itself;
//! - [`proxy`]: the thin [`pingora::proxy::ProxyHttp`] impl;
//! - [`bridge`]: a terminal's connection after its upgrade, outside Pingora;
//! - [`control_tls`]: TLS to control behind `api.<domain>`.
//!
//! The access check every door shares is [`crate::access`].
pub mod answers;
pub mod bridge;
pub mod control_tls;
pub mod cookies;
pub mod policy;
pub mod proxy;
pub mod refresh;
#[cfg(test)]
mod tests;

pub use cookies::{
    COOKIE, HOST_COOKIE, HOST_REFRESH_COOKIE, REFRESH_COOKIE, cookie_token, cookie_tokens,
    filter_set_cookie, local_location, names_command, query_token, strip_cookie, strip_token,
};
pub use policy::{
    Action, Decision, Facts, Policy, REFRESH_PATH, TERMINAL_PATH, decide, same_origin,
};
pub use proxy::{Ctx, RelayProxy, Sni};
pub use refresh::{EXCHANGE_LIMIT, REFRESH_LIMIT};
