//! Cgroup content to [`ContainerInfo`], with a per-container cache.
//!
//! A lookup that found no metadata, or found a pod cgroup without the pod's
//! name, is kept only until its retry time. Runtimes write their files while
//! the container starts, and the kubelet links its log after that, so an early
//! miss is often filled a second later. Retries back off exponentially from
//! [`ResolverConfig::retry_initial`] to [`ResolverConfig::retry_max`] and go on
//! for as long as the entry stays in the cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::cgroup::{parse_cgroup, user_manager_uid, CgroupAttribution};
use super::metadata::{
    read_kubelet_log_link, read_rootless_docker, read_rootless_podman, read_runtime_metadata,
    Metadata, MetadataError,
};
use super::nested::outer_container_root;
use super::{ContainerInfo, Runtime};

/// Settings of a [`ContainerResolver`].
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// Host path of the root of the sensor's cgroup namespace when it is a
    /// private one, as [`find_host_cgroup_prefix`](super::find_host_cgroup_prefix)
    /// returns it. Default: `None`.
    pub cgroup_prefix: Option<String>,
    /// Wait before the first retry of an incomplete lookup. Default: 1 s.
    pub retry_initial: Duration,
    /// Maximum wait between retries. Default: 60 s.
    pub retry_max: Duration,
    /// Containers kept in the cache; the least recently used are evicted past
    /// it. Default: 4096.
    pub capacity: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            cgroup_prefix: None,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            capacity: 4096,
        }
    }
}

/// Result of one uncached metadata lookup.
#[derive(Debug)]
pub(crate) struct Lookup {
    pub info: ContainerInfo,
    /// Metadata was found, and a pod's name is known when the container is
    /// in a pod.
    pub complete: bool,
    pub runtime_from_metadata: bool,
}

#[derive(Debug)]
struct CacheEntry {
    info: Arc<ContainerInfo>,
    complete: bool,
    failures: u32,
    retry_at: Instant,
    last_used: Instant,
}

/// Resolves `/proc/<pid>/cgroup` content to the container of the process.
/// Safe to share between threads; metadata files are read without holding
/// the cache lock.
#[derive(Debug)]
pub struct ContainerResolver {
    host_fs: PathBuf,
    config: ResolverConfig,
    cache: Mutex<HashMap<String, CacheEntry>>,
}

impl ContainerResolver {
    /// Creates a resolver that reads runtime metadata under `host_fs` (the
    /// host's `/`) with default settings.
    pub fn new(host_fs: &Path) -> Self {
        Self::with_config(host_fs, ResolverConfig::default())
    }

    /// Creates a resolver with explicit settings.
    pub fn with_config(host_fs: &Path, config: ResolverConfig) -> Self {
        Self {
            host_fs: host_fs.to_path_buf(),
            config,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Settings in use.
    pub fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// Resolves `/proc/<pid>/cgroup` content (or a bare cgroup path).
    /// Returns `None` for a host process. A container whose metadata is not
    /// found yet still resolves, with the fields the cgroup path gives.
    pub fn resolve(&self, cgroup_text: &str) -> Option<Arc<ContainerInfo>> {
        let attribution = parse_cgroup(cgroup_text, self.config.cgroup_prefix.as_deref());
        self.resolve_attribution(&attribution)
    }

    /// Resolves an already parsed cgroup, like [`ContainerResolver::resolve`].
    pub fn resolve_attribution(
        &self,
        attribution: &CgroupAttribution,
    ) -> Option<Arc<ContainerInfo>> {
        let id = attribution.container_id.as_deref()?;
        let now = Instant::now();

        {
            let mut cache = self.lock();
            if let Some(entry) = cache.get_mut(id) {
                entry.last_used = now;
                if entry.complete || now < entry.retry_at {
                    return Some(entry.info.clone());
                }
                // Claim the retry so other threads keep using the old entry
                // instead of reading the same files at the same time.
                entry.retry_at = now + self.config.retry_initial;
            }
        }

        let Lookup { info, complete, .. } = self.look_up(attribution);
        let info = Arc::new(info);

        let mut cache = self.lock();
        let failures = match cache.get(id) {
            Some(previous) if !complete => previous.failures.saturating_add(1),
            None if !complete => 1,
            _ => 0,
        };
        if complete {
            tracing::debug!(
                container_id = id,
                name = info.name.as_deref(),
                runtime = info.runtime.map(Runtime::as_str),
                "container resolved"
            );
        } else {
            tracing::debug!(
                container_id = id,
                failures,
                "container metadata incomplete, will retry"
            );
        }
        cache.insert(
            id.to_string(),
            CacheEntry {
                info: info.clone(),
                complete,
                failures,
                retry_at: now + self.backoff(failures),
                last_used: now,
            },
        );
        self.evict(&mut cache);
        Some(info)
    }

    /// Reads the metadata of one container now, bypassing the cache.
    pub(crate) fn look_up(&self, attribution: &CgroupAttribution) -> Lookup {
        let Some(id) = attribution.container_id.clone() else {
            return Lookup {
                info: ContainerInfo::default(),
                complete: true,
                runtime_from_metadata: false,
            };
        };
        let mut found = Metadata {
            pod_uid: attribution.pod_uid.clone(),
            ..Default::default()
        };

        // Runtimes whose cgroup segment already carries all we can know.
        let path_only = matches!(
            attribution.runtime_hint,
            Some(Runtime::Lxc | Runtime::SystemdNspawn | Runtime::Garden)
        );
        let mut runtime_found = path_only;
        let mut runtime_from_metadata = false;
        let mut nested_root = None;
        if !path_only {
            let mut read = self.read_metadata(attribution, &id);
            if let (Ok(None), Some(outer), Some(path)) = (
                &read,
                attribution.outer_container_id.as_deref(),
                attribution.cgroup_path.as_deref(),
            ) {
                nested_root = outer_container_root(&self.host_fs, path, outer);
                if let Some(root) = &nested_root {
                    read = read_runtime_metadata(
                        root,
                        &id,
                        attribution.containerd_namespace.as_deref(),
                    );
                }
            }
            match read {
                Ok(Some(metadata)) => {
                    runtime_found = true;
                    runtime_from_metadata = metadata.runtime.is_some();
                    // Metadata names the runtime; the path only hints at it.
                    found.runtime = metadata.runtime;
                    found.fill_from(metadata);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(container_id = %id, error = %error_chain(&error), "container metadata unreadable")
                }
            }
        }

        let in_pod = found.pod_uid.is_some() || found.pod_name.is_some();
        let log_roots = std::iter::once(self.host_fs.as_path()).chain(nested_root.as_deref());
        for root in log_roots {
            if !in_pod || found.pod_name.is_some() {
                break;
            }
            match read_kubelet_log_link(root, &id) {
                Ok(Some(link)) => found.fill_from(link),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(container_id = %id, error = %error_chain(&error), "kubelet log links unreadable")
                }
            }
        }

        // A container nested in a pod's container (Docker in Docker) has its
        // pod on the outer container.
        if let Some(outer) = attribution.outer_container_id.as_deref() {
            if found.pod_name.is_none() {
                if let Ok(Some(outer_metadata)) = read_runtime_metadata(&self.host_fs, outer, None)
                {
                    found.pod_name = outer_metadata.pod_name;
                    found.pod_namespace = outer_metadata.pod_namespace;
                    if found.pod_uid.is_none() {
                        found.pod_uid = outer_metadata.pod_uid;
                    }
                    found.files.extend(outer_metadata.files);
                }
            }
        }

        let complete = runtime_found && (found.pod_uid.is_none() || found.pod_name.is_some());
        let runtime = found.runtime.or(attribution.runtime_hint);
        let name = found.name.or_else(|| path_only.then(|| id.clone()));
        let info = ContainerInfo {
            id,
            name,
            image: found.image,
            runtime,
            pod_name: found.pod_name,
            pod_namespace: found.pod_namespace,
            pod_uid: found.pod_uid,
            k8s_container_name: found.k8s_container_name,
            outer_id: attribution.outer_container_id.clone(),
            metadata_files: found.files,
        };
        Lookup {
            info,
            complete,
            runtime_from_metadata,
        }
    }

    /// Reads the runtime files of the system runtimes, then those of a
    /// rootless Docker or podman when the cgroup is below a user manager.
    fn read_metadata(
        &self,
        attribution: &CgroupAttribution,
        id: &str,
    ) -> Result<Option<Metadata>, MetadataError> {
        let system = read_runtime_metadata(
            &self.host_fs,
            id,
            attribution.containerd_namespace.as_deref(),
        )?;
        if system.is_some() {
            return Ok(system);
        }
        let uid = attribution
            .cgroup_path
            .as_deref()
            .and_then(user_manager_uid);
        match (uid, attribution.runtime_hint) {
            (Some(uid), Some(Runtime::Docker)) => read_rootless_docker(&self.host_fs, uid, id),
            (Some(uid), Some(Runtime::Podman)) => read_rootless_podman(&self.host_fs, uid, id),
            _ => Ok(None),
        }
    }

    /// Drops the cached entry of a container, for example once it exited.
    pub fn forget(&self, container_id: &str) {
        self.lock().remove(container_id);
    }

    /// Number of containers in the cache.
    pub fn cached_len(&self) -> usize {
        self.lock().len()
    }

    fn backoff(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.config
            .retry_initial
            .saturating_mul(factor)
            .min(self.config.retry_max)
    }

    /// Evicts the least recently used tenth once the cache is past capacity,
    /// so the sort runs once per that many insertions.
    fn evict(&self, cache: &mut HashMap<String, CacheEntry>) {
        if cache.len() <= self.config.capacity {
            return;
        }
        let keep = self.config.capacity - self.config.capacity / 10;
        let mut by_use: Vec<(Instant, String)> = cache
            .iter()
            .map(|(id, entry)| (entry.last_used, id.clone()))
            .collect();
        by_use.sort();
        let excess = cache.len() - keep;
        for (_, id) in by_use.into_iter().take(excess) {
            cache.remove(&id);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, CacheEntry>> {
        // A panic while holding the lock leaves only a cache behind, which is
        // still consistent: every insert is a whole entry.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const ID: &str = "e58a24d4a722c99712cff74ef69d93311089584eb32617b3890e0dcb996133f1";
    const UID: &str = "7fda01c4-0ece-403d-88b4-c371d66d132a";

    fn docker_cgroup(id: &str) -> String {
        format!("4:memory:/docker/{id}\n1:name=systemd:/docker/{id}")
    }

    fn write_docker(host: &Path, id: &str, name: &str, image: &str) {
        let dir = host.join("var/lib/docker/containers").join(id);
        fs::create_dir_all(&dir).unwrap();
        let config =
            serde_json::json!({"ID": id, "Name": format!("/{name}"), "Config": {"Image": image}});
        fs::write(dir.join("config.v2.json"), config.to_string()).unwrap();
    }

    fn quick_retry() -> ResolverConfig {
        ResolverConfig {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_millis(400),
            ..Default::default()
        }
    }

    #[test]
    fn host_process_resolves_to_none() {
        let host = tempfile::tempdir().unwrap();
        let resolver = ContainerResolver::new(host.path());
        assert_eq!(resolver.resolve("0::/init.scope"), None);
        assert_eq!(resolver.cached_len(), 0);
    }

    #[test]
    fn failed_lookup_is_retried_after_backoff() {
        let host = tempfile::tempdir().unwrap();
        let resolver = ContainerResolver::with_config(host.path(), quick_retry());

        let first = resolver.resolve(&docker_cgroup(ID)).unwrap();
        assert_eq!(first.id, ID);
        assert_eq!(first.name, None);
        assert_eq!(
            first.runtime,
            Some(Runtime::Docker),
            "path hint used while metadata is missing"
        );

        write_docker(host.path(), ID, "late", "busybox:1");
        let within_backoff = resolver.resolve(&docker_cgroup(ID)).unwrap();
        assert_eq!(
            within_backoff.name, None,
            "retried before the back-off elapsed"
        );

        std::thread::sleep(Duration::from_millis(150));
        let after_backoff = resolver.resolve(&docker_cgroup(ID)).unwrap();
        assert_eq!(after_backoff.name.as_deref(), Some("late"));
        assert_eq!(after_backoff.image.as_deref(), Some("busybox:1"));
    }

    #[test]
    fn complete_entry_is_cached() {
        let host = tempfile::tempdir().unwrap();
        write_docker(host.path(), ID, "web", "nginx:1");
        let resolver = ContainerResolver::with_config(host.path(), quick_retry());

        let first = resolver.resolve(&docker_cgroup(ID)).unwrap();
        fs::remove_dir_all(host.path().join("var/lib/docker")).unwrap();
        std::thread::sleep(Duration::from_millis(150));
        let second = resolver.resolve(&docker_cgroup(ID)).unwrap();
        assert!(
            Arc::ptr_eq(&first, &second),
            "complete entry was looked up again"
        );
        assert_eq!(second.name.as_deref(), Some("web"));

        resolver.forget(ID);
        let third = resolver.resolve(&docker_cgroup(ID)).unwrap();
        assert_eq!(third.name, None, "forget did not drop the entry");
    }

    #[test]
    fn pod_partial_until_log_link() {
        let host = tempfile::tempdir().unwrap();
        let resolver = ContainerResolver::with_config(host.path(), quick_retry());
        let cgroup = format!("/kubepods/besteffort/pod{UID}/{ID}");

        let first = resolver.resolve(&cgroup).unwrap();
        assert_eq!(first.pod_uid.as_deref(), Some(UID));
        assert_eq!(first.pod_name, None);
        assert_eq!(first.runtime, None, "bare id under a pod names no runtime");

        let bundle = host
            .path()
            .join("run/containerd/io.containerd.runtime.v2.task/k8s.io")
            .join(ID);
        fs::create_dir_all(&bundle).unwrap();
        fs::write(
            bundle.join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-name":"app"}}"#,
        )
        .unwrap();
        let links = host.path().join("var/log/containers");
        fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(
            format!("/var/log/pods/ns1_web-0_{UID}/app/0.log"),
            links.join(format!("web-0_ns1_app-{ID}.log")),
        )
        .unwrap();

        std::thread::sleep(Duration::from_millis(150));
        let second = resolver.resolve(&cgroup).unwrap();
        assert_eq!(
            second.runtime,
            Some(Runtime::Containerd),
            "runtime comes from the bundle"
        );
        assert_eq!(second.pod_name.as_deref(), Some("web-0"));
        assert_eq!(second.pod_namespace.as_deref(), Some("ns1"));
        assert_eq!(second.k8s_container_name.as_deref(), Some("app"));
        assert_eq!(second.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let host = tempfile::tempdir().unwrap();
        let resolver = ContainerResolver::with_config(host.path(), quick_retry());
        assert_eq!(resolver.backoff(0), Duration::ZERO);
        assert_eq!(resolver.backoff(1), Duration::from_millis(100));
        assert_eq!(resolver.backoff(2), Duration::from_millis(200));
        assert_eq!(resolver.backoff(3), Duration::from_millis(400));
        assert_eq!(resolver.backoff(40), Duration::from_millis(400));
    }

    #[test]
    fn cache_is_bounded() {
        let host = tempfile::tempdir().unwrap();
        let config = ResolverConfig {
            capacity: 20,
            ..Default::default()
        };
        let resolver = ContainerResolver::with_config(host.path(), config);
        for n in 0..100u32 {
            let id = format!("{n:064x}");
            assert!(resolver.resolve(&docker_cgroup(&id)).is_some());
            assert!(
                resolver.cached_len() <= 20,
                "cache grew to {}",
                resolver.cached_len()
            );
        }
    }

    #[test]
    fn rootless_docker_resolves_from_user_home() {
        let host = tempfile::tempdir().unwrap();
        fs::create_dir_all(host.path().join("etc")).unwrap();
        fs::write(
            host.path().join("etc/passwd"),
            "ana:x:1000:1000::/home/ana:/bin/sh\n",
        )
        .unwrap();
        let dir = host
            .path()
            .join("home/ana/.local/share/docker/containers")
            .join(ID);
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("config.v2.json"),
            r#"{"Name":"/dev","Config":{"Image":"alpine:3"}}"#,
        )
        .unwrap();

        let resolver = ContainerResolver::new(host.path());
        let cgroup = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/docker-{ID}.scope"
        );
        let info = resolver.resolve(&cgroup).unwrap();
        assert_eq!(info.name.as_deref(), Some("dev"));
        assert_eq!(info.image.as_deref(), Some("alpine:3"));
        assert_eq!(info.runtime, Some(Runtime::Docker));
    }

    #[test]
    fn kind_node_container_read_from_node_root() {
        let host = tempfile::tempdir().unwrap();
        let outer = "c1146e7ccca9ab4436abd69923c07d097b37b762ed21cc3f24584c2f84e77c57";
        let node = host
            .path()
            .join(format!("sys/fs/cgroup/system.slice/docker-{outer}.scope"));
        fs::create_dir_all(node.join("system.slice/containerd.service")).unwrap();
        fs::write(
            node.join("system.slice/containerd.service/cgroup.procs"),
            "4242\n",
        )
        .unwrap();
        let bundle = host
            .path()
            .join("proc/4242/root/run/containerd/io.containerd.runtime.v2.task/k8s.io")
            .join(ID);
        fs::create_dir_all(&bundle).unwrap();
        let annotations = serde_json::json!({"annotations": {
            "io.kubernetes.cri.container-name": "coredns",
            "io.kubernetes.cri.image-name": "registry.k8s.io/coredns/coredns:v1.11.1",
            "io.kubernetes.cri.sandbox-name": "coredns-5d78c9869d-x2",
            "io.kubernetes.cri.sandbox-namespace": "kube-system",
        }});
        fs::write(bundle.join("config.json"), annotations.to_string()).unwrap();

        let resolver = ContainerResolver::new(host.path());
        let cgroup = format!(
            "0::/system.slice/docker-{outer}.scope/kubelet/kubepods/burstable/pod{UID}/{ID}"
        );
        let info = resolver.resolve(&cgroup).unwrap();
        assert_eq!(info.outer_id.as_deref(), Some(outer));
        assert_eq!(info.runtime, Some(Runtime::Containerd));
        assert_eq!(info.pod_name.as_deref(), Some("coredns-5d78c9869d-x2"));
        assert_eq!(info.pod_namespace.as_deref(), Some("kube-system"));
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.k8s_container_name.as_deref(), Some("coredns"));
        assert_eq!(
            info.image.as_deref(),
            Some("registry.k8s.io/coredns/coredns:v1.11.1")
        );
    }

    #[test]
    fn lxc_resolves_from_path_alone() {
        let host = tempfile::tempdir().unwrap();
        let resolver = ContainerResolver::new(host.path());
        let info = resolver.resolve("0::/lxc.payload.web/.lxc").unwrap();
        assert_eq!(info.id, "web");
        assert_eq!(info.name.as_deref(), Some("web"));
        assert_eq!(info.runtime, Some(Runtime::Lxc));
    }

    #[test]
    fn nested_container_takes_pod_from_outer() {
        let host = tempfile::tempdir().unwrap();
        let outer = "e58cfbc8b67f6e1af458efdd31cb2a8abdbf9f95db64f4c852b701285a09d40e";
        let inner = "fb651068cfbd4bf3d45fb092ec9451f8d1a36b3753687bbaa0a9920617eae5b9";
        let pod_uid = "c9adcee4-c874-4dad-8bc8-accdbd67ac3a";
        let dir = host.path().join("var/lib/docker/containers").join(outer);
        fs::create_dir_all(&dir).unwrap();
        let config = serde_json::json!({"Name": "/k8s_dind_ci-0_build_x_0", "Config": {"Image": "docker:dind", "Labels": {
            "io.kubernetes.pod.name": "ci-0",
            "io.kubernetes.pod.namespace": "build",
            "io.kubernetes.pod.uid": pod_uid,
        }}});
        fs::write(dir.join("config.v2.json"), config.to_string()).unwrap();

        let resolver = ContainerResolver::new(host.path());
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/docker-{outer}.scope/docker/{inner}",
            pod_uid.replace('-', "_")
        );
        let info = resolver.resolve(&path).unwrap();
        assert_eq!(info.id, inner);
        assert_eq!(info.outer_id.as_deref(), Some(outer));
        assert_eq!(info.pod_name.as_deref(), Some("ci-0"));
        assert_eq!(info.pod_namespace.as_deref(), Some("build"));
        assert_eq!(info.pod_uid.as_deref(), Some(pod_uid));
        assert_eq!(
            info.image, None,
            "the outer image is not the inner container's"
        );
    }

    #[test]
    fn resolver_is_shared_between_threads() {
        let host = tempfile::tempdir().unwrap();
        write_docker(host.path(), ID, "web", "nginx:1");
        let resolver = Arc::new(ContainerResolver::new(host.path()));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let resolver = resolver.clone();
                std::thread::spawn(move || {
                    resolver.resolve(&docker_cgroup(ID)).unwrap().name.clone()
                })
            })
            .collect();
        for handle in handles {
            assert_eq!(handle.join().unwrap().as_deref(), Some("web"));
        }
    }
}
