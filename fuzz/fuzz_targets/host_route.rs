//! The relay's routing: any Host header and SNI. A route found is always
//! a session id Warren could have made, or the API or apex.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warren_relay::host::{Route, is_session_id, route};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (host, sni) = match s.split_once('\n') {
        Some((h, sni)) => (h, Some(sni)),
        None => (s, None),
    };
    if let Ok(r) = route(host, sni, "warren.localhost") {
        match r {
            Route::Terminal { session } | Route::Port { session, .. } => {
                assert!(is_session_id(&session), "{session:?}")
            }
            Route::Api | Route::Apex => {}
        }
    }
});
