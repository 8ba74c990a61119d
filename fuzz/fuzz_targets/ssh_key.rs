//! The SSH public key parser behind `POST /v1/users/me/ssh-keys`.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = warren_control::sshkeys::parse(s);
    }
});
