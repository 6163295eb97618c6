//! The netlink process connector tier (`CN_PROC`): fork, exec and exit
//! events from the kernel as they happen.
//!
//! Requirements (Linux `drivers/connector/cn_proc.c`): `CONFIG_PROC_EVENTS`,
//! CAP_NET_ADMIN to join the multicast group, and the initial user and PID
//! namespaces. From any other PID namespace the kernel ignores the listen
//! request without an error, so [`crate::sensor`] checks the namespace before
//! choosing this tier. The events carry pids only: details are read from
//! `/proc` right after, and a process already gone is reported as such.
//! When the socket buffer overflows the kernel drops events and `recv`
//! fails with ENOBUFS; each overflow is sent on as a [`Fact::Dropped`].

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use std::collections::HashMap;

use super::{ExecFact, ExitFact, Fact, ForkFact};
use crate::hostfs::{self, HostFs};
use crate::process::{procfs, Prefetch};

/// `CN_IDX_PROC` and `CN_VAL_PROC` from `<linux/connector.h>`.
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `enum proc_cn_mcast_op` from `<linux/cn_proc.h>`.
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
/// `enum what` of `struct proc_event`.
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
const NLMSG_DONE: u16 = 3;

const NLMSG_HEADER_LEN: usize = 16;
const CN_MSG_HEADER_LEN: usize = 20;
/// `what`, `cpu` and `timestamp_ns` of `struct proc_event`.
const PROC_EVENT_HEADER_LEN: usize = 16;

/// Receive buffer requested for the socket. Exec storms produce three events
/// per process (fork, exec, exit) of about 80 bytes each plus skb overhead.
const RECEIVE_BUFFER: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CnProcError {
    #[error("cannot open the netlink connector socket")]
    Socket(#[source] std::io::Error),
    #[error("cannot subscribe to process events")]
    Subscribe(#[source] std::io::Error),
    #[error("cannot start the netlink thread")]
    Thread(#[source] std::io::Error),
}

/// One decoded process connector event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcEvent {
    Fork {
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
        timestamp_ns: u64,
    },
    Exec {
        pid: u32,
        tgid: u32,
        timestamp_ns: u64,
    },
    Exit {
        pid: u32,
        tgid: u32,
        exit_code: u32,
        timestamp_ns: u64,
    },
    Other,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buf: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buf.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes the netlink messages in one datagram.
pub fn parse_datagram(buf: &[u8]) -> Vec<ProcEvent> {
    let mut events = Vec::new();
    let mut offset = 0;
    while offset + NLMSG_HEADER_LEN <= buf.len() {
        let Some(len) = u32_at(buf, offset).map(|l| l as usize) else {
            break;
        };
        if len < NLMSG_HEADER_LEN || offset + len > buf.len() {
            break;
        }
        let message = &buf[offset + NLMSG_HEADER_LEN..offset + len];
        if let Some(event) = parse_cn_msg(message) {
            events.push(event);
        }
        // Netlink messages are aligned to 4 bytes.
        offset += (len + 3) & !3;
    }
    events
}

fn parse_cn_msg(message: &[u8]) -> Option<ProcEvent> {
    if u32_at(message, 0)? != CN_IDX_PROC || u32_at(message, 4)? != CN_VAL_PROC {
        return None;
    }
    let event = message.get(CN_MSG_HEADER_LEN..)?;
    let what = u32_at(event, 0)?;
    let timestamp_ns = u64_at(event, 8)?;
    let data = PROC_EVENT_HEADER_LEN;
    Some(match what {
        PROC_EVENT_FORK => ProcEvent::Fork {
            parent_tgid: u32_at(event, data + 4)?,
            child_pid: u32_at(event, data + 8)?,
            child_tgid: u32_at(event, data + 12)?,
            timestamp_ns,
        },
        PROC_EVENT_EXEC => ProcEvent::Exec {
            pid: u32_at(event, data)?,
            tgid: u32_at(event, data + 4)?,
            timestamp_ns,
        },
        PROC_EVENT_EXIT => ProcEvent::Exit {
            pid: u32_at(event, data)?,
            tgid: u32_at(event, data + 4)?,
            exit_code: u32_at(event, data + 8)?,
            timestamp_ns,
        },
        _ => ProcEvent::Other,
    })
}

/// Builds the control message that starts or stops the event stream.
fn control_message(op: u32) -> Vec<u8> {
    let payload_len = 4u16;
    let total = (NLMSG_HEADER_LEN + CN_MSG_HEADER_LEN + payload_len as usize) as u32;
    let mut buf = Vec::with_capacity(total as usize);
    buf.extend_from_slice(&total.to_ne_bytes());
    buf.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    buf.extend_from_slice(&0u16.to_ne_bytes()); // flags
    buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
    buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel assigns ours
    buf.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    buf.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // seq
    buf.extend_from_slice(&0u32.to_ne_bytes()); // ack
    buf.extend_from_slice(&payload_len.to_ne_bytes());
    buf.extend_from_slice(&0u16.to_ne_bytes()); // flags
    buf.extend_from_slice(&op.to_ne_bytes());
    buf
}

/// Most forked processes remembered; past it the map is cleared (a missed
/// exit leaves an entry behind).
const MAX_FORKS: usize = 131_072;

/// Data from the fork event of a process: its parent, and its start time
/// when the child could still be read.
#[derive(Debug, Clone, Copy)]
struct Forked {
    ppid: u32,
    start_ticks: Option<u64>,
}

/// Converts connector events to facts. Thread events are dropped: a fork
/// whose child is not a thread group leader is a new thread, and an exit of
/// a non-leader is a thread's exit.
struct Translator {
    fs: HostFs,
    realtime_offset_ns: i128,
    prefetch: Arc<Prefetch>,
    /// Each process forked since the sensor started and not yet exited. The
    /// start time checks that an exec's `/proc` read is of the same process;
    /// the parent is reported even when that read fails.
    forks: HashMap<u32, Forked>,
}

impl Translator {
    fn wall_ns(&self, monotonic_ns: u64) -> u64 {
        (monotonic_ns as i128 + self.realtime_offset_ns).max(0) as u64
    }

    fn translate(&mut self, event: ProcEvent) -> Option<Fact> {
        match event {
            ProcEvent::Fork {
                parent_tgid,
                child_pid,
                child_tgid,
                timestamp_ns,
            } if child_pid == child_tgid => {
                // The start time is read now, while the child most likely
                // still exists, so its atom is known even if it exits before
                // its exec is handled.
                let start_ticks = procfs::read_start_ticks(&self.fs, child_tgid);
                if self.forks.len() >= MAX_FORKS {
                    self.forks.clear();
                }
                let forked = Forked {
                    ppid: parent_tgid,
                    start_ticks,
                };
                self.forks.insert(child_tgid, forked);
                Some(Fact::Fork(ForkFact {
                    pid: child_tgid,
                    ppid: parent_tgid,
                    start_ticks,
                    time_ns: self.wall_ns(timestamp_ns),
                }))
            }
            // An exec from a non-leader thread makes that thread the leader
            // with the tgid, so the tgid is the process.
            ProcEvent::Exec {
                tgid, timestamp_ns, ..
            } => Some(Fact::Exec(self.exec_fact(tgid, timestamp_ns))),
            ProcEvent::Exit {
                pid,
                tgid,
                exit_code,
                timestamp_ns,
            } if pid == tgid => {
                self.forks.remove(&tgid);
                Some(Fact::Exit(ExitFact {
                    pid: tgid,
                    start_ticks: None,
                    time_ns: self.wall_ns(timestamp_ns),
                    exit_status: Some(exit_code as i32),
                }))
            }
            _ => None,
        }
    }

    /// Reads the process right away and leaves its details in the prefetch
    /// buffer, because a short-lived process is often gone by the time
    /// enrichment gets to it.
    fn exec_fact(&mut self, pid: u32, timestamp_ns: u64) -> ExecFact {
        let time_ns = self.wall_ns(timestamp_ns);
        let forked = self.forks.get(&pid).copied();
        let known_start = forked.and_then(|f| f.start_ticks);
        let mut fact = ExecFact {
            pid,
            ppid: forked.map(|f| f.ppid),
            start_ticks: known_start,
            time_ns,
            details: None,
        };
        if let Ok(info) = procfs::read_process(&self.fs, pid, known_start) {
            fact.ppid = Some(info.ppid);
            fact.start_ticks = Some(info.start_ticks);
            self.prefetch.insert(pid, time_ns, info);
        }
        fact
    }
}

/// Subscribes to process events and starts the receiving thread. Errors
/// here mean the tier is unavailable; the caller falls back.
pub fn start(
    fs: HostFs,
    prefetch: Arc<Prefetch>,
    tx: SyncSender<Fact>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, CnProcError> {
    let socket = hostfs::netlink_connector_socket(CN_IDX_PROC, RECEIVE_BUFFER)
        .map_err(CnProcError::Socket)?;
    hostfs::netlink_send(&socket, &control_message(PROC_CN_MCAST_LISTEN))
        .map_err(CnProcError::Subscribe)?;
    hostfs::set_receive_timeout(&socket, Duration::from_millis(200))
        .map_err(CnProcError::Subscribe)?;

    let translator = Translator {
        fs,
        realtime_offset_ns: hostfs::realtime_offset_ns(),
        prefetch,
        forks: HashMap::new(),
    };
    std::thread::Builder::new()
        .name("cnproc".into())
        .spawn(move || receive_loop(socket, translator, tx, stop))
        .map_err(CnProcError::Thread)
}

fn receive_loop(
    socket: OwnedFd,
    mut translator: Translator,
    tx: SyncSender<Fact>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let len = match hostfs::netlink_receive(&socket, &mut buf) {
            Ok(len) => len,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                // The kernel does not say how many events were lost.
                tracing::debug!("process connector overflowed");
                if tx
                    .send(Fact::Dropped {
                        reason: "cnproc_enobufs",
                        count: 1,
                    })
                    .is_err()
                {
                    break;
                }
                continue;
            }
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) => {
                continue
            }
            Err(e) => {
                tracing::error!(error = %e, "process connector receive failed; netlink tier stopped");
                break;
            }
        };
        for event in parse_datagram(&buf[..len]) {
            if let Some(fact) = translator.translate(event) {
                if tx.send(fact).is_err() {
                    return;
                }
            }
        }
    }
    let _ = hostfs::netlink_send(&socket, &control_message(PROC_CN_MCAST_IGNORE));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(what: u32, data: &[u32]) -> Vec<u8> {
        let mut event = Vec::new();
        event.extend_from_slice(&what.to_ne_bytes());
        event.extend_from_slice(&0u32.to_ne_bytes());
        event.extend_from_slice(&123_456u64.to_ne_bytes());
        for word in data {
            event.extend_from_slice(&word.to_ne_bytes());
        }
        let mut cn = Vec::new();
        cn.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        cn.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        cn.extend_from_slice(&[0u8; 8]);
        cn.extend_from_slice(&(event.len() as u16).to_ne_bytes());
        cn.extend_from_slice(&[0u8; 2]);
        cn.extend_from_slice(&event);
        let mut out = Vec::new();
        out.extend_from_slice(&((16 + cn.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&[0u8; 12]);
        out.extend_from_slice(&cn);
        out
    }

    #[test]
    fn control_message_layout() {
        let message = control_message(PROC_CN_MCAST_LISTEN);
        assert_eq!(message.len(), 40);
        assert_eq!(u32_at(&message, 0), Some(40));
        assert_eq!(u32_at(&message, 36), Some(PROC_CN_MCAST_LISTEN));
    }

    #[test]
    fn fork_exec_exit_decode() {
        assert_eq!(
            parse_datagram(&datagram(PROC_EVENT_FORK, &[10, 10, 20, 20])),
            vec![ProcEvent::Fork {
                parent_tgid: 10,
                child_pid: 20,
                child_tgid: 20,
                timestamp_ns: 123_456
            }]
        );
        assert_eq!(
            parse_datagram(&datagram(PROC_EVENT_EXEC, &[20, 20])),
            vec![ProcEvent::Exec {
                pid: 20,
                tgid: 20,
                timestamp_ns: 123_456
            }]
        );
        assert_eq!(
            parse_datagram(&datagram(PROC_EVENT_EXIT, &[20, 20, 256, 17, 10, 10])),
            vec![ProcEvent::Exit {
                pid: 20,
                tgid: 20,
                exit_code: 256,
                timestamp_ns: 123_456
            }]
        );
    }

    #[test]
    fn truncated_datagram_yields_nothing() {
        let full = datagram(PROC_EVENT_EXEC, &[20, 20]);
        assert!(parse_datagram(&full[..full.len() - 6]).is_empty());
        assert!(parse_datagram(&[1, 2, 3]).is_empty());
    }

    #[test]
    fn thread_events_are_dropped() {
        let mut translator = Translator {
            fs: HostFs::new("/nonexistent"),
            realtime_offset_ns: 0,
            prefetch: Arc::new(Prefetch::default()),
            forks: HashMap::new(),
        };
        let thread_fork = ProcEvent::Fork {
            parent_tgid: 10,
            child_pid: 21,
            child_tgid: 20,
            timestamp_ns: 0,
        };
        let thread_exit = ProcEvent::Exit {
            pid: 21,
            tgid: 20,
            exit_code: 0,
            timestamp_ns: 0,
        };
        assert!(translator.translate(thread_fork).is_none());
        assert!(translator.translate(thread_exit).is_none());
        let leader_exit = ProcEvent::Exit {
            pid: 20,
            tgid: 20,
            exit_code: 0,
            timestamp_ns: 5,
        };
        assert!(matches!(
            translator.translate(leader_exit),
            Some(Fact::Exit(ExitFact { pid: 20, .. }))
        ));
    }

    /// Needs root in the initial PID namespace; runs as a real kernel test.
    #[test]
    fn real_exec_is_received() {
        let in_host_pid_ns = crate::namespaces::compare_with_host(&HostFs::new("/"), "pid")
            == crate::namespaces::NsState::Host;
        if !is_root() || !in_host_pid_ns {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("the process connector test needs root in the host PID namespace");
            }
            println!("skipped: needs root in the host PID namespace");
            return;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(100_000);
        let stop = Arc::new(AtomicBool::new(false));
        let prefetch = Arc::new(Prefetch::default());
        // `start` returns after sending PROC_CN_MCAST_LISTEN, which the
        // kernel handles within that send, so no event after it is missed.
        let handle = start(HostFs::new("/"), prefetch.clone(), tx, stop.clone()).unwrap();

        // Under load (parallel builds, the exec storm tests) the socket can
        // overflow and lose this child's events, which the kernel reports
        // only as ENOBUFS. A new child is tried only after such a reported
        // loss. Missing events without one fail the test.
        let mut outcome = None;
        for _ in 0..5 {
            match receive_child_lifecycle(&rx, &prefetch) {
                ChildLifecycle::LossReported => continue,
                done => {
                    outcome = Some(done);
                    break;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        handle.join().unwrap();

        match outcome {
            Some(ChildLifecycle::Complete) => {}
            Some(ChildLifecycle::Missing {
                pid,
                fork,
                exec,
                exit,
            }) => {
                assert!(fork, "no fork event for {pid}");
                assert!(exec, "no exec event for {pid}");
                assert!(exit, "no exit event for {pid}");
            }
            Some(ChildLifecycle::LossReported) | None => {
                panic!("the process connector reported lost events in 5 attempts")
            }
        }
    }

    enum ChildLifecycle {
        Complete,
        LossReported,
        Missing {
            pid: u32,
            fork: bool,
            exec: bool,
            exit: bool,
        },
    }

    /// Runs `true` and waits for its fork, exec and exit facts. The deadline
    /// is generous because on a loaded host the receive thread works
    /// through every other process's events first.
    fn receive_child_lifecycle(
        rx: &std::sync::mpsc::Receiver<Fact>,
        prefetch: &Prefetch,
    ) -> ChildLifecycle {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success());

        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (mut fork, mut exec, mut exit) = (false, false, false);
        let mut loss = false;
        let mut last_fact = std::time::Instant::now();
        while std::time::Instant::now() < deadline && !(fork && exec && exit) {
            let received = rx.recv_timeout(Duration::from_millis(100));
            if received.is_ok() {
                last_fact = std::time::Instant::now();
            }
            match received {
                Ok(Fact::Fork(f)) if f.pid == pid => {
                    assert_eq!(f.ppid, std::process::id());
                    fork = true;
                }
                Ok(Fact::Exec(e)) if e.pid == pid => {
                    // `true` may exit before or during the read, which
                    // leaves nothing or an empty command line; what was read
                    // is its own, never the parent's from before the exec.
                    if let Some(info) = prefetch.take(pid, e.time_ns) {
                        assert!(
                            info.argv.is_empty() || info.argv == vec![b"true".to_vec()],
                            "{:?}",
                            info.argv
                        );
                    }
                    exec = true;
                }
                Ok(Fact::Exit(e)) if e.pid == pid => {
                    assert_eq!(e.exit_status, Some(0));
                    exit = true;
                }
                Ok(Fact::Dropped { .. }) => loss = true,
                // The receive thread sends facts in kernel order, so once it
                // has been idle for a second after a reported loss, the
                // missing facts are not coming.
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if loss && last_fact.elapsed() > Duration::from_secs(1) =>
                {
                    break
                }
                _ => {}
            }
        }
        if fork && exec && exit {
            ChildLifecycle::Complete
        } else if loss {
            ChildLifecycle::LossReported
        } else {
            ChildLifecycle::Missing {
                pid,
                fork,
                exec,
                exit,
            }
        }
    }

    fn is_root() -> bool {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false)
    }
}
