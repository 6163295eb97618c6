//! Container and pod attribution: cgroup content to runtime, container id and
//! pod uid, then metadata from the runtime's own files under `$HOST_FS`.
