//! The tunnel's UDP sockets get large kernel buffers. QUIC sends a terminal's
//! output as bursts of datagrams; with the default receive buffer (about
//! 208 KiB) a burst the other side has not read yet overflows it, the
//! datagrams are dropped (`RcvbufErrors` in /proc/net/snmp), and QUIC's
//! congestion control takes the loss as congestion and slows down.
use std::net::{SocketAddr, UdpSocket};

use tracing::{debug, warn};

/// What each tunnel socket asks for, both ways. The kernel caps it at
/// `net.core.rmem_max` / `wmem_max` (docs/scale.md says how to raise
/// them; `scripts/setup-host.sh` does).
pub const BUFFER_BYTES: usize = 4 << 20;

/// Sets the socket's send and receive buffers to [`BUFFER_BYTES`] (as much
/// of it as the kernel allows; a refusal is only logged).
pub fn enlarge_buffers(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    if let Err(e) = s.set_recv_buffer_size(BUFFER_BYTES) {
        debug!("tunnel socket receive buffer: {e}");
    }
    if let Err(e) = s.set_send_buffer_size(BUFFER_BYTES) {
        debug!("tunnel socket send buffer: {e}");
    }
    // The kernel caps the size silently: say so once per socket, with the
    // fix (Linux reports double what it keeps for bookkeeping).
    if let Ok(got) = s.recv_buffer_size()
        && got < BUFFER_BYTES
    {
        warn!(
            "the tunnel's UDP receive buffer is {got} bytes, not {BUFFER_BYTES}: bursts may be dropped; \
             raise net.core.rmem_max and net.core.wmem_max to {BUFFER_BYTES} (docs/scale.md)"
        );
    }
}

/// A UDP socket bound to `addr`, with large buffers.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    enlarge_buffers(&socket);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_enlarged_up_to_the_kernel_limit() {
        let s = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let got = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        // Linux doubles what it is given (bookkeeping) and caps it at
        // rmem_max: more than the ~208 KiB default whenever rmem_max allows.
        let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        assert!(
            got >= (2 * BUFFER_BYTES).min(2 * max),
            "{got} (rmem_max {max})"
        );
    }
}
