//! Container and pod attribution: cgroup content to runtime, container id and
//! pod uid, then metadata from the runtime's own files under `$HOST_FS`.
//!
//! The steps, each in its own module:
//! - [`cgroup`]: `/proc/<pid>/cgroup` content or a bare cgroup path to a
//!   [`CgroupAttribution`] (container id, runtime hint, pod uid, outer id).
//! - `metadata`: Docker `config.v2.json`, containerd bundle `config.json`
//!   annotations, CRI-O `userdata/config.json` and the kubelet's
//!   `/var/log/containers` links, all read under `$HOST_FS` and never written.
//! - `nested`: for a container inside another one (kind and minikube nodes,
//!   Docker in Docker), the same files read through the outer container's
//!   root directory.
//! - [`ContainerResolver`]: these steps behind a per-container cache that
//!   retries a failed or partial lookup after a back-off.
//! - [`find_host_cgroup_prefix`]: the host path that resolves the `/..` paths
//!   a sensor in a private cgroup namespace reads.
//! - [`explain_cgroup`]: the same decision as one JSON object, for
//!   `picket-sensor explain cgroup`.
//!
//! Nothing here depends on when a container started: metadata is read on the
//! first lookup of an id, so containers that ran before the sensor resolve the
//! same way as new ones.

pub mod cgroup;
mod explain;
mod host_cgroup;
mod metadata;
mod nested;
mod resolver;

use std::path::PathBuf;

use picket_event::types::container as keys;
use serde_json::{Map, Value};

pub use cgroup::{parse_cgroup, CgroupAttribution};
pub use explain::{explain_cgroup, explain_cgroup_with_metadata};
pub use host_cgroup::{find_host_cgroup_prefix, HostCgroupError};
pub use metadata::MetadataError;
pub use resolver::{ContainerResolver, ResolverConfig};

/// Container runtime (or container manager) that runs a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    Lxc,
    SystemdNspawn,
    Garden,
}

impl Runtime {
    /// Name used in the `RUNTIME` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Podman => "podman",
            Runtime::Lxc => "lxc",
            Runtime::SystemdNspawn => "systemd-nspawn",
            Runtime::Garden => "garden",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Container of a process, as the sensor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerInfo {
    /// Full container id (64 hex for Docker, containerd and CRI-O; a name for
    /// LXC and systemd-nspawn; the handle for Garden).
    pub id: String,
    /// Runtime's name for the container: Docker's name without the leading
    /// `/`, CRI-O's `k8s_...` name, the Kubernetes container name for
    /// containerd, the id for LXC and systemd-nspawn.
    pub name: Option<String>,
    /// Image reference the container was started from, as the user wrote it
    /// (Docker `Config.Image`, the CRI image name).
    pub image: Option<String>,
    /// Runtime from the metadata found, else from the cgroup path shape.
    pub runtime: Option<Runtime>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub k8s_container_name: Option<String>,
    /// Outermost container when containers are nested (Docker in Docker,
    /// kind nodes). Not part of the `CONTAINER` object.
    pub outer_id: Option<String>,
    /// Host paths (under `$HOST_FS`) the metadata was read from.
    pub metadata_files: Vec<PathBuf>,
}

impl ContainerInfo {
    /// Builds the `CONTAINER` object of an event. Unknown fields are left out.
    pub fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert(keys::ID.to_string(), Value::from(self.id.as_str()));
        let optional = [
            (keys::NAME, self.name.as_deref()),
            (keys::IMAGE, self.image.as_deref()),
            (keys::RUNTIME, self.runtime.map(Runtime::as_str)),
            (keys::POD_NAME, self.pod_name.as_deref()),
            (keys::POD_NAMESPACE, self.pod_namespace.as_deref()),
            (keys::POD_UID, self.pod_uid.as_deref()),
            (keys::K8S_CONTAINER_NAME, self.k8s_container_name.as_deref()),
        ];
        for (key, value) in optional {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                object.insert(key.to_string(), Value::from(value));
            }
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_json_omits_unknown_fields() {
        let info = ContainerInfo {
            id: "abc".to_string(),
            name: Some("web".to_string()),
            runtime: Some(Runtime::Docker),
            image: Some(String::new()),
            ..Default::default()
        };
        let json = info.to_json();
        assert_eq!(json["ID"], "abc");
        assert_eq!(json["NAME"], "web");
        assert_eq!(json["RUNTIME"], "docker");
        assert!(
            json.get("IMAGE").is_none(),
            "empty image must be left out: {json}"
        );
        assert!(json.get("POD_NAME").is_none());
        assert_eq!(json.as_object().map(Map::len), Some(3));
    }

    #[test]
    fn to_json_carries_pod_fields() {
        let info = ContainerInfo {
            id: "abc".to_string(),
            pod_name: Some("web-0".to_string()),
            pod_namespace: Some("shop".to_string()),
            pod_uid: Some("7e241a28-b013-481e-9e00-cbe6f00b5eaf".to_string()),
            k8s_container_name: Some("nginx".to_string()),
            ..Default::default()
        };
        let json = info.to_json();
        assert_eq!(json["POD_NAME"], "web-0");
        assert_eq!(json["POD_NAMESPACE"], "shop");
        assert_eq!(json["POD_UID"], "7e241a28-b013-481e-9e00-cbe6f00b5eaf");
        assert_eq!(json["K8S_CONTAINER_NAME"], "nginx");
    }
}
