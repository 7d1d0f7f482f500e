#!/usr/bin/env python3
"""Kernel data path benchmark: ferrolb's eBPF forwarder (forwarder mode
kernel: NAT, and kernel-dsr: direct server return) against a direct connection, ferrolb's user-space forwarder,
HAProxy (mode tcp) and nftables DNAT (kube-proxy's way), in one run.

Run it through tests/bench/kernel_path.sh (root: it installs wrk, haproxy,
nginx and nftables, and builds ferrolb in release mode).

The lab, made fresh for every measurement: a client namespace, a
load-balancer namespace and two backend namespaces running nginx (one
worker, a 3-byte answer), joined by veth pairs. The client is wrk (2
threads, 32 connections) against the VIP, with HTTP keep-alive and with
`Connection: close` (one TCP connection per request). "direct" is the same
client against one backend, routed through the load-balancer namespace as a
plain router: the same hops with nothing balancing. In kernel-dsr the
backends are prepared with `ferrolb-speaker prepare-backend` and have their
own link to the client for the replies, which never cross the load
balancer (as DSR is deployed: a backend's replies go out by its own
gateway); the requests take the same way as in every other variant.

CPU is the whole machine's busy time from /proc/stat during the load (the
kernel path runs in softirq context, which no process or cgroup is charged
for), divided by the requests served; "extra" subtracts the direct
connection's figure from the same round. Variants are alternated ROUNDS
times; medians are printed. Every load is bounded in time, and all traffic
stays inside the namespaces this script creates.
"""

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = "--quick" in sys.argv
ROUNDS = 1 if QUICK else 3
SECONDS = 3 if QUICK else 8
SPEAKER = os.path.join(ROOT, "target/release/ferrolb-speaker")
VIP = "10.77.0.100"
BACKENDS = ["10.78.1.2", "10.78.2.2"]
NS = {"client": "flbkp-c", "lb": "flbkp-l", "b1": "flbkp-b1", "b2": "flbkp-b2"}
VARIANTS = ["direct", "kernel", "kernel-dsr", "userspace", "haproxy", "nftables"]

work = tempfile.mkdtemp(prefix="ferrolb-kernel-bench-")
procs = []


def sh(*cmd, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def nsx(ns, *cmd, check=True):
    return sh("ip", "netns", "exec", NS[ns], *cmd, check=check)


def spawn(ns, name, cmd):
    log = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(["ip", "netns", "exec", NS[ns]] + cmd, stdout=log, stderr=subprocess.STDOUT)
    procs.append(p)
    return p


def stop_all():
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    procs.clear()
    for n in NS.values():
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


def link(a, a_if, a_addr, b, b_if, b_addr):
    sh("ip", "-n", NS[a], "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", NS[b])
    for ns, dev, addr in [(a, a_if, a_addr), (b, b_if, b_addr)]:
        sh("ip", "-n", NS[ns], "addr", "add", addr, "dev", dev)
        sh("ip", "-n", NS[ns], "link", "set", dev, "up")


NGINX = """worker_processes 1;
daemon off;
pid {dir}/nginx-{name}.pid;
error_log {dir}/nginx-{name}.err;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/{name}-body;
  proxy_temp_path {dir}/{name}-proxy;
  fastcgi_temp_path {dir}/{name}-fcgi;
  uwsgi_temp_path {dir}/{name}-uwsgi;
  scgi_temp_path {dir}/{name}-scgi;
  keepalive_requests 1000000;
  server {{ listen 80; location / {{ return 200 "ok\\n"; }} }}
}}
"""


def lab():
    """Fresh namespaces, links, routes and the two nginx backends."""
    stop_all()
    for n in NS.values():
        sh("ip", "netns", "add", n)
        sh("ip", "-n", n, "link", "set", "lo", "up")
    link("client", "eth0", "10.77.0.2/24", "lb", "c0", "10.77.0.1/24")
    sh("ip", "-n", NS["client"], "route", "add", "default", "via", "10.77.0.1")
    for i, b in enumerate(["b1", "b2"], start=1):
        link(b, "eth0", f"10.78.{i}.2/24", "lb", b, f"10.78.{i}.1/24")
        sh("ip", "-n", NS[b], "route", "add", "default", "via", f"10.78.{i}.1")
        conf = os.path.join(work, f"nginx-{b}.conf")
        with open(conf, "w") as f:
            f.write(NGINX.format(dir=work, name=b))
        spawn(b, f"nginx-{b}", ["taskset", "-c", "0", "nginx", "-c", conf])
    for i in range(1, 3):
        wait(lambda: nsx("client", "true") == "" and tcp_ok("lb", f"10.78.{i}.2", 80), f"nginx b{i}")


def tcp_ok(ns, host, port):
    code = f"import socket; socket.create_connection(('{host}', {port}), timeout=0.5).close()"
    return subprocess.run(["ip", "netns", "exec", NS[ns], "python3", "-c", code], capture_output=True).returncode == 0


def wait(ok, what, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ok():
            return
        time.sleep(0.1)
    sys.exit(f"{what} not ready after {timeout:.0f} s; logs in {work}")


def speaker(mode):
    conf = os.path.join(work, f"ferrolb-{mode}.yaml")
    with open(conf, "w") as f:
        f.write(f"""pools: [{{name: bench, addresses: [{VIP}]}}]
l2: [{{pools: [bench], interfaces: [c0]}}]
members: [{{name: lb, address: "10.77.0.1:7946"}}]
forwarder: {{mode: {mode}, maxConnections: 100000}}
services:
  - name: web
    ip: {VIP}
    ports:
      - port: 80
        algorithm: maglev
        backends: ["{BACKENDS[0]}:80", "{BACKENDS[1]}:80"]
        healthCheck: {{type: tcp, interval: 1s, timeout: 500ms}}
""")
    spawn("lb", f"speaker-{mode}", [SPEAKER, "standalone", "--config", conf, "--node", "lb",
                                   "--metrics-address", "127.0.0.1:9470", "--worker-threads", "1"])
    label = "kernel" if mode.startswith("kernel") else mode
    want = f'ferrolb_forwarder_mode{{service="web",port="80/TCP",mode="{label}"}} 1'

    def ready():
        out = nsx("lb", "bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9470 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3", check=False)
        return want in out
    wait(ready, f"ferrolb in {mode} mode")


def setup(variant):
    lab()
    if variant == "direct":
        nsx("lb", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        return f"http://{BACKENDS[0]}:80/"
    if variant == "kernel-dsr":
        # The replies' own way to the client, past the load balancer (whose
        # kernel would drop a packet from the VIP it holds itself).
        for i, b in enumerate(["b1", "b2"], start=1):
            link(b, "dsr", f"10.79.{i}.2/24", "client", f"dsr{i}", f"10.79.{i}.1/24")
            sh("ip", "-n", NS[b], "route", "add", "10.77.0.0/24", "via", f"10.79.{i}.1")
            nsx(b, SPEAKER, "prepare-backend", "--vip", VIP, "--interface", "eth0",
                "--from", "10.78.0.0/16")
        speaker(variant)
    elif variant in ("kernel", "userspace"):
        speaker(variant)
    elif variant == "haproxy":
        nsx("lb", "ip", "addr", "add", f"{VIP}/32", "dev", "c0")
        conf = os.path.join(work, "haproxy.cfg")
        with open(conf, "w") as f:
            f.write(f"""global
  nbthread 1
  maxconn 8000
defaults
  mode tcp
  timeout connect 2s
  timeout client 60s
  timeout server 60s
frontend web
  bind {VIP}:80
  default_backend pool
backend pool
  balance roundrobin
  server b1 {BACKENDS[0]}:80
  server b2 {BACKENDS[1]}:80
""")
        spawn("lb", "haproxy", ["taskset", "-c", "0", "haproxy", "-f", conf, "-db"])
    elif variant == "nftables":
        nsx("lb", "sysctl", "-qw", "net.ipv4.ip_forward=1")
        nsx("lb", "ip", "addr", "add", f"{VIP}/32", "dev", "c0")
        rules = os.path.join(work, "nat.nft")
        with open(rules, "w") as f:
            f.write(f"""table ip flbbench {{
  chain pre {{
    type nat hook prerouting priority dstnat;
    ip daddr {VIP} tcp dport 80 dnat to jhash ip saddr . tcp sport mod 2 map {{ 0 : {BACKENDS[0]}, 1 : {BACKENDS[1]} }}
  }}
  chain post {{
    type nat hook postrouting priority srcnat;
    oifname {{ "b1", "b2" }} masquerade
  }}
}}
""")
        nsx("lb", "nft", "-f", rules)
    url = f"http://{VIP}:80/"
    wait(lambda: tcp_ok("client", VIP, 80), f"{variant} on the VIP")
    return url


def busy_jiffies():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    return sum(v[:8]) - v[3] - v[4]


def wrk(url, close):
    cmd = ["wrk", "-t2", "-c32", f"-d{SECONDS}s", "--latency", url]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    t0, j0 = time.time(), busy_jiffies()
    out = nsx("client", *cmd)
    j1, t1 = busy_jiffies(), time.time()
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    if not (m and total and p99):
        sys.exit(f"wrk output not understood:\n{out}")
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    reqs = int(total.group(1))
    cpu_s = (j1 - j0) / os.sysconf("SC_CLK_TCK")
    return {
        "rps": float(m.group(1)),
        "p99_ms": float(p99.group(1)) * scale,
        "cpu_us_per_req": cpu_s / max(reqs, 1) * 1e6,
        "errors": (int(errors.group(1)) if errors else 0) + (sum(int(x) for x in sock.groups()) if sock else 0),
        "secs": t1 - t0,
    }


def main():
    if os.geteuid() != 0:
        sys.exit("kernel_path.py needs root (namespaces, the eBPF program)")
    for tool in ["wrk", "haproxy", "nginx", "nft", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run tests/bench/kernel_path.sh, which installs it")
    results = {(v, c): [] for v in VARIANTS for c in (False, True)}
    try:
        for r in range(ROUNDS):
            order = VARIANTS if r % 2 == 0 else list(reversed(VARIANTS))
            for v in order:
                url = setup(v)
                for close in (False, True):
                    res = wrk(url, close)
                    results[(v, close)].append(res)
                    kind = "close" if close else "keep-alive"
                    print(f"round {r + 1} {v:<10} {kind:<10} {res['rps']:>10.0f} req/s  p99 {res['p99_ms']:7.2f} ms  "
                          f"CPU {res['cpu_us_per_req']:6.2f} us/req  errors {res['errors']}", flush=True)
    finally:
        stop_all()
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in results.items()}
    print()
    print(f"kernel path benchmark: {ROUNDS} rounds x {SECONDS} s, wrk 2 threads x 32 connections, medians")
    print(f"{'path':<12}{'keep-alive req/s':>18}{'p99':>10}{'extra CPU/req':>15}{'close req/s':>13}{'p99':>10}{'extra CPU/conn':>16}")
    for v in VARIANTS:
        ka, cl = med[(v, False)], med[(v, True)]
        dka, dcl = med[("direct", False)], med[("direct", True)]
        print(f"{v:<12}{ka['rps']:>18.0f}{ka['p99_ms']:>8.2f}ms{ka['cpu_us_per_req'] - dka['cpu_us_per_req']:>+13.2f}us"
              f"{cl['rps']:>13.0f}{cl['p99_ms']:>8.2f}ms{cl['cpu_us_per_req'] - dcl['cpu_us_per_req']:>+14.2f}us")
    k, h, n, u = (med[(x, False)] for x in ("kernel", "haproxy", "nftables", "userspace"))
    kc, nc = med[("kernel", True)], med[("nftables", True)]
    d, dc = med[("direct", False)], med[("direct", True)]
    extra = lambda x, base: x["cpu_us_per_req"] - base["cpu_us_per_req"]
    print()
    print(f"kernel / HAProxy keep-alive requests/s: {k['rps'] / h['rps']:.2f}x (target >= 1.8x)")
    print(f"kernel / user-space keep-alive requests/s: {k['rps'] / u['rps']:.2f}x")
    he = extra(h, d)
    ke = extra(k, d)
    print(f"kernel extra CPU per request: {ke:+.2f} us vs HAProxy {he:+.2f} us "
          f"({'%.2f' % (ke / he) if he > 0 else 'n/a'} of it; target <= 0.33)")
    print(f"kernel extra CPU per connection: {extra(kc, dc):+.2f} us vs nftables DNAT {extra(nc, dc):+.2f} us "
          f"(target: no more)")
    r = med[("kernel-dsr", False)]
    rc = med[("kernel-dsr", True)]
    print(f"kernel-dsr / HAProxy keep-alive requests/s: {r['rps'] / h['rps']:.2f}x; "
          f"extra CPU per request {extra(r, d):+.2f} us, per connection {extra(rc, dc):+.2f} us")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
