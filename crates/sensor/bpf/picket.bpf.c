// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
/*
 * Picket's process and file programs: one CO-RE object for Linux 5.8 and later
 * with BTF.
 *
 * Hook choice: every program is a BTF-typed tracepoint (tp_btf), attached with
 * BPF_RAW_TRACEPOINT_OPEN, so nothing needs tracefs or debugfs mounted and
 * arguments arrive typed. The exec program runs at sched_process_exec, after
 * the new program's argument area is in place, which is why argv is read there
 * from mm->arg_start..arg_end and not from the syscall's user pointers.
 *
 * File programs hook raw_syscalls sys_enter/sys_exit. fentry or LSM programs
 * on security_path_* would see resolved kernel paths, but they need BPF
 * trampolines, and some kernels refuse those (the 6.18 VM this was built on
 * returns EPERM for any fentry or lsm program). Writes and creating opens
 * have the struct file behind a descriptor, so their path is walked in the
 * kernel. Unlink and rename paths are the caller's text, made absolute with
 * the kernel path of the directory descriptor or working directory.
 *
 * Network programs: TCP connections come from the inet_sock_set_state
 * tracepoint. The process of an outgoing connection is the one that moved the
 * socket to SYN_SENT, because connect(2) runs in it. An incoming connection is
 * reported when accept(2) hands it to a process, found from the returned
 * descriptor.
 * UDP peers come from the sock_send_length and sock_recv_length tracepoints
 * (every sendmsg and recvmsg path, in the calling process). An unconnected
 * socket's peer is read from the address the caller passed to sendto or
 * sendmsg, or that recvfrom or recvmsg wrote back, at syscall exit.
 *
 * NOTE: scratch buffers are per CPU. On a fully preemptible kernel
 * (CONFIG_PREEMPT) a program preempted mid-event can see its buffer reused by
 * another task on the same CPU, and that event's text can be mixed.
 */
#include "bpf_defs.h"
#include "kernel_types.h"
#include "events.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define NSEC_PER_TICK 10000000ULL /* NSEC_PER_SEC / USER_HZ, USER_HZ = 100 */
#define TMPFS_MAGIC 0x01021994
#define HUGETLBFS_MAGIC 0x958458f6
#define S_IFMT 00170000
#define S_IFREG 0100000
#define S_IFDIR 0040000
#define AT_FDCWD -100
#define AT_REMOVEDIR 0x200
#define MAX_ERRNO 4095
#define PATH_END 4096
#define PATH_MASK 4095
#define EXEC_DATA_MASK 16383
#define FILE_DATA_MASK 8191
#define PREFIX_SLOTS 8
#define PREFIX_CAP 256

/* Tunables, set by the loader before load. */
const volatile u32 self_tgid = 0;
const volatile u32 file_events_enabled = 0;
const volatile u32 prefix_count = 0;
/* Per-process file event budget: tokens per second and bucket size. */
const volatile u32 file_rate_per_sec = 0;
const volatile u32 file_burst = 0;
/* Bytes waiting in the ring buffer before a record wakes the reader. */
const volatile u64 wakeup_bytes = 0;
/* FMODE_CREATED: open(2) set it when it created the file (Linux 4.19+). */
const volatile u32 fmode_created = 0x100000;
/* Syscall numbers of this architecture; -1 where a call does not exist. */
const volatile s32 nr_open = -1;
const volatile s32 nr_openat = -1;
const volatile s32 nr_openat2 = -1;
const volatile s32 nr_creat = -1;
const volatile s32 nr_unlink = -1;
const volatile s32 nr_unlinkat = -1;
const volatile s32 nr_rename = -1;
const volatile s32 nr_renameat = -1;
const volatile s32 nr_renameat2 = -1;
const volatile s32 nr_write = -1;
const volatile s32 nr_pwrite64 = -1;
const volatile s32 nr_writev = -1;
const volatile s32 nr_pwritev = -1;
const volatile s32 nr_pwritev2 = -1;
const volatile s32 nr_close = -1;
/* Network programs: on/off, and the calls whose peer address is read. */
const volatile u32 net_events_enabled = 0;
const volatile s32 nr_accept = -1;
const volatile s32 nr_accept4 = -1;
const volatile s32 nr_sendto = -1;
const volatile s32 nr_sendmsg = -1;
const volatile s32 nr_sendmmsg = -1;
const volatile s32 nr_recvfrom = -1;
const volatile s32 nr_recvmsg = -1;
const volatile s32 nr_recvmmsg = -1;
const volatile s32 nr_read = -1;

struct path_scratch {
	u8 buf[PATH_END + 256];
	u64 nodes[32];
	/* Loop cursors kept in map memory: a value loaded from here has no
	 * known bounds, so the verifier can merge the states of loop
	 * iterations instead of following each possible offset. */
	u32 pos;
	u32 n;
	/* Result of the last walk_path() call. */
	u32 res_pos;
	u32 res_truncated;
	/* pos when the walk first left the starting mount, 0 if it never did. */
	u32 res_mount_pos;
	u32 pad;
	/* A path string copied from user memory. */
	u8 user[PATH_END];
};

#define LOAD_CURSOR(field) (*(volatile u32 *)&(field))

struct prefix {
	u32 len;
	u32 pad;
	u8 bytes[PREFIX_CAP];
};

/* Arguments of a file syscall, kept from sys_enter until sys_exit. */
struct pending_call {
	s32 nr;
	s32 dirfd;
	s32 new_dirfd;
	u32 flags;
	u64 path;
	u64 new_path;
};

struct rate_state {
	u64 last_ns;
	u64 tokens_milli;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* Loss counters by reason; user space sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOSS_SLOTS);
	__type(key, u32);
	__type(value, u64);
} loss SEC(".maps");

/* exec_event is larger than a per-CPU value may be (32 KiB), so this is a
 * plain array with one slot per possible CPU; the loader sets max_entries. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct exec_event);
} exec_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct path_scratch);
} path_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct file_event);
} file_scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PREFIX_SLOTS);
	__type(key, u32);
	__type(value, struct prefix);
} file_prefixes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, struct rate_state);
} file_rate SEC(".maps");

/* Open files already reported as modified: one FILE_MODIFY per open file
 * description, not one per write. Entries go when the file is freed. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, u64);
	__type(value, u64);
} modified_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, struct pending_call);
} pending_calls SEC(".maps");

static __always_inline void count_loss(u32 slot)
{
	u64 *counter = bpf_map_lookup_elem(&loss, &slot);
	if (counter)
		*counter += 1;
}

/*
 * A wakeup per record costs more than the rest of a fork or exit program on
 * some virtual machines, so records wake the reader only once wakeup_bytes
 * are waiting. The reader also polls on a short timeout, which bounds the
 * delay of a quiet host's last events.
 */
static __always_inline u64 wakeup_flag(void)
{
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline u64 start_ticks_of(struct task_struct *task)
{
	struct task_struct *leader = rd(task->group_leader);
	return rd(leader->start_boottime) / NSEC_PER_TICK;
}

static __always_inline struct mount *real_mount(struct vfsmount *vfsmnt)
{
	return (struct mount *)((u8 *)vfsmnt - core_field_offset(((struct mount *)0)->mnt));
}

static __always_inline struct path_scratch *get_path_scratch(void)
{
	u32 zero = 0;
	return bpf_map_lookup_elem(&path_scratch, &zero);
}

/*
 * Writes the path of (dentry, vfsmnt) as seen from the current task's root
 * into the path scratch buffer, backwards from PATH_END, the way the kernel's
 * d_path does, and stores where it starts in res_pos. Stops at the task's
 * root, at the root of the mount namespace, or at a dentry without parent
 * (memfd and other pseudo files, whose name is kept).
 *
 * A global function: the verifier checks it once, not once per caller.
 */
__attribute__((noinline)) int walk_path(u64 dentry_addr, u64 vfsmnt_addr)
{
	struct path_scratch *scratch = get_path_scratch();
	struct dentry *dentry = (struct dentry *)dentry_addr;
	struct vfsmount *vfsmnt = (struct vfsmount *)vfsmnt_addr;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fs_struct *fs = rd(task->fs);
	struct dentry *root_dentry = rd(fs->root.dentry);
	struct vfsmount *root_mnt = rd(fs->root.mnt);
	struct mount *mnt = real_mount(vfsmnt);
	int done = 0;

	if (!scratch)
		return 0;
	scratch->res_mount_pos = 0;
	scratch->pos = PATH_END;
	for (int i = 0; i < PATH_DEPTH_CAP; i++) {
		if (dentry == root_dentry && vfsmnt == root_mnt) {
			done = 1;
			break;
		}
		if (dentry == rd(vfsmnt->mnt_root)) {
			struct mount *parent = rd(mnt->mnt_parent);
			if (parent == mnt) {
				done = 1;
				break;
			}
			if (!scratch->res_mount_pos)
				scratch->res_mount_pos = LOAD_CURSOR(scratch->pos);
			dentry = rd(mnt->mnt_mountpoint);
			mnt = parent;
			vfsmnt = &parent->mnt;
			continue;
		}

		struct dentry *parent = rd(dentry->d_parent);
		u32 len = rd(dentry->d_name.len);
		const unsigned char *name = rd(dentry->d_name.name);
		u32 pos = LOAD_CURSOR(scratch->pos);
		if (len > 255)
			len = 255;
		if (pos > PATH_END || len + 2 > pos)
			break;
		pos -= len;
		bpf_probe_read_kernel(&scratch->buf[pos & PATH_MASK], len & 255, name);
		pos -= 1;
		scratch->buf[pos & PATH_MASK] = '/';
		scratch->pos = pos;
		if (parent == dentry) {
			done = 1;
			break;
		}
		dentry = parent;
	}
	u32 pos = LOAD_CURSOR(scratch->pos);
	if (pos > PATH_END)
		pos = PATH_END;
	if (pos == PATH_END) {
		pos -= 1;
		scratch->buf[pos & PATH_MASK] = '/';
	}
	scratch->res_pos = pos;
	scratch->res_truncated = !done;
	return 0;
}

static __always_inline struct kernfs_node *kernfs_parent(struct kernfs_node *kn)
{
	if (core_field_exists(((struct kernfs_node___v615 *)0)->__parent))
		return rd(((struct kernfs_node___v615 *)kn)->__parent);
	return rd(kn->parent);
}

static __always_inline u32 put_byte(struct exec_event *ev, u32 base, u32 n, u8 byte)
{
	if (n >= CGROUP_TEXT_CAP - 1)
		return n;
	ev->data[(base + n) & EXEC_DATA_MASK] = byte;
	return n + 1;
}

/*
 * Appends one `/proc/<pid>/cgroup` line for cgroup `cg` at data[base + n]:
 * `<hierarchy id>:<controller>:<path>\n`, or `0::<path>\n` for cgroup v2.
 * Returns the new n.
 */
__attribute__((noinline)) int put_cgroup_line(u64 cg_addr, u64 controller_addr, u32 base, u32 n)
{
	struct cgroup *cg = (struct cgroup *)cg_addr;
	const char *controller = (const char *)controller_addr;
	u32 cpu = bpf_get_smp_processor_id();
	struct exec_event *ev = bpf_map_lookup_elem(&exec_scratch, &cpu);
	struct path_scratch *scratch = get_path_scratch();

	if (!ev || !scratch || !cg)
		return n;
	base &= EXEC_DATA_MASK;
	n &= CGROUP_TEXT_CAP - 1;
	struct cgroup_root *root = rd(cg->root);
	u32 hierarchy = (u32)rd(root->hierarchy_id);
	struct kernfs_node *kn = rd(cg->kn);
	u32 depth = 0;

	if (hierarchy >= 10)
		n = put_byte(ev, base, n, '0' + (hierarchy / 10) % 10);
	n = put_byte(ev, base, n, '0' + hierarchy % 10);
	n = put_byte(ev, base, n, ':');
	if (controller && n < CGROUP_TEXT_CAP - 64) {
		long copied = bpf_probe_read_kernel_str(&ev->data[(base + n) & EXEC_DATA_MASK], 32, controller);
		if (copied > 1)
			n += (copied - 1) & 31;
	}
	n = put_byte(ev, base, n, ':');

	/* Collect the nodes leaf to root, then write them root to leaf. The
	 * hierarchy's own root node (no parent) contributes no name. */
	for (int i = 0; i < CGROUP_DEPTH_CAP; i++) {
		if (!kn)
			break;
		struct kernfs_node *parent = kernfs_parent(kn);
		if (!parent)
			break;
		scratch->nodes[i] = (u64)kn;
		depth = i + 1;
		kn = parent;
	}
	if (kn && kernfs_parent(kn))
		ev->flags |= FLAG_CGROUP_TRUNCATED;
	if (depth == 0)
		n = put_byte(ev, base, n, '/');
	scratch->n = n;
	for (int i = CGROUP_DEPTH_CAP - 1; i >= 0; i--) {
		if (i >= depth)
			continue;
		struct kernfs_node *node = (struct kernfs_node *)scratch->nodes[i & 31];
		const char *name = rd(node->name);
		u32 at = LOAD_CURSOR(scratch->n);
		if (at >= CGROUP_TEXT_CAP - 256) {
			ev->flags |= FLAG_CGROUP_TRUNCATED;
			break;
		}
		ev->data[(base + at) & EXEC_DATA_MASK] = '/';
		at += 1;
		long copied = bpf_probe_read_kernel_str(&ev->data[(base + at) & EXEC_DATA_MASK], 255, name);
		if (copied > 1)
			at += (copied - 1) & 255;
		scratch->n = at;
	}
	n = LOAD_CURSOR(scratch->n);
	if (n >= CGROUP_TEXT_CAP)
		n = CGROUP_TEXT_CAP - 1;
	return put_byte(ev, base, n, '\n');
}

static __always_inline int controller_slot(void)
{
	if (core_enum_exists(enum cgroup_subsys_id, memory_cgrp_id))
		return core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
	if (core_enum_exists(enum cgroup_subsys_id, pids_cgrp_id))
		return core_enum_value(enum cgroup_subsys_id, pids_cgrp_id);
	return -1;
}

/* Writes the cgroup v1 line of the memory (or pids) controller when it sits
 * on a v1 hierarchy, then the cgroup v2 line. Docker with the cgroupfs driver
 * on a hybrid host names the container only in the v1 path. */
static __always_inline u32 put_cgroup_text(struct exec_event *ev, struct path_scratch *scratch,
					   struct task_struct *task, u32 base)
{
	struct css_set *cset = rd(task->cgroups);
	u32 n = 0;
	int slot = controller_slot();

	if (slot >= 0 && slot < 16) {
		struct cgroup_subsys_state *css = rd(cset->subsys[slot & 15]);
		if (css) {
			struct cgroup *cg = rd(css->cgroup);
			struct cgroup_root *root = rd(cg->root);
			struct cgroup_subsys *ss = rd(css->ss);
			if (rd(root->hierarchy_id) != 0)
				n = put_cgroup_line((u64)cg, (u64)rd(ss->name), base, n);
		}
	}
	n = put_cgroup_line((u64)rd(cset->dfl_cgrp), 0, base, n);
	return n;
}

/* Copies the last walked path to dst_base[dst_off] and returns its length. */
static __always_inline u32 copy_path(u8 *dst_base, u32 dst_off, u32 dst_mask, struct path_scratch *scratch)
{
	u32 pos = LOAD_CURSOR(scratch->res_pos);
	if (pos > PATH_END)
		pos = PATH_END;
	u32 len = PATH_END - pos;
	if (len > PATH_CAP)
		len = PATH_CAP;
	bpf_probe_read_kernel(&dst_base[dst_off & dst_mask], len & PATH_MASK, &scratch->buf[pos & PATH_MASK]);
	return len;
}

SEC("tp_btf/sched_process_exec")
int handle_exec(u64 *ctx)
{
	struct task_struct *task = ctx_arg(ctx, 0);
	struct linux_binprm *bprm = ctx_arg(ctx, 2);
	u32 cpu = bpf_get_smp_processor_id();
	struct exec_event *ev = bpf_map_lookup_elem(&exec_scratch, &cpu);
	struct path_scratch *scratch = get_path_scratch();
	u32 off;

	if (!ev || !scratch)
		return 0;

	ev->hdr.kind = EVENT_EXEC;
	ev->hdr.tgid = rd(task->tgid);
	ev->hdr.time_boot_ns = bpf_ktime_get_boot_ns();
	ev->hdr.start_ticks = start_ticks_of(task);
	struct task_struct *parent = rd(task->real_parent);
	ev->ppid = rd(parent->tgid);
	struct cred *cred = (struct cred *)rd(task->real_cred);
	ev->uid = rd(cred->uid.val);
	ev->gid = rd(cred->gid.val);
	ev->flags = 0;
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->argc = rd(bprm->argc);

	/* What was executed, from the file and its mount. */
	struct file *file = rd(bprm->file);
	struct inode *inode = rd(file->f_inode);
	struct vfsmount *vfsmnt = rd(file->f_path.mnt);
	struct super_block *sb = rd(inode->i_sb);
	ev->exe_magic = rd(sb->s_magic);
	ev->exe_nlink = rd(inode->__i_nlink);
	void *mnt_ns = rd(real_mount(vfsmnt)->mnt_ns);
	/* Kernel-internal mounts (memfd, shmem) carry MNT_NS_INTERNAL, an
	 * error pointer, instead of a namespace. */
	if ((unsigned long)mnt_ns >= (unsigned long)-MAX_ERRNO)
		ev->flags |= FLAG_EXE_INTERNAL_MOUNT;
	if (core_field_exists(((struct linux_binprm___fdpath *)0)->fdpath)) {
		if (rd(((struct linux_binprm___fdpath *)bprm)->fdpath))
			ev->flags |= FLAG_EXEC_FDPATH;
	}

	walk_path((u64)rd(file->f_path.dentry), (u64)vfsmnt);
	if (scratch->res_truncated)
		ev->flags |= FLAG_EXE_TRUNCATED;
	if (scratch->res_mount_pos)
		ev->exe_mount_prefix_len = scratch->res_mount_pos - scratch->res_pos;
	else
		ev->exe_mount_prefix_len = 0;
	off = copy_path(ev->data, 0, EXEC_DATA_MASK, scratch);
	ev->exe_len = off;

	struct fs_struct *fs = rd(task->fs);
	walk_path((u64)rd(fs->pwd.dentry), (u64)rd(fs->pwd.mnt));
	if (scratch->res_truncated)
		ev->flags |= FLAG_CWD_TRUNCATED;
	u32 cwd_len = copy_path(ev->data, off, EXEC_DATA_MASK, scratch);
	ev->cwd_len = cwd_len;
	off += cwd_len;

	u32 cgroup_len = put_cgroup_text(ev, scratch, task, off) & (CGROUP_TEXT_CAP - 1);
	ev->cgroup_len = cgroup_len;
	off += cgroup_len;

	/* argv: the new program's argument area, NUL-separated strings. */
	struct mm_struct *mm = rd(task->mm);
	unsigned long arg_start = rd(mm->arg_start);
	unsigned long arg_end = rd(mm->arg_end);
	u64 area = arg_end > arg_start ? arg_end - arg_start : 0;
	u32 len = area > ARGV_CAP ? ARGV_CAP : area;
	ev->argv_area_len = area > 0xffffffff ? 0xffffffff : area;
	if (area > ARGV_CAP)
		ev->flags |= FLAG_ARGV_TRUNCATED;
	off &= EXEC_DATA_MASK;
	if (len > 0 && bpf_probe_read_user(&ev->data[off], len, (void *)arg_start) < 0) {
		ev->flags |= FLAG_ARGV_UNREADABLE;
		count_loss(LOSS_ARGV_UNREADABLE);
		len = 0;
	}
	ev->argv_len = len;

	u64 size = EXEC_DATA_OFFSET + off + len;
	if (size > sizeof(*ev))
		return 0;
	if (bpf_ringbuf_output(&events, ev, size, wakeup_flag()) < 0)
		count_loss(LOSS_RINGBUF);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int handle_fork(u64 *ctx)
{
	struct task_struct *child = ctx_arg(ctx, 1);
	struct fork_event ev = {};

	/* A new thread is not a new process. */
	if (rd(child->pid) != rd(child->tgid))
		return 0;
	ev.hdr.kind = EVENT_FORK;
	ev.hdr.tgid = rd(child->tgid);
	ev.hdr.time_boot_ns = bpf_ktime_get_boot_ns();
	ev.hdr.start_ticks = rd(child->start_boottime) / NSEC_PER_TICK;
	struct task_struct *parent = rd(child->real_parent);
	ev.ppid = rd(parent->tgid);
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), wakeup_flag()) < 0)
		count_loss(LOSS_RINGBUF);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int handle_exit(u64 *ctx)
{
	struct task_struct *task = ctx_arg(ctx, 0);
	struct exit_event ev = {};

	/* do_exit() drops signal->live before this tracepoint; zero means the
	 * last thread of the process is exiting. */
	struct signal_struct *signal = rd(task->signal);
	if (rd(signal->live.counter) != 0)
		return 0;
	ev.hdr.kind = EVENT_EXIT;
	ev.hdr.tgid = rd(task->tgid);
	ev.hdr.time_boot_ns = bpf_ktime_get_boot_ns();
	ev.hdr.start_ticks = start_ticks_of(task);
	ev.exit_status = rd(task->exit_code);
	if (bpf_ringbuf_output(&events, &ev, sizeof(ev), wakeup_flag()) < 0)
		count_loss(LOSS_RINGBUF);
	return 0;
}


/* True when data[base..base+len) starts with a configured prefix on a path
 * component boundary, or when no prefix is configured. */
static __always_inline int prefix_match(struct file_event *ev, u32 base, u32 len)
{
	if (prefix_count == 0)
		return 1;
	for (u32 p = 0; p < PREFIX_SLOTS; p++) {
		if (p >= prefix_count)
			break;
		struct prefix *prefix = bpf_map_lookup_elem(&file_prefixes, &p);
		if (!prefix)
			break;
		u32 plen = prefix->len;
		if (plen == 0 || plen > PREFIX_CAP || plen > len)
			continue;
		int equal = 1;
		for (u32 w = 0; w < PREFIX_CAP / 8; w++) {
			u32 i = w * 8;
			if (i >= plen)
				break;
			u64 a = 0;
			u64 b = 0;
			bpf_probe_read_kernel(&a, 8, &ev->data[(base + i) & FILE_DATA_MASK]);
			bpf_probe_read_kernel(&b, 8, &prefix->bytes[i & (PREFIX_CAP - 8)]);
			u32 left = plen - i;
			u64 mask = left >= 8 ? ~0ULL : (1ULL << (left * 8)) - 1;
			if ((a ^ b) & mask) {
				equal = 0;
				break;
			}
		}
		if (!equal)
			continue;
		if (plen == len || prefix->bytes[(plen - 1) & (PREFIX_CAP - 1)] == '/' ||
		    ev->data[(base + plen) & FILE_DATA_MASK] == '/')
			return 1;
	}
	return 0;
}

/* Token bucket per process, in thousandths of a token; counts what it
 * suppresses. */
static __always_inline int rate_allows(u32 tgid, u64 now)
{
	if (file_rate_per_sec == 0)
		return 1;
	struct rate_state *state = bpf_map_lookup_elem(&file_rate, &tgid);
	u64 burst_milli = (u64)file_burst * 1000;
	if (!state) {
		struct rate_state fresh = { .last_ns = now, .tokens_milli = burst_milli - 1000 };
		bpf_map_update_elem(&file_rate, &tgid, &fresh, BPF_ANY);
		return 1;
	}
	u64 elapsed_ms = (now - state->last_ns) / 1000000;
	u64 tokens = state->tokens_milli + elapsed_ms * file_rate_per_sec;
	if (tokens > burst_milli)
		tokens = burst_milli;
	state->last_ns += elapsed_ms * 1000000;
	if (tokens < 1000) {
		state->tokens_milli = tokens;
		count_loss(LOSS_FILE_RATE_LIMITED);
		return 0;
	}
	state->tokens_milli = tokens - 1000;
	return 1;
}

static __always_inline struct file *fd_file(s32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct files_struct *files = rd(task->files);
	struct fdtable *fdt = rd(files->fdt);
	struct file **fds = rd(fdt->fd);
	struct file *file = 0;

	if (fd < 0 || (u32)fd >= rd(fdt->max_fds))
		return 0;
	bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]);
	return file;
}

static __always_inline struct file_event *get_file_event(void)
{
	u32 zero = 0;
	return bpf_map_lookup_elem(&file_scratch, &zero);
}

/*
 * Writes the path of `file` at data[off] of the file event and returns its
 * length. A global function, checked once by the verifier.
 */
__attribute__((noinline)) int put_file_path(u64 file_addr, u32 off)
{
	struct file *file = (struct file *)file_addr;
	struct file_event *ev = get_file_event();
	struct path_scratch *scratch = get_path_scratch();

	if (!ev || !scratch || !file)
		return 0;
	walk_path((u64)rd(file->f_path.dentry), (u64)rd(file->f_path.mnt));
	if (scratch->res_truncated)
		ev->flags |= off ? FLAG_NEW_PATH_TRUNCATED : FLAG_PATH_TRUNCATED;
	return copy_path(ev->data, off, FILE_DATA_MASK, scratch);
}

/*
 * Writes the path a syscall named (`dirfd`, user string at `user_addr`) at
 * data[off] of the file event, made absolute with the kernel path of the
 * directory descriptor or of the working directory, and returns its length.
 * `.` and `..` components are kept as the caller wrote them.
 */
__attribute__((noinline)) int put_user_path(s32 dirfd, u64 user_addr, u32 off)
{
	struct file_event *ev = get_file_event();
	struct path_scratch *scratch = get_path_scratch();
	u32 truncated_flag = off ? FLAG_NEW_PATH_TRUNCATED : FLAG_PATH_TRUNCATED;

	if (!ev || !scratch)
		return 0;
	long n = bpf_probe_read_user_str(scratch->user, PATH_END, (void *)user_addr);
	if (n <= 1) {
		count_loss(LOSS_PATH_UNREADABLE);
		return 0;
	}
	u32 user_len = (n - 1) & PATH_MASK;
	if (n >= PATH_END)
		ev->flags |= truncated_flag;
	if (scratch->user[0] == '/') {
		bpf_probe_read_kernel(&ev->data[off & FILE_DATA_MASK], user_len, scratch->user);
		return user_len;
	}

	u32 dir_len = 0;
	if (dirfd == AT_FDCWD) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct fs_struct *fs = rd(task->fs);
		walk_path((u64)rd(fs->pwd.dentry), (u64)rd(fs->pwd.mnt));
		dir_len = copy_path(ev->data, off, FILE_DATA_MASK, scratch);
	} else {
		dir_len = put_file_path((u64)fd_file(dirfd), off) & PATH_MASK;
	}
	if (scratch->res_truncated)
		ev->flags |= truncated_flag;
	/* "/" plus "name" must not become "//name". */
	if (dir_len == 1)
		dir_len = 0;
	ev->data[(off + dir_len) & FILE_DATA_MASK] = '/';
	u32 room = PATH_CAP - 1 - dir_len;
	if (dir_len >= PATH_CAP - 1)
		room = 0;
	if (user_len > room) {
		user_len = room;
		ev->flags |= truncated_flag;
	}
	u32 copy_len = user_len;
	asm volatile("" : "+r"(copy_len));
	copy_len &= PATH_MASK;
	bpf_probe_read_kernel(&ev->data[(off + dir_len + 1) & FILE_DATA_MASK], copy_len, scratch->user);
	return (dir_len + 1 + user_len) & PATH_MASK;
}

/* Applies the prefix filter and the rate limit, then sends the event whose
 * paths are already in place. */
static __always_inline void send_file_event(u32 action, u32 tgid, u32 path_len, u32 new_len)
{
	struct file_event *ev = get_file_event();
	if (!ev)
		return;
	path_len &= PATH_MASK;
	new_len &= PATH_MASK;
	if (!prefix_match(ev, 0, path_len) && !(new_len && prefix_match(ev, path_len, new_len)))
		return;

	u64 now = bpf_ktime_get_boot_ns();
	if (!rate_allows(tgid, now))
		return;

	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	ev->hdr.kind = EVENT_FILE;
	ev->hdr.tgid = tgid;
	ev->hdr.time_boot_ns = now;
	ev->hdr.start_ticks = start_ticks_of(task);
	ev->action = action;
	ev->path_len = path_len;
	ev->new_path_len = new_len;
	u64 size = FILE_DATA_OFFSET + path_len + new_len;
	/* Hide the value from the compiler so the bound check below stays in
	 * the object: the verifier needs it, clang can prove it redundant. */
	asm volatile("" : "+r"(size));
	if (size > sizeof(*ev))
		return;
	if (bpf_ringbuf_output(&events, ev, size, wakeup_flag()) < 0)
		count_loss(LOSS_RINGBUF);
}

static __always_inline int is_write_call(s32 nr)
{
	return nr == nr_write || nr == nr_pwrite64 || nr == nr_writev || nr == nr_pwritev || nr == nr_pwritev2;
}

/* The first write through each open regular file is reported as a change;
 * later writes through the same open file are not. */
static __always_inline void on_write(u32 tgid, s32 fd)
{
	struct file *file = fd_file(fd);
	if (!file)
		return;
	struct inode *inode = rd(file->f_inode);
	if ((rd(inode->i_mode) & S_IFMT) != S_IFREG)
		return;
	u64 key = (u64)file;
	u64 value = (u64)inode;
	u64 *seen = bpf_map_lookup_elem(&modified_files, &key);
	if (seen && *seen == value)
		return;
	bpf_map_update_elem(&modified_files, &key, &value, BPF_ANY);

	struct file_event *ev = get_file_event();
	if (!ev)
		return;
	ev->flags = 0;
	u32 len = put_file_path((u64)file, 0);
	send_file_event(FILE_MODIFY, tgid, len, 0);
}

/* ---- Network ---- */

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9
#define PF_KTHREAD 0x00200000

#define OWNER_OUTGOING (1 << 0)
#define OWNER_REPORTED (1 << 1)

/* Owner of a TCP socket, kept from its first state change until close. */
struct sock_owner {
	u32 tgid;
	u32 flags;
	u64 start_ticks;
	u8 comm[16];
	/* Endpoints as reported at connect or accept: by the time the close
	 * is seen, the kernel may have released the local port. */
	u32 netns;
	u16 family;
	u16 local_port;
	u16 remote_port;
	u16 pad;
	u8 local_addr[16];
	u8 remote_addr[16];
};

static __always_inline void keep_endpoints(struct sock_owner *owner, struct net_event *ev)
{
	owner->netns = ev->netns;
	owner->family = ev->family;
	owner->local_port = ev->local_port;
	owner->remote_port = ev->remote_port;
	__builtin_memcpy(owner->local_addr, ev->local_addr, 16);
	__builtin_memcpy(owner->remote_addr, ev->remote_addr, 16);
}

static __always_inline void kept_endpoints(struct net_event *ev, struct sock_owner *owner, struct sock *sk)
{
	ev->netns = owner->netns;
	ev->family = owner->family;
	ev->protocol = IPPROTO_TCP;
	ev->local_port = owner->local_port;
	ev->remote_port = owner->remote_port;
	ev->sock = (u64)sk;
	__builtin_memcpy(ev->local_addr, owner->local_addr, 16);
	__builtin_memcpy(ev->remote_addr, owner->remote_addr, 16);
}

/* Arguments of a send or receive call, kept from sys_enter until sys_exit. */
struct pending_io {
	s32 nr;
	/* Kind of user memory addr_arg points to, one of the ARG_* values below. */
	u16 arg_kind;
	/* Messages of a sendmmsg batch sent so far. */
	u16 sent;
	/* User address of the sockaddr, of the msghdr that points to it, or
	 * of the first mmsghdr of a batch. */
	u64 addr_arg;
	/* Unconnected UDP socket the call received on, set in the call. */
	u64 sk;
};

#define ARG_SOCKADDR 0
#define ARG_MSGHDR 1
#define ARG_MMSGHDR 2

/* sizeof(struct mmsghdr) on 64-bit targets: a msghdr and msg_len, padded. */
#define MMSGHDR_SIZE 64
/* Messages of one recvmmsg(2) batch whose peers are read; the rest of a
 * longer batch is not reported. */
#define MMSG_PEERS_MAX 16

/* A UDP socket and one of its peers. The kernel reuses a freed socket's
 * memory, so the socket is named by its address and its inode number. */
struct udp_peer {
	u64 sk;
	u64 ino;
	u8 addr[16];
	u16 port;
	u16 pad;
	u32 pad2;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, u64);
	__type(value, struct sock_owner);
} sock_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, u64);
	__type(value, struct pending_io);
} pending_io SEC(".maps");

/* UDP peers already reported; a peer is reported again only after its
 * entry was evicted. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct udp_peer);
	__type(value, u8);
} udp_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct dns_event);
} dns_scratch SEC(".maps");

#define DNS_PORT 53

/* User address of the buffer a receive call filled: the second argument of
 * read and recvfrom, the first iovec of recvmsg's msghdr. */
static __always_inline u64 recv_buffer(s32 nr, u64 arg1)
{
	if (nr == nr_read || nr == nr_recvfrom)
		return arg1;
	if (nr != nr_recvmsg)
		return 0;
	u64 iov = 0;
	u64 base = 0;
	/* msg_iov follows msg_name (8 bytes) and msg_namelen (padded to 8). */
	if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(arg1 + 16)) < 0 || !iov)
		return 0;
	if (bpf_probe_read_user(&base, sizeof(base), (void *)iov) < 0)
		return 0;
	return base;
}

/* Sends a DNS response the current process received from port 53 into the
 * user buffer `buf`: `ev` has the endpoints, `len` is what the call
 * returned. */
static __always_inline void send_dns_event(struct net_event *ev, u64 buf, long len)
{
	u32 zero = 0;
	struct dns_event *dns = bpf_map_lookup_elem(&dns_scratch, &zero);
	if (!dns || !buf || len <= 0)
		return;
	u64 copy = len > DNS_PAYLOAD_CAP ? DNS_PAYLOAD_CAP : (u64)len;
	/* The mask gives the verifier a bound it can check against the
	 * buffer; the value is already at most DNS_PAYLOAD_CAP. */
	asm volatile("" : "+r"(copy));
	copy &= DNS_PAYLOAD_CAP * 2 - 1;
	if (bpf_probe_read_user(dns->payload, copy, (void *)buf) < 0)
		return;
	__builtin_memcpy(&dns->net, ev, sizeof(*ev));
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	dns->net.hdr.kind = EVENT_DNS;
	dns->net.hdr.tgid = bpf_get_current_pid_tgid() >> 32;
	dns->net.hdr.time_boot_ns = bpf_ktime_get_boot_ns();
	dns->net.hdr.start_ticks = start_ticks_of(task);
	dns->net.action = 0;
	bpf_get_current_comm(dns->net.comm, sizeof(dns->net.comm));
	dns->payload_len = copy;
	if (bpf_ringbuf_output(&events, dns, sizeof(*dns), wakeup_flag()) < 0)
		count_loss(LOSS_RINGBUF);
}

/* A UDP socket that sent to port 53, and where to. */
struct dns_client_key {
	u64 sk;
	u64 ino;
};

struct dns_server {
	u8 addr[16];
	u16 port;
	u16 pad;
	u32 pad2;
};

/* Unconnected sockets that sent a query, so their responses can be read
 * even when the receive call names no address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct dns_client_key);
	__type(value, struct dns_server);
} dns_clients SEC(".maps");

/* Inode number of a socket's file; with the socket's address it names the
 * socket, as the kernel reuses freed sockets' memory. */
static __always_inline u64 sock_ino(struct sock *sk)
{
	struct socket *sock = rd(sk->sk_socket);
	struct file *file = sock ? rd(sock->file) : 0;
	struct inode *inode = file ? rd(file->f_inode) : 0;
	return inode ? rd(inode->i_ino) : 0;
}

static __always_inline int is_send_call(s32 nr)
{
	return nr == nr_sendto || nr == nr_sendmsg || nr == nr_sendmmsg;
}

static __always_inline int is_recv_call(s32 nr)
{
	return nr == nr_recvfrom || nr == nr_recvmsg || nr == nr_recvmmsg;
}

/* Fills the address family, namespace and both endpoints from the socket. */
static __always_inline void put_endpoints(struct net_event *ev, struct sock *sk)
{
	struct net *net = rd(sk->__sk_common.skc_net.net);
	u16 family = rd(sk->__sk_common.skc_family);

	ev->netns = net ? rd(net->ns.inum) : 0;
	ev->family = family;
	ev->protocol = rd(sk->sk_protocol);
	ev->local_port = rd(sk->__sk_common.skc_num);
	ev->remote_port = __builtin_bswap16(rd(sk->__sk_common.skc_dport));
	ev->sock = (u64)sk;
	if (family == AF_INET6) {
		bpf_probe_read_kernel(ev->local_addr, 16,
				      __builtin_preserve_access_index(&sk->__sk_common.skc_v6_rcv_saddr));
		bpf_probe_read_kernel(ev->remote_addr, 16,
				      __builtin_preserve_access_index(&sk->__sk_common.skc_v6_daddr));
	} else {
		u32 local = rd(sk->__sk_common.skc_rcv_saddr);
		u32 remote = rd(sk->__sk_common.skc_daddr);
		__builtin_memcpy(ev->local_addr, &local, 4);
		__builtin_memcpy(ev->remote_addr, &remote, 4);
	}
}

static __always_inline void send_net_event(struct net_event *ev, u32 action, u32 tgid, u64 start_ticks)
{
	ev->hdr.kind = EVENT_NET;
	ev->hdr.tgid = tgid;
	ev->hdr.time_boot_ns = bpf_ktime_get_boot_ns();
	ev->hdr.start_ticks = start_ticks;
	ev->action = action;
	if (bpf_ringbuf_output(&events, ev, sizeof(*ev), wakeup_flag()) < 0)
		count_loss(LOSS_RINGBUF);
}

static __always_inline int is_inet(struct sock *sk)
{
	u16 family = rd(sk->__sk_common.skc_family);
	return family == AF_INET || family == AF_INET6;
}

/* Reports the incoming connection on `sk`, once, as taken by the current
 * process. One opened before the programs were attached has no entry, and
 * the socket table poll reports it instead. Outgoing ones are skipped. */
static __always_inline void report_accept(struct sock *sk, u32 tgid)
{
	u64 key = (u64)sk;
	struct sock_owner *owner = bpf_map_lookup_elem(&sock_owners, &key);
	if (!owner || (owner->flags & (OWNER_REPORTED | OWNER_OUTGOING)))
		return;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	owner->tgid = tgid;
	owner->start_ticks = start_ticks_of(task);
	owner->flags |= OWNER_REPORTED;
	bpf_get_current_comm(owner->comm, sizeof(owner->comm));

	struct net_event ev = {};
	__builtin_memcpy(ev.comm, owner->comm, sizeof(ev.comm));
	put_endpoints(&ev, sk);
	keep_endpoints(owner, &ev);
	send_net_event(&ev, NET_TCP_ACCEPT, tgid, owner->start_ticks);
}

SEC("tp_btf/inet_sock_set_state")
int handle_inet_sock_set_state(u64 *ctx)
{
	struct sock *sk = ctx_arg(ctx, 0);
	int oldstate = (int)(u64)ctx_arg(ctx, 1);
	int newstate = (int)(u64)ctx_arg(ctx, 2);
	u64 key = (u64)sk;

	if (!net_events_enabled || rd(sk->sk_protocol) != IPPROTO_TCP || !is_inet(sk))
		return 0;

	if (newstate == TCP_SYN_SENT) {
		/* connect(2) runs in the caller, so the current task owns it. */
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		struct sock_owner owner = {
			.tgid = bpf_get_current_pid_tgid() >> 32,
			.flags = OWNER_OUTGOING,
			.start_ticks = start_ticks_of(task),
		};
		bpf_get_current_comm(owner.comm, sizeof(owner.comm));
		bpf_map_update_elem(&sock_owners, &key, &owner, BPF_ANY);
		return 0;
	}
	struct sock_owner *owner = bpf_map_lookup_elem(&sock_owners, &key);
	if (newstate == TCP_ESTABLISHED && oldstate == TCP_SYN_RECV &&
	    !(owner && (owner->flags & OWNER_OUTGOING))) {
		/* A passive open ends in softirq context, so the owner is the
		 * process that accepts it. */
		struct sock_owner passive = {};
		bpf_map_update_elem(&sock_owners, &key, &passive, BPF_ANY);
		return 0;
	}

	if ((newstate == TCP_FIN_WAIT1 && oldstate == TCP_ESTABLISHED) ||
	    (newstate == TCP_LAST_ACK && oldstate == TCP_CLOSE_WAIT)) {
		/* The local side closes or shuts down. tcp_close and
		 * tcp_shutdown run in the calling process, so that process owns
		 * an incoming connection no accept call claimed (io_uring's
		 * accept), even one it never read or wrote. */
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		u32 tgid = bpf_get_current_pid_tgid() >> 32;
		if (tgid != self_tgid && !(rd(task->flags) & PF_KTHREAD))
			report_accept(sk, tgid);
		return 0;
	}

	if (!owner)
		return 0;
	u32 action = 0;
	/* A connecting socket that received a SYN instead of a SYN-ACK (a
	 * simultaneous open, or a server that replies with a bare SYN) passes
	 * through SYN_RECV, and stays the connecting process's. */
	int handshake_done = oldstate == TCP_SYN_SENT || oldstate == TCP_SYN_RECV;
	if (newstate == TCP_ESTABLISHED && handshake_done && (owner->flags & OWNER_OUTGOING) &&
	    !(owner->flags & OWNER_REPORTED)) {
		owner->flags |= OWNER_REPORTED;
		action = NET_TCP_CONNECT;
	} else if (newstate == TCP_CLOSE) {
		if (owner->flags & OWNER_REPORTED)
			action = NET_TCP_CLOSE;
	} else {
		return 0;
	}
	if (action) {
		struct net_event ev = {};
		ev.flags = owner->flags & OWNER_OUTGOING;
		__builtin_memcpy(ev.comm, owner->comm, sizeof(ev.comm));
		if (action == NET_TCP_CONNECT) {
			put_endpoints(&ev, sk);
			keep_endpoints(owner, &ev);
		} else {
			kept_endpoints(&ev, owner, sk);
		}
		send_net_event(&ev, action, owner->tgid, owner->start_ticks);
	}
	if (newstate == TCP_CLOSE)
		bpf_map_delete_elem(&sock_owners, &key);
	return 0;
}

/* accept(2) returned descriptor `fd`: report the connection behind it. */
static __always_inline void on_accept(u32 tgid, s32 fd)
{
	struct file *file = fd_file(fd);
	if (!file)
		return;
	struct socket *sock = rd(file->private_data);
	if (!sock)
		return;
	report_accept(rd(sock->sk), tgid);
}

/* Reads a peer from a user sockaddr into the event; false when it is not
 * an IPv4 or IPv6 address. */
static __always_inline int read_user_peer(struct net_event *ev, u64 addr)
{
	u8 sa[24] = {};
	if (!addr || bpf_probe_read_user(sa, sizeof(sa), (void *)addr) < 0)
		return 0;
	u16 family = sa[0] | (sa[1] << 8);
	u16 port = (sa[2] << 8) | sa[3];
	if (family == AF_INET && ev->family == AF_INET) {
		__builtin_memcpy(ev->remote_addr, &sa[4], 4);
	} else if (family == AF_INET6 && ev->family == AF_INET6) {
		__builtin_memcpy(ev->remote_addr, &sa[8], 16);
	} else if (family == AF_INET && ev->family == AF_INET6) {
		/* A dual-stack socket accepts a sockaddr_in: the peer is the
		 * IPv4-mapped address. */
		__builtin_memset(ev->remote_addr, 0, 10);
		ev->remote_addr[10] = 0xff;
		ev->remote_addr[11] = 0xff;
		__builtin_memcpy(&ev->remote_addr[12], &sa[4], 4);
	} else {
		return 0;
	}
	ev->remote_port = port;
	return 1;
}

/* User address of the peer sockaddr a pending call names; for a batch,
 * the one of message `index`. */
static __always_inline u64 peer_addr_of(struct pending_io *io, u32 index)
{
	u64 header = io->addr_arg;
	if (io->arg_kind == ARG_SOCKADDR)
		return header;
	if (io->arg_kind == ARG_MMSGHDR)
		header += (u64)index * MMSGHDR_SIZE;
	/* msg_name is the first member of struct msghdr. */
	u64 addr = 0;
	if (!header || bpf_probe_read_user(&addr, sizeof(addr), (void *)header) < 0)
		return 0;
	return addr;
}

/* Reports a UDP socket's peer the first time it is seen. */
static __always_inline void report_udp_peer(struct net_event *ev, u32 action, struct sock *sk)
{
	struct udp_peer peer = { .sk = (u64)sk, .port = ev->remote_port };
	peer.ino = sock_ino(sk);
	__builtin_memcpy(peer.addr, ev->remote_addr, 16);
	u8 seen = 1;
	if (bpf_map_update_elem(&udp_peers, &peer, &seen, BPF_NOEXIST) != 0)
		return;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	bpf_get_current_comm(ev->comm, sizeof(ev->comm));
	send_net_event(ev, action, bpf_get_current_pid_tgid() >> 32, start_ticks_of(task));
}

static __always_inline void on_socket_io(struct sock *sk, int ret, int sending)
{
	u64 pid_tgid = bpf_get_current_pid_tgid();
	if (!net_events_enabled || (u32)(pid_tgid >> 32) == self_tgid)
		return;
	u16 protocol = rd(sk->sk_protocol);
	if (protocol == IPPROTO_TCP) {
		/* A connection taken without accept(2), as io_uring's accept
		 * does, is reported when its process first reads or writes it,
		 * even if that call fails. */
		report_accept(sk, pid_tgid >> 32);
		return;
	}
	if (ret <= 0 || protocol != IPPROTO_UDP || !is_inet(sk))
		return;
	struct net_event ev = {};
	put_endpoints(&ev, sk);
	u32 action = sending ? NET_UDP_SEND : NET_UDP_RECV;
	struct pending_io *io = bpf_map_lookup_elem(&pending_io, &pid_tgid);
	if (ev.remote_port != 0)
		ev.flags = NET_FLAG_UDP_CONNECTED;
	/* A connected socket may still send to an address given in the call,
	 * so that address comes first. sendmmsg(2) sends its messages in
	 * order, one pass through here each. */
	u64 given = 0;
	if (sending && io) {
		given = peer_addr_of(io, io->sent);
		if (io->arg_kind == ARG_MMSGHDR)
			io->sent++;
	}
	if (given && read_user_peer(&ev, given)) {
		if (ev.remote_port == DNS_PORT && !(ev.flags & NET_FLAG_UDP_CONNECTED)) {
			struct dns_client_key client = { .sk = (u64)sk, .ino = sock_ino(sk) };
			struct dns_server server = { .port = DNS_PORT };
			__builtin_memcpy(server.addr, ev.remote_addr, 16);
			bpf_map_update_elem(&dns_clients, &client, &server, BPF_ANY);
		}
		report_udp_peer(&ev, action, sk);
		return;
	}
	if (ev.remote_port != 0) {
		report_udp_peer(&ev, action, sk);
		return;
	}
	/* TODO: a receive that returns no address (recv(2), read(2),
	 * io_uring) leaves the peer unknown, and nothing is reported. The
	 * datagram's headers would give it, but udp_recvmsg copies a linear
	 * datagram without the skb_copy_datagram_iovec tracepoint, and the
	 * 6.18 test machine refuses an fentry program on skb_consume_udp
	 * (EPERM), as it has no kprobes either. */
	if (io && !sending) {
		/* The peer address reaches user memory only after this point. */
		io->sk = (u64)sk;
	}
}

SEC("tp_btf/sock_send_length")
int handle_sock_send_length(u64 *ctx)
{
	on_socket_io(ctx_arg(ctx, 0), (int)(u64)ctx_arg(ctx, 1), 1);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int handle_sock_recv_length(u64 *ctx)
{
	on_socket_io(ctx_arg(ctx, 0), (int)(u64)ctx_arg(ctx, 1), 0);
	return 0;
}

static __always_inline void net_sys_enter(struct pt_regs *regs, s32 nr, u64 pid_tgid)
{
	struct pending_io io = { .nr = nr };
	if (nr == nr_sendto || nr == nr_recvfrom) {
		io.addr_arg = SYSCALL_ARG4(regs);
	} else {
		io.addr_arg = SYSCALL_ARG1(regs);
		io.arg_kind = (nr == nr_sendmmsg || nr == nr_recvmmsg) ? ARG_MMSGHDR : ARG_MSGHDR;
	}
	if (!io.addr_arg)
		return;
	bpf_map_update_elem(&pending_io, &pid_tgid, &io, BPF_ANY);
}

static __always_inline void net_sys_exit(s32 nr, long ret, u64 pid_tgid)
{
	u32 tgid = pid_tgid >> 32;
	if (nr == nr_accept || nr == nr_accept4) {
		if (ret >= 0)
			on_accept(tgid, (s32)ret);
		return;
	}
	struct pending_io *pending = bpf_map_lookup_elem(&pending_io, &pid_tgid);
	if (!pending)
		return;
	struct pending_io io = *pending;
	bpf_map_delete_elem(&pending_io, &pid_tgid);
	if (ret <= 0 || !io.sk || io.nr != nr || !is_recv_call(nr))
		return;
	struct sock *sk = (struct sock *)io.sk;
	struct net_event ev = {};
	put_endpoints(&ev, sk);
	/* recvmmsg(2) returns how many messages it filled. */
	long messages = io.arg_kind == ARG_MMSGHDR ? ret : 1;
	for (u32 i = 0; i < MMSG_PEERS_MAX; i++) {
		if (i >= messages)
			break;
		if (read_user_peer(&ev, peer_addr_of(&io, i)))
			report_udp_peer(&ev, NET_UDP_RECV, sk);
	}
}

/* Size of a DNS header: a shorter read, such as the two-byte length
 * that DNS over TCP puts before each message, contains no response. */
#define DNS_HEADER_LEN 12

/*
 * A UDP socket connected to port 53, or one that sent a query to port 53,
 * read a datagram, or a TCP connection to port 53 read part of its stream:
 * copy the response from the caller's buffer, found through the syscall's
 * registers. A separate program, as bpf_task_pt_regs needs Linux 5.15.
 */
SEC("tp_btf/sock_recv_length")
int handle_dns_recv_length(u64 *ctx)
{
	struct sock *sk = ctx_arg(ctx, 0);
	int ret = (int)(u64)ctx_arg(ctx, 1);
	u64 pid_tgid = bpf_get_current_pid_tgid();

	if (!net_events_enabled || ret <= 0 || (u32)(pid_tgid >> 32) == self_tgid)
		return 0;
	u16 protocol = rd(sk->sk_protocol);
	if ((protocol != IPPROTO_UDP && protocol != IPPROTO_TCP) || !is_inet(sk))
		return 0;
	struct net_event ev = {};
	put_endpoints(&ev, sk);
	if (protocol == IPPROTO_TCP) {
		if (ev.remote_port != DNS_PORT || ret < DNS_HEADER_LEN)
			return 0;
	} else if (ev.remote_port == DNS_PORT) {
		ev.flags = NET_FLAG_UDP_CONNECTED;
	} else if (ev.remote_port == 0) {
		struct dns_client_key client = { .sk = (u64)sk, .ino = sock_ino(sk) };
		struct dns_server *server = bpf_map_lookup_elem(&dns_clients, &client);
		if (!server)
			return 0;
		__builtin_memcpy(ev.remote_addr, server->addr, 16);
		ev.remote_port = DNS_PORT;
	} else {
		return 0;
	}
	struct pt_regs *regs = bpf_task_pt_regs(bpf_get_current_task_btf());
	if (!regs)
		return 0;
	s32 nr = (s32)SYSCALL_NR(regs);
	send_dns_event(&ev, recv_buffer(nr, SYSCALL_ARG1(regs)), ret);
	return 0;
}

SEC("tp_btf/sys_enter")
int handle_sys_enter(u64 *ctx)
{
	struct pt_regs *regs = ctx_arg(ctx, 0);
	s32 nr = (s32)(u64)ctx_arg(ctx, 1);
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;
	struct pending_call call = { .nr = nr, .dirfd = AT_FDCWD, .new_dirfd = AT_FDCWD };

	if (tgid == self_tgid)
		return 0;
	if (net_events_enabled && (is_send_call(nr) || is_recv_call(nr))) {
		net_sys_enter(regs, nr, pid_tgid);
		return 0;
	}
	if (!file_events_enabled)
		return 0;
	if (is_write_call(nr)) {
		on_write(tgid, (s32)SYSCALL_ARG0(regs));
		return 0;
	}
	if (nr == nr_close) {
		struct file *file = fd_file((s32)SYSCALL_ARG0(regs));
		u64 key = (u64)file;
		if (file)
			bpf_map_delete_elem(&modified_files, &key);
		return 0;
	}

	if (nr == nr_open || nr == nr_openat || nr == nr_openat2 || nr == nr_creat) {
		/* Only the descriptor that comes back matters. */
	} else if (nr == nr_unlink) {
		call.path = SYSCALL_ARG0(regs);
	} else if (nr == nr_unlinkat) {
		call.dirfd = (s32)SYSCALL_ARG0(regs);
		call.path = SYSCALL_ARG1(regs);
		call.flags = (u32)SYSCALL_ARG2(regs);
		if (call.flags & AT_REMOVEDIR)
			return 0;
	} else if (nr == nr_rename) {
		call.path = SYSCALL_ARG0(regs);
		call.new_path = SYSCALL_ARG1(regs);
	} else if (nr == nr_renameat || nr == nr_renameat2) {
		call.dirfd = (s32)SYSCALL_ARG0(regs);
		call.path = SYSCALL_ARG1(regs);
		call.new_dirfd = (s32)SYSCALL_ARG2(regs);
		call.new_path = SYSCALL_ARG3(regs);
	} else {
		return 0;
	}
	bpf_map_update_elem(&pending_calls, &pid_tgid, &call, BPF_ANY);
	return 0;
}

SEC("tp_btf/sys_exit")
int handle_sys_exit(u64 *ctx)
{
	struct pt_regs *regs = ctx_arg(ctx, 0);
	long ret = (long)ctx_arg(ctx, 1);
	u64 pid_tgid = bpf_get_current_pid_tgid();
	u32 tgid = pid_tgid >> 32;

	if (tgid == self_tgid)
		return 0;
	s32 nr = (s32)SYSCALL_NR(regs);
	if (net_events_enabled &&
	    (nr == nr_accept || nr == nr_accept4 || is_send_call(nr) || is_recv_call(nr))) {
		net_sys_exit(nr, ret, pid_tgid);
		return 0;
	}
	if (!file_events_enabled)
		return 0;
	if (nr != nr_open && nr != nr_openat && nr != nr_openat2 && nr != nr_creat && nr != nr_unlink &&
	    nr != nr_unlinkat && nr != nr_rename && nr != nr_renameat && nr != nr_renameat2)
		return 0;
	struct pending_call *pending = bpf_map_lookup_elem(&pending_calls, &pid_tgid);
	if (!pending)
		return 0;
	struct pending_call call = *pending;
	bpf_map_delete_elem(&pending_calls, &pid_tgid);
	if (ret < 0 || call.nr != nr)
		return 0;
	struct file_event *ev = get_file_event();
	if (!ev)
		return 0;
	ev->flags = 0;

	if (nr == nr_unlink || nr == nr_unlinkat) {
		u32 len = put_user_path(call.dirfd, call.path, 0);
		send_file_event(FILE_DELETE, tgid, len, 0);
	} else if (nr == nr_rename || nr == nr_renameat || nr == nr_renameat2) {
		u32 len = put_user_path(call.dirfd, call.path, 0) & PATH_MASK;
		u32 new_len = put_user_path(call.new_dirfd, call.new_path, len);
		send_file_event(FILE_RENAME, tgid, len, new_len);
	} else {
		struct file *file = fd_file((s32)ret);
		if (!file || !(rd(file->f_mode) & fmode_created))
			return 0;
		u32 len = put_file_path((u64)file, 0);
		send_file_event(FILE_CREATE, tgid, len, 0);
	}
	return 0;
}
