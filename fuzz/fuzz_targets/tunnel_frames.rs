//! The relay's and agent's tunnel decoders: a stream header and a Hello,
//! as read from a QUIC stream, then validated. Never a panic, never more
//! than the frame bound read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use warren_tunnel::proto::{Hello, StreamHeader, read_frame};

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    rt().block_on(async {
        let mut r = data;
        if let Ok(h) = read_frame::<_, StreamHeader>(&mut r).await {
            let _ = h.validate();
        }
        let mut r = data;
        if let Ok(h) = read_frame::<_, Hello>(&mut r).await {
            let _ = h.validate();
        }
    });
});
