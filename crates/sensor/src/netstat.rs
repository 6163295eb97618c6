//! `picket-sensor netstat`: every socket of every network namespace on the
//! host, with the process and container that hold it.
//!
//! The same [`snapshot`] feeds the `NETSTAT_REP` reply of the platform's
//! `netstat` task ([`netstat_record`]). Sockets are read as the polling tier
//! reads them (`$HOST_FS/proc/<pid>/net/*` of one process per namespace) and
//! owners are found by scanning `fd/*` of every process, because a process may
//! hold a socket of a namespace it is not in.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use picket_event::{types, Record};
use serde_json::{json, Value};

use crate::collect::net::discover;
use crate::collect::net::procfs::{self, tcp_state, Proto};
use crate::collect::net::{Attributor, ContainerLookup, ProcessContext};

/// One socket with its owner.
#[derive(Debug, Clone)]
pub struct SocketRow {
    pub proto: Proto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: &'static str,
    pub uid: u32,
    pub inode: u64,
    pub netns: u64,
    /// `None` for sockets no fd refers to (TIME_WAIT, accept queue) or whose
    /// process exited during the snapshot.
    pub process: Option<ProcessContext>,
}

/// Reads every socket of the host. `net_ns` adds namespaces that have no
/// process but a `NET_NS` file (read by joining them, which needs
/// CAP_SYS_ADMIN).
pub fn snapshot(
    host_fs: &Path,
    net_ns: Option<&Path>,
    containers: Arc<dyn ContainerLookup>,
) -> Vec<SocketRow> {
    let proc_root = host_fs.join("proc");
    let discovery = discover::discover(&proc_root, net_ns);
    let all_pids: Vec<u32> = discover::process_namespaces(&proc_root)
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    let owners = procfs::socket_owners(&proc_root, &all_pids);
    let mut attributor = Attributor::new(host_fs, containers);

    let mut rows = Vec::new();
    for netns in discovery.namespaces.values() {
        let Some(entries) = read_namespace(&proc_root, netns) else {
            continue;
        };
        for entry in entries {
            let process = owners
                .get(&entry.inode)
                .filter(|_| entry.inode != 0)
                .and_then(|&pid| attributor.context(pid));
            rows.push(SocketRow {
                proto: entry.proto,
                local: entry.local,
                remote: entry.remote,
                state: state_name(entry.proto, entry.state),
                uid: entry.uid,
                inode: entry.inode,
                netns: netns.inode,
                process,
            });
        }
    }
    rows.sort_by_key(|row| (row.netns, row.proto, row.local, row.remote));
    rows
}

fn read_namespace(proc_root: &Path, netns: &discover::Netns) -> Option<Vec<procfs::SocketEntry>> {
    if crate::collect::net::poll::namespace_without_sockets(proc_root, netns, true) {
        return Some(Vec::new());
    }
    for &pid in netns.pids.iter().take(4) {
        let pid_dir = proc_root.join(pid.to_string());
        if let Ok((entries, _)) = procfs::read_tables(&pid_dir.join("net")) {
            if discover::namespace_inode(&pid_dir.join("ns/net")) == Some(netns.inode) {
                return Some(entries);
            }
        }
    }
    let file = netns.file.as_ref()?;
    crate::collect::net::sys::run_in_netns(file, || {
        procfs::read_tables(Path::new("/proc/thread-self/net")).map_err(io::Error::other)
    })
    .ok()
    .map(|(entries, _)| entries)
}

fn state_name(proto: Proto, state: u8) -> &'static str {
    if proto.is_tcp() {
        tcp_state::name(state)
    } else if state == tcp_state::ESTABLISHED {
        "CONNECTED"
    } else {
        "UNCONNECTED"
    }
}

/// Short container label for the table: name, else the first 12 characters
/// of the id, else `-` for host processes.
fn container_label(process: Option<&ProcessContext>) -> String {
    let Some(container) = process.and_then(|p| p.container.as_ref()) else {
        return "-".to_owned();
    };
    if let Some(name) = container
        .get(types::container::NAME)
        .and_then(Value::as_str)
    {
        return name.to_owned();
    }
    container
        .get(types::container::ID)
        .and_then(Value::as_str)
        .map(|id| id.chars().take(12).collect())
        .unwrap_or_else(|| "?".to_owned())
}

/// Prints the snapshot as a table to `out`.
pub fn run(
    host_fs: &Path,
    net_ns: Option<&Path>,
    containers: Arc<dyn ContainerLookup>,
    out: &mut dyn Write,
) -> io::Result<()> {
    let rows = snapshot(host_fs, net_ns, containers);
    writeln!(
        out,
        "{:<5} {:<45} {:<45} {:<12} {:>7} {:<16} {:<20} NETNS",
        "PROTO", "LOCAL", "REMOTE", "STATE", "PID", "COMMAND", "CONTAINER"
    )?;
    for row in &rows {
        let (pid, comm) = match &row.process {
            Some(process) => (process.pid.to_string(), process.comm.clone()),
            None => ("-".to_owned(), "-".to_owned()),
        };
        writeln!(
            out,
            "{:<5} {:<45} {:<45} {:<12} {:>7} {:<16} {:<20} {}",
            row.proto.protocol_name(),
            row.local.to_string(),
            row.remote.to_string(),
            row.state,
            pid,
            comm.escape_debug().to_string(),
            container_label(row.process.as_ref()),
            row.netns
        )?;
    }
    Ok(())
}

/// Builds the `NETSTAT_REP` record of a snapshot.
pub fn netstat_record(rows: &[SocketRow], hostname: &str) -> Record {
    let activity: Vec<Value> = rows
        .iter()
        .map(|row| {
            let mut entry = json!({
                "SOURCE": { "IP_ADDRESS": row.local.ip().to_string(), "PORT": row.local.port() },
                "DESTINATION": { "IP_ADDRESS": row.remote.ip().to_string(), "PORT": row.remote.port() },
                "PROTOCOL": row.proto.protocol_name(),
                "STATE": row.state,
                "NETWORK_NAMESPACE": row.netns,
            });
            if let Some(process) = &row.process {
                entry["PROCESS_ID"] = json!(process.pid);
                if let Some(container) = &process.container {
                    entry[types::container::KEY] = container.clone();
                }
            }
            entry
        })
        .collect();
    let mut record = Record::new(types::NETSTAT_REP, hostname);
    record.set("NETWORK_ACTIVITY", Value::Array(activity));
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::net::NoContainers;

    #[test]
    fn netstat_lists_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let rows = snapshot(Path::new("/"), None, Arc::new(NoContainers));
        let row = rows
            .iter()
            .find(|row| row.proto == Proto::Tcp4 && row.local == local)
            .expect("listener in snapshot");
        assert_eq!(row.state, "LISTEN");
        assert_eq!(
            row.process.as_ref().map(|p| p.pid),
            Some(std::process::id())
        );

        let mut out = Vec::new();
        run(Path::new("/"), None, Arc::new(NoContainers), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let line = text
            .lines()
            .find(|line| line.contains(&local.to_string()))
            .expect("listener line in table");
        assert!(line.contains(&std::process::id().to_string()), "{line}");

        let record = netstat_record(&rows, "node");
        assert_eq!(record.routing.event_type, "NETSTAT_REP");
        let found = record.event["NETWORK_ACTIVITY"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["SOURCE"]["PORT"] == local.port() && e["PROCESS_ID"] == std::process::id());
        assert!(found);
    }
}
