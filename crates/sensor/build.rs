//! Compiles the BPF programs in `bpf/` with clang into one CO-RE object that
//! the sensor embeds (`collect::ebpf`). clang 14 or later is required; set
//! `CLANG` to use a specific binary. The UAPI headers (`linux/bpf.h`) come
//! from the system's linux-libc-dev package.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SOURCES: &[&str] = &[
    "bpf/picket.bpf.c",
    "bpf/bpf_defs.h",
    "bpf/kernel_types.h",
    "bpf/events.h",
];

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    println!("cargo:rerun-if-env-changed=CLANG");

    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("picket.bpf.o");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let (arch_define, multiarch) = match arch.as_str() {
        "x86_64" => ("__TARGET_ARCH_x86", "x86_64-linux-gnu"),
        "aarch64" => ("__TARGET_ARCH_arm64", "aarch64-linux-gnu"),
        other => panic!("the eBPF programs support x86_64 and aarch64 targets, not {other}"),
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());

    let status = Command::new(&clang)
        .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-D{arch_define}"))
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg("-c")
        .arg("bpf/picket.bpf.c")
        .arg("-o")
        .arg(&object)
        .status();
    match status {
        Ok(status) if status.success() => {}
        Ok(status) => panic!(
            "{clang} failed ({status}) compiling bpf/picket.bpf.c; its errors are above. \
             The eBPF programs need clang 14 or later and the linux-libc-dev headers"
        ),
        Err(error) => panic!(
            "cannot run `{clang}` ({error}): building picket-sensor compiles its eBPF programs \
             with clang 14 or later; install clang (Debian/Ubuntu: apt-get install clang \
             linux-libc-dev) or set CLANG to its path"
        ),
    }
}
