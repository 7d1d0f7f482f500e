// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// The layouts of ferrolb's data-path maps, shared by the BPF program
// (forward.bpf.c) and the layout check of crates/datapath, which compiles
// this header with the host's C compiler and compares every size and
// offset with the Rust encoders (crates/datapath/src/maps.rs).
#ifndef FERROLB_MAPS_H
#define FERROLB_MAPS_H

#include <linux/types.h>

// Maglev slots per service: crates/balance DEFAULT_TABLE_SIZE.
#define TABLE_SIZE 65537
// Services and backends the maps hold by default (the loader may resize).
#define MAX_SERVICES 64
#define MAX_BACKENDS 4096

// svc_val.flags
#define SVC_SOURCE_RANGES 1
// Direct server return: encapsulate to the backend instead of NAT.
#define SVC_DSR 2

// backend.flags
#define BACKEND_UP 1

// rev_val.answered
#define REV_ANSWERED 1
#define REV_CLOSING 2
// How long a closed connection's NAT port stays with its client: the
// backend's TIME_WAIT (Linux TCP_TIMEWAIT_LEN).
#define TIMEWAIT_NS 60000000000ULL

// An address: IPv4 in the first four bytes, the rest zero.
struct addr {
	__u8 b[16];
};

struct svc_key {
	struct addr vip;
	__be16 port;
	__u8 proto;
	__u8 family;
};

struct svc_val {
	__u32 id;	  // index into the tables and statistics
	__u32 flags;	  // SVC_*
	__u32 nat_lo;	  // NAT source ports: [nat_lo, nat_lo + nat_count)
	__u32 nat_count;
	__u64 idle_ns;	  // a flow idle this long is forgotten
};

// A backend, with the way to it that user space resolved from the routing
// table: the interface and this host's source address on it (the NAT
// source). Resolved there, not with bpf_fib_lookup here: an ingress lookup
// needs forwarding enabled, which a Pod cannot switch on, and an egress one
// needs the interface anyway.
struct backend {
	struct addr addr;
	struct addr nat_src;
	__be16 port;
	__u8 family;
	__u8 flags;	  // BACKEND_*
	__u32 ifindex;	  // out of here to reach it
	__u32 svc;	  // the id of the service it belongs to
};

// A client's flow to a service.
struct flow_key {
	struct addr client;
	struct addr vip;
	__be16 cport;
	__be16 vport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct flow_val {
	__u32 backend;
	__be16 nat_port;
	__u16 pad;
	struct addr node;  // the NAT source address toward the backend
	__u64 seen_ns;
};

// A reply's view of the flow: backend -> node:nat_port.
struct rev_key {
	struct addr backend;
	struct addr node;
	__be16 bport;
	__be16 nat_port;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct rev_val {
	struct addr client;
	struct addr vip;
	__be16 cport;
	__be16 vport;
	__u32 svc;
	__u32 backend;
	__u32 client_ifindex;  // where the client's packets came in
	__u32 answered;	       // REV_*: the backend answered; the connection closed
	__u64 seen_ns;
};

// loadBalancerSourceRanges: prefix over (service id, address).
struct range_key {
	__u32 prefixlen;  // 32 + address bits
	__u32 svc;	  // big-endian service id
	struct addr addr;
};

struct counters {
	__u64 packets;
	__u64 bytes;
	__u64 flows;
	__u64 dropped;
	__u64 refused;	// backends only: a new TCP flow answered first by a reset
};

#endif
