// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// ferrolb's kernel data path: a tc (clsact) ingress program that forwards
// VIP:port traffic to backends without leaving the kernel, by NAT or by
// direct server return (DSR: encapsulated, the backend answers the client).
//
// Why C and not Rust: building Rust for the BPF target needs a nightly
// compiler feature set, rust-src and a bpf-linker against a matching LLVM,
// none of which a fresh machine here can count on; clang and libbpf-dev
// are Debian packages (docs/decisions.md).
//
// Licence: this file alone is MIT or GPL-2.0 (the rest of ferrolb is
// Apache-2.0): the kernel lets only programs declaring a GPL-compatible
// licence call the helpers it needs (neighbour redirect, checksums), and
// it is loaded into the kernel as data, never linked into ferrolb.
//
// The map layouts are in maps.h.
//
// Request path (client -> VIP): the service is looked up by (VIP, port,
// protocol); the client's source range is checked; an established flow
// keeps its backend (flows map), a new one takes the Maglev slot of the
// client's address hash (the user-space forwarder's table and hash, so
// every node and both paths agree); then the packet is rewritten to
// node:natport -> backend:port and redirected out of the interface the
// backend's entry names (the kernel resolves the next hop). Reply path
// (backend -> node:natport): the reverse entry rewrites it back to
// VIP:port -> client:port. In DSR mode the packet is left as it is and
// wrapped in node -> backend (encap); there is no reply path here, and a
// flow this node never saw (another node took it over) gets the same
// backend from the same Maglev table, so it carries on.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SERVICES * 4);
	__type(key, struct svc_key);
	__type(value, struct svc_val);
} services SEC(".maps");

// Slot s of service i is at i * TABLE_SIZE + s: a backend index.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_SERVICES * TABLE_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct backend);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct flow_val);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct rev_key);
	__type(value, struct rev_val);
} reverse SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct range_key);
	__type(value, __u8);
} ranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_SERVICES);
	__type(key, __u32);
	__type(value, struct counters);
} svc_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct counters);
} backend_stats SEC(".maps");

// What was parsed out of one packet.
struct pkt {
	__u8 family;
	__u8 proto;
	__u16 l3_off;
	__u16 l4_off;
	__u16 csum_off;	  // of the L4 checksum
	__u32 len;	  // of the L3 packet
	struct addr src;
	struct addr dst;
	__be16 sport;
	__be16 dport;
	__u8 udp_zero_csum;  // IPv4 UDP without a checksum
};

// FNV-1a 64 with seed 0, then splitmix64's finaliser: crates/balance
// hash64 and client_hash (an IPv4 client hashes its four bytes).
static __always_inline __u64 client_hash(const struct addr *a, __u8 family)
{
	__u64 h = 0xcbf29ce484222325ULL;
	int n = family == AF_INET ? 4 : 16;
#pragma unroll
	for (int i = 0; i < 16; i++) {
		if (i < n) {
			h ^= a->b[i];
			h *= 0x00000100000001b3ULL;
		}
	}
	h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
	h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
	return h ^ (h >> 31);
}

static __always_inline int addr_eq(const struct addr *a, const struct addr *b)
{
	const __u32 *x = (const __u32 *)a->b, *y = (const __u32 *)b->b;
	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return -1;
	p->l3_off = sizeof(*eth);
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl < 5)
			return -1;
		// Fragments carry no ports past the first: the stack's business.
		if (ip->frag_off & bpf_htons(0x3fff))
			return -1;
		p->family = AF_INET;
		p->proto = ip->protocol;
		p->len = bpf_ntohs(ip->tot_len);
		p->l4_off = p->l3_off + ip->ihl * 4;
		__builtin_memset(&p->src, 0, sizeof(p->src));
		__builtin_memset(&p->dst, 0, sizeof(p->dst));
		__builtin_memcpy(p->src.b, &ip->saddr, 4);
		__builtin_memcpy(p->dst.b, &ip->daddr, 4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return -1;
		// Extension headers are left to the stack.
		p->family = AF_INET6;
		p->proto = ip6->nexthdr;
		p->len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		p->l4_off = p->l3_off + sizeof(*ip6);
		__builtin_memcpy(p->src.b, &ip6->saddr, 16);
		__builtin_memcpy(p->dst.b, &ip6->daddr, 16);
	} else {
		return -1;
	}
	if (p->proto == IPPROTO_TCP) {
		struct tcphdr *t = data + p->l4_off;
		if ((void *)(t + 1) > end)
			return -1;
		p->sport = t->source;
		p->dport = t->dest;
		p->csum_off = p->l4_off + __builtin_offsetof(struct tcphdr, check);
		p->udp_zero_csum = 0;
	} else if (p->proto == IPPROTO_UDP) {
		struct udphdr *u = data + p->l4_off;
		if ((void *)(u + 1) > end)
			return -1;
		p->sport = u->source;
		p->dport = u->dest;
		p->csum_off = p->l4_off + __builtin_offsetof(struct udphdr, check);
		p->udp_zero_csum = p->family == AF_INET && u->check == 0;
	} else {
		return -1;
	}
	return 0;
}

static __always_inline void count(void *map, __u32 idx, __u64 bytes, int flow, int dropped)
{
	struct counters *c = bpf_map_lookup_elem(map, &idx);
	if (!c)
		return;
	c->packets++;
	c->bytes += bytes;
	c->flows += flow;
	c->dropped += dropped;
}

static __always_inline void refused(__u32 backend)
{
	struct counters *c = bpf_map_lookup_elem(&backend_stats, &backend);
	if (c)
		c->refused++;
}

// Rewrites the source and destination (addresses and ports) of the packet,
// fixing the checksums, and decrements its TTL or hop limit.
static __always_inline int rewrite(struct __sk_buff *skb, struct pkt *p,
				   const struct addr *src, __be16 sport,
				   const struct addr *dst, __be16 dport)
{
	__u64 l4flags = BPF_F_PSEUDO_HDR | (p->udp_zero_csum ? BPF_F_MARK_MANGLED_0 : 0);
	int sport_off = p->l4_off;  // source then destination port in TCP and UDP
	int dport_off = p->l4_off + 2;
	if (p->family == AF_INET) {
		__be32 os, od, ns, nd;
		__builtin_memcpy(&os, p->src.b, 4);
		__builtin_memcpy(&od, p->dst.b, 4);
		__builtin_memcpy(&ns, src->b, 4);
		__builtin_memcpy(&nd, dst->b, 4);
		int ip_csum = p->l3_off + __builtin_offsetof(struct iphdr, check);
		if (bpf_l4_csum_replace(skb, p->csum_off, os, ns, l4flags | 4) ||
		    bpf_l4_csum_replace(skb, p->csum_off, od, nd, l4flags | 4) ||
		    bpf_l3_csum_replace(skb, ip_csum, os, ns, 4) ||
		    bpf_l3_csum_replace(skb, ip_csum, od, nd, 4))
			return -1;
		if (bpf_skb_store_bytes(skb, p->l3_off + __builtin_offsetof(struct iphdr, saddr), &ns, 4, 0) ||
		    bpf_skb_store_bytes(skb, p->l3_off + __builtin_offsetof(struct iphdr, daddr), &nd, 4, 0))
			return -1;
		// TTL: the second byte of the 16-bit word holding TTL and protocol.
		__u8 ttl;
		int ttl_off = p->l3_off + __builtin_offsetof(struct iphdr, ttl);
		if (bpf_skb_load_bytes(skb, ttl_off, &ttl, 1) || ttl <= 1)
			return -1;
		__be16 old_w = bpf_htons(((__u16)ttl << 8) | p->proto);
		__be16 new_w = bpf_htons(((__u16)(ttl - 1) << 8) | p->proto);
		ttl--;
		if (bpf_skb_store_bytes(skb, ttl_off, &ttl, 1, 0) ||
		    bpf_l3_csum_replace(skb, ip_csum, old_w, new_w, 2))
			return -1;
	} else {
		__s64 diff = bpf_csum_diff((__be32 *)p->src.b, 16, (__be32 *)src->b, 16, 0);
		diff = bpf_csum_diff((__be32 *)p->dst.b, 16, (__be32 *)dst->b, 16, diff);
		if (diff < 0 || bpf_l4_csum_replace(skb, p->csum_off, 0, diff, BPF_F_PSEUDO_HDR))
			return -1;
		if (bpf_skb_store_bytes(skb, p->l3_off + __builtin_offsetof(struct ipv6hdr, saddr), src->b, 16, 0) ||
		    bpf_skb_store_bytes(skb, p->l3_off + __builtin_offsetof(struct ipv6hdr, daddr), dst->b, 16, 0))
			return -1;
		__u8 hop;
		int hop_off = p->l3_off + __builtin_offsetof(struct ipv6hdr, hop_limit);
		if (bpf_skb_load_bytes(skb, hop_off, &hop, 1) || hop <= 1)
			return -1;
		hop--;
		if (bpf_skb_store_bytes(skb, hop_off, &hop, 1, 0))
			return -1;
	}
	if (sport != p->sport &&
	    (bpf_l4_csum_replace(skb, p->csum_off, p->sport, sport, (p->udp_zero_csum ? BPF_F_MARK_MANGLED_0 : 0) | 2) ||
	     bpf_skb_store_bytes(skb, sport_off, &sport, 2, 0)))
		return -1;
	if (dport != p->dport &&
	    (bpf_l4_csum_replace(skb, p->csum_off, p->dport, dport, (p->udp_zero_csum ? BPF_F_MARK_MANGLED_0 : 0) | 2) ||
	     bpf_skb_store_bytes(skb, dport_off, &dport, 2, 0)))
		return -1;
	return 0;
}

static __always_inline __u16 csum_fold(__s64 c)
{
	__u64 s = (__u64)c;
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return ~s;
}

// Direct server return: puts an outer header from this node to the
// backend in front of the unchanged packet (IPIP for IPv4, IPv6 in IPv6),
// so the backend sees the client's own addresses and answers it directly.
// The inner TTL is left alone: the backend's decapsulation hands the
// packet to its own stack, not onward.
static __always_inline int encap(struct __sk_buff *skb, struct pkt *p,
				 const struct addr *src, const struct addr *dst)
{
	if (p->family == AF_INET) {
		struct iphdr in;
		if (bpf_skb_load_bytes(skb, p->l3_off, &in, sizeof(in)))
			return -1;
		struct iphdr o = {};
		o.version = 4;
		o.ihl = 5;
		o.tos = in.tos;
		o.tot_len = bpf_htons(p->len + sizeof(o));
		// Keep the client's don't-fragment bit: a too-large packet is then
		// refused on the way, not split into fragments the decapsulating
		// program would not see whole.
		o.frag_off = in.frag_off & bpf_htons(0x4000);
		o.ttl = 64;
		o.protocol = IPPROTO_IPIP;
		__builtin_memcpy(&o.saddr, src->b, 4);
		__builtin_memcpy(&o.daddr, dst->b, 4);
		o.check = csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&o, sizeof(o), 0));
		if (bpf_skb_adjust_room(skb, sizeof(o), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
			return -1;
		return bpf_skb_store_bytes(skb, p->l3_off, &o, sizeof(o), 0) ? -1 : 0;
	}
	__be32 first;
	if (bpf_skb_load_bytes(skb, p->l3_off, &first, 4))
		return -1;
	struct ipv6hdr o = {};
	// Version, traffic class and flow label as the client sent them.
	__builtin_memcpy(&o, &first, 4);
	o.payload_len = bpf_htons(p->len);
	o.nexthdr = IPPROTO_IPV6;
	o.hop_limit = 64;
	__builtin_memcpy(&o.saddr, src->b, 16);
	__builtin_memcpy(&o.daddr, dst->b, 16);
	if (bpf_skb_adjust_room(skb, sizeof(o), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6))
		return -1;
	return bpf_skb_store_bytes(skb, p->l3_off, &o, sizeof(o), 0) ? -1 : 0;
}

#define TCP_FIN 0x01
#define TCP_RST 0x04

// A reverse entry whose NAT port may go to another client: idle for the
// flow timeout, or, once the connection closed (a FIN or a reset either
// way), for as long as the backend may hold the old connection in
// TIME_WAIT (Linux: 60 s), after which a new client's SYN on the same
// addresses and ports is not mistaken for the old connection.
static __always_inline int rev_expired(const struct rev_val *r, __u64 now, __u64 idle_ns)
{
	__u64 limit = (r->answered & REV_CLOSING) && idle_ns > TIMEWAIT_NS ? TIMEWAIT_NS : idle_ns;
	return now - r->seen_ns >= limit;
}

// The i-th NAT port to try: first the client's own port folded into the
// range (one client's ports then never collide, and a client that reuses a
// port gets the same NAT port, which the backend's TIME_WAIT accepts as
// conntrack's masquerade does), then pseudo-random ones.
static __always_inline __u32 nat_port_pick(const struct svc_val *s, __u16 cport, __u64 seed, __u32 i)
{
	__u32 count = s->nat_count ? s->nat_count : 1;
	if (i == 0)
		return s->nat_lo + (__u32)cport % count;
	return s->nat_lo + (__u32)((seed + i) % count);
}

// A reply from a backend to a NAT port: back to the client.
static __always_inline int reply(struct __sk_buff *skb, struct pkt *p)
{
	struct rev_key rk = {};
	rk.backend = p->src;
	rk.node = p->dst;
	rk.bport = p->sport;
	rk.nat_port = p->dport;
	rk.proto = p->proto;
	rk.family = p->family;
	struct rev_val *rv = bpf_map_lookup_elem(&reverse, &rk);
	if (!rv)
		return TC_ACT_OK;
	struct rev_val v = *rv;
	rv->seen_ns = bpf_ktime_get_ns();
	__u8 flags = 0;
	if (p->proto == IPPROTO_TCP)
		bpf_skb_load_bytes(skb, p->l4_off + 13, &flags, 1);
	// A backend whose first answer to a new TCP flow is a reset refused the
	// connection (nothing listens, or it is shutting down): counted, so user
	// space takes it as a failed connect, as the user-space forwarder does
	// (passive health), long before the next active check.
	if (!(v.answered & REV_ANSWERED)) {
		rv->answered |= REV_ANSWERED;
		if (flags & TCP_RST)
			refused(v.backend);
	}
	if (flags & (TCP_FIN | TCP_RST))
		rv->answered |= REV_CLOSING;
	if (rewrite(skb, p, &v.vip, v.vport, &v.client, v.cport)) {
		count(&svc_stats, v.svc, 0, 0, 1);
		return TC_ACT_SHOT;
	}
	count(&svc_stats, v.svc, p->len, 0, 0);
	count(&backend_stats, v.backend, p->len, 0, 0);
	// Out where the client's packets came in; the kernel finds the next hop.
	return bpf_redirect_neigh(v.client_ifindex, NULL, 0, 0);
}

SEC("classifier")
int ferrolb_forward(struct __sk_buff *skb)
{
	struct pkt p = {};
	if (parse(skb, &p))
		return TC_ACT_OK;
	struct svc_key sk = {};
	sk.vip = p.dst;
	sk.port = p.dport;
	sk.proto = p.proto;
	sk.family = p.family;
	struct svc_val *svc = bpf_map_lookup_elem(&services, &sk);
	if (!svc)
		return reply(skb, &p);
	struct svc_val s = *svc;
	if (s.id >= MAX_SERVICES)
		return TC_ACT_OK;
	if (s.flags & SVC_SOURCE_RANGES) {
		struct range_key r = {};
		r.prefixlen = 32 + (p.family == AF_INET ? 32 : 128);
		r.svc = bpf_htonl(s.id);
		r.addr = p.src;
		if (!bpf_map_lookup_elem(&ranges, &r)) {
			count(&svc_stats, s.id, 0, 0, 1);
			return TC_ACT_SHOT;
		}
	}
	__u64 now = bpf_ktime_get_ns();
	struct flow_key fk = {};
	fk.client = p.src;
	fk.vip = p.dst;
	fk.cport = p.sport;
	fk.vport = p.dport;
	fk.proto = p.proto;
	fk.family = p.family;
	struct flow_val *fv = bpf_map_lookup_elem(&flows, &fk);
	struct backend *b = NULL;
	struct flow_val f = {};
	int fresh = 0;
	int dsr = s.flags & SVC_DSR;
	// A flow from before the service changed its way back (a DSR flow has
	// no NAT port) starts over.
	if (fv && now - fv->seen_ns < s.idle_ns && (dsr || fv->nat_port)) {
		f = *fv;
		b = bpf_map_lookup_elem(&backends, &f.backend);
		// Gone, down, or its id now names another service's backend: the
		// flow starts over on a live one of its own service.
		if (!b || !(b->flags & BACKEND_UP) || b->svc != s.id)
			b = NULL;
		else
			fv->seen_ns = now;
	}
	if (!b) {
		__u64 h = client_hash(&p.src, p.family);
		__u32 slot = s.id * TABLE_SIZE + (__u32)(h % TABLE_SIZE);
		__u32 *bi = bpf_map_lookup_elem(&maglev, &slot);
		if (!bi)
			return TC_ACT_OK;
		f.backend = *bi;
		b = bpf_map_lookup_elem(&backends, &f.backend);
		if (!b || !(b->flags & BACKEND_UP) || b->svc != s.id) {
			count(&svc_stats, s.id, 0, 0, 1);
			return TC_ACT_SHOT;
		}
		fresh = 1;
	}
	struct backend bk = *b;
	struct addr node = bk.nat_src;
	__u32 ifindex = bk.ifindex ? bk.ifindex : skb->ingress_ifindex;
	if (dsr) {
		if (fresh) {
			f.nat_port = 0;
			f.node = bk.nat_src;
			f.seen_ns = now;
			if (bpf_map_update_elem(&flows, &fk, &f, BPF_ANY)) {
				count(&svc_stats, s.id, 0, 0, 1);
				return TC_ACT_SHOT;
			}
		}
		if (encap(skb, &p, &bk.nat_src, &bk.addr)) {
			count(&svc_stats, s.id, 0, 0, 1);
			return TC_ACT_SHOT;
		}
		count(&svc_stats, s.id, p.len, fresh, 0);
		count(&backend_stats, f.backend, p.len, fresh, 0);
		return bpf_redirect_neigh(ifindex, NULL, 0, 0);
	}
	if (fresh) {
		// A NAT port whose reverse entry is free, idle, or this client's own.
		struct rev_key rk = {};
		rk.backend = bk.addr;
		rk.node = node;
		rk.bport = bk.port;
		rk.proto = p.proto;
		rk.family = p.family;
		struct rev_val rv = {};
		rv.client = p.src;
		rv.vip = p.dst;
		rv.cport = p.sport;
		rv.vport = p.dport;
		rv.svc = s.id;
		rv.backend = f.backend;
		rv.client_ifindex = skb->ingress_ifindex;
		rv.seen_ns = now;
		__u64 seed = client_hash(&p.src, p.family) ^ ((__u64)p.sport << 16) ^ now;
		int taken = 0;
#pragma unroll
		for (__u32 i = 0; i < 16; i++) {
			rk.nat_port = bpf_htons((__u16)nat_port_pick(&s, bpf_ntohs(p.sport), seed, i * 7919));
			struct rev_val *old = bpf_map_lookup_elem(&reverse, &rk);
			if (old && !rev_expired(old, now, s.idle_ns) &&
			    !(addr_eq(&old->client, &rv.client) && old->cport == rv.cport))
				continue;
			if (bpf_map_update_elem(&reverse, &rk, &rv, BPF_ANY) == 0) {
				taken = 1;
				break;
			}
		}
		if (!taken) {
			count(&svc_stats, s.id, 0, 0, 1);
			return TC_ACT_SHOT;
		}
		f.nat_port = rk.nat_port;
		f.node = node;
		f.seen_ns = now;
		if (bpf_map_update_elem(&flows, &fk, &f, BPF_ANY)) {
			count(&svc_stats, s.id, 0, 0, 1);
			return TC_ACT_SHOT;
		}
	} else {
		// Keep the reverse entry alive with the flow.
		struct rev_key rk = {};
		rk.backend = bk.addr;
		rk.node = f.node;
		rk.bport = bk.port;
		rk.nat_port = f.nat_port;
		rk.proto = p.proto;
		rk.family = p.family;
		struct rev_val *rv = bpf_map_lookup_elem(&reverse, &rk);
		if (rv) {
			rv->seen_ns = now;
			__u8 flags = 0;
			if (p.proto == IPPROTO_TCP &&
			    bpf_skb_load_bytes(skb, p.l4_off + 13, &flags, 1) == 0 &&
			    (flags & (TCP_FIN | TCP_RST)))
				rv->answered |= REV_CLOSING;
		}
	}
	if (rewrite(skb, &p, &f.node, f.nat_port, &bk.addr, bk.port)) {
		count(&svc_stats, s.id, 0, 0, 1);
		return TC_ACT_SHOT;
	}
	count(&svc_stats, s.id, p.len, fresh, 0);
	count(&backend_stats, f.backend, p.len, fresh, 0);
	return bpf_redirect_neigh(ifindex, NULL, 0, 0);
}

// "Dual MIT/GPL" is one of the strings the kernel reads as GPL-compatible.
char _license[] SEC("license") = "Dual MIT/GPL";
