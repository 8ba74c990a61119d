//! The agent ↔ warren-init wire: frames decoded one after another from a
//! buffer a hostile peer filled. Never a panic; errors end the stream.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use warren_init::proto::InitCodec;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut codec = InitCodec;
    for _ in 0..64 {
        match codec.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
});
