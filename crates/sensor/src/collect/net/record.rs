//! Process attribution and the shape of network records.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use picket_event::{atom, types, Record};
use serde_json::{json, Value};

use super::procfs::{self, Proto};
use super::ContainerLookup;

/// The process a socket belongs to, with what records carry about it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessContext {
    pub pid: u32,
    pub start_ticks: u64,
    pub comm: String,
    /// `routing/this` of the process.
    pub atom: String,
    /// `event/CONTAINER`, `None` for host processes.
    pub container: Option<Value>,
}

/// Builds [`ProcessContext`]s from `$HOST_FS/proc`, cached per (pid, start
/// time) so a reused pid is looked up again.
pub struct Attributor {
    proc_root: PathBuf,
    boot_id: String,
    containers: Arc<dyn ContainerLookup>,
    cache: HashMap<u32, (Instant, ProcessContext)>,
}

/// Age after which a cached container lookup is repeated. The resolver
/// fills metadata that the runtime writes after the container started, so a
/// lookup of a new process may improve a moment later.
const CONTAINER_REFRESH: Duration = Duration::from_secs(5);

/// Cache entries kept before the cache is cleared; pids come and go, and a
/// cleared cache only costs rereading `stat` and `cgroup`.
const MAX_CACHED_PROCESSES: usize = 8192;

impl Attributor {
    pub fn new(host_fs: &Path, containers: Arc<dyn ContainerLookup>) -> Self {
        let boot_id = std::fs::read_to_string(host_fs.join("proc/sys/kernel/random/boot_id"))
            .map(|text| text.trim().to_owned())
            .unwrap_or_default();
        Attributor {
            proc_root: host_fs.join("proc"),
            boot_id,
            containers,
            cache: HashMap::new(),
        }
    }

    /// Context of `pid`, or `None` when it exited.
    pub fn context(&mut self, pid: u32) -> Option<ProcessContext> {
        let identity = procfs::process_identity(&self.proc_root, pid)?;
        if let Some((resolved_at, cached)) = self.cache.get(&pid) {
            if cached.start_ticks == identity.start_ticks
                && resolved_at.elapsed() < CONTAINER_REFRESH
            {
                return Some(cached.clone());
            }
        }

        let cgroup = std::fs::read_to_string(self.proc_root.join(pid.to_string()).join("cgroup"))
            .unwrap_or_default();
        let context = ProcessContext {
            pid,
            start_ticks: identity.start_ticks,
            atom: atom::process_atom(&self.boot_id, pid, identity.start_ticks),
            comm: identity.comm,
            container: self.containers.container_json(&cgroup),
        };
        if self.cache.len() >= MAX_CACHED_PROCESSES {
            self.cache.clear();
        }
        self.cache.insert(pid, (Instant::now(), context.clone()));
        Some(context)
    }

    /// Context of a process that exited before it could be read: its pid,
    /// start time and command name as a kernel report gave them, and no
    /// container.
    pub fn gone_process(&self, pid: u32, start_ticks: u64, comm: &str) -> ProcessContext {
        ProcessContext {
            pid,
            start_ticks,
            comm: comm.to_owned(),
            atom: atom::process_atom(&self.boot_id, pid, start_ticks),
            container: None,
        }
    }

    /// Returns the container of a namespace for records whose process is
    /// unknown; see [`shared_container`].
    pub fn namespace_container(&mut self, pids: &[u32]) -> Option<Value> {
        let contexts: Vec<ProcessContext> =
            pids.iter().filter_map(|&pid| self.context(pid)).collect();
        shared_container(&contexts)
    }
}

/// Returns the container that every process of a namespace belongs to.
/// `None` when they disagree or are host processes.
///
/// A Kubernetes pod's namespace also contains its sandbox ("pause") container,
/// which is left out, so a pod with one workload container gives that
/// container. A pod with several gives an object with the pod's fields
/// only (`POD_NAME`, `POD_NAMESPACE`, `POD_UID`), without a container ID.
pub(crate) fn shared_container(contexts: &[ProcessContext]) -> Option<Value> {
    if let Some(container) = agreed_container(contexts.iter()) {
        return Some(container);
    }
    let workload = contexts.iter().filter(|context| !is_pod_sandbox(context));
    if let Some(container) = agreed_container(workload) {
        return Some(container);
    }
    let pod_uid = |context: &ProcessContext| {
        context
            .container
            .as_ref()
            .and_then(|c| c.get(types::container::POD_UID))
            .cloned()
    };
    let first = pod_uid(contexts.first()?)?;
    if !contexts
        .iter()
        .all(|context| pod_uid(context) == Some(first.clone()))
    {
        return None;
    }
    let container = contexts[0].container.as_ref()?;
    let mut pod = serde_json::Map::new();
    for key in [
        types::container::POD_NAME,
        types::container::POD_NAMESPACE,
        types::container::POD_UID,
    ] {
        if let Some(value) = container.get(key) {
            pod.insert(key.to_owned(), value.clone());
        }
    }
    Some(Value::Object(pod))
}

/// Returns whether a process is a pod's sandbox: the `pause` program, or a
/// pod's container with no Kubernetes container name (CRI runtimes give a
/// sandbox none) or the name `POD` (the kubelet's Docker runtime).
fn is_pod_sandbox(context: &ProcessContext) -> bool {
    if context.comm == "pause" {
        return true;
    }
    let Some(container) = &context.container else {
        return false;
    };
    if container.get(types::container::POD_UID).is_none() {
        return false;
    }
    match container.get(types::container::K8S_CONTAINER_NAME) {
        None => true,
        Some(name) => name == "POD",
    }
}

/// Returns the container all of `contexts` share, if there is at least one
/// and they agree (all in one container, or all on the host: `None`).
fn agreed_container<'a>(contexts: impl Iterator<Item = &'a ProcessContext>) -> Option<Value> {
    let mut agreed: Option<&Option<Value>> = None;
    for context in contexts {
        let id = context.container.as_ref().map(container_id);
        match agreed {
            None => agreed = Some(&context.container),
            Some(previous) if previous.as_ref().map(container_id) == id => {}
            Some(_) => return None,
        }
    }
    agreed.cloned().flatten()
}

fn container_id(container: &Value) -> Value {
    container
        .get(types::container::ID)
        .cloned()
        .unwrap_or(Value::Null)
}

/// `{"IP_ADDRESS": "...", "PORT": n}`.
pub(crate) fn endpoint(addr: &SocketAddr) -> Value {
    json!({ "IP_ADDRESS": addr.ip().to_string(), "PORT": addr.port() })
}

/// Sets the process fields of a record: `PROCESS_ID`, `routing/this` and
/// `CONTAINER` (left out for host processes).
pub(crate) fn set_process(record: &mut Record, process: &ProcessContext) {
    record.set("PROCESS_ID", process.pid);
    record.routing.this = Some(process.atom.clone());
    if let Some(container) = &process.container {
        record.set(types::container::KEY, container.clone());
    }
}

/// One connection as records describe it: initiator first.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Connection {
    pub proto: Proto,
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub outgoing: bool,
    pub state: u8,
    pub netns: u64,
}

impl Connection {
    pub(crate) fn new(
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
        outgoing: bool,
        state: u8,
        netns: u64,
    ) -> Self {
        let (source, destination) = if outgoing {
            (local, remote)
        } else {
            (remote, local)
        };
        Connection {
            proto,
            source,
            destination,
            outgoing,
            state,
            netns,
        }
    }

    fn state_name(&self) -> &'static str {
        if self.proto.is_tcp() {
            procfs::tcp_state::name(self.state)
        } else if self.state == procfs::tcp_state::ESTABLISHED {
            "CONNECTED"
        } else {
            "UNCONNECTED"
        }
    }

    /// Builds a `NEW_*` or `TERMINATE_*` record.
    pub(crate) fn record(
        &self,
        event_type: &str,
        hostname: &str,
        process: Option<&ProcessContext>,
        namespace_container: Option<&Value>,
    ) -> Record {
        let mut record = Record::new(event_type, hostname);
        let event_time = record.routing.event_time;
        record
            .set("SOURCE", endpoint(&self.source))
            .set("DESTINATION", endpoint(&self.destination))
            .set("IS_OUTGOING", u8::from(self.outgoing))
            .set("STATE", self.state_name())
            .set("PROTOCOL", self.proto.protocol_name())
            .set("NETWORK_NAMESPACE", self.netns)
            .set("TIMESTAMP", event_time);
        if !self.proto.is_tcp() {
            // The platform's UDP events name the local endpoint this way.
            let local = if self.outgoing {
                self.source
            } else {
                self.destination
            };
            record
                .set("IP_ADDRESS", local.ip().to_string())
                .set("PORT", local.port());
        }
        match process {
            Some(process) => set_process(&mut record, process),
            None => {
                if let Some(container) = namespace_container {
                    record.set(types::container::KEY, container.clone());
                }
            }
        }
        record
    }

    /// Builds one `NETWORK_ACTIVITY` entry.
    pub(crate) fn activity(&self, first_seen_ms: u64) -> Value {
        json!({
            "SOURCE": endpoint(&self.source),
            "DESTINATION": endpoint(&self.destination),
            "IS_OUTGOING": u8::from(self.outgoing),
            "PROTOCOL": self.proto.protocol_name(),
            "STATE": self.state_name(),
            "TIMESTAMP": first_seen_ms,
        })
    }
}

/// Event type for a new connection of `proto`.
pub(crate) fn new_event_type(proto: Proto) -> &'static str {
    match proto {
        Proto::Tcp4 => types::NEW_TCP4_CONNECTION,
        Proto::Tcp6 => types::NEW_TCP6_CONNECTION,
        Proto::Udp4 => types::NEW_UDP4_CONNECTION,
        Proto::Udp6 => types::NEW_UDP6_CONNECTION,
    }
}

/// Event type for a closed TCP connection. UDP has no terminate event.
pub(crate) fn terminate_event_type(proto: Proto) -> Option<&'static str> {
    match proto {
        Proto::Tcp4 => Some(types::TERMINATE_TCP4_CONNECTION),
        Proto::Tcp6 => Some(types::TERMINATE_TCP6_CONNECTION),
        Proto::Udp4 | Proto::Udp6 => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(comm: &str, container: Option<Value>) -> ProcessContext {
        ProcessContext {
            pid: 1,
            start_ticks: 1,
            comm: comm.into(),
            atom: "a".repeat(32),
            container,
        }
    }

    fn in_pod(id: &str, pod_uid: &str) -> Option<Value> {
        Some(json!({
            "ID": id,
            "K8S_CONTAINER_NAME": id,
            "POD_NAME": format!("pod-{pod_uid}"),
            "POD_NAMESPACE": "shop",
            "POD_UID": pod_uid,
        }))
    }

    #[test]
    fn shared_container_of_one_container() {
        let web = in_pod("web", "u1");
        let contexts = [process("nginx", web.clone()), process("sh", web.clone())];
        assert_eq!(shared_container(&contexts), web);
    }

    #[test]
    fn shared_container_skips_pod_sandbox() {
        let contexts = [
            process("pause", in_pod("sandbox", "u1")),
            process("nginx", in_pod("web", "u1")),
        ];
        assert_eq!(shared_container(&contexts), in_pod("web", "u1"));
        // The kubelet's Docker runtime names the sandbox POD; CRI runtimes
        // give it no container name. Its program need not be pause.
        let docker_sandbox = json!({ "ID": "s", "K8S_CONTAINER_NAME": "POD", "POD_UID": "u1" });
        let cri_sandbox = json!({ "ID": "s", "POD_UID": "u1" });
        for sandbox in [docker_sandbox, cri_sandbox] {
            let contexts = [
                process("sleep", Some(sandbox)),
                process("nginx", in_pod("web", "u1")),
            ];
            assert_eq!(shared_container(&contexts), in_pod("web", "u1"));
        }
    }

    #[test]
    fn shared_container_of_pod_with_two_workloads() {
        let contexts = [
            process("pause", in_pod("sandbox", "u1")),
            process("nginx", in_pod("web", "u1")),
            process("envoy", in_pod("proxy", "u1")),
        ];
        let pod = shared_container(&contexts).expect("pod fields");
        assert_eq!(pod.get("ID"), None);
        assert_eq!(pod["POD_NAME"], "pod-u1");
        assert_eq!(pod["POD_NAMESPACE"], "shop");
        assert_eq!(pod["POD_UID"], "u1");
    }

    #[test]
    fn shared_container_none_when_unrelated() {
        let two_pods = [
            process("nginx", in_pod("web", "u1")),
            process("redis", in_pod("db", "u2")),
        ];
        assert_eq!(shared_container(&two_pods), None);
        let container_and_host = [
            process("nginx", Some(json!({ "ID": "web" }))),
            process("sshd", None),
        ];
        assert_eq!(shared_container(&container_and_host), None);
        let host = [process("sshd", None)];
        assert_eq!(shared_container(&host), None);
        assert_eq!(shared_container(&[]), None);
    }
}
