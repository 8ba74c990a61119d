//! The terminal WebSocket's client input: the handshake query and the JSON
//! control messages. Sizes always come out clamped.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warren_agent::terminal::{ControlMsg, TerminalParams, parse_control};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let p = TerminalParams::from_query(Some(s));
    assert!(p.cols >= 1 && p.rows >= 1);
    for exec in [false, true] {
        if let ControlMsg::Resize { cols, rows } = parse_control(s, exec) {
            assert!(cols >= 1 && rows >= 1);
        }
    }
});
