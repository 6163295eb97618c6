/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Records sent to user space through the ring buffer, and the loss counter
 * slots. The asserts below pin sizes and offsets, and `collect/ebpf/wire.rs`
 * repeats those offsets, so a layout change must update both files.
 */
#ifndef PICKET_EVENTS_H
#define PICKET_EVENTS_H

#include "bpf_defs.h"

#define EVENT_EXEC 1
#define EVENT_FORK 2
#define EVENT_EXIT 3
#define EVENT_FILE 4
#define EVENT_NET 5
#define EVENT_DNS 6

/* Longest path text sent, in bytes (PATH_MAX without its NUL). */
#define PATH_CAP 4095
/* Most path components walked before a path is flagged as cut. */
#define PATH_DEPTH_CAP 160
/* Bytes of the argument area (NUL-separated argv) sent per exec. */
#define ARGV_CAP 32768
/* Bytes of cgroup text (up to two `/proc/<pid>/cgroup` lines). */
#define CGROUP_TEXT_CAP 1024
/* Deepest cgroup path walked. */
#define CGROUP_DEPTH_CAP 24

/* flags of exec_event and file_event */
#define FLAG_EXE_TRUNCATED (1 << 0)
#define FLAG_CWD_TRUNCATED (1 << 1)
#define FLAG_ARGV_TRUNCATED (1 << 2)
#define FLAG_ARGV_UNREADABLE (1 << 3)
#define FLAG_EXEC_FDPATH (1 << 4)
#define FLAG_EXE_INTERNAL_MOUNT (1 << 5)
#define FLAG_CGROUP_TRUNCATED (1 << 6)
#define FLAG_PATH_TRUNCATED (1 << 7)
#define FLAG_NEW_PATH_TRUNCATED (1 << 8)

/* file_event actions */
#define FILE_CREATE 1
#define FILE_DELETE 2
#define FILE_MODIFY 3
#define FILE_RENAME 4

/* net_event actions */
#define NET_TCP_CONNECT 1
#define NET_TCP_ACCEPT 2
#define NET_TCP_CLOSE 3
#define NET_UDP_SEND 4
#define NET_UDP_RECV 5

/* flags of net_event */
#define NET_FLAG_UDP_CONNECTED (1 << 0)

/* Loss counter slots (index into the per-CPU `loss` array). */
#define LOSS_RINGBUF 0
#define LOSS_ARGV_UNREADABLE 1
#define LOSS_FILE_RATE_LIMITED 2
#define LOSS_PATH_UNREADABLE 3
#define LOSS_SLOTS 4

struct event_header {
	u32 kind;
	u32 tgid;
	/* CLOCK_BOOTTIME nanoseconds when the event was taken. */
	u64 time_boot_ns;
	/* Start time of tgid in clock ticks since boot (USER_HZ = 100). */
	u64 start_ticks;
};

struct exec_event {
	struct event_header hdr;
	u32 ppid;
	u32 uid;
	u32 gid;
	u32 flags;
	u64 cgroup_id;
	u64 exe_magic;
	u32 exe_nlink;
	/* Real argument count from the kernel's binprm. */
	u32 argc;
	/* Bytes of the argument area in the new process (arg_end - arg_start). */
	u32 argv_area_len;
	/* Length of the exe path's leading part that is the path of the mount
	 * point of the exe's mount. Zero when the exe is on the root mount. */
	u16 exe_mount_prefix_len;
	u16 exe_len;
	u16 cwd_len;
	u16 cgroup_len;
	u32 argv_len;
	/* exe, cwd, cgroup text and argv bytes, packed in that order. */
	u8 data[4096 + 4096 + 8192 + ARGV_CAP];
};

struct fork_event {
	struct event_header hdr;
	u32 ppid;
	u32 pad;
};

struct exit_event {
	struct event_header hdr;
	/* wait(2) status: exit code in bits 8..15, signal in bits 0..6. */
	s32 exit_status;
	u32 pad;
};

struct file_event {
	struct event_header hdr;
	u32 action;
	u32 flags;
	u16 path_len;
	u16 new_path_len;
	u32 pad;
	/* path, then new path for renames (each at most PATH_CAP bytes; the
	 * second half is slack for the verifier's bounds on masked offsets). */
	u8 data[16384];
};

/*
 * A TCP connection opened, accepted or closed, or a UDP socket's first
 * datagram to or from a peer. The header's process is the one that
 * connected, accepted or did the I/O: for closes and for outgoing
 * connections, whose handshake ends outside any process, it is the one
 * recorded when the connection started.
 */
struct net_event {
	struct event_header hdr;
	u32 action;
	u32 flags;
	/* Inode number of the socket's network namespace. */
	u32 netns;
	/* AF_INET or AF_INET6, and IPPROTO_TCP or IPPROTO_UDP. */
	u16 family;
	u16 protocol;
	/* Host byte order. */
	u16 local_port;
	u16 remote_port;
	u32 pad;
	/* 4 bytes used for AF_INET, 16 for AF_INET6, network byte order. */
	u8 local_addr[16];
	u8 remote_addr[16];
	/* Kernel address of the socket: same value for every event of one
	 * connection while it lives. */
	u64 sock;
	u8 comm[16];
};

/* Bytes of a DNS response copied from the receiving process's buffer. */
#define DNS_PAYLOAD_CAP 512

/*
 * A UDP datagram from port 53 as the process read it: the connection fields
 * (action 0) and the first bytes of the payload.
 */
struct dns_event {
	struct net_event net;
	u32 payload_len;
	u32 pad;
	/* At most DNS_PAYLOAD_CAP bytes are used; the second half is slack
	 * for the verifier's bound on a masked length. */
	u8 payload[DNS_PAYLOAD_CAP * 2];
};

#define EXEC_DATA_OFFSET 80
#define FILE_DATA_OFFSET 40

_Static_assert(sizeof(struct event_header) == 24, "event_header layout");
_Static_assert(__builtin_offsetof(struct exec_event, data) == EXEC_DATA_OFFSET, "exec_event layout");
_Static_assert(__builtin_offsetof(struct exec_event, argv_len) == 76, "exec_event layout");
_Static_assert(sizeof(struct fork_event) == 32, "fork_event layout");
_Static_assert(sizeof(struct exit_event) == 32, "exit_event layout");
_Static_assert(__builtin_offsetof(struct file_event, data) == FILE_DATA_OFFSET, "file_event layout");
_Static_assert(__builtin_offsetof(struct net_event, local_addr) == 48, "net_event layout");
_Static_assert(__builtin_offsetof(struct net_event, sock) == 80, "net_event layout");
_Static_assert(sizeof(struct net_event) == 104, "net_event layout");
_Static_assert(__builtin_offsetof(struct dns_event, payload) == 112, "dns_event layout");

#endif
