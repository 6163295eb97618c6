//! Cgroup attribution over every row of the shared corpus of real cgroup
//! shapes (`corpus/cgroup_paths.tsv` in the project's shared directory).
//!
//! The file is read at test time, so a row added there is tested without a
//! code change. It is found at `$PICKET_SHARED/corpus/cgroup_paths.tsv`, else
//! at `<workspace root>/../shared/corpus/cgroup_paths.tsv`.
//!
//! Columns: cgroup version (`v1`, `v2`, `hybrid`, or `path` for a bare path),
//! the content with lines joined by a literal `\n`, the expected full
//! container id or `-`, a free-text runtime, the expected pod uid or `-`, and
//! the source.
//!
//! Runtime rule: the parser's hint is checked against the runtime text before
//! its first `(` or ` nested`. A hint must be named there (`lxc` also accepts
//! `lxd` and `incus`). No hint is allowed only for a host process or for a
//! bare 64-hex id right below a kubepods `pod...` cgroup, the shape that
//! containerd, Docker through dockershim, CRI-O 1.0, microk8s and k3s share.

use std::path::PathBuf;

use picket_sensor::container::{parse_cgroup, Runtime};

struct Row {
    line_number: usize,
    version: String,
    content: String,
    expected_id: Option<String>,
    runtime_text: String,
    expected_pod_uid: Option<String>,
    source: String,
}

fn corpus_path() -> PathBuf {
    if let Some(shared) = std::env::var_os("PICKET_SHARED") {
        return PathBuf::from(shared).join("corpus/cgroup_paths.tsv");
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    workspace.join("../shared/corpus/cgroup_paths.tsv")
}

fn dash_is_none(field: &str) -> Option<String> {
    (field != "-").then(|| field.to_string())
}

fn read_corpus() -> Vec<Row> {
    let path = corpus_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cgroup corpus not found at {}: {e}; set PICKET_SHARED to the shared directory",
            path.display()
        )
    });

    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(
            fields.len(),
            6,
            "corpus line {} has {} tab-separated fields, expected 6",
            index + 1,
            fields.len()
        );
        rows.push(Row {
            line_number: index + 1,
            version: fields[0].to_string(),
            content: fields[1].replace("\\n", "\n"),
            expected_id: dash_is_none(fields[2]),
            runtime_text: fields[3].to_string(),
            expected_pod_uid: dash_is_none(fields[4]),
            source: fields[5].to_string(),
        });
    }
    rows
}

/// Words in the corpus runtime text that name each hinted runtime.
fn runtime_words(runtime: Runtime) -> &'static [&'static str] {
    match runtime {
        Runtime::Docker => &["docker"],
        Runtime::Containerd => &["containerd"],
        Runtime::CriO => &["cri-o"],
        Runtime::Podman => &["podman"],
        Runtime::Lxc => &["lxc", "lxd", "incus"],
        Runtime::SystemdNspawn => &["systemd-nspawn"],
        Runtime::Garden => &["garden"],
    }
}

/// Cuts the runtime text before its qualifiers, so `containerd (minikube)
/// nested in docker` names containerd.
fn runtime_head(text: &str) -> String {
    let head = text.split('(').next().unwrap_or(text);
    let head = head.split(" nested").next().unwrap_or(head);
    head.trim().to_lowercase()
}

/// `true` when `id` is a bare segment right below a `pod...` segment.
fn is_bare_id_below_pod(path: &str, id: &str) -> bool {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    segments
        .windows(2)
        .any(|pair| pair[1] == id && pair[0].starts_with("pod"))
}

fn check_row(row: &Row) -> Vec<String> {
    let result = parse_cgroup(&row.content, None);
    let mut problems = Vec::new();

    if result.container_id != row.expected_id {
        problems.push(format!(
            "container id: expected {:?}, got {:?}",
            row.expected_id, result.container_id
        ));
    }
    if result.pod_uid != row.expected_pod_uid {
        problems.push(format!(
            "pod uid: expected {:?}, got {:?}",
            row.expected_pod_uid, result.pod_uid
        ));
    }

    let head = runtime_head(&row.runtime_text);
    match (&result.runtime_hint, &result.container_id) {
        (Some(hint), None) => {
            problems.push(format!("runtime hint {hint} given for a host process"))
        }
        (Some(hint), Some(_)) => {
            if !runtime_words(*hint).iter().any(|w| head.contains(w)) {
                problems.push(format!(
                    "runtime hint {hint} is not named by the row's runtime `{}`",
                    row.runtime_text
                ));
            }
        }
        (None, Some(id)) => {
            let path = result.cgroup_path.as_deref().unwrap_or("");
            if !is_bare_id_below_pod(path, id) {
                problems.push(format!(
                    "no runtime hint, but `{path}` is not a bare id below a pod cgroup"
                ));
            }
        }
        (None, None) => {}
    }
    problems
}

#[test]
fn corpus_rows_attribute_as_expected() {
    let rows = read_corpus();
    assert!(
        rows.len() >= 60,
        "corpus has only {} rows; is it the right file?",
        rows.len()
    );

    let mut report = String::new();
    let mut failed = 0;
    for row in &rows {
        let problems = check_row(row);
        if problems.is_empty() {
            continue;
        }
        failed += 1;
        let result = parse_cgroup(&row.content, None);
        report.push_str(&format!(
            "\nline {} [{}] {}\n  runtime column: {}\n  reason: {}\n",
            row.line_number, row.version, row.source, row.runtime_text, result.reason
        ));
        for problem in problems {
            report.push_str(&format!("  - {problem}\n"));
        }
    }
    assert_eq!(
        failed,
        0,
        "{failed} of {} corpus rows failed:{report}",
        rows.len()
    );
    println!("{} corpus rows checked", rows.len());
}

/// Outer ids of the nested rows, which the corpus states only in its notes.
#[test]
fn corpus_nested_rows_keep_outer_id() {
    let expected_outer = [
        (
            "ec08435e04266c5ba381fccbb829f626d11d8ddf5f8f547263c7a2d79ab4787a",
            "a9a5ad238e59234193ee7ec3fcff5e735b3708ea1068826952255b69e3cfa413",
        ),
        (
            "fb651068cfbd4bf3d45fb092ec9451f8d1a36b3753687bbaa0a9920617eae5b9",
            "e58cfbc8b67f6e1af458efdd31cb2a8abdbf9f95db64f4c852b701285a09d40e",
        ),
        (
            "b0e6aa50e847c3d3b1880e307ec7996040275c8063832cffc9274defce2cb655",
            "c1146e7ccca9ab4436abd69923c07d097b37b762ed21cc3f24584c2f84e77c57",
        ),
        (
            "1575e8b4a92a9c340a657f3df4ddc0f6a6305c200879f3898b26368ad019b503",
            "6dc3fdffbf66b1239d55e98da9aaa759ea51ed35d04eb09d19ebd78963aa26c2",
        ),
        (
            "a5a6a3af5d51ad95b915ca948710b90a94abc279e84963b9d22a39f342ce67d9",
            "94acc75af8cf9c56e10676b0760ed424bec95dadc91f68f6564014686930200e",
        ),
    ];
    let rows = read_corpus();
    for (inner, outer) in expected_outer {
        let row = rows
            .iter()
            .find(|r| r.expected_id.as_deref() == Some(inner))
            .unwrap_or_else(|| panic!("corpus has no row for nested container {inner}"));
        let result = parse_cgroup(&row.content, None);
        assert_eq!(
            result.outer_container_id.as_deref(),
            Some(outer),
            "line {}: outer id of {inner}",
            row.line_number
        );
    }

    // A single container has no outer id.
    let plain = rows
        .iter()
        .find(|r| r.version == "v2" && r.expected_id.is_some())
        .unwrap();
    assert_eq!(parse_cgroup(&plain.content, None).outer_container_id, None);
}

/// Rows read from a private cgroup namespace climb out of it with `..`: they
/// must be flagged as unresolved when no prefix is given.
#[test]
fn corpus_relative_rows_are_flagged_unresolved() {
    let rows = read_corpus();
    let relative: Vec<&Row> = rows.iter().filter(|r| r.content.contains("/..")).collect();
    assert!(!relative.is_empty(), "corpus has no relative rows");
    for row in relative {
        let result = parse_cgroup(&row.content, None);
        assert!(
            result.unresolved_relative,
            "line {}: `{}` not flagged as unresolved",
            row.line_number, row.content
        );
    }
}
