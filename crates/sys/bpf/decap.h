// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// The layouts of the backend-side DSR maps (decap.bpf.c), mirrored by the
// encoders in crates/sys/src/bpf.rs (`Decap`).
#ifndef FERROLB_DECAP_H
#define FERROLB_DECAP_H

#include <linux/types.h>

#define MAX_VIPS 4096

// A VIP: IPv4 in the first four bytes, the rest zero.
struct vip_key {
	__u8 addr[16];
	__u8 family;  // AF_INET (2) or AF_INET6 (10)
	__u8 pad[3];
};

struct vip_val {
	__u16 mss;  // SYN-ACKs from the VIP advertise at most this (0: as they are)
	__u16 pad;
};

// An allowed outer source prefix; IPv4 as ::ffff:a.b.c.d (prefix + 96).
struct src_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct decap_config {
	__u32 restrict_sources;  // 1: only `sources` may tunnel to this host
};

struct decap_stats {
	__u64 decapsulated;
	__u64 refused;	     // from a source not allowed, or not unwrappable
	__u64 arp_dropped;   // ARP requests for a VIP
	__u64 mss_clamped;
};

#endif
