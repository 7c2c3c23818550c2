/*
 * xlstub.c - LD_PRELOAD stand-in for the Xen hypervisor, so that Debian's
 * /usr/lib/xen-4.17/bin/xl can run `xl -N create CFG` (a dry run that parses
 * the config and prints the resulting libxl_domain_config as JSON) on a
 * machine without Xen.  Test-only; built by tests/xl_dryrun.py at test time.
 *
 * What it replaces: libxl_ctx_alloc() opens libxenctrl and xenstore handles
 * (xc_interface_open, xs_open) and fails without /dev/xen; `xl -N create`
 * then only asks libxenctrl about the host (xc_physinfo, xc_version, the CPU
 * and node counts).  Nothing here talks to a hypervisor: the handles are
 * dummies and the host is a fixed 4-CPU, 1-node, 4 GiB x86 machine.
 * The layout of xc_physinfo_t is Xen 4.17's struct xen_sysctl_physinfo
 * (xen/include/public/sysctl.h, XEN_SYSCTL_INTERFACE_VERSION 0x15).
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

/* xen/include/public/version.h */
#define XENVER_version 0
#define XENVER_extraversion 1
#define XENVER_compile_info 2
#define XENVER_capabilities 3
#define XENVER_changeset 4
#define XENVER_platform_parameters 5
#define XENVER_pagesize 7
#define XENVER_commandline 9
#define XENVER_build_id 10

struct xen_sysctl_physinfo_417 {
    uint32_t threads_per_core;
    uint32_t cores_per_socket;
    uint32_t nr_cpus;
    uint32_t max_cpu_id;
    uint32_t nr_nodes;
    uint32_t max_node_id;
    uint32_t cpu_khz;
    uint32_t capabilities;
    uint32_t arch_capabilities;
    uint32_t pad;
    uint64_t total_pages __attribute__((aligned(8)));
    uint64_t free_pages __attribute__((aligned(8)));
    uint64_t scrub_pages __attribute__((aligned(8)));
    uint64_t outstanding_pages __attribute__((aligned(8)));
    uint64_t max_mfn __attribute__((aligned(8)));
    uint32_t hw_cap[8];
};

static char dummy_xc_handle[4096];
static char dummy_xs_handle[4096];

void *xc_interface_open(void *logger, void *dombuild_logger, unsigned open_flags)
{
    (void)logger; (void)dombuild_logger; (void)open_flags;
    return dummy_xc_handle;
}

int xc_interface_close(void *xch) { (void)xch; return 0; }

void *xs_open(unsigned long flags) { (void)flags; return dummy_xs_handle; }

void xs_close(void *xsh) { (void)xsh; }

int xc_physinfo(void *xch, struct xen_sysctl_physinfo_417 *info)
{
    (void)xch;
    memset(info, 0, sizeof(*info));
    info->threads_per_core = 1;
    info->cores_per_socket = 4;
    info->nr_cpus = 4;
    info->max_cpu_id = 3;
    info->nr_nodes = 1;
    info->max_node_id = 0;
    info->cpu_khz = 2000000;
    info->capabilities = 1 | 2;  /* XEN_SYSCTL_PHYSCAP_hvm | _pv */
    info->total_pages = 1048576;  /* 4 GiB of 4 KiB pages */
    info->free_pages = 1048576;
    info->max_mfn = 1048575;
    return 0;
}

/* Answers libxl_get_version_info(): a Xen 4.17.5 x86_64 host. */
int xc_version(void *xch, int cmd, void *arg)
{
    (void)xch;
    switch (cmd) {
    case XENVER_version:
        return (4 << 16) | 17;
    case XENVER_extraversion:             /* char[16] */
        strcpy(arg, ".5");
        return 0;
    case XENVER_compile_info:             /* compiler[64] by[16] domain[32] date[32] */
        memset(arg, 0, 64 + 16 + 32 + 32);
        return 0;
    case XENVER_capabilities:             /* char[1024] */
        strcpy(arg, "xen-3.0-x86_64 hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64");
        return 0;
    case XENVER_changeset:                /* char[64] */
        strcpy(arg, "stub");
        return 0;
    case XENVER_platform_parameters:      /* xen_ulong_t virt_start */
        memset(arg, 0, 8);
        return 0;
    case XENVER_pagesize:
        return 4096;
    case XENVER_commandline:              /* char[1024] */
        strcpy(arg, "");
        return 0;
    case XENVER_build_id:                 /* no build id: libxl records "" */
        return -ENODATA;
    default:
        return -ENOSYS;
    }
}

/* libxl_get_physinfo() also asks about memory sharing: none here. */
long xc_sharing_freed_pages(void *xch) { (void)xch; return 0; }

long xc_sharing_used_frames(void *xch) { (void)xch; return 0; }
