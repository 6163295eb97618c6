/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * The few kernel structures Picket reads, declared by hand with CO-RE
 * relocations (preserve_access_index). Only the fields used are listed, and
 * their order and offsets here do not matter: at load time every access is
 * matched by name against the running kernel's BTF. This replaces a generated
 * vmlinux.h of several megabytes that would tie the source to one kernel.
 *
 * A type name with a `___flavor` suffix describes another kernel version's
 * layout of the same structure; the loader strips the suffix when matching.
 */
#ifndef PICKET_KERNEL_TYPES_H
#define PICKET_KERNEL_TYPES_H

#include "bpf_defs.h"

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	int counter;
} atomic_t;

typedef struct {
	u32 val;
} kuid_t;

typedef struct {
	u32 val;
} kgid_t;

struct qstr {
	union {
		struct {
			u32 hash;
			u32 len;
		};
		u64 hash_len;
	};
	const unsigned char *name;
};

struct super_block {
	u32 s_dev;
	unsigned long s_magic;
};

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
	struct super_block *i_sb;
	union {
		const unsigned int i_nlink;
		unsigned int __i_nlink;
	};
};

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
	struct inode *d_inode;
};

struct vfsmount {
	struct dentry *mnt_root;
	struct super_block *mnt_sb;
};

struct mnt_namespace;

struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
	struct mnt_namespace *mnt_ns;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
	unsigned int f_flags;
	unsigned int f_mode;
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct fs_struct {
	struct path root;
	struct path pwd;
};

struct mm_struct {
	unsigned long arg_start;
	unsigned long arg_end;
};

struct cred {
	kuid_t uid;
	kgid_t gid;
};

struct kernfs_node {
	struct kernfs_node *parent;
	const char *name;
};

/* Linux 6.15 renamed kernfs_node.parent to __parent (RCU-protected). */
struct kernfs_node___v615 {
	struct kernfs_node *__parent;
};

struct cgroup_root {
	int hierarchy_id;
};

struct cgroup {
	struct kernfs_node *kn;
	struct cgroup_root *root;
};

struct cgroup_subsys {
	const char *name;
};

struct cgroup_subsys_state {
	struct cgroup *cgroup;
	struct cgroup_subsys *ss;
};

struct css_set {
	struct cgroup_subsys_state *subsys[16];
	struct cgroup *dfl_cgrp;
};

enum cgroup_subsys_id {
	cpu_cgrp_id = 1,
	memory_cgrp_id = 4,
	pids_cgrp_id = 11,
};

struct signal_struct {
	atomic_t live;
};

struct task_struct {
	int pid;
	int tgid;
	unsigned int flags;
	int exit_code;
	u64 start_boottime;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct mm_struct *mm;
	struct fs_struct *fs;
	struct files_struct *files;
	const struct cred *real_cred;
	struct css_set *cgroups;
	struct signal_struct *signal;
};

struct linux_binprm {
	struct file *file;
	const char *filename;
	int argc;
};

/* Linux 5.9 added linux_binprm.fdpath: set only when the exec named its file
 * through a directory descriptor (execveat, fexecve). */
struct linux_binprm___fdpath {
	char *fdpath;
};

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct in6_addr {
	union {
		u8 u6_addr8[16];
	} in6_u;
};

/* The kernel nests the address and port fields in anonymous unions; CO-RE
 * finds them by name through those. */
struct sock_common {
	u32 skc_daddr;
	u32 skc_rcv_saddr;
	u16 skc_dport;
	u16 skc_num;
	unsigned short skc_family;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct socket;

struct sock {
	struct sock_common __sk_common;
	u16 sk_protocol;
	u16 sk_type;
	struct socket *sk_socket;
};

struct socket {
	struct sock *sk;
	struct file *file;
};

#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long r10;
	unsigned long r8;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
};
#define SYSCALL_ARG0(regs) rd((regs)->di)
#define SYSCALL_ARG1(regs) rd((regs)->si)
#define SYSCALL_ARG2(regs) rd((regs)->dx)
#define SYSCALL_ARG3(regs) rd((regs)->r10)
#define SYSCALL_ARG4(regs) rd((regs)->r8)
#define SYSCALL_NR(regs) rd((regs)->orig_ax)
#elif defined(__TARGET_ARCH_arm64)
struct pt_regs {
	u64 regs[31];
	u64 orig_x0;
	s32 syscallno;
};
/* arm64 overwrites x0 with the return value; orig_x0 keeps argument 0. */
#define SYSCALL_ARG0(regs) rd((regs)->orig_x0)
#define SYSCALL_ARG1(regs) rd((regs)->regs[1])
#define SYSCALL_ARG2(regs) rd((regs)->regs[2])
#define SYSCALL_ARG3(regs) rd((regs)->regs[3])
#define SYSCALL_ARG4(regs) rd((regs)->regs[4])
#define SYSCALL_NR(regs) rd((regs)->syscallno)
#else
#error "define __TARGET_ARCH_x86 or __TARGET_ARCH_arm64"
#endif

#pragma clang attribute pop

#endif
