//! A real full disk: the data directory on a small tmpfs. Needs root to
//! mount; without it the test prints `skipped` (or fails when CI=true).

mod common;

use std::process::Command;

use common::*;
use picket_server::filter::EventQuery;
use tonic::Code;

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size}"),
                "tmpfs",
                path.to_str().unwrap(),
            ])
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({status}); root with CAP_SYS_ADMIN is needed"
            ));
        }
        Ok(Tmpfs(path.to_owned()))
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args([
                "-o",
                &format!("remount,size={size}"),
                self.0.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(status.success(), "remounting the tmpfs failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_keeps_unacked_batch_for_resend() {
    let outer = tempfile::tempdir().unwrap();
    let tmpfs = match Tmpfs::mount(outer.path(), "4m") {
        Ok(tmpfs) => tmpfs,
        Err(reason) if std::env::var("CI").as_deref() == Ok("true") => panic!("{reason}"),
        Err(reason) => {
            println!("skipped: {reason}");
            return;
        }
    };
    let dir = outer.path();
    let (org_id, key) = org_with_key(dir, "acme", &[]);
    let server = start(dir).await;
    let mut client = client(dir, server.grpc_addr).await;
    let enrolled = enroll(&mut client, &key, "node-1").await;
    let mut stream = open_stream(&mut client, hello(&enrolled, "instance-a", "node-1"))
        .await
        .unwrap();

    // Batches of about 100 KiB until the 4 MiB file system is full.
    let mut acked = 0u64;
    let mut failed_seq = None;
    let mut batches = Vec::new();
    for seq in 1..=200u64 {
        let records: Vec<_> = (0..100)
            .map(|n| {
                let mut r = process_event("node-1", seq * 1000 + n);
                r.set("COMMAND_LINE", format!("{seq}-{n} {}", "x".repeat(900)));
                r
            })
            .collect();
        batches.push(records.clone());
        stream.tx.send(batch(seq, &records)).await.unwrap();
        match stream.wait_ack(seq).await {
            Ok(()) => acked = seq,
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::ResourceExhausted,
                    "{}",
                    status.message()
                );
                assert!(
                    status.message().contains("send it again later"),
                    "{}",
                    status.message()
                );
                failed_seq = Some(seq);
                break;
            }
        }
    }
    let failed_seq = failed_seq.expect("the disk filled up within 200 batches");
    assert_eq!(failed_seq, acked + 1);

    // The server is still up: a status comes back, not a dropped connection.
    let mut other = client.clone();
    let _ = other.enroll(enroll_request(&key, "node-2")).await;

    tmpfs.resize("64m");
    let mut stream = open_stream(&mut client, hello(&enrolled, "instance-a", "node-1"))
        .await
        .unwrap();
    stream
        .tx
        .send(batch(failed_seq, &batches[failed_seq as usize - 1]))
        .await
        .unwrap();
    stream.wait_ack(failed_seq).await.unwrap();

    let query = EventQuery {
        org_id: Some(org_id),
        event_type: Some("NEW_PROCESS".into()),
        limit: 100_000,
        ..Default::default()
    };
    let stored = server.store.query_events(&query).unwrap();
    assert_eq!(
        stored.len() as u64,
        failed_seq * 100,
        "every batch stored once after space returned"
    );
    server.shutdown().await;
    drop(tmpfs);
}
