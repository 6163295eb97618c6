//! Decoding of the records the BPF programs write to the ring buffer.
//!
//! The layouts are declared in `bpf/events.h`, which pins its offsets with
//! `_Static_assert`. The offsets below repeat those numbers, so a layout
//! change must update both files.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::collect::net::kernel::{KernelAction, KernelNetEvent};
use crate::collect::net::procfs::Proto;
use crate::collect::{
    ExeKind, ExecDetails, ExecFact, ExitFact, Fact, FileAction, FileFact, ForkFact,
};

pub const EVENT_EXEC: u32 = 1;
pub const EVENT_FORK: u32 = 2;
pub const EVENT_EXIT: u32 = 3;
pub const EVENT_FILE: u32 = 4;
pub const EVENT_NET: u32 = 5;
pub const EVENT_DNS: u32 = 6;
const DNS_PAYLOAD_OFFSET: usize = 112;
/// Bytes of a DNS response the kernel program copies at most.
pub const DNS_PAYLOAD_CAP: usize = 512;

const NET_TCP_CONNECT: u32 = 1;
const NET_TCP_ACCEPT: u32 = 2;
const NET_TCP_CLOSE: u32 = 3;
const NET_UDP_SEND: u32 = 4;
const NET_UDP_RECV: u32 = 5;
/// Bit 0 of a record's flags: for TCP the connection was outgoing, for UDP
/// the socket was connected.
const NET_FLAG_TCP_OUTGOING: u32 = 1 << 0;
const NET_FLAG_UDP_CONNECTED: u32 = 1 << 0;
const NET_EVENT_LEN: usize = 104;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const IPPROTO_TCP: u16 = 6;
const IPPROTO_UDP: u16 = 17;

const FLAG_EXE_TRUNCATED: u32 = 1 << 0;
const FLAG_CWD_TRUNCATED: u32 = 1 << 1;
const FLAG_ARGV_TRUNCATED: u32 = 1 << 2;
const FLAG_ARGV_UNREADABLE: u32 = 1 << 3;
const FLAG_EXEC_FDPATH: u32 = 1 << 4;
const FLAG_EXE_INTERNAL_MOUNT: u32 = 1 << 5;

const FILE_CREATE: u32 = 1;
const FILE_DELETE: u32 = 2;
const FILE_MODIFY: u32 = 3;
const FILE_RENAME: u32 = 4;

/// Loss counter slots of the `loss` map, with the reason each is reported as.
pub const LOSS_REASONS: [&str; 4] = [
    "ringbuf_reserve",
    "argv_unreadable",
    "file_rate_limit",
    "path_unreadable",
];

const HEADER_LEN: usize = 24;
const EXEC_DATA_OFFSET: usize = 80;
const FILE_DATA_OFFSET: usize = 40;
const SMALL_EVENT_LEN: usize = 32;

const TMPFS_MAGIC: u64 = 0x0102_1994;
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

/// A record that does not match the layout of its kind.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {len} bytes is too short for kind {kind}")]
    Short { kind: u32, len: usize },
    #[error("ring buffer record has unknown kind {kind}")]
    UnknownKind { kind: u32 },
    #[error("network record has unknown action {action}, family {family} or protocol {protocol}")]
    BadNetRecord {
        action: u32,
        family: u16,
        protocol: u16,
    },
}

/// Converts CLOCK_BOOTTIME nanoseconds to nanoseconds since the Unix epoch.
pub trait BootClock {
    fn to_epoch_ns(&self, boot_ns: u64) -> u64;
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u16(&self, at: usize) -> u16 {
        u16::from_ne_bytes(self.bytes[at..at + 2].try_into().expect("2 bytes"))
    }
    fn u32(&self, at: usize) -> u32 {
        u32::from_ne_bytes(self.bytes[at..at + 4].try_into().expect("4 bytes"))
    }
    fn u64(&self, at: usize) -> u64 {
        u64::from_ne_bytes(self.bytes[at..at + 8].try_into().expect("8 bytes"))
    }
    /// `len` bytes at `at`, or fewer when the record ends first.
    fn slice(&self, at: usize, len: usize) -> &[u8] {
        let start = at.min(self.bytes.len());
        let end = at.saturating_add(len).min(self.bytes.len());
        &self.bytes[start..end]
    }
}

/// Decodes one ring buffer record into a fact.
pub fn decode(record: &[u8], clock: &dyn BootClock) -> Result<Fact, DecodeError> {
    if record.len() < HEADER_LEN {
        return Err(DecodeError::Short {
            kind: 0,
            len: record.len(),
        });
    }
    let r = Reader { bytes: record };
    let kind = r.u32(0);
    let min_len = match kind {
        EVENT_EXEC => EXEC_DATA_OFFSET,
        EVENT_FILE => FILE_DATA_OFFSET,
        EVENT_FORK | EVENT_EXIT => SMALL_EVENT_LEN,
        EVENT_NET => NET_EVENT_LEN,
        EVENT_DNS => DNS_PAYLOAD_OFFSET,
        _ => return Err(DecodeError::UnknownKind { kind }),
    };
    if record.len() < min_len {
        return Err(DecodeError::Short {
            kind,
            len: record.len(),
        });
    }

    let pid = r.u32(4);
    let time_ns = clock.to_epoch_ns(r.u64(8));
    let start_ticks = Some(r.u64(16));
    let fact = match kind {
        EVENT_EXEC => Fact::Exec(ExecFact {
            pid,
            ppid: Some(r.u32(24)),
            start_ticks,
            time_ns,
            details: Some(decode_exec_details(&r)),
        }),
        EVENT_FORK => Fact::Fork(ForkFact {
            pid,
            ppid: r.u32(24),
            start_ticks,
            time_ns,
        }),
        EVENT_EXIT => Fact::Exit(ExitFact {
            pid,
            start_ticks,
            time_ns,
            exit_status: Some(r.u32(24) as i32),
        }),
        EVENT_NET => Fact::Net(decode_net(&r, pid, time_ns)?),
        EVENT_DNS => {
            let mut event = decode_net(&r, pid, time_ns)?;
            let len = (r.u32(104) as usize).min(DNS_PAYLOAD_CAP);
            event.payload = r.slice(DNS_PAYLOAD_OFFSET, len).to_vec();
            Fact::Net(event)
        }
        _ => Fact::File(decode_file(&r, pid, start_ticks, time_ns)),
    };
    Ok(fact)
}

/// Decodes the `net_event` part of a network or DNS record; the caller adds
/// a DNS record's payload.
fn decode_net(r: &Reader<'_>, pid: u32, time_ns: u64) -> Result<KernelNetEvent, DecodeError> {
    let action = r.u32(24);
    let flags = r.u32(28);
    let family = r.u16(36);
    let protocol = r.u16(38);
    let bad = DecodeError::BadNetRecord {
        action,
        family,
        protocol,
    };
    let proto = match (family, protocol) {
        (AF_INET, IPPROTO_TCP) => Proto::Tcp4,
        (AF_INET6, IPPROTO_TCP) => Proto::Tcp6,
        (AF_INET, IPPROTO_UDP) => Proto::Udp4,
        (AF_INET6, IPPROTO_UDP) => Proto::Udp6,
        _ => return Err(bad),
    };

    let kind = r.u32(0);
    let action = match (action, proto.is_tcp()) {
        (0, _) if kind == EVENT_DNS => KernelAction::DnsResponse,
        (NET_TCP_CONNECT, true) => KernelAction::TcpConnect,
        (NET_TCP_ACCEPT, true) => KernelAction::TcpAccept,
        (NET_TCP_CLOSE, true) => KernelAction::TcpClose,
        (NET_UDP_SEND, false) => KernelAction::UdpSend,
        (NET_UDP_RECV, false) => KernelAction::UdpReceive,
        _ => return Err(bad),
    };

    let address = |at: usize, port: u16| -> SocketAddr {
        let bytes = r.slice(at, 16);
        if family == AF_INET {
            let octets: [u8; 4] = bytes[..4].try_into().expect("4 bytes");
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port)
        } else {
            let octets: [u8; 16] = bytes.try_into().expect("16 bytes");
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)
        }
    };
    let comm = r.slice(88, 16);
    let comm_len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    Ok(KernelNetEvent {
        action,
        proto,
        local: address(48, r.u16(40)),
        remote: address(64, r.u16(42)),
        netns: u64::from(r.u32(32)),
        pid,
        start_ticks: r.u64(16),
        comm: String::from_utf8_lossy(&comm[..comm_len]).into_owned(),
        time_ns,
        outgoing: flags & NET_FLAG_TCP_OUTGOING != 0 && proto.is_tcp(),
        udp_connected: flags & NET_FLAG_UDP_CONNECTED != 0 && !proto.is_tcp(),
        payload: Vec::new(),
    })
}

fn decode_exec_details(r: &Reader<'_>) -> ExecDetails {
    let flags = r.u32(36);
    let exe_magic = r.u64(48);
    let exe_nlink = r.u32(56);
    let argc = r.u32(60);
    let mount_prefix_len = usize::from(r.u16(68));
    let exe_len = usize::from(r.u16(70));
    let cwd_len = usize::from(r.u16(72));
    let cgroup_len = usize::from(r.u16(74));
    let argv_len = r.u32(76) as usize;

    let mut at = EXEC_DATA_OFFSET;
    let exe = r.slice(at, exe_len).to_vec();
    at += exe_len;
    let cwd = r.slice(at, cwd_len).to_vec();
    at += cwd_len;
    let cgroup_text = String::from_utf8_lossy(r.slice(at, cgroup_len))
        .trim_end_matches('\n')
        .to_owned();
    at += cgroup_len;
    let area = r.slice(at, argv_len);

    let argv = split_argv(area);
    let argv_truncated =
        flags & (FLAG_ARGV_TRUNCATED | FLAG_ARGV_UNREADABLE) != 0 || argv.len() != argc as usize;
    let mount_point = exe
        .get(..mount_prefix_len.min(exe.len()))
        .unwrap_or_default();
    let exe_kind = exe_kind(flags, exe_magic, exe_nlink, mount_point);

    ExecDetails {
        exe,
        exe_truncated: flags & FLAG_EXE_TRUNCATED != 0,
        argv,
        argc,
        argv_truncated,
        cwd,
        cwd_truncated: flags & FLAG_CWD_TRUNCATED != 0,
        uid: r.u32(28),
        gid: r.u32(32),
        cgroup_id: r.u64(40),
        cgroup_text,
        exe_kind,
    }
}

/// Splits the argument area (NUL-terminated strings back to back) into
/// arguments. A cut area ends without NUL; its last argument is kept partial.
pub fn split_argv(area: &[u8]) -> Vec<Vec<u8>> {
    if area.is_empty() {
        return Vec::new();
    }
    let body = area.strip_suffix(&[0]).unwrap_or(area);
    body.split(|&byte| byte == 0).map(<[u8]>::to_vec).collect()
}

/// Decides what kind of file was executed from kernel facts: the mount it
/// lives on (kernel-internal for memfd), its link count, its file system
/// and where that file system is mounted, and whether the exec named a
/// directory descriptor. When several apply the first in that order wins.
pub fn exe_kind(flags: u32, magic: u64, nlink: u32, mount_point: &[u8]) -> ExeKind {
    let shmem = magic == TMPFS_MAGIC || magic == HUGETLBFS_MAGIC;
    if flags & FLAG_EXE_INTERNAL_MOUNT != 0 && shmem {
        ExeKind::Memfd
    } else if nlink == 0 {
        ExeKind::Deleted
    } else if magic == TMPFS_MAGIC && mount_point == b"/dev/shm" {
        ExeKind::DevShm
    } else if flags & FLAG_EXEC_FDPATH != 0 {
        ExeKind::Fd
    } else {
        ExeKind::Regular
    }
}

fn decode_file(r: &Reader<'_>, pid: u32, start_ticks: Option<u64>, time_ns: u64) -> FileFact {
    let action = match r.u32(24) {
        FILE_CREATE => FileAction::Create,
        FILE_DELETE => FileAction::Delete,
        FILE_RENAME => FileAction::Rename,
        FILE_MODIFY => FileAction::Modify,
        // The programs write only the four actions above.
        _ => FileAction::Modify,
    };
    let path_len = usize::from(r.u16(32));
    let new_path_len = usize::from(r.u16(34));
    let path = r.slice(FILE_DATA_OFFSET, path_len).to_vec();
    let new_path = (action == FileAction::Rename)
        .then(|| r.slice(FILE_DATA_OFFSET + path_len, new_path_len).to_vec());
    FileFact {
        action,
        pid,
        start_ticks,
        path,
        new_path,
        time_ns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Identity;
    impl BootClock for Identity {
        fn to_epoch_ns(&self, boot_ns: u64) -> u64 {
            boot_ns
        }
    }

    fn exec_record(
        flags: u32,
        exe: &[u8],
        cwd: &[u8],
        cgroup: &[u8],
        argv: &[u8],
        argc: u32,
    ) -> Vec<u8> {
        let mut rec = vec![0u8; EXEC_DATA_OFFSET];
        rec[0..4].copy_from_slice(&EVENT_EXEC.to_ne_bytes());
        rec[4..8].copy_from_slice(&42u32.to_ne_bytes());
        rec[8..16].copy_from_slice(&7u64.to_ne_bytes());
        rec[16..24].copy_from_slice(&99u64.to_ne_bytes());
        rec[24..28].copy_from_slice(&1u32.to_ne_bytes());
        rec[28..32].copy_from_slice(&1000u32.to_ne_bytes());
        rec[32..36].copy_from_slice(&100u32.to_ne_bytes());
        rec[36..40].copy_from_slice(&flags.to_ne_bytes());
        rec[40..48].copy_from_slice(&5u64.to_ne_bytes());
        rec[56..60].copy_from_slice(&1u32.to_ne_bytes());
        rec[60..64].copy_from_slice(&argc.to_ne_bytes());
        rec[70..72].copy_from_slice(&(exe.len() as u16).to_ne_bytes());
        rec[72..74].copy_from_slice(&(cwd.len() as u16).to_ne_bytes());
        rec[74..76].copy_from_slice(&(cgroup.len() as u16).to_ne_bytes());
        rec[76..80].copy_from_slice(&(argv.len() as u32).to_ne_bytes());
        for part in [exe, cwd, cgroup, argv] {
            rec.extend_from_slice(part);
        }
        rec
    }

    #[test]
    fn exec_record_decodes_every_field() {
        let rec = exec_record(
            0,
            b"/bin/ls",
            b"/tmp",
            b"4:memory:/docker/abc\n0::/\n",
            b"ls\0-l\0",
            2,
        );
        let Fact::Exec(exec) = decode(&rec, &Identity).unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(exec.pid, 42);
        assert_eq!(exec.ppid, Some(1));
        assert_eq!(exec.start_ticks, Some(99));
        assert_eq!(exec.time_ns, 7);
        let details = exec.details.unwrap();
        assert_eq!(details.exe, b"/bin/ls");
        assert_eq!(details.cwd, b"/tmp");
        assert_eq!(details.cgroup_text, "4:memory:/docker/abc\n0::/");
        assert_eq!(details.argv, vec![b"ls".to_vec(), b"-l".to_vec()]);
        assert!(!details.argv_truncated);
        assert_eq!(
            (details.uid, details.gid, details.cgroup_id),
            (1000, 100, 5)
        );
    }

    #[test]
    fn cut_argv_keeps_partial_last_argument() {
        let rec = exec_record(FLAG_ARGV_TRUNCATED, b"/bin/x", b"/", b"", b"x\0abc", 3);
        let Fact::Exec(exec) = decode(&rec, &Identity).unwrap() else {
            panic!("not an exec")
        };
        let details = exec.details.unwrap();
        assert_eq!(details.argv, vec![b"x".to_vec(), b"abc".to_vec()]);
        assert_eq!(details.argc, 3);
        assert!(details.argv_truncated);
    }

    #[test]
    fn short_record_is_rejected() {
        let rec = exec_record(0, b"", b"", b"", b"", 0);
        assert_eq!(
            decode(&rec[..40], &Identity),
            Err(DecodeError::Short {
                kind: EVENT_EXEC,
                len: 40
            })
        );
    }

    #[test]
    fn exe_kind_prefers_memfd_then_deleted() {
        assert_eq!(
            exe_kind(
                FLAG_EXE_INTERNAL_MOUNT | FLAG_EXEC_FDPATH,
                TMPFS_MAGIC,
                0,
                b""
            ),
            ExeKind::Memfd
        );
        assert_eq!(exe_kind(FLAG_EXEC_FDPATH, 0xef53, 0, b""), ExeKind::Deleted);
        assert_eq!(exe_kind(0, TMPFS_MAGIC, 1, b"/dev/shm"), ExeKind::DevShm);
        assert_eq!(exe_kind(0, TMPFS_MAGIC, 1, b"/run"), ExeKind::Regular);
        assert_eq!(exe_kind(FLAG_EXEC_FDPATH, 0xef53, 1, b""), ExeKind::Fd);
    }

    fn net_record(action: u32, family: u16, protocol: u16, flags: u32) -> Vec<u8> {
        let mut rec = vec![0u8; NET_EVENT_LEN];
        rec[0..4].copy_from_slice(&EVENT_NET.to_ne_bytes());
        rec[4..8].copy_from_slice(&4242u32.to_ne_bytes());
        rec[8..16].copy_from_slice(&7u64.to_ne_bytes());
        rec[16..24].copy_from_slice(&99u64.to_ne_bytes());
        rec[24..28].copy_from_slice(&action.to_ne_bytes());
        rec[28..32].copy_from_slice(&flags.to_ne_bytes());
        rec[32..36].copy_from_slice(&4026531993u32.to_ne_bytes());
        rec[36..38].copy_from_slice(&family.to_ne_bytes());
        rec[38..40].copy_from_slice(&protocol.to_ne_bytes());
        rec[40..42].copy_from_slice(&40000u16.to_ne_bytes());
        rec[42..44].copy_from_slice(&53u16.to_ne_bytes());
        rec[88..92].copy_from_slice(b"curl");
        rec
    }

    #[test]
    fn tcp4_connect_decodes() {
        let mut rec = net_record(NET_TCP_CONNECT, AF_INET, IPPROTO_TCP, 1);
        rec[48..52].copy_from_slice(&[10, 0, 0, 2]);
        rec[64..68].copy_from_slice(&[10, 0, 0, 9]);
        let Fact::Net(event) = decode(&rec, &Identity).unwrap() else {
            panic!("not a network fact");
        };
        assert_eq!(event.action, KernelAction::TcpConnect);
        assert_eq!(event.proto, Proto::Tcp4);
        assert_eq!(event.local, "10.0.0.2:40000".parse().unwrap());
        assert_eq!(event.remote, "10.0.0.9:53".parse().unwrap());
        assert_eq!(event.netns, 4026531993);
        assert_eq!((event.pid, event.start_ticks), (4242, 99));
        assert_eq!(event.comm, "curl");
        assert!(event.outgoing);
        assert!(!event.udp_connected);
    }

    #[test]
    fn udp6_receive_decodes() {
        let mut rec = net_record(NET_UDP_RECV, AF_INET6, IPPROTO_UDP, NET_FLAG_UDP_CONNECTED);
        rec[48..64].copy_from_slice(&Ipv6Addr::LOCALHOST.octets());
        rec[64..80].copy_from_slice(&"fd00::53".parse::<Ipv6Addr>().unwrap().octets());
        let Fact::Net(event) = decode(&rec, &Identity).unwrap() else {
            panic!("not a network fact");
        };
        assert_eq!(event.action, KernelAction::UdpReceive);
        assert_eq!(event.proto, Proto::Udp6);
        assert_eq!(event.local, "[::1]:40000".parse().unwrap());
        assert_eq!(event.remote, "[fd00::53]:53".parse().unwrap());
        assert!(event.udp_connected);
        assert!(!event.outgoing, "direction of UDP comes from the action");
    }

    #[test]
    fn net_record_with_unknown_values_is_rejected() {
        for (action, family, protocol) in [
            (NET_TCP_CONNECT, 1, IPPROTO_TCP),
            (NET_TCP_CONNECT, AF_INET, 132),
            (NET_UDP_SEND, AF_INET, IPPROTO_TCP),
            (NET_TCP_CLOSE, AF_INET, IPPROTO_UDP),
            (9, AF_INET, IPPROTO_TCP),
        ] {
            let rec = net_record(action, family, protocol, 0);
            assert_eq!(
                decode(&rec, &Identity),
                Err(DecodeError::BadNetRecord {
                    action,
                    family,
                    protocol
                })
            );
        }
        let short = &net_record(NET_TCP_CONNECT, AF_INET, IPPROTO_TCP, 0)[..80];
        assert!(matches!(
            decode(short, &Identity),
            Err(DecodeError::Short {
                kind: EVENT_NET,
                ..
            })
        ));
    }
}
