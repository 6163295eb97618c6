//! Tests against the running kernel: each triggers real syscalls and checks
//! the fact for that pid field by field. They need root and a kernel that
//! runs eBPF; without them they fail when `CI=true` and are skipped otherwise.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use super::*;
use crate::collect::{ExeKind, ExecDetails, ExecFact, FileAction, FileFact};

fn skip_or_fail(reason: &str) -> Option<(EbpfHandle, Receiver<Fact>)> {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("eBPF test prerequisite missing: {reason}");
    }
    println!("skipped: {reason}");
    None
}

fn start_tier(files: FileConfig) -> Option<(EbpfHandle, Receiver<Fact>)> {
    if let Err(error) = probe(Path::new("/")) {
        return skip_or_fail(&error.to_string());
    }
    let (tx, rx) = sync_channel(200_000);
    let config = EbpfConfig {
        files,
        ..EbpfConfig::default()
    };
    // The probe passed, so a failure here is a bug, not a missing prerequisite.
    match start(&config, tx) {
        Ok(handle) => Some((handle, rx)),
        Err(error) => panic!(
            "start failed after a successful probe: {error}: {:?}",
            std::error::Error::source(&error)
        ),
    }
}

fn no_files() -> FileConfig {
    FileConfig {
        enabled: false,
        ..FileConfig::default()
    }
}

/// Collects the facts `accept` selects until `done` returns true on them or
/// the timeout passes.
fn collect(
    rx: &Receiver<Fact>,
    timeout: Duration,
    mut accept: impl FnMut(&Fact) -> bool,
    mut done: impl FnMut(&[Fact]) -> bool,
) -> Vec<Fact> {
    let deadline = Instant::now() + timeout;
    let mut kept = Vec::new();
    while Instant::now() < deadline && !done(&kept) {
        if let Ok(fact) = rx.recv_timeout(Duration::from_millis(50)) {
            if accept(&fact) {
                kept.push(fact);
            }
        }
    }
    kept
}

fn exec_of(rx: &Receiver<Fact>, pid: u32) -> ExecFact {
    let facts = collect(
        rx,
        Duration::from_secs(5),
        |f| matches!(f, Fact::Exec(e) if e.pid == pid),
        |k| !k.is_empty(),
    );
    match facts.into_iter().next() {
        Some(Fact::Exec(exec)) => exec,
        _ => panic!("no exec fact for pid {pid}"),
    }
}

fn details(exec: &ExecFact) -> &ExecDetails {
    exec.details.as_ref().expect("eBPF execs carry details")
}

fn run(command: &mut Command) -> u32 {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

fn stat_start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let after_comm = &stat[stat.rfind(')').expect("comm end") + 2..];
    after_comm
        .split(' ')
        .nth(19)
        .expect("field 22")
        .parse()
        .expect("number")
}

#[test]
fn exec_reports_argv_exe_cwd_and_ids() {
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cwd = std::fs::canonicalize(dir.path()).unwrap();
    let odd = OsStr::from_bytes(b"bad\xff\xfeutf8");

    let pid = run(Command::new("/bin/true")
        .arg(odd)
        .arg("line\nbreak")
        .arg("\x1b[31mred")
        .arg("")
        .current_dir(&cwd));
    let exec = exec_of(&rx, pid);
    let d = details(&exec);

    assert_eq!(exec.ppid, Some(std::process::id()));
    assert_eq!(
        d.exe,
        std::fs::canonicalize("/bin/true")
            .unwrap()
            .as_os_str()
            .as_bytes()
    );
    assert!(!d.exe_truncated);
    let expected: Vec<&[u8]> = vec![
        b"/bin/true",
        b"bad\xff\xfeutf8",
        b"line\nbreak",
        b"\x1b[31mred",
        b"",
    ];
    assert_eq!(d.argv, expected);
    assert_eq!(d.argc, 5);
    assert!(!d.argv_truncated);
    assert_eq!(d.cwd, cwd.as_os_str().as_bytes());
    assert_eq!((d.uid, d.gid), (0, 0));
    assert_eq!(d.exe_kind, ExeKind::Regular);
    assert!(d.cgroup_id != 0);
}

#[test]
fn exec_start_ticks_and_cgroup_match_proc() {
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let mut child = Command::new("/bin/sleep").arg("3").spawn().unwrap();
    let pid = child.id();
    let exec = exec_of(&rx, pid);
    let proc_ticks = stat_start_ticks(pid);
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(exec.start_ticks, Some(proc_ticks));
    let d = details(&exec);
    for line in d.cgroup_text.lines() {
        let (id, rest) = line.split_once(':').unwrap();
        let (_, path) = rest.split_once(':').unwrap();
        let found = proc_cgroup.lines().any(|proc_line| {
            proc_line.starts_with(&format!("{id}:")) && proc_line.ends_with(&format!(":{path}"))
        });
        assert!(
            found,
            "cgroup line {line:?} not in /proc/{pid}/cgroup:\n{proc_cgroup}"
        );
    }
    assert!(
        d.cgroup_text.lines().any(|l| l.starts_with("0::")),
        "{}",
        d.cgroup_text
    );
}

#[test]
fn exec_long_and_many_arguments_are_whole() {
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let long = "a".repeat(20_000);
    let many: Vec<String> = (0..500).map(|i| format!("arg{i}")).collect();

    let long_pid = run(Command::new("/bin/true").arg(&long));
    let many_pid = run(Command::new("/bin/true").args(&many));

    let long_exec = exec_of(&rx, long_pid);
    let d = details(&long_exec);
    assert_eq!(d.argv.len(), 2);
    assert_eq!(d.argv[1], long.as_bytes());
    assert!(!d.argv_truncated);

    let many_exec = exec_of(&rx, many_pid);
    let d = details(&many_exec);
    assert_eq!(d.argc, 501);
    assert_eq!(d.argv.len(), 501);
    assert_eq!(d.argv[500], b"arg499");
    assert!(!d.argv_truncated);
}

#[test]
fn exec_oversized_argv_is_flagged_cut() {
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let huge = "b".repeat(40_000);
    let pid = run(Command::new("/bin/true").arg(&huge).arg("after"));
    let exec = exec_of(&rx, pid);
    let d = details(&exec);
    assert!(d.argv_truncated);
    assert_eq!(d.argc, 3);
    assert_eq!(d.argv[0], b"/bin/true");
    assert!(d.argv[1].iter().all(|&b| b == b'b'));
    assert!(d.argv[1].len() < huge.len());
}

fn deep_dir(root: &Path, depth: usize) -> std::path::PathBuf {
    let mut path = std::fs::canonicalize(root).unwrap();
    for i in 0..depth {
        path.push(format!("d{i}"));
    }
    std::fs::create_dir_all(&path).unwrap();
    path
}

#[test]
fn exec_deep_cwd_is_whole_or_flagged() {
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let seventy = deep_dir(dir.path(), 70);
    let pid = run(Command::new("/bin/true").current_dir(&seventy));
    let exec = exec_of(&rx, pid);
    assert_eq!(details(&exec).cwd, seventy.as_os_str().as_bytes());
    assert!(!details(&exec).cwd_truncated);

    let deeper = deep_dir(dir.path(), 300);
    let pid = run(Command::new("/bin/true").current_dir(&deeper));
    let exec = exec_of(&rx, pid);
    let d = details(&exec);
    assert!(d.cwd_truncated);
    assert!(
        deeper.as_os_str().as_bytes().ends_with(&d.cwd),
        "cut cwd keeps the leaf end"
    );
}

#[test]
fn exit_reports_code_and_signal() {
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let code_pid = run(Command::new("/bin/sh").args(["-c", "exit 3"]));
    let mut sleeper = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let signal_pid = sleeper.id();
    std::thread::sleep(Duration::from_millis(100));
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    let exits = collect(
        &rx,
        Duration::from_secs(5),
        |f| matches!(f, Fact::Exit(e) if e.pid == code_pid || e.pid == signal_pid),
        |k| k.len() >= 2,
    );
    let status = |pid: u32| {
        exits.iter().find_map(|f| match f {
            Fact::Exit(e) if e.pid == pid => Some(e.exit_status),
            _ => None,
        })
    };
    assert_eq!(status(code_pid), Some(Some(3 << 8)));
    assert_eq!(status(signal_pid), Some(Some(libc::SIGKILL)));
}

#[test]
fn fork_reports_child_and_parent() {
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let mut shell = Command::new("/bin/sh")
        .args(["-c", "sleep 1 & echo $!; wait"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let shell_pid = shell.id();
    let mut out = String::new();
    std::io::Read::read_to_string(shell.stdout.as_mut().unwrap(), &mut out).unwrap();
    shell.wait().unwrap();
    let child_pid: u32 = out.trim().parse().unwrap();

    let forks = collect(
        &rx,
        Duration::from_secs(5),
        |f| matches!(f, Fact::Fork(x) if x.pid == child_pid),
        |k| !k.is_empty(),
    );
    let Some(Fact::Fork(fork)) = forks.first() else {
        panic!("no fork fact for pid {child_pid}")
    };
    assert_eq!(fork.ppid, shell_pid);
    assert!(fork.start_ticks.is_some());
}

#[test]
fn exec_storm_reports_every_argv() {
    let Some((handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let nonce = format!("storm-{}", std::process::id());
    let mut pids = std::collections::HashMap::new();
    for i in 0..2000u32 {
        let pid = run(Command::new("/bin/true").arg(&nonce).arg(i.to_string()));
        pids.insert(pid, i);
    }
    let facts = collect(
        &rx,
        Duration::from_secs(20),
        |f| matches!(f, Fact::Exec(e) if pids.contains_key(&e.pid)),
        |k| k.len() >= pids.len(),
    );
    assert_eq!(facts.len(), 2000, "losses: {:?}", handle.losses());
    for fact in &facts {
        let Fact::Exec(exec) = fact else {
            unreachable!()
        };
        let i = pids[&exec.pid];
        let expected: Vec<Vec<u8>> = vec![
            b"/bin/true".to_vec(),
            nonce.as_bytes().to_vec(),
            i.to_string().into_bytes(),
        ];
        assert_eq!(details(exec).argv, expected);
    }
    assert_eq!(handle.losses().ringbuf_reserve, 0);
}

fn python(script: &str) -> u32 {
    run(Command::new("python3").args(["-c", script]))
}

#[test]
fn exec_kinds_come_from_kernel_facts() {
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    if Command::new("python3").arg("-V").output().is_err() {
        return drop(skip_or_fail("python3 is missing"));
    }
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("t");
    std::fs::copy("/bin/true", &copy).unwrap();
    let copy = copy.display();

    let memfd = python(
        "import os; fd=os.memfd_create('pkt'); os.write(fd, open('/bin/true','rb').read()); os.execve(fd, ['m'], {})",
    );
    let deleted = python(&format!("import os; fd=os.open('{copy}', os.O_RDONLY); os.unlink('{copy}'); os.execve(fd, ['d'], {{}})"));
    std::fs::copy("/bin/true", dir.path().join("t")).unwrap();
    let by_fd = python(&format!(
        "import os; fd=os.open('{copy}', os.O_RDONLY); os.execve(fd, ['f'], {{}})"
    ));
    let shm = format!("/dev/shm/picket-ebpf-{}", std::process::id());
    std::fs::copy("/bin/true", &shm).unwrap();
    let shm_pid = run(&mut Command::new(&shm));
    std::fs::remove_file(&shm).unwrap();

    // python3 execs itself first; the exec of interest is the one whose
    // argv[0] the script chose.
    let execs = collect(
        &rx,
        Duration::from_secs(3),
        |f| matches!(f, Fact::Exec(_)),
        |_| false,
    );
    let kind = |pid: u32, argv0: &[u8]| {
        let exec = execs
            .iter()
            .find_map(|f| match f {
                Fact::Exec(e)
                    if e.pid == pid
                        && details(e).argv.first().map(Vec::as_slice) == Some(argv0) =>
                {
                    Some(e)
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no exec of {argv0:?} by pid {pid}"));
        details(exec).exe_kind
    };
    assert_eq!(kind(memfd, b"m"), ExeKind::Memfd);
    assert_eq!(kind(deleted, b"d"), ExeKind::Deleted);
    assert_eq!(kind(by_fd, b"f"), ExeKind::Fd);
    assert_eq!(kind(shm_pid, shm.as_bytes()), ExeKind::DevShm);
}

fn file_facts(rx: &Receiver<Fact>, dir: &Path, wanted: usize) -> Vec<FileFact> {
    let dir = dir.as_os_str().as_bytes().to_vec();
    collect(
        rx,
        Duration::from_secs(5),
        |f| matches!(f, Fact::File(x) if x.path.starts_with(&dir)),
        |k| k.len() >= wanted,
    )
    .into_iter()
    .filter_map(|f| match f {
        Fact::File(file) => Some(file),
        _ => None,
    })
    .collect()
}

#[test]
fn file_create_modify_rename_delete() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let files = FileConfig {
        prefixes: vec![root.display().to_string()],
        ..FileConfig::default()
    };
    let Some((_handle, rx)) = start_tier(files) else {
        return;
    };

    std::fs::create_dir(root.join("sub")).unwrap();
    let shell_pid = run(Command::new("/bin/sh")
        .args(["-c", "echo x > a; mv a b; rm b; cd sub && echo y > ../c"])
        .current_dir(&root));

    let facts = file_facts(&rx, &root, 6);
    let path = |name: &str| root.join(name).as_os_str().as_bytes().to_vec();
    let find =
        |action: FileAction, p: &[u8]| facts.iter().find(|f| f.action == action && f.path == p);

    let create = find(FileAction::Create, &path("a")).expect("create of a");
    assert_eq!(create.pid, shell_pid);
    assert!(create.start_ticks.is_some());
    assert!(
        find(FileAction::Modify, &path("a")).is_some(),
        "modify of a: {facts:?}"
    );
    let rename = find(FileAction::Rename, &path("a")).expect("rename of a");
    assert_eq!(rename.new_path.as_deref(), Some(path("b").as_slice()));
    assert_ne!(rename.pid, shell_pid, "mv runs as its own process");
    assert!(
        find(FileAction::Delete, &path("b")).is_some(),
        "delete of b: {facts:?}"
    );
    // Created through a relative path, reported as the kernel resolved it.
    let created = find(FileAction::Create, &path("c")).expect("create of ../c from sub");
    assert_eq!(created.pid, shell_pid);
}

#[test]
fn file_prefix_filter_skips_other_paths() {
    let inside = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let inside_root = std::fs::canonicalize(inside.path()).unwrap();
    let outside_root = std::fs::canonicalize(outside.path()).unwrap();
    let files = FileConfig {
        prefixes: vec![inside_root.display().to_string()],
        ..FileConfig::default()
    };
    let Some((_handle, rx)) = start_tier(files) else {
        return;
    };

    run(Command::new("/bin/sh")
        .args(["-c", "touch out; touch \"$0/in\""])
        .arg(&inside_root)
        .current_dir(&outside_root));
    let seen = collect(
        &rx,
        Duration::from_secs(2),
        |f| matches!(f, Fact::File(_)),
        |_| false,
    );
    let paths: Vec<&[u8]> = seen
        .iter()
        .filter_map(|f| match f {
            Fact::File(x) => Some(x.path.as_slice()),
            _ => None,
        })
        .collect();
    assert!(paths.iter().any(|p| p.ends_with(b"/in")), "{paths:?}");
    assert!(
        !paths
            .iter()
            .any(|p| p.starts_with(outside_root.as_os_str().as_bytes())),
        "{paths:?}"
    );
}

#[test]
fn file_rate_limit_counts_suppressed() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(dir.path()).unwrap();
    let files = FileConfig {
        prefixes: vec![root.display().to_string()],
        rate_per_sec: 1,
        burst: 5,
        ..FileConfig::default()
    };
    let Some((handle, rx)) = start_tier(files) else {
        return;
    };

    run(Command::new("/bin/sh")
        .args(["-c", "for i in $(seq 1 50); do : > f$i; done"])
        .current_dir(&root));
    let seen = file_facts(&rx, &root, 50);
    std::thread::sleep(Duration::from_millis(1200));
    assert!(
        seen.len() <= 7,
        "rate limit let {} events through",
        seen.len()
    );
    assert!(
        handle.losses().file_rate_limit >= 40,
        "{:?}",
        handle.losses()
    );
}

#[test]
fn container_exec_carries_container_cgroup() {
    if Command::new("docker")
        .args(["image", "inspect", "picket-test/busybox:latest"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return drop(skip_or_fail(
            "docker or the picket-test/busybox:latest image is missing",
        ));
    }
    let Some((_handle, rx)) = start_tier(no_files()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let cidfile = dir.path().join("cid");
    let nonce = format!("pkt-ebpf-{}", std::process::id());
    let status = Command::new("docker")
        .args(["run", "--rm", "--name", &nonce, "--cidfile"])
        .arg(&cidfile)
        .args(["picket-test/busybox:latest", "/bin/true", &nonce])
        .status()
        .unwrap();
    assert!(status.success());
    let cid = std::fs::read_to_string(&cidfile).unwrap();

    let facts = collect(
        &rx,
        Duration::from_secs(10),
        |f| matches!(f, Fact::Exec(e) if details(e).argv.get(1).map(Vec::as_slice) == Some(nonce.as_bytes())),
        |k| !k.is_empty(),
    );
    let Some(Fact::Exec(exec)) = facts.first() else {
        panic!("no exec of /bin/true {nonce} in the container")
    };
    let d = details(exec);
    assert_eq!(d.argv[0], b"/bin/true");
    assert_eq!(d.exe, b"/bin/busybox", "exe is the in-container path");
    assert_eq!(d.cwd, b"/");
    assert!(
        d.cgroup_text.contains(cid.trim()),
        "cgroup text {:?} lacks container id {cid}",
        d.cgroup_text
    );
}

/// Runs in a child without CAP_SYS_ADMIN/CAP_BPF/CAP_PERFMON (see
/// `missing_capability_gives_reason`); prints what probe and start return.
#[test]
fn capless_child_reports_reason() {
    if std::env::var("PICKET_EBPF_CAPLESS_CHILD").is_err() {
        return;
    }
    match probe(Path::new("/")) {
        Ok(()) => println!("probe: ok"),
        Err(error) => println!("probe: {error}"),
    }
    let (tx, _rx) = sync_channel(16);
    match start(&EbpfConfig::default(), tx) {
        Ok(_) => println!("start: ok"),
        Err(error) => println!("start: {error}"),
    }
}

#[test]
fn missing_capability_gives_reason() {
    if Command::new("capsh").arg("--help").output().is_err() {
        return drop(skip_or_fail("capsh is missing"));
    }
    if probe(Path::new("/")).is_err() {
        return drop(skip_or_fail(
            "the eBPF tier is unavailable even with capabilities",
        ));
    }
    let test_binary = std::env::current_exe().unwrap();
    let command = format!(
        "{} collect::ebpf::tests::capless_child_reports_reason --exact --nocapture --test-threads=1",
        test_binary.display()
    );
    let out = Command::new("capsh")
        .args([
            "--drop=cap_sys_admin,cap_bpf,cap_perfmon",
            "--",
            "-c",
            &command,
        ])
        .env("PICKET_EBPF_CAPLESS_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("probe: missing capability CAP_BPF"), "{text}");
    assert!(
        text.contains("start: the kernel refused to create BPF map"),
        "{text}"
    );
    assert!(
        text.contains("(permission denied): missing CAP_BPF"),
        "{text}"
    );
}

#[test]
fn container_fork_exit_and_files() {
    if Command::new("docker")
        .args(["image", "inspect", "picket-test/busybox:latest"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        return drop(skip_or_fail(
            "docker or the picket-test/busybox:latest image is missing",
        ));
    }
    let files = FileConfig {
        prefixes: vec!["/tmp".to_owned()],
        ..FileConfig::default()
    };
    let Some((_handle, rx)) = start_tier(files) else {
        return;
    };
    let nonce = format!("pkt-ebpf-files-{}", std::process::id());
    let script = "echo x > /tmp/f; mv /tmp/f /tmp/g; rm /tmp/g; /bin/true; exit 7";
    let dir = tempfile::tempdir().unwrap();
    let cidfile = dir.path().join("cid");
    let status = Command::new("docker")
        .args(["run", "--rm", "--name", &nonce, "--cidfile"])
        .arg(&cidfile)
        .args(["picket-test/busybox:latest", "sh", "-c", script, &nonce])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7));
    let cid = std::fs::read_to_string(&cidfile).unwrap();

    let facts = collect(&rx, Duration::from_secs(3), |_| true, |_| false);
    let shell = facts
        .iter()
        .find_map(|f| match f {
            // The docker client's argv ends with the nonce too; the shell's
            // starts with "sh".
            Fact::Exec(e)
                if details(e).argv.first().map(Vec::as_slice) == Some(b"sh")
                    && details(e).argv.last().map(Vec::as_slice) == Some(nonce.as_bytes()) =>
            {
                Some(e)
            }
            _ => None,
        })
        .expect("exec of the container's shell");
    let shell_pid = shell.pid;
    assert!(
        details(shell).cgroup_text.contains(cid.trim()),
        "{}",
        details(shell).cgroup_text
    );

    let children: Vec<u32> = facts
        .iter()
        .filter_map(|f| match f {
            Fact::Fork(fork) if fork.ppid == shell_pid => Some(fork.pid),
            _ => None,
        })
        .collect();
    assert!(
        !children.is_empty(),
        "no fork by the container shell {shell_pid}"
    );
    let in_container = |pid: u32| pid == shell_pid || children.contains(&pid);
    let file = |action: FileAction, path: &[u8]| {
        facts.iter().find_map(|f| match f {
            Fact::File(x) if x.action == action && x.path == path && in_container(x.pid) => Some(x),
            _ => None,
        })
    };
    assert_eq!(
        file(FileAction::Create, b"/tmp/f").map(|x| x.pid),
        Some(shell_pid)
    );
    assert!(
        file(FileAction::Modify, b"/tmp/f").is_some(),
        "modify of /tmp/f"
    );
    let rename = file(FileAction::Rename, b"/tmp/f").expect("rename of /tmp/f");
    assert_eq!(rename.new_path.as_deref(), Some(&b"/tmp/g"[..]));
    assert!(
        file(FileAction::Delete, b"/tmp/g").is_some(),
        "delete of /tmp/g"
    );

    let exit = facts.iter().find_map(|f| match f {
        Fact::Exit(e) if e.pid == shell_pid => Some(e.exit_status),
        _ => None,
    });
    assert_eq!(exit, Some(Some(7 << 8)));
}

#[test]
fn full_queue_is_reported_as_dropped() {
    if let Err(error) = probe(Path::new("/")) {
        return drop(skip_or_fail(&error.to_string()));
    }
    let (tx, rx) = sync_channel(1);
    let config = EbpfConfig {
        files: no_files(),
        ..EbpfConfig::default()
    };
    let handle = start(&config, tx).expect("start the eBPF tier");
    for _ in 0..50 {
        run(&mut Command::new("/bin/true"));
    }
    std::thread::sleep(Duration::from_millis(300));

    let overflow = handle.losses().queue_overflow;
    assert!(overflow >= 50, "queue overflow count {overflow}");
    let dropped = collect(
        &rx,
        Duration::from_secs(3),
        |f| {
            matches!(
                f,
                Fact::Dropped {
                    reason: "queue_overflow",
                    ..
                }
            )
        },
        |k| !k.is_empty(),
    );
    assert!(
        !dropped.is_empty(),
        "no queue_overflow fact once the queue had room"
    );
}

#[test]
fn oversized_record_counts_ringbuf_loss() {
    if let Err(error) = probe(Path::new("/")) {
        return drop(skip_or_fail(&error.to_string()));
    }
    let (tx, rx) = sync_channel(10_000);
    // One page: an exec record with a 6,000-byte argument cannot fit.
    let config = EbpfConfig {
        ring_bytes: 4096,
        files: no_files(),
        ..EbpfConfig::default()
    };
    let handle = start(&config, tx).expect("start the eBPF tier");
    let big = "c".repeat(6000);
    let pid = run(Command::new("/bin/true").arg(&big));

    let facts = collect(
        &rx,
        Duration::from_secs(3),
        |f| {
            matches!(
                f,
                Fact::Dropped {
                    reason: "ringbuf_reserve",
                    ..
                }
            )
        },
        |k| !k.is_empty(),
    );
    assert!(
        handle.losses().ringbuf_reserve >= 1,
        "{:?}",
        handle.losses()
    );
    assert!(
        !facts.is_empty(),
        "no ringbuf_reserve fact for the lost exec of pid {pid}"
    );
}

#[test]
fn missing_btf_names_searched_paths() {
    let dir = tempfile::tempdir().unwrap();
    let searched = vec![
        dir.path().join("sys/kernel/btf/vmlinux"),
        dir.path().join("vmlinux"),
    ];
    let error = first_file(searched).unwrap_err();
    let message = error.to_string();
    assert!(message.starts_with("no kernel BTF at "), "{message}");
    assert!(message.contains("sys/kernel/btf/vmlinux or "), "{message}");
    assert!(message.contains("CONFIG_DEBUG_INFO_BTF"), "{message}");
}

#[test]
fn btf_under_host_fs_comes_first() {
    let candidates = btf_candidates(Path::new("/rootfs"));
    assert_eq!(candidates[0], Path::new("/rootfs/sys/kernel/btf/vmlinux"));
    assert_eq!(candidates[1], Path::new("/sys/kernel/btf/vmlinux"));
    assert_eq!(btf_candidates(Path::new("/")).len(), 1);
}

#[test]
fn kernel_release_parses_major_minor() {
    let cases = [
        ("6.18.44-fc-v1272", Some((6, 18))),
        ("5.4.0-150-generic", Some((5, 4))),
        ("5.10.0-28-amd64", Some((5, 10))),
        ("4.19.0", Some((4, 19))),
        ("", None),
    ];
    for (release, expected) in cases {
        assert_eq!(kernel_version(release), expected, "{release}");
    }
    assert!(kernel_version("5.4.0").unwrap() < (5, 8));
    assert!(kernel_version("5.10.0").unwrap() >= (5, 8));
}

#[test]
fn invalid_prefixes_are_rejected_by_name() {
    let relative = prefix_entries(&["etc".to_owned()])
        .err()
        .expect("relative prefix");
    assert_eq!(
        relative.to_string(),
        "file path prefix \"etc\" is invalid: must be an absolute path"
    );
    let long = format!("/{}", "x".repeat(300));
    assert!(prefix_entries(&[long]).is_err());
    let nine: Vec<String> = (0..9).map(|i| format!("/p{i}")).collect();
    assert!(prefix_entries(&nine).is_err());
    assert_eq!(prefix_entries(&["/etc".to_owned()]).unwrap()[0].len, 4);
}
