//! Parsing of `/proc/<pid>/cgroup` content, or of one bare cgroup path, into a
//! container id, a runtime hint, a pod uid and the outer container of a nested
//! one.
//!
//! Every path is split into whole segments and each segment is matched against
//! anchored shapes (`docker-<64 hex>.scope`, `pod<uuid>` below a `kubepods`
//! segment, `/docker/<64 hex>`, ...). No shape matches "the first hex run" of a
//! path, because real paths carry ids that are not the container's: podman pod
//! slices, `*.mount` units named after a container rootfs, UUIDs in snap scopes
//! and ceph units.
//!
//! Facts this module relies on:
//! - cgroup v1 lines are `hierarchy-id:controllers:path`, one per hierarchy; the
//!   v2 line is `0::path`. The path may itself contain `:` (containerd with a
//!   systemd-style parent but the cgroupfs driver writes
//!   `<slice>:cri-containerd:<id>`), so a line is split at its first two colons.
//! - On hybrid hosts with the cgroupfs driver, Docker never moves a task in the
//!   v2 tree, so the `0::` line can name `containerd.service` while every v1 line
//!   names the container. Lines therefore vote: the id carried by the most lines
//!   wins.
//! - Paths are relative to the reader's cgroup namespace root. A reader in a
//!   private namespace reads `/../<sibling>` for other containers and `/` for
//!   its own cgroup. Such paths are resolved against a caller-supplied prefix,
//!   the host path of the namespace root. Without one, the leading `..`
//!   segments are dropped and the result flags the path as unresolved.

use super::Runtime;

/// Container, runtime and pod derived from a cgroup path or from
/// `/proc/<pid>/cgroup` content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupAttribution {
    /// Innermost container id, or `None` for a host process.
    pub container_id: Option<String>,
    /// Runtime named by the path shape. `None` when the shape does not name
    /// one, as with a bare id below a kubepods pod cgroup, which containerd,
    /// Docker (dockershim), early CRI-O, microk8s and k3s all produce.
    pub runtime_hint: Option<Runtime>,
    /// Kubernetes pod uid with dashes (or the 32-hex config hash of a static
    /// pod). Present for pod-level processes such as CRI-O's conmon too.
    pub pod_uid: Option<String>,
    /// Outermost container id when containers are nested (Docker in Docker,
    /// kind and minikube nodes), else `None`.
    pub outer_container_id: Option<String>,
    /// containerd namespace named by a `/<namespace>/<id>` path.
    pub containerd_namespace: Option<String>,
    /// The path that decided the result, after any prefix was applied.
    pub cgroup_path: Option<String>,
    /// `true` when the decisive path climbed out of the reader's cgroup
    /// namespace (`/..`) or was its root (`/`) and no prefix resolved it.
    pub unresolved_relative: bool,
    /// One sentence on why the result is what it is.
    pub reason: String,
    /// Further observations: traps skipped, lines that disagreed.
    pub notes: Vec<String>,
}

/// One container segment found in a path.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Found {
    id: String,
    runtime: Option<Runtime>,
    containerd_namespace: Option<String>,
    /// The shape that matched, for the explanation.
    shape: &'static str,
    segment: String,
}

/// Result of one path.
#[derive(Debug, Default, Clone)]
struct PathAnalysis {
    /// Container segments, outermost first.
    found: Vec<Found>,
    pod_uid: Option<String>,
    notes: Vec<String>,
}

/// One line of `/proc/<pid>/cgroup`, or a bare path.
#[derive(Debug, Clone)]
struct CgroupLine<'a> {
    /// Hierarchy id and controller list, `None` for a bare path.
    hierarchy: Option<(&'a str, &'a str)>,
    path: &'a str,
}

impl CgroupLine<'_> {
    fn label(&self) -> String {
        match self.hierarchy {
            Some((id, controllers)) => format!("{id}:{controllers}:{}", self.path),
            None => self.path.to_string(),
        }
    }
}

/// Parses `/proc/<pid>/cgroup` content (cgroup v1, v2 or hybrid) or a bare
/// cgroup path.
///
/// `host_prefix` is the host path of the root of the reader's cgroup
/// namespace, which for a container with a private namespace is its own
/// cgroup (for example `/system.slice/docker-<id>.scope`). Every path is then
/// taken as relative to it, so `/../docker-<id>.scope` and `/` both resolve.
/// Pass `None` when the reader is in the host cgroup namespace, and see
/// [`find_host_cgroup_prefix`](super::find_host_cgroup_prefix).
pub fn parse_cgroup(text: &str, host_prefix: Option<&str>) -> CgroupAttribution {
    let lines = split_lines(text);
    if lines.is_empty() {
        return CgroupAttribution {
            reason: "empty cgroup content".to_string(),
            ..Default::default()
        };
    }

    // v1 hierarchies usually repeat one path, so each distinct path is
    // analysed once.
    let mut distinct: Vec<(&str, Resolved, PathAnalysis)> = Vec::new();
    let mut line_to_path = Vec::with_capacity(lines.len());
    for line in &lines {
        let index = match distinct.iter().position(|(path, _, _)| *path == line.path) {
            Some(index) => index,
            None => {
                let resolved = resolve_relative(line.path, host_prefix);
                let analysis = analyse_path(&resolved.path);
                distinct.push((line.path, resolved, analysis));
                distinct.len() - 1
            }
        };
        line_to_path.push(index);
    }
    let analysed: Vec<Analysed<'_, '_>> = lines
        .into_iter()
        .zip(line_to_path)
        .map(|(line, index)| (line, &distinct[index].1, &distinct[index].2))
        .collect();

    choose(&analysed, host_prefix)
}

fn split_lines(text: &str) -> Vec<CgroupLine<'_>> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        out.push(split_line(line));
    }
    out
}

/// Splits `N:controllers:path`; anything else is a bare path.
fn split_line(line: &str) -> CgroupLine<'_> {
    let mut parts = line.splitn(3, ':');
    let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
    else {
        return CgroupLine {
            hierarchy: None,
            path: line,
        };
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return CgroupLine {
            hierarchy: None,
            path: line,
        };
    }
    CgroupLine {
        hierarchy: Some((id, controllers)),
        path,
    }
}

/// One line with the analysis of its path.
type Analysed<'t, 'a> = (CgroupLine<'t>, &'a Resolved, &'a PathAnalysis);

/// A path after the private-namespace prefix was applied.
#[derive(Debug, Clone)]
struct Resolved {
    path: String,
    /// The path climbed out of, or was, the reader's namespace root and no
    /// prefix was given.
    unresolved: bool,
}

fn resolve_relative(path: &str, host_prefix: Option<&str>) -> Resolved {
    let climbs = path.split('/').any(|s| s == "..");
    match host_prefix {
        Some(prefix) => Resolved {
            path: normalise(&format!("{}/{}", prefix.trim_end_matches('/'), path)),
            unresolved: false,
        },
        None if climbs => Resolved {
            // The segments above the namespace root are unknown: keep what is
            // below them, which still names a container in most shapes.
            path: normalise_dropping_climbs(path),
            unresolved: true,
        },
        None => Resolved {
            path: path.to_string(),
            unresolved: false,
        },
    }
}

/// Normalises `.` and `..` segments; `..` above the root stays at the root.
fn normalise(path: &str) -> String {
    let mut stack: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    format!("/{}", stack.join("/"))
}

fn normalise_dropping_climbs(path: &str) -> String {
    normalise(
        &path
            .split('/')
            .filter(|s| *s != "..")
            .collect::<Vec<_>>()
            .join("/"),
    )
}

/// Picks the decisive line. The innermost id carried by the most lines wins,
/// and a tie goes to the id whose first line ranks best in [`line_rank`].
/// Among the lines carrying the winner, the most nested one supplies the
/// outer id.
fn choose(analysed: &[Analysed<'_, '_>], host_prefix: Option<&str>) -> CgroupAttribution {
    let mut notes: Vec<String> = Vec::new();
    for (line, _, analysis) in analysed {
        // The same note from several lines is reported once, with the first.
        for note in &analysis.notes {
            if !notes.iter().any(|n| n.starts_with(note.as_str())) {
                notes.push(format!("{note} (line `{}`)", line.label()));
            }
        }
    }

    let mut votes: Vec<(&str, usize, usize)> = Vec::new(); // (id, count, first index)
    for (index, (_, _, analysis)) in analysed.iter().enumerate() {
        if let Some(inner) = analysis.found.last() {
            match votes.iter_mut().find(|(id, _, _)| *id == inner.id) {
                Some(entry) => entry.1 += 1,
                None => votes.push((&inner.id, 1, index)),
            }
        }
    }

    let pod_uid = analysed.iter().find_map(|(_, _, a)| a.pod_uid.clone());

    if votes.is_empty() {
        return no_container(analysed, pod_uid, notes, host_prefix.is_some());
    }

    votes.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then(line_rank(analysed, a.2).cmp(&line_rank(analysed, b.2)))
    });
    let winner = votes[0].0.to_string();
    if votes.len() > 1 {
        let others: Vec<&str> = votes[1..].iter().map(|v| v.0).collect();
        notes.push(format!(
            "cgroup lines disagree: {winner} is named by {} line(s), also seen: {}",
            votes[0].1,
            others.join(", ")
        ));
    }

    if let Some((v2_line, _, _)) = analysed
        .iter()
        .find(|(l, _, a)| matches!(l.hierarchy, Some(("0", _))) && a.found.is_empty())
    {
        notes.push(format!(
            "the v2 line `{}` names no container, so the v1 lines decide, as on hybrid hosts with \
             the cgroupfs driver",
            v2_line.label()
        ));
    }

    // Among the lines naming the winner, the deepest nesting keeps the most
    // context (outer container, pod).
    let (line, resolved, analysis) = analysed
        .iter()
        .filter(|(_, _, a)| a.found.last().is_some_and(|f| f.id == winner))
        .max_by_key(|(_, _, a)| (a.found.len(), a.pod_uid.is_some()))
        .expect("the winner was taken from these lines");
    let inner = analysis.found.last().expect("line carries the winner");
    let outer = Some(&analysis.found[0].id)
        .filter(|outer| **outer != winner)
        .cloned();
    let pod_uid = analysed
        .iter()
        .filter(|(_, _, a)| a.found.last().is_some_and(|f| f.id == winner))
        .find_map(|(_, _, a)| a.pod_uid.clone());

    let mut reason = format!("segment `{}` is {}", inner.segment, inner.shape);
    if let Some(outer_id) = &outer {
        reason.push_str(&format!(
            "; it is nested in container {outer_id}, and the innermost container wins"
        ));
    }
    if resolved.unresolved {
        notes.push(unresolved_note(line.path));
    }

    CgroupAttribution {
        container_id: Some(winner),
        runtime_hint: inner.runtime,
        pod_uid,
        outer_container_id: outer,
        containerd_namespace: inner.containerd_namespace.clone(),
        cgroup_path: Some(resolved.path.clone()),
        unresolved_relative: resolved.unresolved,
        reason,
        notes,
    }
}

/// Lower rank = preferred line when two ids tie: the v2 line, then
/// controllers every runtime sets up.
fn line_rank(analysed: &[Analysed<'_, '_>], index: usize) -> usize {
    const PREFERRED: [&str; 4] = ["", "pids", "memory", "name=systemd"];
    let Some((_, controllers)) = analysed[index].0.hierarchy else {
        return 0;
    };
    controllers
        .split(',')
        .filter_map(|c| PREFERRED.iter().position(|p| *p == c))
        .min()
        .unwrap_or(PREFERRED.len())
}

fn no_container(
    analysed: &[Analysed<'_, '_>],
    pod_uid: Option<String>,
    mut notes: Vec<String>,
    prefixed: bool,
) -> CgroupAttribution {
    // Report the v2 line when there is one, else the first line.
    let (line, resolved, _) = analysed
        .iter()
        .find(|(l, _, _)| matches!(l.hierarchy, Some(("0", _))))
        .unwrap_or(&analysed[0]);

    let at_namespace_root = !prefixed
        && analysed
            .iter()
            .all(|(l, _, _)| l.path.trim_end_matches('/').is_empty() || l.path == "/");
    let unresolved = resolved.unresolved || at_namespace_root;
    let reason = if at_namespace_root {
        "every path is `/`: this is the root of the reader's cgroup namespace, which is either \
         the host root or the reader's own container; the path alone cannot tell them apart \
         (compare /proc/<pid>/ns/cgroup with the reader's and with host pid 1's)"
            .to_string()
    } else if pod_uid.is_some() {
        "the path names a pod cgroup but no container segment in it".to_string()
    } else {
        "no path segment has the shape of a container".to_string()
    };
    if resolved.unresolved {
        notes.push(unresolved_note(line.path));
    }

    CgroupAttribution {
        container_id: None,
        runtime_hint: None,
        pod_uid,
        outer_container_id: None,
        containerd_namespace: None,
        cgroup_path: Some(resolved.path.clone()),
        unresolved_relative: unresolved,
        reason,
        notes,
    }
}

fn unresolved_note(path: &str) -> String {
    format!(
        "path `{path}` is relative to a private cgroup namespace and no host prefix was given; \
         the segments above the namespace root are unknown, so the pod and outer container \
         may be missing"
    )
}

/// Classifies every segment of one path.
fn analyse_path(path: &str) -> PathAnalysis {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let mut analysis = PathAnalysis::default();
    let mut below_kubepods = false;

    for (index, segment) in segments.iter().enumerate() {
        let parent = index.checked_sub(1).map(|i| segments[i]);

        if segment.ends_with(".mount") {
            analysis.notes.push(format!(
                "`{segment}` is a systemd mount unit, not a container cgroup"
            ));
            continue;
        }
        if segment.starts_with("kubepods") || segment.starts_with("kubelet-kubepods") {
            below_kubepods = true;
        }

        // `<slice>:<prefix>:<id>`, the systemd-style cgroupsPath taken
        // literally by the cgroupfs driver.
        if let Some((slice, found)) = colon_form(segment) {
            if let Some(uid) = pod_uid_from_slice(slice) {
                analysis.pod_uid = Some(uid);
            }
            if let Some(found) = found {
                analysis.found.push(found);
            }
            continue;
        }

        if below_kubepods {
            if let Some(uid) = pod_uid_from_segment(segment) {
                analysis.pod_uid = Some(uid);
                continue;
            }
        }

        if let Some(note) = trap_note(segment, parent) {
            analysis.notes.push(note);
            continue;
        }

        if segment.starts_with("machine-")
            && segment.ends_with(".scope")
            && segments.get(index + 1) != Some(&"payload")
        {
            analysis.notes.push(format!(
                "`{segment}` has no `payload` child, so it is taken as a virtual machine or \
                 the host side of a machine, not a container"
            ));
            continue;
        }

        let parent_is_pod =
            below_kubepods && parent.is_some_and(|p| pod_uid_from_segment(p).is_some());
        if let Some(found) = classify(&segments, index, parent_is_pod) {
            analysis.found.push(found);
        }
    }
    analysis
}

/// Shapes that look like a container but are not one.
fn trap_note(segment: &str, parent: Option<&str>) -> Option<String> {
    if segment.starts_with("crio-conmon-") || segment.starts_with("libpod-conmon-") {
        return Some(format!(
            "`{segment}` is the conmon monitor of a container, not the container"
        ));
    }
    if segment == "conmon" && parent == Some("libpod_parent") {
        return Some("`libpod_parent/conmon` contains podman's conmon monitors".to_string());
    }
    if segment == "buildkit" && parent == Some("docker") {
        return Some(
            "`/docker/buildkit` contains BuildKit build steps, not Docker containers".to_string(),
        );
    }
    if let Some(name) = segment.strip_prefix("lxc.monitor.") {
        return Some(format!(
            "`{segment}` is the host-side monitor of LXC container {name}"
        ));
    }
    if segment.starts_with("machine-libpod_pod_") {
        return Some(format!(
            "`{segment}` is a podman pod slice; its id is the pod's, not a container's"
        ));
    }
    None
}

fn classify(segments: &[&str], index: usize, parent_is_pod: bool) -> Option<Found> {
    let segment = segments[index];
    let parent = index.checked_sub(1).map(|i| segments[i]);
    let found = |id: &str, runtime: Option<Runtime>, shape: &'static str| Found {
        id: id.to_string(),
        runtime,
        containerd_namespace: None,
        shape,
        segment: segment.to_string(),
    };

    // Systemd scopes and cgroupfs directories with a runtime prefix.
    const PREFIXED: [(&str, &str, Runtime, &str); 9] = [
        (
            "docker-",
            ".scope",
            Runtime::Docker,
            "a Docker container scope (systemd driver)",
        ),
        (
            "cri-containerd-",
            ".scope",
            Runtime::Containerd,
            "a containerd CRI container scope",
        ),
        (
            "nerdctl-",
            ".scope",
            Runtime::Containerd,
            "a nerdctl (containerd) container scope",
        ),
        ("crio-", ".scope", Runtime::CriO, "a CRI-O container scope"),
        (
            "crio-",
            "",
            Runtime::CriO,
            "a CRI-O container cgroup (cgroupfs driver)",
        ),
        (
            "libpod-payload-",
            ".scope",
            Runtime::Podman,
            "a podman container scope (--cgroups=split)",
        ),
        (
            "libpod-",
            ".scope",
            Runtime::Podman,
            "a podman container scope",
        ),
        (
            "libpod-",
            "",
            Runtime::Podman,
            "a podman container cgroup (cgroupfs manager)",
        ),
        ("docker-", "", Runtime::Docker, "a Docker container cgroup"),
    ];
    for (prefix, suffix, runtime, shape) in PREFIXED {
        if let Some(id) = segment
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
        {
            if is_hex64(id) {
                return Some(found(id, Some(runtime), shape));
            }
        }
    }

    if is_hex64(segment) {
        if let Some((runtime, shape)) = classify_bare_hex(segments, index, parent_is_pod) {
            return Some(found(segment, runtime, shape));
        }
    }

    // Systemd-nspawn: the payload sub-cgroup marks a container; VMs under
    // machine.slice have `libvirt/...` children instead.
    if segments.get(index + 1) == Some(&"payload") {
        if let Some(name) = segment
            .strip_prefix("machine-")
            .and_then(|rest| rest.strip_suffix(".scope"))
            .or_else(|| {
                segment
                    .strip_prefix("systemd-nspawn@")
                    .and_then(|rest| rest.strip_suffix(".service"))
            })
        {
            if !name.is_empty() {
                return Some(found(
                    &unescape_unit(name),
                    Some(Runtime::SystemdNspawn),
                    "a systemd-nspawn machine with a payload cgroup",
                ));
            }
        }
    }

    // LXC, LXD, Incus.
    if let Some(name) = segment.strip_prefix("lxc.payload.") {
        // Incus prefixes names of non-default projects with `<project>_`;
        // instance names cannot contain `_`.
        let name = name.rsplit('_').next().unwrap_or(name);
        if !name.is_empty() {
            return Some(found(
                name,
                Some(Runtime::Lxc),
                "an LXC container payload (LXC 4 or later, LXD, Incus)",
            ));
        }
    }
    if index == 1 && matches!(parent, Some("lxc") | Some("lxc.payload")) && is_plain_name(segment) {
        return Some(found(
            segment,
            Some(Runtime::Lxc),
            "an LXC container below `/lxc` (LXC 3 or earlier, Proxmox)",
        ));
    }

    // Cloud Foundry Garden handles: 8-4-4-4-4 hex directly below `garden`.
    if parent == Some("garden") && is_garden_handle(segment) {
        return Some(found(
            segment,
            Some(Runtime::Garden),
            "a Cloud Foundry Garden container handle",
        ));
    }

    // ECS on Fargate 1.4 and later: `/ecs/<32 hex>-<digits>`.
    if index == 1 && parent == Some("ecs") && is_fargate_id(segment) {
        return Some(found(
            segment,
            Some(Runtime::Containerd),
            "an ECS Fargate (platform 1.4 or later) container",
        ));
    }

    // containerd without CRI: exactly `/<namespace>/<id>` at the end of the
    // path, at the root or right below a container.
    if index + 1 == segments.len() && index >= 1 {
        let namespace = segments[index - 1];
        let at_root = index == 1;
        if at_root && is_containerd_namespace(namespace) && is_containerd_id(segment) {
            return Some(Found {
                containerd_namespace: Some(namespace.to_string()),
                ..found(
                    segment,
                    Some(Runtime::Containerd),
                    "a containerd container in `/<namespace>/<id>` form (no CRI)",
                )
            });
        }
    }
    None
}

/// Decides whether a 64-hex segment is a container, which it is only in
/// these places.
fn classify_bare_hex(
    segments: &[&str],
    index: usize,
    parent_is_pod: bool,
) -> Option<(Option<Runtime>, &'static str)> {
    let parent = index.checked_sub(1).map(|i| segments[i]);
    if parent_is_pod {
        return Some((
            None,
            "a 64-hex id below a kubepods pod cgroup (cgroupfs driver; containerd, Docker, CRI-O 1.0, \
             microk8s and k3s all use this shape, so the runtime comes from metadata)",
        ));
    }
    match parent {
        None => Some((
            Some(Runtime::Docker),
            "a 64-hex id at the cgroup root (Docker, cgroupfs driver)",
        )),
        Some("docker") => Some((
            Some(Runtime::Docker),
            "a Docker container below `/docker` (cgroupfs driver)",
        )),
        Some("actions_job") => Some((
            Some(Runtime::Docker),
            "a Docker container below `/actions_job` (--cgroup-parent)",
        )),
        _ if segments[0] == "ecs" => {
            Some((Some(Runtime::Docker), "a Docker container of an ECS task"))
        }
        _ => None,
    }
}

/// Uid of the systemd user manager (`user@<uid>.service`) whose tree contains
/// `path`, where rootless runtimes put their containers.
pub(crate) fn user_manager_uid(path: &str) -> Option<u32> {
    path.split('/').find_map(|segment| {
        segment
            .strip_prefix("user@")?
            .strip_suffix(".service")?
            .parse()
            .ok()
    })
}

/// `<slice>:<prefix>:<id>` as one segment.
fn colon_form(segment: &str) -> Option<(&str, Option<Found>)> {
    let mut parts = segment.splitn(3, ':');
    let (slice, prefix, id) = (parts.next()?, parts.next()?, parts.next()?);
    if !slice.ends_with(".slice") {
        return None;
    }
    let runtime = match prefix {
        "cri-containerd" => Some(Runtime::Containerd),
        "docker" => Some(Runtime::Docker),
        "crio" => Some(Runtime::CriO),
        "libpod" => Some(Runtime::Podman),
        _ => None,
    };
    let found = (is_hex64(id)).then(|| Found {
        id: id.to_string(),
        runtime,
        containerd_namespace: None,
        shape: "a `<slice>:<prefix>:<id>` cgroup (systemd-style parent with the cgroupfs driver)",
        segment: segment.to_string(),
    });
    Some((slice, found))
}

/// `pod<uid>` (cgroupfs) or a kubepods slice with `-pod<uid>.slice`.
fn pod_uid_from_segment(segment: &str) -> Option<String> {
    if let Some(uid) = segment.strip_prefix("pod") {
        return valid_pod_uid(uid);
    }
    pod_uid_from_slice(segment)
}

/// `kubepods[-<qos>]-pod<uid with _>.slice`, also with the `kubelet-` prefix
/// kind uses.
fn pod_uid_from_slice(segment: &str) -> Option<String> {
    let stem = segment.strip_suffix(".slice")?;
    if !(stem.starts_with("kubepods-") || stem.starts_with("kubelet-kubepods-")) {
        return None;
    }
    let (_, uid) = stem.rsplit_once("-pod")?;
    valid_pod_uid(&uid.replace('_', "-"))
}

/// Accepts a UUID with dashes, or the 32-hex config hash of a static pod.
fn valid_pod_uid(uid: &str) -> Option<String> {
    (is_uuid(uid) || (uid.len() == 32 && is_hex(uid))).then(|| uid.to_string())
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && is_hex(s)
}

fn is_hex_groups(s: &str, lengths: &[usize]) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == lengths.len()
        && groups
            .iter()
            .zip(lengths)
            .all(|(g, len)| g.len() == *len && is_hex(g))
}

fn is_uuid(s: &str) -> bool {
    is_hex_groups(s, &[8, 4, 4, 4, 12])
}

fn is_garden_handle(s: &str) -> bool {
    is_hex_groups(s, &[8, 4, 4, 4, 4])
}

fn is_fargate_id(s: &str) -> bool {
    s.split_once('-').is_some_and(|(task, n)| {
        task.len() == 32 && is_hex(task) && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Letters, digits, `-`, `_` and `.` with no unit suffix: an LXC name.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && !is_unit(s)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn is_unit(s: &str) -> bool {
    [".slice", ".scope", ".service", ".mount", ".socket"]
        .iter()
        .any(|suffix| s.ends_with(suffix))
}

/// Top-level cgroup names that other shapes own, so `/<name>/<x>` is not a
/// containerd namespace.
const NOT_CONTAINERD_NAMESPACES: [&str; 12] = [
    "docker",
    "kubepods",
    "kubelet",
    "lxc",
    "lxc.payload",
    "ecs",
    "garden",
    "libpod_parent",
    "machine",
    "user",
    "system",
    "actions_job",
];

/// containerd namespace names follow DNS label rules (letters, digits, `-`,
/// and `.` between labels).
fn is_containerd_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 76
        && !is_unit(s)
        && !NOT_CONTAINERD_NAMESPACES.contains(&s)
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// containerd container ids: alphanumeric runs joined by single `.`, `_` or
/// `-`, at most 76 characters.
pub(crate) fn is_containerd_id(s: &str) -> bool {
    if s.is_empty() || s.len() > 76 || is_unit(s) {
        return false;
    }
    let bytes = s.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut previous_separator = false;
    for &b in bytes {
        let separator = matches!(b, b'.' | b'_' | b'-');
        if !(b.is_ascii_alphanumeric() || separator) || (separator && previous_separator) {
            return false;
        }
        previous_separator = separator;
    }
    true
}

/// Undoes systemd unit-name escaping (`\x2d` for `-`).
fn unescape_unit(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(pos) = rest.find("\\x") {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 2..pos + 4)
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match code {
            Some(byte) if byte.is_ascii() => {
                out.push(byte as char);
                rest = &rest[pos + 4..];
            }
            _ => {
                out.push_str("\\x");
                rest = &rest[pos + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID_A: &str = "1f1d6e2d4940ddac13abd421a2617992bf89f0e0f9a902ed58278c5f843e9ae7";
    const ID_B: &str = "a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413";

    #[test]
    fn relative_path_resolves_against_prefix() {
        let text = format!("0::/../docker-{ID_A}.scope");
        let result = parse_cgroup(&text, Some(&format!("/system.slice/docker-{ID_B}.scope")));
        assert_eq!(result.container_id.as_deref(), Some(ID_A));
        assert_eq!(
            result.cgroup_path.as_deref(),
            Some(format!("/system.slice/docker-{ID_A}.scope").as_str())
        );
        assert!(!result.unresolved_relative);
        assert_eq!(result.outer_container_id, None);
    }

    #[test]
    fn relative_path_without_prefix_is_flagged() {
        let text = format!("0::/../docker-{ID_A}.scope");
        let result = parse_cgroup(&text, None);
        assert_eq!(result.container_id.as_deref(), Some(ID_A));
        assert!(result.unresolved_relative);
        assert!(result
            .notes
            .iter()
            .any(|n| n.contains("private cgroup namespace")));
    }

    #[test]
    fn namespace_root_with_prefix_is_reader_container() {
        let result = parse_cgroup("0::/", Some(&format!("/system.slice/docker-{ID_B}.scope")));
        assert_eq!(result.container_id.as_deref(), Some(ID_B));
        assert!(!result.unresolved_relative);
    }

    #[test]
    fn namespace_root_without_prefix_is_unresolved() {
        let result = parse_cgroup("0::/", None);
        assert_eq!(result.container_id, None);
        assert!(result.unresolved_relative);
        assert!(result.reason.contains("cannot tell"));
    }

    #[test]
    fn unescape_unit_decodes_dash() {
        assert_eq!(unescape_unit("qemu\\x2d1\\x2dwin11"), "qemu-1-win11");
        assert_eq!(unescape_unit("bad\\xzz"), "bad\\xzz");
    }

    #[test]
    fn containerd_id_rules() {
        assert!(is_containerd_id("test_container"));
        assert!(is_containerd_id(ID_A));
        assert!(!is_containerd_id(".."));
        assert!(!is_containerd_id("a..b"));
        assert!(!is_containerd_id("a/b"));
        assert!(!is_containerd_id("x.service"));
    }

    #[test]
    fn repeated_id_is_not_its_own_outer() {
        let result = parse_cgroup(&format!("/docker/{ID_A}/docker/{ID_A}"), None);
        assert_eq!(result.container_id.as_deref(), Some(ID_A));
        assert_eq!(result.outer_container_id, None);
    }

    #[test]
    fn empty_text_is_no_container() {
        let result = parse_cgroup("\n\n", None);
        assert_eq!(result.container_id, None);
        assert_eq!(result.reason, "empty cgroup content");
    }

    #[test]
    fn random_token_paths_keep_invariants() {
        const TOKENS: [&str; 24] = [
            "/",
            "..",
            "docker",
            "docker-",
            ".scope",
            ":",
            "\n",
            "0::",
            "4:memory:",
            "pod",
            "kubepods",
            "kubepods-besteffort-pod",
            "_",
            "-",
            ".slice",
            "lxc.payload.",
            "\\x2d",
            "\\x",
            "é",
            "machine-",
            "payload",
            "crio-conmon-",
            "garden",
            ID_A,
        ];
        // A fixed linear congruential sequence keeps failures reproducible.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            let mut text = String::new();
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let length = (state >> 59) as usize + 1;
            for _ in 0..length {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                text.push_str(TOKENS[(state >> 33) as usize % TOKENS.len()]);
            }

            let result = parse_cgroup(&text, None);
            if let Some(id) = &result.container_id {
                assert!(!id.is_empty(), "empty id from {text:?}");
                assert_ne!(
                    result.outer_container_id.as_ref(),
                    Some(id),
                    "outer equals inner for {text:?}"
                );
            } else {
                assert_eq!(
                    result.runtime_hint, None,
                    "runtime without container for {text:?}"
                );
                assert_eq!(
                    result.outer_container_id, None,
                    "outer without inner for {text:?}"
                );
            }
            let prefixed = parse_cgroup(&text, Some("/system.slice/x.scope"));
            assert!(
                !prefixed.unresolved_relative,
                "unresolved with a prefix: {text:?}"
            );
        }
    }

    #[test]
    fn slice_without_kubepods_gives_no_pod() {
        let text =
            format!("/user.slice/pod12345678-1234-1234-1234-123456789012/docker-{ID_A}.scope");
        let result = parse_cgroup(&text, None);
        assert_eq!(result.container_id.as_deref(), Some(ID_A));
        assert_eq!(result.pod_uid, None);
    }
}
