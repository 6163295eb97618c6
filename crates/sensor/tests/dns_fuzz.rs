//! Randomised robustness test for the DNS parser and the packet decoder: seed
//! messages are mutated (byte flips, truncation, splices, pointer rewrites)
//! and fed to both. Any panic fails the test. The same entry points are the
//! cargo-fuzz targets under `fuzz/`, for longer coverage-guided runs.
//!
//! Set `PICKET_FUZZ_ITERATIONS` to run longer than the default.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use picket_sensor::collect::net::capture::decode_udp;
use picket_sensor::dns::build::{self, AnswerData};
use picket_sensor::dns::{self, parse_response};

/// xorshift64*: deterministic, so a failure reproduces from the seed printed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let v4 = |a, b, c, d| AnswerData::Address(IpAddr::V4(Ipv4Addr::new(a, b, c, d)));
    let v6 = AnswerData::Address(IpAddr::V6("fd00::1".parse::<Ipv6Addr>().unwrap()));
    vec![
        build::response(
            &build::query(1, "a.example.test", dns::TYPE_A),
            &[v4(10, 0, 0, 1)],
        )
        .unwrap(),
        build::response(
            &build::query(2, "www.example.test", dns::TYPE_A),
            &[
                AnswerData::Cname("cdn.example.test"),
                AnswerData::Cname("edge.cdn.example.test"),
                v4(10, 0, 0, 2),
                v4(10, 0, 0, 3),
            ],
        )
        .unwrap(),
        build::response(&build::query(3, "six.example.test", dns::TYPE_AAAA), &[v6]).unwrap(),
        build::query(4, "query.example.test", dns::TYPE_A),
    ]
}

fn mutate(rng: &mut Rng, seed: &[u8], pool: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let at = rng.below(data.len());
                data[at] = rng.next() as u8;
            }
            2 => {
                let len = rng.below(data.len() + 1);
                data.truncate(len);
            }
            3 if !data.is_empty() => {
                // A compression pointer to a random offset, possibly forward
                // or onto itself.
                let at = rng.below(data.len());
                let target = rng.below(data.len() + 64) as u16;
                data[at] = 0xc0 | (target >> 8) as u8;
                if at + 1 < data.len() {
                    data[at + 1] = target as u8;
                }
            }
            4 => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len());
                let at = rng.below(data.len() + 1);
                let tail = data.split_off(at);
                data.extend_from_slice(&other[from..]);
                data.extend_from_slice(&tail);
            }
            5 if data.len() >= 12 => {
                // Oversized counts in the header.
                let field = 4 + 2 * rng.below(4);
                data[field] = 0xff;
                data[field + 1] = rng.next() as u8;
            }
            _ => {
                let extra = rng.below(32);
                for _ in 0..extra {
                    data.push(rng.next() as u8);
                }
            }
        }
    }
    data
}

fn wrap_ipv4(payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut packet = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ];
    packet.extend_from_slice(&[10, 0, 0, 53, 10, 0, 0, 2, 0, 53, 0x9c, 0x40]);
    packet.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(payload);
    packet
}

#[test]
fn mutated_messages_never_panic() {
    let iterations: usize = std::env::var("PICKET_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let seed = 0x0005_eed0_fd45_u64;
    let mut rng = Rng(seed);
    let pool = seeds();
    let mut parsed = 0usize;
    let mut rejected = 0usize;

    for _ in 0..iterations {
        let base = &pool[rng.below(pool.len())];
        let data = mutate(&mut rng, base, &pool);
        match parse_response(&data) {
            Ok(message) => {
                parsed += 1;
                assert!(message.answers.len() <= dns::MAX_ANSWERS);
                for answer in &message.answers {
                    // Text form of a name never exceeds four characters per
                    // wire byte (`\DDD`).
                    assert!(answer.name.len() <= 4 * dns::MAX_NAME_WIRE_LEN);
                }
            }
            Err(_) => rejected += 1,
        }

        let packet = mutate(&mut rng, &wrap_ipv4(&data), &pool);
        if let Ok(datagram) = decode_udp(libc::ETH_P_IP as u16, &packet) {
            assert!(datagram.payload.len() <= packet.len());
            let _ = parse_response(datagram.payload);
        }
        let _ = decode_udp(libc::ETH_P_IPV6 as u16, &packet);
    }

    // The mutations must exercise both outcomes, or the test proves nothing.
    assert!(parsed > iterations / 100, "only {parsed} messages parsed");
    assert!(
        rejected > iterations / 100,
        "only {rejected} messages rejected"
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0xdead_beef_cafe);
    for _ in 0..50_000 {
        let len = rng.below(600);
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = parse_response(&data);
        let _ = decode_udp(libc::ETH_P_IP as u16, &data);
        let _ = decode_udp(libc::ETH_P_IPV6 as u16, &data);
    }
}
