/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Helper declarations and CO-RE macros for Picket's BPF programs.
 *
 * The helper numbers come from the UAPI enum in <linux/bpf.h>; that enum only
 * grows, so one object built here runs on every later kernel.
 */
#ifndef PICKET_BPF_DEFS_H
#define PICKET_BPF_DEFS_H

#include <linux/types.h>
#include <linux/bpf.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __s32 s32;
typedef __u64 u64;
typedef __s64 s64;

#define SEC(name) __attribute__((section(name), used))
#undef __always_inline
#define __always_inline inline __attribute__((always_inline))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_map_update_elem)(void *map, const void *key, const void *value, u64 flags) =
	(void *)BPF_FUNC_map_update_elem;
static long (*bpf_map_delete_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_delete_elem;
static u32 (*bpf_get_smp_processor_id)(void) = (void *)BPF_FUNC_get_smp_processor_id;
static u64 (*bpf_get_current_pid_tgid)(void) = (void *)BPF_FUNC_get_current_pid_tgid;
static u64 (*bpf_get_current_task)(void) = (void *)BPF_FUNC_get_current_task;
static void *(*bpf_get_current_task_btf)(void) = (void *)BPF_FUNC_get_current_task_btf;
static void *(*bpf_task_pt_regs)(void *task) = (void *)BPF_FUNC_task_pt_regs;
static long (*bpf_get_current_comm)(void *buf, u32 size) = (void *)BPF_FUNC_get_current_comm;
static u64 (*bpf_get_current_cgroup_id)(void) = (void *)BPF_FUNC_get_current_cgroup_id;
static long (*bpf_probe_read_user)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user;
static long (*bpf_probe_read_kernel)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_kernel;
static long (*bpf_probe_read_kernel_str)(void *dst, u32 size, const void *src) =
	(void *)BPF_FUNC_probe_read_kernel_str;
static long (*bpf_probe_read_user_str)(void *dst, u32 size, const void *src) = (void *)BPF_FUNC_probe_read_user_str;
static u64 (*bpf_ktime_get_boot_ns)(void) = (void *)BPF_FUNC_ktime_get_boot_ns;
static u64 (*bpf_ringbuf_query)(void *ringbuf, u64 flags) = (void *)BPF_FUNC_ringbuf_query;
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, u64 size, u64 flags) = (void *)BPF_FUNC_ringbuf_output;

/* Read one kernel field through a CO-RE relocated address. Works in every
 * tracing program type, including where direct BTF pointer walks are refused. */
#define rd(src)                                                                                    \
	({                                                                                         \
		typeof(src) __val;                                                                 \
		__builtin_memset(&__val, 0, sizeof(__val));                                        \
		bpf_probe_read_kernel(&__val, sizeof(__val), __builtin_preserve_access_index(&(src))); \
		__val;                                                                             \
	})

#define core_field_exists(field) __builtin_preserve_field_info(field, 2 /* BPF_FIELD_EXISTS */)
#define core_field_offset(field) __builtin_preserve_field_info(field, 0 /* BPF_FIELD_BYTE_OFFSET */)
#define core_enum_exists(type, value)                                                              \
	__builtin_preserve_enum_value(*(typeof(type) *)value, 0 /* BPF_ENUMVAL_EXISTS */)
#define core_enum_value(type, value)                                                               \
	__builtin_preserve_enum_value(*(typeof(type) *)value, 1 /* BPF_ENUMVAL_VALUE */)

/* Arguments of tp_btf and fentry programs arrive as an array of u64. */
#define ctx_arg(ctx, n) ((void *)((u64 *)(ctx))[n])

#endif
