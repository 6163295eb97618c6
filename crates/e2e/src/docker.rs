//! A thin wrapper over the `docker` CLI, and a guard that removes a
//! container when dropped, so a failed assertion leaves nothing running.

use std::process::{Command, Output};

/// Local test image built FROM scratch with busybox-static by
/// `scripts/host-setup.sh`.
pub const BUSYBOX_IMAGE: &str = "picket-test/busybox:latest";

/// Runs `docker ARGS` and returns its output, whatever the exit status.
pub fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("failed to run docker {args:?}: {error}"))
}

/// Runs `docker ARGS`, panics with its stderr unless it succeeds, and
/// returns its trimmed stdout.
pub fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Returns true when a Docker engine responds.
pub fn engine_available() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map(|output| output.status.success())
        .unwrap_or(false)
}

/// True when `image` exists locally.
pub fn image_exists(image: &str) -> bool {
    docker(&["image", "inspect", image]).status.success()
}

/// A container started by a test; `docker rm -f` on drop.
#[derive(Debug)]
pub struct Container {
    pub name: String,
    pub id: String,
}

impl Container {
    /// Runs `docker run -d --name NAME RUN_ARGS` (flags, image and command)
    /// and waits for the container to be running.
    pub fn run(name: &str, run_args: &[&str]) -> Container {
        // A container left over from an interrupted run would make the
        // name conflict.
        docker(&["rm", "-f", name]);
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(run_args);
        let id = docker_ok(&args);
        Container {
            name: name.to_owned(),
            id,
        }
    }

    /// Host pid of the container's first process.
    pub fn pid(&self) -> u32 {
        docker_ok(&["inspect", "--format", "{{.State.Pid}}", &self.id])
            .parse()
            .expect("docker inspect prints the pid as a number")
    }

    /// Runs `docker exec CONTAINER ARGS` and returns its output.
    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["exec", self.id.as_str()];
        full.extend_from_slice(args);
        docker(&full)
    }

    /// The container's log, stdout and stderr together.
    pub fn logs(&self) -> String {
        let output = docker(&["logs", &self.id]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    }

    /// True while the container runs.
    pub fn is_running(&self) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", &self.id])
            .stdout
            .starts_with(b"true")
    }

    /// Removes the container now (`docker rm -f`).
    pub fn remove(self) {
        drop(self);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        docker(&["rm", "-f", &self.id]);
    }
}
