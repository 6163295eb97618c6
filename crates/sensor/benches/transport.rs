//! Throughput of the spool and of the transport into a real `picket-server`.
//!
//! Run: `cargo bench -p picket-sensor --bench transport`. The end-to-end part
//! needs `PICKET_SERVER_BIN` or a `picket-server` next to the bench binary's
//! profile directory (`cargo build --release -p picket-server`); without it
//! only the spool figures are printed. `PICKET_BENCH_EVENTS` sets the number
//! of events sent (default 100,000).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use picket_event::Record;
use picket_sensor::spool::{Spool, SpoolConfig, SpooledBatch};
use picket_sensor::transport::{self, TransportConfig};
use serde_json::json;

fn main() {
    // `cargo bench` passes `--bench`; no other arguments are supported.
    let records: Vec<Vec<u8>> = (0..500)
        .map(|n| realistic_record(n).to_json_line().into_bytes())
        .collect();
    let record_bytes: usize = records.iter().map(Vec::len).sum::<usize>() / records.len();
    println!("record size: {record_bytes} bytes of JSON (NEW_PROCESS with parent and container)");

    bench_spool(&records);
    match server_binary() {
        Some(bin) => bench_end_to_end(&bin),
        None => println!(
            "end to end: skipped, set PICKET_SERVER_BIN or build picket-server in this profile"
        ),
    }
}

fn realistic_record(n: u64) -> Record {
    let mut record = Record::new(picket_event::types::NEW_PROCESS, "node-7.cluster.local");
    record.routing.this = Some(format!("{:032x}", n * 7919));
    record.routing.parent = Some(format!("{:032x}", n * 104_729));
    record
        .set("PROCESS_ID", 40_000 + n)
        .set("PARENT_PROCESS_ID", 1234)
        .set("FILE_PATH", "/usr/bin/curl")
        .set("COMMAND_LINE", format!("curl -sS -o /tmp/out.{n} https://updates.example.com/v1/check?id={n}"))
        .set("USER_NAME", "www-data")
        .set("USER_ID", 33)
        .set("HASH", "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08")
        .set(
            "PARENT",
            json!({"PROCESS_ID": 1234, "FILE_PATH": "/bin/sh", "COMMAND_LINE": "/bin/sh -c /opt/app/cron.sh"}),
        )
        .set(
            "CONTAINER",
            json!({
                "ID": "3f4e5d6c7b8a99aabbccddeeff00112233445566778899aabbccddeeff001122",
                "NAME": "k8s_app_web-7d9f8c6b5-x2x9q_shop_4b9c0d1e_0",
                "IMAGE": "registry.example.com/shop/web:1.42.0",
                "RUNTIME": "containerd",
                "POD_NAME": "web-7d9f8c6b5-x2x9q",
                "POD_NAMESPACE": "shop",
                "POD_UID": "4b9c0d1e-2f3a-4b5c-8d9e-0f1a2b3c4d5e",
                "K8S_CONTAINER_NAME": "web",
            }),
        );
    record
}

fn bench_spool(records: &[Vec<u8>]) {
    let dir = tempfile::tempdir().unwrap();
    let config = SpoolConfig::new(dir.path(), 64 << 20);
    let (mut spool, _) = Spool::open(config.clone()).unwrap();

    let batch_bytes: usize = records.iter().map(Vec::len).sum();
    let batches = (60 << 20) / batch_bytes;
    let start = Instant::now();
    for _ in 0..batches {
        let seq = spool.next_seq().unwrap();
        spool
            .append(&SpooledBatch {
                seq,
                records: records.to_vec(),
            })
            .unwrap();
    }
    spool.close().unwrap();
    let append = start.elapsed();
    let mib = (batches * batch_bytes) as f64 / f64::from(1 << 20);
    println!(
        "spool append: {batches} batches of {} records, {mib:.1} MiB in {:.2} s = {:.0} MiB/s, {:.0} events/s",
        records.len(),
        append.as_secs_f64(),
        mib / append.as_secs_f64(),
        (batches * records.len()) as f64 / append.as_secs_f64()
    );

    let start = Instant::now();
    let (mut spool, report) = Spool::open(config).unwrap();
    let open = start.elapsed();
    let start = Instant::now();
    let mut after = 0;
    let mut read = 0;
    while let Some(batch) = spool.first_after(after) {
        after = batch.seq;
        read += 1;
    }
    let replay = start.elapsed();
    assert_eq!(read as u64, report.batches);
    println!(
        "spool reopen (scan + checksum): {:.2} s; replay read: {:.2} s = {:.0} MiB/s",
        open.as_secs_f64(),
        replay.as_secs_f64(),
        mib / replay.as_secs_f64()
    );
}

fn server_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PICKET_SERVER_BIN") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    let candidate = exe.parent()?.parent()?.join("picket-server");
    candidate.exists().then_some(candidate)
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn admin(bin: &Path, data: &Path, args: &[&str]) -> String {
    let output = Command::new(bin)
        .arg("--data")
        .arg(data)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn bench_end_to_end(bin: &Path) {
    let events: u64 = std::env::var("PICKET_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let org = admin(bin, &data, &["org", "create", "bench"]);
    let key = admin(
        bin,
        &data,
        &[
            "key",
            "create",
            "--org",
            &org,
            "--url",
            &format!("https://127.0.0.1:{port}"),
        ],
    );
    let _server = ServerProcess(
        Command::new(bin)
            .arg("--data")
            .arg(&data)
            .args(["serve", "--grpc-listen", &format!("127.0.0.1:{port}")])
            .args([
                "--http-listen",
                &format!("127.0.0.1:{http}"),
                "--min-free-mb",
                "1",
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }

    let host_fs = dir.path().join("host");
    std::fs::create_dir_all(host_fs.join("etc")).unwrap();
    std::fs::write(
        host_fs.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let cpu_before = cpu_time();
    let (elapsed, acked) = runtime.block_on(async {
        let key = transport::installation_key_from_arg(&key, |_| None).unwrap();
        let mut config = TransportConfig::new(key, "bench-host".into());
        config.state_dir = dir.path().join("state");
        config.host_fs = host_fs;
        config.drain_timeout = Duration::from_secs(300);
        let (tx, rx) = tokio::sync::mpsc::channel(10_000);
        let handle = transport::spawn(config, rx).unwrap();
        let mut enrollment = handle.enrollment.clone();
        enrollment.wait_for(Option::is_some).await.unwrap();

        let start = Instant::now();
        for n in 0..events {
            tx.send(realistic_record(n)).await.unwrap();
        }
        drop(tx);
        let summary = handle.join.await.unwrap().unwrap();
        (start.elapsed(), summary.events_acked)
    });
    let cpu = cpu_time() - cpu_before;
    assert_eq!(acked, events, "every event acknowledged");
    println!(
        "end to end (1 sensor, server on the same 2-core host): {events} events acknowledged in {:.2} s = {:.0} events/s; \
         sensor process CPU {:.1} µs/event",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / events as f64
    );
}

/// User plus system CPU time of this process so far.
fn cpu_time() -> Duration {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of proc(5), in clock ticks.
    let after = &text[text.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}
