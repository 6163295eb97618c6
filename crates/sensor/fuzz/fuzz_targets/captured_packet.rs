//! Coverage-guided fuzzing of the capture path: the first byte picks IPv4 or
//! IPv6, the rest is the packet as a packet socket delivers it.
//! `cargo +nightly fuzz run captured_packet` from `crates/sensor`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use picket_sensor::collect::net::capture::decode_udp;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, packet)) = data.split_first() else {
        return;
    };
    let protocol = if selector & 1 == 0 {
        libc::ETH_P_IP
    } else {
        libc::ETH_P_IPV6
    } as u16;
    if let Ok(datagram) = decode_udp(protocol, packet) {
        let _ = picket_sensor::dns::parse_response(datagram.payload);
    }
});
