//! The terminal WebSocket's client input: the handshake query and the JSON
//! control messages (both sides' messages). Sizes always come out clamped,
//! and a parsed query serializes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warren_proto::terminal::{ClientMsg, MAX_DIMENSION, ServerMsg, TerminalQuery};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let p = TerminalQuery::parse(Some(s));
    assert!((1..=MAX_DIMENSION).contains(&p.cols) && (1..=MAX_DIMENSION).contains(&p.rows));
    if p.check_version().is_ok() {
        assert_eq!(TerminalQuery::parse(Some(&p.to_query())), p);
    }
    if let ClientMsg::Resize { cols, rows } = ClientMsg::parse(s) {
        assert!(cols >= 1 && rows >= 1 && cols <= MAX_DIMENSION && rows <= MAX_DIMENSION);
    }
    let _ = ServerMsg::parse(s).check_version();
});
