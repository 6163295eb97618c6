//! Container metadata read from the runtimes' own files under `$HOST_FS`.
//!
//! No socket is used, so this works with only the host's `/` mounted
//! read-only. Files read (paths relative to `$HOST_FS`):
//! - Docker: `var/lib/docker/containers/<id>/config.v2.json` (`Name` with a
//!   leading `/`, `Config.Image`, `Config.Labels`; the kubelet's dockershim and
//!   cri-dockerd store pod identity in the `io.kubernetes.*` labels).
//! - containerd: the OCI bundle `config.json` under
//!   `run/containerd/io.containerd.runtime.v2.task/<namespace>/<id>/` (k3s and
//!   rke2: `run/k3s/containerd/...`), whose `io.kubernetes.cri.*` annotations
//!   carry the pod. `io.kubernetes.cri.sandbox-uid` exists only from containerd
//!   1.6.11 and 1.7.0. Docker's own containers also have a bundle, in the
//!   `moby` namespace.
//! - CRI-O (and root podman): `run/containers/storage/overlay-containers/<id>/
//!   userdata/config.json`, whose `io.container.manager` annotation is `cri-o`
//!   or `libpod`.
//! - The kubelet: `var/log/containers/<pod>_<namespace>_<container>-<id>.log`
//!   symlinks to `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log`.
//!
//! - Rootless Docker: `<home>/.local/share/docker/containers/<id>/config.v2.json`,
//!   with the home directory of the uid whose `user@<uid>.service` contains the
//!   container, from `$HOST_FS/etc/passwd`.
//!
//! - Podman (root and rootless) uses the same `userdata/config.json` as
//!   CRI-O and keeps names in the containers/storage index
//!   `overlay-containers/containers.json`.
//!
//! NOTE: rootless runtimes with `XDG_DATA_HOME`, `--data-root` or `graphroot`
//! moved are not searched. Such containers get only the id and the runtime
//! named by the cgroup path.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::Runtime;

/// Largest metadata file read; Docker and OCI configs are tens of kilobytes.
const MAX_METADATA_BYTES: u64 = 4 * 1024 * 1024;
/// Largest containers/storage index read; it has about 1 KiB per container.
const MAX_STORAGE_INDEX_BYTES: u64 = 64 * 1024 * 1024;

const DOCKER_CONTAINERS: &str = "var/lib/docker/containers";
const CONTAINERD_TASK_ROOTS: [&str; 4] = [
    "run/containerd/io.containerd.runtime.v2.task",
    "run/k3s/containerd/io.containerd.runtime.v2.task",
    "run/containerd/io.containerd.runtime.v1.linux",
    // A dockerd that starts its own containerd (no system containerd
    // service, also Docker in Docker) keeps the bundles here.
    "run/docker/containerd/daemon/io.containerd.runtime.v2.task",
];
/// containers/storage graph root, which also has the `containers.json` index.
const CONTAINERS_STORAGE_GRAPH: &str = "var/lib/containers/storage/overlay-containers";
const CRIO_CONTAINER_ROOTS: [&str; 2] = [
    "run/containers/storage/overlay-containers",
    CONTAINERS_STORAGE_GRAPH,
];
const KUBELET_LOG_LINKS: &str = "var/log/containers";

/// Failure to read a metadata file that exists.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("failed to read container metadata file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container metadata file {path} is larger than {max_bytes} bytes")]
    TooLarge { path: PathBuf, max_bytes: u64 },
    #[error("invalid JSON in container metadata file {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// Fields found for one container; every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub runtime: Option<Runtime>,
    pub name: Option<String>,
    pub image: Option<String>,
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_uid: Option<String>,
    pub k8s_container_name: Option<String>,
    pub files: Vec<PathBuf>,
}

impl Metadata {
    /// Fills the fields `self` lacks from `other`.
    pub fn fill_from(&mut self, other: Metadata) {
        fn fill(slot: &mut Option<String>, value: Option<String>) {
            if slot.is_none() {
                *slot = value;
            }
        }
        if self.runtime.is_none() {
            self.runtime = other.runtime;
        }
        fill(&mut self.name, other.name);
        fill(&mut self.image, other.image);
        fill(&mut self.pod_name, other.pod_name);
        fill(&mut self.pod_namespace, other.pod_namespace);
        fill(&mut self.pod_uid, other.pod_uid);
        fill(&mut self.k8s_container_name, other.k8s_container_name);
        self.files.extend(other.files);
    }
}

/// Looks up a container in the runtime files, in this order: Docker, CRI-O
/// and podman, containerd. The first runtime with a file for `id` decides the
/// runtime. Returns `Ok(None)` when no runtime has a file for it.
///
/// `containerd_namespace` is tried first when the cgroup path named one.
pub(crate) fn read_runtime_metadata(
    host_fs: &Path,
    id: &str,
    containerd_namespace: Option<&str>,
) -> Result<Option<Metadata>, MetadataError> {
    if !is_safe_id(id) {
        return Ok(None);
    }
    if let Some(found) = read_docker(host_fs, id)? {
        return Ok(Some(found));
    }
    if let Some(found) = read_crio(host_fs, id)? {
        return Ok(Some(found));
    }
    read_containerd(host_fs, id, containerd_namespace)
}

/// Docker `config.v2.json`.
pub(crate) fn read_docker(host_fs: &Path, id: &str) -> Result<Option<Metadata>, MetadataError> {
    read_docker_in(&host_fs.join(DOCKER_CONTAINERS), id)
}

/// Rootless Docker `config.v2.json` in the home directory of `uid`.
pub(crate) fn read_rootless_docker(
    host_fs: &Path,
    uid: u32,
    id: &str,
) -> Result<Option<Metadata>, MetadataError> {
    if !is_safe_id(id) {
        return Ok(None);
    }
    let Some(home) = home_directory(host_fs, uid)? else {
        return Ok(None);
    };
    let containers = host_fs
        .join(home.trim_start_matches('/'))
        .join(".local/share/docker/containers");
    read_docker_in(&containers, id)
}

/// Home directory of `uid` from `$HOST_FS/etc/passwd`.
fn home_directory(host_fs: &Path, uid: u32) -> Result<Option<String>, MetadataError> {
    let path = host_fs.join("etc/passwd");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(MetadataError::Read { path, source }),
    };
    let uid = uid.to_string();
    let home = text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 7 && fields[2] == uid).then(|| fields[5].to_string())
    });
    // A home outside `/` or with `..` could point anywhere under HOST_FS.
    Ok(home.filter(|h| h.starts_with('/') && !h.split('/').any(|s| s == "..")))
}

fn read_docker_in(containers: &Path, id: &str) -> Result<Option<Metadata>, MetadataError> {
    let path = containers.join(id).join("config.v2.json");
    let Some(config) = read_json(&path, MAX_METADATA_BYTES)? else {
        return Ok(None);
    };

    let labels = config.pointer("/Config/Labels").and_then(Value::as_object);
    let image = string_at(&config, "/Config/Image").or_else(|| string_at(&config, "/Image"));
    Ok(Some(Metadata {
        runtime: Some(Runtime::Docker),
        name: string_at(&config, "/Name").map(|n| n.trim_start_matches('/').to_string()),
        image,
        pod_name: labels.and_then(|l| string_in(l, "io.kubernetes.pod.name")),
        pod_namespace: labels.and_then(|l| string_in(l, "io.kubernetes.pod.namespace")),
        pod_uid: labels.and_then(|l| string_in(l, "io.kubernetes.pod.uid")),
        k8s_container_name: labels.and_then(|l| string_in(l, "io.kubernetes.container.name")),
        files: vec![path],
    }))
}

/// CRI-O (or root podman) `userdata/config.json`.
pub(crate) fn read_crio(host_fs: &Path, id: &str) -> Result<Option<Metadata>, MetadataError> {
    let userdata_roots: Vec<PathBuf> = CRIO_CONTAINER_ROOTS
        .iter()
        .map(|root| host_fs.join(root))
        .collect();
    let graph_root = host_fs.join(CONTAINERS_STORAGE_GRAPH);
    read_containers_storage(&userdata_roots, &graph_root, id)
}

/// Rootless podman: `userdata/config.json` under `/run/user/<uid>/containers`
/// or the home directory, names in the home directory's `containers.json`.
pub(crate) fn read_rootless_podman(
    host_fs: &Path,
    uid: u32,
    id: &str,
) -> Result<Option<Metadata>, MetadataError> {
    if !is_safe_id(id) {
        return Ok(None);
    }
    let Some(home) = home_directory(host_fs, uid)? else {
        return Ok(None);
    };
    let graph_root = host_fs
        .join(home.trim_start_matches('/'))
        .join(".local/share/containers/storage/overlay-containers");
    let run_root = host_fs.join(format!("run/user/{uid}/containers/overlay-containers"));
    read_containers_storage(&[run_root, graph_root.clone()], &graph_root, id)
}

/// Reads a container of the containers/storage library (CRI-O, podman):
/// annotations from `<root>/<id>/userdata/config.json` in the first root that
/// has it, then the name and image from the graph root's `containers.json`
/// where the annotations lack them.
fn read_containers_storage(
    userdata_roots: &[PathBuf],
    graph_root: &Path,
    id: &str,
) -> Result<Option<Metadata>, MetadataError> {
    for root in userdata_roots {
        let path = root.join(id).join("userdata/config.json");
        let Some(config) = read_json(&path, MAX_METADATA_BYTES)? else {
            continue;
        };
        let mut found = containers_storage_annotations(&config, path);
        if found.name.is_none() || found.image.is_none() {
            if let Some(entry) = read_storage_entry(graph_root, id)? {
                found.fill_from(entry);
            }
        }
        return Ok(Some(found));
    }
    Ok(None)
}

fn containers_storage_annotations(config: &Value, path: PathBuf) -> Metadata {
    let empty = Map::new();
    let annotations = config
        .get("annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);

    // CRI-O also copies the kubelet's labels into one JSON-encoded
    // annotation, used when the plain keys are missing.
    let labels: Map<String, Value> = string_in(annotations, "io.kubernetes.cri-o.Labels")
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default();
    let kube = |key: &str| string_in(annotations, key).or_else(|| string_in(&labels, key));

    let runtime = match string_in(annotations, "io.container.manager").as_deref() {
        Some("libpod") => Runtime::Podman,
        _ => Runtime::CriO,
    };
    Metadata {
        runtime: Some(runtime),
        name: string_in(annotations, "io.kubernetes.cri-o.Name"),
        image: string_in(annotations, "io.kubernetes.cri-o.ImageName")
            .or_else(|| string_in(annotations, "io.kubernetes.cri-o.Image")),
        pod_name: kube("io.kubernetes.pod.name"),
        pod_namespace: kube("io.kubernetes.pod.namespace"),
        pod_uid: kube("io.kubernetes.pod.uid"),
        k8s_container_name: kube("io.kubernetes.container.name"),
        files: vec![path],
    }
}

/// Name and image of `id` from `containers.json` or
/// `volatile-containers.json` in a containers/storage graph root. Each entry
/// has `id`, `names` and `metadata`, a JSON string whose `name` and
/// `image-name` the runtime wrote.
fn read_storage_entry(graph_root: &Path, id: &str) -> Result<Option<Metadata>, MetadataError> {
    for file in ["containers.json", "volatile-containers.json"] {
        let path = graph_root.join(file);
        let Some(Value::Array(entries)) = read_json(&path, MAX_STORAGE_INDEX_BYTES)? else {
            continue;
        };
        let Some(entry) = entries
            .iter()
            .find(|e| e.get("id").and_then(Value::as_str) == Some(id))
        else {
            continue;
        };
        let runtime_metadata: Map<String, Value> = entry
            .get("metadata")
            .and_then(Value::as_str)
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        let first_name = entry
            .pointer("/names/0")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        return Ok(Some(Metadata {
            name: string_in(&runtime_metadata, "name").or(first_name),
            image: string_in(&runtime_metadata, "image-name"),
            files: vec![path],
            ..Default::default()
        }));
    }
    Ok(None)
}

/// containerd OCI bundle `config.json`, searched in every task root and
/// namespace.
pub(crate) fn read_containerd(
    host_fs: &Path,
    id: &str,
    namespace_hint: Option<&str>,
) -> Result<Option<Metadata>, MetadataError> {
    for root in CONTAINERD_TASK_ROOTS {
        let root = host_fs.join(root);
        for namespace in containerd_namespaces(&root, namespace_hint) {
            let path = root.join(&namespace).join(id).join("config.json");
            let Some(config) = read_json(&path, MAX_METADATA_BYTES)? else {
                continue;
            };
            return Ok(Some(containerd_bundle_metadata(&config, &namespace, path)));
        }
    }
    Ok(None)
}

/// Namespaces to try: the hint, `k8s.io`, then whatever else exists.
fn containerd_namespaces(root: &Path, hint: Option<&str>) -> Vec<String> {
    let mut namespaces: Vec<String> = hint
        .into_iter()
        .chain(["k8s.io", "moby"])
        .map(str::to_string)
        .collect();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            if let Some(name) = entry.file_name().to_str() {
                if !namespaces.iter().any(|n| n == name) {
                    namespaces.push(name.to_string());
                }
            }
        }
    }
    namespaces.retain(|n| is_safe_id(n));
    namespaces
}

fn containerd_bundle_metadata(config: &Value, namespace: &str, path: PathBuf) -> Metadata {
    let empty = Map::new();
    let annotations = config
        .get("annotations")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let cri = |key: &str| string_in(annotations, &format!("io.kubernetes.cri.{key}"));

    let sandbox = cri("container-type").as_deref() == Some("sandbox");
    let container_name = cri("container-name");
    let image = if sandbox {
        cri("podsandbox.image-name")
    } else {
        cri("image-name")
    };
    // Docker runs its containers in containerd's `moby` namespace.
    let runtime = if namespace == "moby" {
        Runtime::Docker
    } else {
        Runtime::Containerd
    };
    Metadata {
        runtime: Some(runtime),
        name: container_name
            .clone()
            .or_else(|| string_in(annotations, "nerdctl/name")),
        image,
        pod_name: cri("sandbox-name"),
        pod_namespace: cri("sandbox-namespace"),
        pod_uid: cri("sandbox-uid"),
        k8s_container_name: container_name,
        files: vec![path],
    }
}

/// Pod name, namespace, container name and uid from the kubelet's
/// `/var/log/containers` symlink for `id`.
pub(crate) fn read_kubelet_log_link(
    host_fs: &Path,
    id: &str,
) -> Result<Option<Metadata>, MetadataError> {
    if !is_safe_id(id) {
        return Ok(None);
    }
    let dir = host_fs.join(KUBELET_LOG_LINKS);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(MetadataError::Read { path: dir, source }),
    };

    let suffix = format!("-{id}.log");
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            continue;
        };
        let Some((pod, namespace, container)) = parse_log_link_name(name, &suffix) else {
            continue;
        };
        let path = entry.path();
        let pod_uid = std::fs::read_link(&path)
            .ok()
            .and_then(|target| pod_uid_from_log_target(&target, pod, namespace));
        return Ok(Some(Metadata {
            pod_name: Some(pod.to_string()),
            pod_namespace: Some(namespace.to_string()),
            pod_uid,
            k8s_container_name: Some(container.to_string()),
            files: vec![path],
            ..Default::default()
        }));
    }
    Ok(None)
}

/// `<pod>_<namespace>_<container>-<id>.log`. Pod, namespace and container
/// names are DNS names, which cannot contain `_`.
fn parse_log_link_name<'a>(name: &'a str, suffix: &str) -> Option<(&'a str, &'a str, &'a str)> {
    let stem = name.strip_suffix(suffix)?;
    let mut parts = stem.split('_');
    let (pod, namespace, container) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || pod.is_empty() || namespace.is_empty() || container.is_empty() {
        return None;
    }
    Some((pod, namespace, container))
}

/// `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log` to the uid,
/// checked against the pod and namespace of the link name.
fn pod_uid_from_log_target(target: &Path, pod: &str, namespace: &str) -> Option<String> {
    let target = target.to_str()?;
    let after = target.split("/pods/").nth(1)?;
    let directory = after.split('/').next()?;
    let uid = directory
        .strip_prefix(namespace)?
        .strip_prefix('_')?
        .strip_prefix(pod)?
        .strip_prefix('_')?;
    (!uid.is_empty()).then(|| uid.to_string())
}

/// Reads and parses a JSON file; a missing file is `Ok(None)`.
fn read_json(path: &Path, max_bytes: u64) -> Result<Option<Value>, MetadataError> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            return Ok(None)
        }
        Err(source) => {
            return Err(MetadataError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut text = Vec::new();
    file.take(max_bytes + 1)
        .read_to_end(&mut text)
        .map_err(|source| MetadataError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if text.len() as u64 > max_bytes {
        return Err(MetadataError::TooLarge {
            path: path.to_path_buf(),
            max_bytes,
        });
    }
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|source| MetadataError::Json {
            path: path.to_path_buf(),
            source,
        })
}

fn string_at(value: &Value, pointer: &str) -> Option<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn string_in(map: &Map<String, Value>, key: &str) -> Option<String> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Checks that an id or namespace cannot climb out of its directory once
/// joined into a host path.
fn is_safe_id(id: &str) -> bool {
    super::cgroup::is_containerd_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const ID: &str = "cb1eadb7abe3a6545e9856411207073277838e1bdc003337c2f8685faeedc32c";
    const UID: &str = "74ba62da-1a3d-11e7-bb11-080027cb0e22";

    fn write(root: &Path, relative: &str, text: &str) -> PathBuf {
        let path = root.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn docker_plain_container() {
        let host = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "ID": ID,
            "Name": "/web",
            "Image": "sha256:0123",
            "Config": {"Image": "nginx:1.27", "Labels": {"team": "shop"}},
        });
        write(
            host.path(),
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            &config.to_string(),
        );

        let found = read_runtime_metadata(host.path(), ID, None)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Docker));
        assert_eq!(found.name.as_deref(), Some("web"));
        assert_eq!(found.image.as_deref(), Some("nginx:1.27"));
        assert_eq!(found.pod_name, None);
        assert_eq!(found.k8s_container_name, None);
    }

    #[test]
    fn rootless_docker_in_user_home() {
        let host = tempfile::tempdir().unwrap();
        write(
            host.path(),
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nana:x:1000:1000:Ana:/home/ana:/bin/sh\n",
        );
        let config = serde_json::json!({"Name": "/dev", "Config": {"Image": "alpine:3"}});
        write(
            host.path(),
            &format!("home/ana/.local/share/docker/containers/{ID}/config.v2.json"),
            &config.to_string(),
        );

        let found = read_rootless_docker(host.path(), 1000, ID)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Docker));
        assert_eq!(found.name.as_deref(), Some("dev"));
        assert_eq!(found.image.as_deref(), Some("alpine:3"));
        assert_eq!(read_rootless_docker(host.path(), 1001, ID).unwrap(), None);
        assert_eq!(read_runtime_metadata(host.path(), ID, None).unwrap(), None);
    }

    #[test]
    fn podman_name_from_storage_index() {
        // Shapes as podman 4.3 writes them for a root container.
        let host = tempfile::tempdir().unwrap();
        write(
            host.path(),
            &format!("var/lib/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.container.manager":"libpod","io.kubernetes.cri-o.TTY":"false","io.podman.annotations.init":"FALSE"}}"#,
        );
        let runtime_metadata = serde_json::json!({
            "image-name": "docker.io/library/alpine:3.20",
            "image-id": "1234",
            "name": "db",
            "created-at": 1796417677,
        });
        let index = serde_json::json!([
            {"id": "other", "names": ["x"], "metadata": "{}"},
            {"id": ID, "names": ["db"], "image": "1234", "metadata": runtime_metadata.to_string()},
        ]);
        write(
            host.path(),
            "var/lib/containers/storage/overlay-containers/containers.json",
            &index.to_string(),
        );

        let found = read_runtime_metadata(host.path(), ID, None)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Podman));
        assert_eq!(found.name.as_deref(), Some("db"));
        assert_eq!(
            found.image.as_deref(),
            Some("docker.io/library/alpine:3.20")
        );
        assert_eq!(found.files.len(), 2);
    }

    #[test]
    fn rootless_podman_in_user_home() {
        let host = tempfile::tempdir().unwrap();
        write(
            host.path(),
            "etc/passwd",
            "ana:x:1000:1000::/home/ana:/bin/sh\n",
        );
        write(
            host.path(),
            &format!("run/user/1000/containers/overlay-containers/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.container.manager":"libpod"}}"#,
        );
        let index = serde_json::json!([{"id": ID, "names": ["web"], "metadata": "not json"}]);
        write(
            host.path(),
            "home/ana/.local/share/containers/storage/overlay-containers/volatile-containers.json",
            &index.to_string(),
        );

        let found = read_rootless_podman(host.path(), 1000, ID)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Podman));
        assert_eq!(found.name.as_deref(), Some("web"), "falls back to names[0]");
        assert_eq!(found.image, None);
    }

    #[test]
    fn home_with_parent_segment_is_ignored() {
        let host = tempfile::tempdir().unwrap();
        write(
            host.path(),
            "etc/passwd",
            "eve:x:1000:1000::/home/../var:/bin/sh\n",
        );
        assert_eq!(home_directory(host.path(), 1000).unwrap(), None);
    }

    #[test]
    fn docker_as_kubelet_runtime_has_pod_labels() {
        let host = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "ID": ID,
            "Name": format!("/k8s_nginx_web-0_shop_{UID}_0"),
            "Config": {"Image": "nginx@sha256:abcd", "Labels": {
                "io.kubernetes.pod.name": "web-0",
                "io.kubernetes.pod.namespace": "shop",
                "io.kubernetes.pod.uid": UID,
                "io.kubernetes.container.name": "nginx",
                "io.kubernetes.docker.type": "container",
            }},
        });
        write(
            host.path(),
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            &config.to_string(),
        );

        let found = read_runtime_metadata(host.path(), ID, None)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Docker));
        assert_eq!(found.name, Some(format!("k8s_nginx_web-0_shop_{UID}_0")));
        assert_eq!(found.image.as_deref(), Some("nginx@sha256:abcd"));
        assert_eq!(found.pod_name.as_deref(), Some("web-0"));
        assert_eq!(found.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(found.pod_uid.as_deref(), Some(UID));
        assert_eq!(found.k8s_container_name.as_deref(), Some("nginx"));
    }

    #[test]
    fn containerd_k8s_bundle_annotations() {
        let host = tempfile::tempdir().unwrap();
        let config = serde_json::json!({
            "ociVersion": "1.1.0",
            "annotations": {
                "io.kubernetes.cri.container-type": "container",
                "io.kubernetes.cri.container-name": "api",
                "io.kubernetes.cri.image-name": "registry.example/api:2.1",
                "io.kubernetes.cri.sandbox-id": "f34e6ab6",
                "io.kubernetes.cri.sandbox-name": "api-7d9f-x2",
                "io.kubernetes.cri.sandbox-namespace": "prod",
                "io.kubernetes.cri.sandbox-uid": UID,
            }
        });
        write(
            host.path(),
            &format!("run/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            &config.to_string(),
        );

        let found = read_runtime_metadata(host.path(), ID, None)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Containerd));
        assert_eq!(found.name.as_deref(), Some("api"));
        assert_eq!(found.image.as_deref(), Some("registry.example/api:2.1"));
        assert_eq!(found.pod_name.as_deref(), Some("api-7d9f-x2"));
        assert_eq!(found.pod_namespace.as_deref(), Some("prod"));
        assert_eq!(found.pod_uid.as_deref(), Some(UID));
        assert_eq!(found.k8s_container_name.as_deref(), Some("api"));
    }

    #[test]
    fn containerd_sandbox_uses_sandbox_image() {
        let host = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"annotations": {
            "io.kubernetes.cri.container-type": "sandbox",
            "io.kubernetes.cri.podsandbox.image-name": "registry.k8s.io/pause:3.10",
            "io.kubernetes.cri.sandbox-name": "api-7d9f-x2",
            "io.kubernetes.cri.sandbox-namespace": "prod",
        }});
        write(
            host.path(),
            &format!("run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io/{ID}/config.json"),
            &config.to_string(),
        );

        let found = read_containerd(host.path(), ID, None).unwrap().unwrap();
        assert_eq!(found.image.as_deref(), Some("registry.k8s.io/pause:3.10"));
        assert_eq!(found.pod_name.as_deref(), Some("api-7d9f-x2"));
        assert_eq!(found.k8s_container_name, None);
        assert_eq!(
            found.pod_uid, None,
            "containerd before 1.6.11 has no sandbox-uid"
        );
    }

    #[test]
    fn containerd_moby_namespace_is_docker() {
        let host = tempfile::tempdir().unwrap();
        write(
            host.path(),
            &format!("run/containerd/io.containerd.runtime.v2.task/moby/{ID}/config.json"),
            r#"{"ociVersion":"1.1.0"}"#,
        );
        let found = read_runtime_metadata(host.path(), ID, None)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Docker));
    }

    #[test]
    fn containerd_custom_namespace_is_searched() {
        let host = tempfile::tempdir().unwrap();
        write(
            host.path(),
            "run/containerd/io.containerd.runtime.v2.task/default/test_container/config.json",
            r#"{"annotations":{"nerdctl/name":"dev-box"}}"#,
        );
        let found = read_runtime_metadata(host.path(), "test_container", None)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Containerd));
        assert_eq!(found.name.as_deref(), Some("dev-box"));
    }

    #[test]
    fn crio_userdata_annotations() {
        let host = tempfile::tempdir().unwrap();
        let config = serde_json::json!({"annotations": {
            "io.container.manager": "cri-o",
            "io.kubernetes.cri-o.Name": format!("k8s_app_db-0_data_{UID}_1"),
            "io.kubernetes.cri-o.ImageName": "quay.io/acme/db:15",
            "io.kubernetes.cri-o.Image": "sha256:feed",
            "io.kubernetes.pod.name": "db-0",
            "io.kubernetes.pod.namespace": "data",
            "io.kubernetes.pod.uid": UID,
            "io.kubernetes.container.name": "app",
        }});
        write(
            host.path(),
            &format!("run/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            &config.to_string(),
        );

        let found = read_runtime_metadata(host.path(), ID, None)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::CriO));
        assert_eq!(found.name, Some(format!("k8s_app_db-0_data_{UID}_1")));
        assert_eq!(found.image.as_deref(), Some("quay.io/acme/db:15"));
        assert_eq!(found.pod_name.as_deref(), Some("db-0"));
        assert_eq!(found.pod_namespace.as_deref(), Some("data"));
        assert_eq!(found.pod_uid.as_deref(), Some(UID));
        assert_eq!(found.k8s_container_name.as_deref(), Some("app"));
    }

    #[test]
    fn crio_labels_annotation_fills_pod_fields() {
        let host = tempfile::tempdir().unwrap();
        let labels = serde_json::json!({
            "io.kubernetes.pod.name": "db-0",
            "io.kubernetes.pod.namespace": "data",
            "io.kubernetes.pod.uid": UID,
            "io.kubernetes.container.name": "app",
        });
        let config = serde_json::json!({"annotations": {
            "io.container.manager": "cri-o",
            "io.kubernetes.cri-o.Labels": labels.to_string(),
        }});
        write(
            host.path(),
            &format!("var/lib/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            &config.to_string(),
        );
        let found = read_crio(host.path(), ID).unwrap().unwrap();
        assert_eq!(found.pod_name.as_deref(), Some("db-0"));
        assert_eq!(found.pod_uid.as_deref(), Some(UID));
        assert_eq!(found.k8s_container_name.as_deref(), Some("app"));
    }

    #[test]
    fn libpod_manager_is_podman() {
        let host = tempfile::tempdir().unwrap();
        write(
            host.path(),
            &format!("var/lib/containers/storage/overlay-containers/{ID}/userdata/config.json"),
            r#"{"annotations":{"io.container.manager":"libpod"}}"#,
        );
        let found = read_runtime_metadata(host.path(), ID, None)
            .unwrap()
            .unwrap();
        assert_eq!(found.runtime, Some(Runtime::Podman));
    }

    #[test]
    fn kubelet_log_link_gives_pod() {
        let host = tempfile::tempdir().unwrap();
        let dir = host.path().join("var/log/containers");
        fs::create_dir_all(&dir).unwrap();
        let target = format!("/var/log/pods/shop_web-0_{UID}/nginx/0.log");
        std::os::unix::fs::symlink(&target, dir.join(format!("web-0_shop_nginx-{ID}.log")))
            .unwrap();
        // A neighbour whose id merely ends like ours must not match.
        std::os::unix::fs::symlink(&target, dir.join(format!("other_shop_nginx-0{ID}.log")))
            .unwrap();

        let found = read_kubelet_log_link(host.path(), ID).unwrap().unwrap();
        assert_eq!(found.pod_name.as_deref(), Some("web-0"));
        assert_eq!(found.pod_namespace.as_deref(), Some("shop"));
        assert_eq!(found.k8s_container_name.as_deref(), Some("nginx"));
        assert_eq!(found.pod_uid.as_deref(), Some(UID));
        assert_eq!(found.runtime, None);
    }

    #[test]
    fn log_target_of_other_pod_has_no_uid() {
        let target = Path::new("/var/log/pods/shop_web-1_1234/nginx/0.log");
        assert_eq!(pod_uid_from_log_target(target, "web-0", "shop"), None);
    }

    #[test]
    fn missing_files_are_not_errors() {
        let host = tempfile::tempdir().unwrap();
        assert_eq!(read_runtime_metadata(host.path(), ID, None).unwrap(), None);
        assert_eq!(read_kubelet_log_link(host.path(), ID).unwrap(), None);
    }

    #[test]
    fn invalid_json_is_reported_with_path() {
        let host = tempfile::tempdir().unwrap();
        let path = write(
            host.path(),
            &format!("var/lib/docker/containers/{ID}/config.v2.json"),
            "{not json",
        );
        let error = read_runtime_metadata(host.path(), ID, None).unwrap_err();
        assert!(
            matches!(&error, MetadataError::Json { path: p, .. } if *p == path),
            "{error:?}"
        );
    }

    #[test]
    fn unsafe_id_reads_nothing() {
        let host = tempfile::tempdir().unwrap();
        write(
            host.path(),
            "var/lib/docker/config.v2.json",
            r#"{"Name":"/x"}"#,
        );
        assert_eq!(
            read_runtime_metadata(host.path(), "..", None).unwrap(),
            None
        );
    }
}
