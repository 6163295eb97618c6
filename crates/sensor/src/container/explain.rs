//! `picket-sensor explain cgroup`: what the sensor makes of one
//! `/proc/<pid>/cgroup` content, as one JSON object.

use serde_json::{json, Value};

use super::cgroup::{parse_cgroup, CgroupAttribution};
use super::resolver::ContainerResolver;
use super::Runtime;

/// Explains the cgroup decision for `text` from the path alone, as if the
/// reader were in the host cgroup namespace.
///
/// Keys: `container_id` (or null), `runtime` (the hint from the path shape,
/// or null), `runtime_source` (`"path"` or null), `pod_uid`,
/// `outer_container_id`, `containerd_namespace`, `cgroup_path` (the decisive
/// path), `unresolved_relative`, `reason` and `notes`.
pub fn explain_cgroup(text: &str) -> Value {
    attribution_json(&parse_cgroup(text, None))
}

/// Explains the decision for `text` with the resolver's cgroup prefix and a
/// fresh, uncached metadata lookup. Adds `container` (the `CONTAINER` object
/// an event would carry, or null), `metadata_files` and `metadata_complete`.
/// `runtime` and `runtime_source` then come from the metadata when it names
/// the runtime.
pub fn explain_cgroup_with_metadata(resolver: &ContainerResolver, text: &str) -> Value {
    let attribution = parse_cgroup(text, resolver.config().cgroup_prefix.as_deref());
    let mut out = attribution_json(&attribution);
    if attribution.container_id.is_none() {
        out["container"] = Value::Null;
        return out;
    }

    let lookup = resolver.look_up(&attribution);
    let info = lookup.info;
    out["runtime"] = runtime_json(info.runtime);
    out["runtime_source"] = match (info.runtime, lookup.runtime_from_metadata) {
        (None, _) => Value::Null,
        (Some(_), true) => json!("metadata"),
        (Some(_), false) => json!("path"),
    };
    out["container"] = info.to_json();
    out["metadata_files"] = info
        .metadata_files
        .iter()
        .map(|p| Value::from(p.display().to_string()))
        .collect();
    out["metadata_complete"] = json!(lookup.complete);
    out
}

fn attribution_json(a: &CgroupAttribution) -> Value {
    json!({
        "container_id": a.container_id,
        "runtime": runtime_json(a.runtime_hint),
        "runtime_source": a.runtime_hint.map(|_| "path"),
        "pod_uid": a.pod_uid,
        "outer_container_id": a.outer_container_id,
        "containerd_namespace": a.containerd_namespace,
        "cgroup_path": a.cgroup_path,
        "unresolved_relative": a.unresolved_relative,
        "reason": a.reason,
        "notes": a.notes,
    })
}

fn runtime_json(runtime: Option<Runtime>) -> Value {
    runtime.map_or(Value::Null, |r| Value::from(r.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "ee40841f79d52f66f4958c8a484bd2dfb453228874dcca1a3f2ec6e8420ec87c";

    #[test]
    fn explain_docker_scope() {
        let out = explain_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n"));
        assert_eq!(out["container_id"], ID);
        assert_eq!(out["runtime"], "docker");
        assert_eq!(out["runtime_source"], "path");
        assert_eq!(out["pod_uid"], Value::Null);
        assert_eq!(out["outer_container_id"], Value::Null);
        assert_eq!(out["unresolved_relative"], false);
        assert!(
            out["reason"]
                .as_str()
                .unwrap()
                .contains("Docker container scope"),
            "{out}"
        );
    }

    #[test]
    fn explain_host_process() {
        let out = explain_cgroup("0::/init.scope");
        assert_eq!(out["container_id"], Value::Null);
        assert_eq!(out["runtime"], Value::Null);
        assert!(
            out["reason"].as_str().unwrap().contains("no path segment"),
            "{out}"
        );
    }

    #[test]
    fn explain_conmon_trap_names_it() {
        let out = explain_cgroup(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podb13213a6_d47e_4bd1_bc00_f175d1ad3b6e.slice/crio-conmon-{ID}.scope"
        ));
        assert_eq!(out["container_id"], Value::Null);
        assert_eq!(out["pod_uid"], "b13213a6-d47e-4bd1-bc00-f175d1ad3b6e");
        let notes = out["notes"].to_string();
        assert!(notes.contains("conmon monitor"), "{out}");
    }

    #[test]
    fn explain_with_metadata_reports_files() {
        let host = tempfile::tempdir().unwrap();
        let dir = host.path().join("var/lib/docker/containers").join(ID);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.v2.json"),
            r#"{"Name":"/web","Config":{"Image":"nginx:1"}}"#,
        )
        .unwrap();
        let resolver = ContainerResolver::new(host.path());

        let out =
            explain_cgroup_with_metadata(&resolver, &format!("0::/system.slice/docker-{ID}.scope"));
        assert_eq!(out["container"]["NAME"], "web");
        assert_eq!(out["container"]["IMAGE"], "nginx:1");
        assert_eq!(out["runtime_source"], "metadata");
        assert_eq!(out["metadata_complete"], true);
        assert_eq!(out["metadata_files"].as_array().map(Vec::len), Some(1));
    }
}
