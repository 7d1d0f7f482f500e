// SPDX-License-Identifier: (MIT OR GPL-2.0-only)
//
// The backend side of direct server return (`ferrolb-speaker
// prepare-backend`): two tc programs on a backend's interfaces, so that a
// plain host needs no tunnel device (and no kernel module) to serve VIPs
// whose packets a ferrolb load balancer encapsulates (forward.bpf.c, DSR).
//
//   ferrolb_decap (ingress): an IPIP (IPv4 in IPv4) or IPv6-in-IPv6 packet
//     whose inner destination is a prepared VIP loses its outer header and
//     goes up the stack as the client sent it; the host, which holds the VIP
//     as a local route, answers the client directly. ARP requests for a VIP
//     are dropped: only the load balancer may answer for it on the wire.
//   ferrolb_mss (egress): the host's SYN-ACK from a VIP advertises an MSS
//     small enough that the client's segments still fit the link's MTU once
//     the load balancer adds its outer header (the client's packets reach
//     the backend through the tunnel, its replies do not).
//
// Licence: as forward.bpf.c (MIT or GPL-2.0, loaded into the kernel as data).

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "decap.h"

#ifndef ETH_P_ARP
#define ETH_P_ARP 0x0806
#endif

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_VIPS);
	__type(key, struct vip_key);
	__type(value, struct vip_val);
} vips SEC(".maps");

// Outer sources allowed to send encapsulated packets (when restricted).
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct src_key);
	__type(value, __u8);
} sources SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct decap_stats);
} stats SEC(".maps");

static __always_inline struct decap_stats *counters(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&stats, &zero);
}

static __always_inline struct vip_val *vip(const void *addr, int len, __u8 family)
{
	struct vip_key k = {};
	__builtin_memcpy(k.addr, addr, len == 4 ? 4 : 16);
	k.family = family;
	return bpf_map_lookup_elem(&vips, &k);
}

// Whether the outer source may tunnel to this host.
static __always_inline int allowed(const void *src, int len)
{
	__u32 zero = 0;
	struct decap_config *c = bpf_map_lookup_elem(&config, &zero);
	if (!c || !c->restrict_sources)
		return 1;
	struct src_key k = {};
	if (len == 4) {
		// IPv4 as ::ffff:a.b.c.d, so one trie holds both families.
		k.addr[10] = 0xff;
		k.addr[11] = 0xff;
		__builtin_memcpy(&k.addr[12], src, 4);
		k.prefixlen = 128;
	} else {
		__builtin_memcpy(k.addr, src, 16);
		k.prefixlen = 128;
	}
	return bpf_map_lookup_elem(&sources, &k) != NULL;
}

SEC("classifier")
int ferrolb_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	struct decap_stats *st = counters();
	if (eth->h_proto == bpf_htons(ETH_P_ARP)) {
		// Ethernet/IPv4 ARP: 8 bytes of header, then sender MAC, sender
		// IP, target MAC, target IP (at 24 from the ARP header).
		__u8 *arp = (void *)(eth + 1);
		if ((void *)(arp + 28) > end)
			return TC_ACT_OK;
		if (arp[7] == 1 && vip(arp + 24, 4, 2)) {  // a request for a VIP
			if (st)
				st->arp_dropped++;
			return TC_ACT_SHOT;
		}
		return TC_ACT_OK;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_IPIP || ip->ihl < 5)
			return TC_ACT_OK;
		// A fragment of a tunnelled packet cannot be unwrapped whole.
		if (ip->frag_off & bpf_htons(0x3fff))
			return TC_ACT_OK;
		int outer = ip->ihl * 4;
		struct iphdr in;
		if (bpf_skb_load_bytes(skb, sizeof(*eth) + outer, &in, sizeof(in)) || in.version != 4)
			return TC_ACT_OK;
		if (!vip(&in.daddr, 4, 2))
			return TC_ACT_OK;
		if (!allowed(&ip->saddr, 4)) {
			if (st)
				st->refused++;
			return TC_ACT_SHOT;
		}
		if (bpf_skb_adjust_room(skb, -outer, BPF_ADJ_ROOM_MAC, 0)) {
			if (st)
				st->refused++;
			return TC_ACT_SHOT;
		}
		if (st)
			st->decapsulated++;
		return TC_ACT_OK;
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_IPV6)
			return TC_ACT_OK;
		struct ipv6hdr in;
		if (bpf_skb_load_bytes(skb, sizeof(*eth) + sizeof(*ip6), &in, sizeof(in)) || in.version != 6)
			return TC_ACT_OK;
		if (!vip(&in.daddr, 16, 10))
			return TC_ACT_OK;
		if (!allowed(&ip6->saddr, 16)) {
			if (st)
				st->refused++;
			return TC_ACT_SHOT;
		}
		if (bpf_skb_adjust_room(skb, -(int)sizeof(*ip6), BPF_ADJ_ROOM_MAC, 0)) {
			if (st)
				st->refused++;
			return TC_ACT_SHOT;
		}
		if (st)
			st->decapsulated++;
		return TC_ACT_OK;
	}
	return TC_ACT_OK;
}

// Lowers the MSS option of a SYN-ACK to `mss` if it is larger. Linux writes
// MSS as the first option of every SYN-ACK; any other layout is left alone.
static __always_inline void clamp(struct __sk_buff *skb, int l4_off, __u16 mss)
{
	struct tcphdr t;
	if (bpf_skb_load_bytes(skb, l4_off, &t, sizeof(t)))
		return;
	if (!t.syn || !t.ack || t.doff < 6)
		return;
	__u8 opt[4];
	if (bpf_skb_load_bytes(skb, l4_off + sizeof(t), opt, 4))
		return;
	if (opt[0] != 2 || opt[1] != 4)
		return;
	__be16 old;
	__builtin_memcpy(&old, &opt[2], 2);
	if (bpf_ntohs(old) <= mss)
		return;
	__be16 new = bpf_htons(mss);
	if (bpf_l4_csum_replace(skb, l4_off + __builtin_offsetof(struct tcphdr, check), old, new, 2))
		return;
	if (bpf_skb_store_bytes(skb, l4_off + sizeof(t) + 2, &new, 2, 0))
		return;
	struct decap_stats *st = counters();
	if (st)
		st->mss_clamped++;
}

SEC("classifier")
int ferrolb_mss(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl < 5)
			return TC_ACT_OK;
		struct vip_val *v = vip(&ip->saddr, 4, 2);
		if (v && v->mss)
			clamp(skb, sizeof(*eth) + ip->ihl * 4, v->mss);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end || ip6->nexthdr != IPPROTO_TCP)
			return TC_ACT_OK;
		struct vip_val *v = vip(&ip6->saddr, 16, 10);
		if (v && v->mss)
			clamp(skb, sizeof(*eth) + sizeof(*ip6), v->mss);
	}
	return TC_ACT_OK;
}

char _license[] SEC("license") = "Dual MIT/GPL";
