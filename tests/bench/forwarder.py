#!/usr/bin/env python3
"""Forwarder benchmark: ferrolb against a direct connection, HAProxy (tcp mode)
and nginx's stream proxy, on loopback, in one run.

Run it through tests/bench/forwarder.sh, which installs wrk, haproxy, nginx
(with the stream module) and iperf3 and builds ferrolb in release mode.

Layout on 2 cores (fair, as measured in shared/LAB.md): the load generator on
CPU 1; the backend and the proxy under test on CPU 0, one worker each. Every
configuration is alternated ROUNDS times and medians are printed, with
ratios against the direct connection and against HAProxy. Every load is
bounded in time; all traffic stays on 127.0.0.0/8.
"""

import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICK = "--quick" in sys.argv
ROUNDS = 1 if QUICK else 3
SECONDS = 2 if QUICK else 5
# These machines cap open files at 20,000 per process (hard limit); a proxy
# holds two descriptors per connection, so 9,000 is the most that fits.
IDLE_CONNS = 2000 if QUICK else 9000
SPEAKER = os.path.join(ROOT, "target/release/ferrolb-speaker")
ECHO = os.path.join(ROOT, "target/release/ferrolb-echo")

BACKEND = ("127.0.0.1", 18080)
IPERF = ("127.0.0.1", 15201)
UDP_SINK = ("127.0.0.1", 15301)
VIP_COPY = "127.0.50.1"
VIP_SPLICE = "127.0.50.2"
VIP_HAPROXY = "127.0.50.3"
VIP_NGINX = "127.0.50.4"

procs = []
work = tempfile.mkdtemp(prefix="ferrolb-bench-")


def start(cmd, cpu, name, **kw):
    cmd = ["taskset", "-c", str(cpu)] + cmd
    log = open(os.path.join(work, name + ".log"), "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, **kw)
    procs.append(p)
    return p


def wait_port(host, port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {host}:{port}; logs in {work}")


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    """User+system CPU of a process, its threads and its children (nginx
    works in a child of the process we started), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except OSError:
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def write(name, text):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def ferrolb_config(vip, splice, extra_services=""):
    return f"""
pools: [{{name: bench, addresses: [{vip}]}}]
forwarder: {{splice: {str(splice).lower()}, maxConnections: 100000}}
services:
  - name: http
    ip: {vip}
    ports:
      - port: 8080
        backends: ["{BACKEND[0]}:{BACKEND[1]}"]
        healthCheck: {{type: tcp, interval: 1s, timeout: 500ms}}
      - port: 5201
        backends: ["{IPERF[0]}:{IPERF[1]}"]
        healthCheck: {{type: tcp, interval: 1s, timeout: 500ms}}
      - port: 5301
        protocol: UDP
        backends: ["{UDP_SINK[0]}:{UDP_SINK[1]}"]
{extra_services}
"""


def start_backends():
    nginx_conf = write("nginx-backend.conf", f"""
worker_processes 1;
pid {work}/nginx-backend.pid;
error_log {work}/nginx-backend.err;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
http {{
  access_log off;
  client_body_temp_path {work}/b1; proxy_temp_path {work}/b2; fastcgi_temp_path {work}/b3;
  uwsgi_temp_path {work}/b4; scgi_temp_path {work}/b5;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {{ listen {BACKEND[0]}:{BACKEND[1]}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    start(["nginx", "-p", work, "-e", f"{work}/nginx-backend.err", "-c", nginx_conf, "-g", "daemon off;"], 0, "nginx-backend")
    start(["iperf3", "-s", "-B", IPERF[0], "-p", str(IPERF[1])], 0, "iperf3-server")
    wait_port(*BACKEND)
    wait_port(*IPERF)


def start_ferrolb(vip, splice, metrics_port):
    cfg = write(f"ferrolb-{vip}.yaml", ferrolb_config(vip, splice))
    p = start([SPEAKER, "standalone", "--config", cfg, "--metrics-address", f"127.0.0.1:{metrics_port}",
               "--worker-threads", "1", "--log-level", "warn"], 0, f"ferrolb-{vip}")
    wait_port(vip, 8080)
    return p


def start_haproxy():
    cfg = write("haproxy.cfg", f"""
global
  nbthread 1
  maxconn 9500
defaults
  mode tcp
  timeout connect 2s
  timeout client 5m
  timeout server 5m
frontend http
  bind {VIP_HAPROXY}:8080
  default_backend http
backend http
  balance roundrobin
  server s1 {BACKEND[0]}:{BACKEND[1]} check inter 1s
frontend iperf
  bind {VIP_HAPROXY}:5201
  default_backend iperf
backend iperf
  server s1 {IPERF[0]}:{IPERF[1]} check inter 1s
""")
    p = start(["haproxy", "-f", cfg, "-db"], 0, "haproxy")
    wait_port(VIP_HAPROXY, 8080)
    return p


def start_nginx_stream():
    module = "/usr/lib/nginx/modules/ngx_stream_module.so"
    load = f"load_module {module};" if os.path.exists(module) else ""
    cfg = write("nginx-stream.conf", f"""
{load}
worker_processes 1;
pid {work}/nginx-stream.pid;
error_log {work}/nginx-stream.err;
worker_rlimit_nofile 20000;
events {{ worker_connections 19000; }}
stream {{
  server {{ listen {VIP_NGINX}:8080; proxy_pass {BACKEND[0]}:{BACKEND[1]}; }}
  server {{ listen {VIP_NGINX}:5201; proxy_pass {IPERF[0]}:{IPERF[1]}; }}
  server {{ listen {VIP_NGINX}:5301 udp; proxy_pass {UDP_SINK[0]}:{UDP_SINK[1]}; proxy_responses 1; }}
}}
""")
    p = start(["nginx", "-p", work, "-e", f"{work}/nginx-stream.err", "-c", cfg, "-g", "daemon off;"], 0, "nginx-stream")
    wait_port(VIP_NGINX, 8080)
    return p


def wrk(host, port, proxy_pid):
    before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c64", f"-d{SECONDS}s", "--latency",
                          f"http://{host}:{port}/"], capture_output=True, text=True, timeout=SECONDS + 30).stdout
    cpu = (cpu_seconds(proxy_pid) - before) if proxy_pid else 0.0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99 = float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    us_per_req = cpu / total * 1e6 if total and proxy_pid else 0.0
    return rps, p99, us_per_req, errors.group(0) if errors else ""


def iperf(host, port, proxy_pid):
    before = cpu_seconds(proxy_pid) if proxy_pid else 0.0
    out = subprocess.run(["taskset", "-c", "1", "iperf3", "-c", host, "-p", str(port), "-t", str(SECONDS), "-J"],
                         capture_output=True, text=True, timeout=SECONDS + 30).stdout
    cpu = (cpu_seconds(proxy_pid) - before) if proxy_pid else 0.0
    end = json.loads(out)["end"]
    bits = end["sum_received"]["bits_per_second"]
    gbytes = end["sum_received"]["bytes"] / 1e9
    return bits / 1e9, (cpu / gbytes if proxy_pid and gbytes else 0.0)


def udp_pps(host, port, seconds, window=32, size=64):
    """Closed-loop UDP request/reply (like wrk for UDP): the client on CPU 1
    keeps `window` datagrams in flight and sends one more per reply; a sink
    on CPU 0 (ferrolb-echo) answers each. Returns replies per second and the
    share of datagrams answered. Bounded by `seconds`."""
    code = f"""
import socket, time, select
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.setblocking(False)
payload = b"x" * {size}
dst = ("{host}", {port})
sent = got = 0
inflight = 0
t0 = time.time()
end = t0 + {seconds}
last_reply = t0
while time.time() < end:
    while inflight < {window}:
        s.sendto(payload, dst); sent += 1; inflight += 1
    r, _, _ = select.select([s], [], [], 0.05)
    if not r:
        # Lost datagrams: refill the window after 50 ms of silence.
        inflight = 0
        continue
    while True:
        try:
            s.recv(2048); got += 1; inflight -= 1
        except BlockingIOError:
            break
elapsed = time.time() - t0
print(got / elapsed, got / max(sent, 1))
"""
    out = subprocess.run(["taskset", "-c", "1", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=seconds + 30).stdout
    pps, ratio = out.split()
    return float(pps), float(ratio)


def idle_memory(host, port, pid, n):
    """RSS growth of the proxy per idle connection held open through it."""
    import resource
    base = rss_kib(pid)
    socks = []
    for i in range(n):
        s = socket.socket()
        s.connect((host, port))
        socks.append(s)
    time.sleep(2)
    grown = rss_kib(pid) - base
    for s in socks:
        s.close()
    time.sleep(1)
    return grown * 1024 / n


def detection_time():
    """Time from a backend's death to ferrolb marking it down, with
    interval 200ms, fall 3 (5 trials, median)."""
    results = []
    for trial in range(3 if QUICK else 5):
        port = 18200 + trial
        echo = subprocess.Popen([ECHO, "--http", f"victim@127.0.0.1:{port}"], stderr=subprocess.DEVNULL)
        wait_port("127.0.0.1", port)
        cfg = write(f"detect-{trial}.yaml", f"""
pools: [{{name: p, addresses: [127.0.51.{trial + 1}]}}]
services:
  - name: victim
    ip: 127.0.51.{trial + 1}
    ports:
      - port: 8080
        backends: ["127.0.0.1:{port}"]
        healthCheck: {{type: http, path: /healthz, interval: 200ms, timeout: 150ms, rise: 1, fall: 3}}
""")
        metrics = 19500 + trial
        sp = subprocess.Popen([SPEAKER, "standalone", "--config", cfg, "--metrics-address", f"127.0.0.1:{metrics}",
                               "--log-level", "warn"], stderr=subprocess.DEVNULL)
        wait_port(f"127.0.51.{trial + 1}", 8080)
        time.sleep(1.0)
        echo.kill()
        echo.wait()
        t0 = time.time()
        down = None
        while time.time() - t0 < 5:
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=2).read().decode()
            if re.search(r'ferrolb_backend_up\{[^}]*\} 0', body):
                down = time.time() - t0
                break
            time.sleep(0.005)
        sp.send_signal(signal.SIGKILL)
        sp.wait()
        results.append(down if down is not None else float("nan"))
    return results


def med(xs):
    return statistics.median(xs)


def main():
    for tool in ["wrk", "haproxy", "nginx", "iperf3", "taskset"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing; run tests/bench/forwarder.sh, which installs it")
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"ferrolb forwarder benchmark: {ROUNDS} round(s) x {SECONDS}s per measurement; logs in {work}")
    start_backends()
    sink = start([ECHO, "--udp", f"sink@{UDP_SINK[0]}:{UDP_SINK[1]}"], 0, "udp-sink")
    time.sleep(0.3)
    copy = start_ferrolb(VIP_COPY, False, 19470)
    splice = start_ferrolb(VIP_SPLICE, True, 19471)
    haproxy = start_haproxy()
    nginx = start_nginx_stream()
    time.sleep(1.5)  # first health checks

    http_targets = [("direct", BACKEND[0], None), ("ferrolb", VIP_COPY, copy.pid),
                    ("ferrolb-splice", VIP_SPLICE, splice.pid), ("haproxy", VIP_HAPROXY, haproxy.pid),
                    ("nginx-stream", VIP_NGINX, nginx.pid)]
    rps = {t[0]: [] for t in http_targets}
    p99 = {t[0]: [] for t in http_targets}
    cpu = {t[0]: [] for t in http_targets}
    errs = {t[0]: "" for t in http_targets}
    for r in range(ROUNDS):
        for name, host, pid in http_targets:
            port = BACKEND[1] if name == "direct" else 8080
            a, b, c, e = wrk(host, port, pid)
            rps[name].append(a)
            p99[name].append(b)
            cpu[name].append(c)
            errs[name] = errs[name] or e
    print("\nHTTP keep-alive, wrk -t1 -c64 (requests/s, p99, proxy CPU per request):")
    http_only = "--http-only" in sys.argv
    print(f"  {'target':<16}{'req/s':>12}{'vs direct':>11}{'vs haproxy':>12}{'p99 ms':>9}{'CPU us/req':>12}")
    for name, _, _ in http_targets:
        print(f"  {name:<16}{med(rps[name]):>12,.0f}{med(rps[name]) / med(rps['direct']):>11.2f}"
              f"{med(rps[name]) / med(rps['haproxy']):>12.2f}{med(p99[name]):>9.2f}{med(cpu[name]):>12.2f}"
              f"  {errs[name]}")

    if http_only:
        return
    bulk_targets = [("direct", IPERF[0], IPERF[1], None), ("ferrolb", VIP_COPY, 5201, copy.pid),
                    ("ferrolb-splice", VIP_SPLICE, 5201, splice.pid), ("haproxy", VIP_HAPROXY, 5201, haproxy.pid),
                    ("nginx-stream", VIP_NGINX, 5201, nginx.pid)]
    gbps = {t[0]: [] for t in bulk_targets}
    cpugb = {t[0]: [] for t in bulk_targets}
    for r in range(ROUNDS):
        for name, host, port, pid in bulk_targets:
            g, c = iperf(host, port, pid)
            gbps[name].append(g)
            cpugb[name].append(c)
    print("\nBulk TCP, iperf3 one stream (Gbit/s, proxy CPU seconds per GB):")
    print(f"  {'target':<16}{'Gbit/s':>10}{'vs direct':>11}{'vs haproxy':>12}{'CPU s/GB':>10}")
    for name, *_ in bulk_targets:
        print(f"  {name:<16}{med(gbps[name]):>10.2f}{med(gbps[name]) / med(gbps['direct']):>11.2f}"
              f"{med(gbps[name]) / med(gbps['haproxy']):>12.2f}{med(cpugb[name]):>10.3f}")

    udp_targets = [("direct", UDP_SINK[0], UDP_SINK[1]), ("ferrolb", VIP_COPY, 5301), ("nginx-stream", VIP_NGINX, 5301)]
    pps = {t[0]: [] for t in udp_targets}
    answered = {t[0]: [] for t in udp_targets}
    for r in range(ROUNDS):
        for name, host, port in udp_targets:
            a, b = udp_pps(host, port, SECONDS)
            pps[name].append(a)
            answered[name].append(b)
    print("\nUDP request/reply, 64-byte datagrams, 32 in flight (replies/s, share answered):")
    for name, *_ in udp_targets:
        print(f"  {name:<16}{med(pps[name]):>12,.0f}{med(pps[name]) / med(pps['direct']):>8.2f}x"
              f"{med(answered[name]) * 100:>8.1f}%")

    print(f"\nMemory per idle connection ({IDLE_CONNS} idle connections through the proxy):")
    for name, host, pid in [("ferrolb", VIP_COPY, copy.pid), ("haproxy", VIP_HAPROXY, haproxy.pid)]:
        per = idle_memory(host, 8080, pid, IDLE_CONNS)
        print(f"  {name:<16}{per:>10,.0f} bytes")
    print(f"  ferrolb idle RSS with its listeners: {rss_kib(copy.pid) / 1024:.1f} MiB")

    det = detection_time()
    print("\nBackend death to marked down (interval 200ms, fall 3), ms per trial:",
          ", ".join(f"{d * 1000:.0f}" for d in det), f"-> median {med(det) * 1000:.0f} ms")


if __name__ == "__main__":
    try:
        main()
    finally:
        # TERM first: nginx's master stops its workers only on a signal it can handle.
        for p in procs:
            try:
                p.terminate()
            except OSError:
                pass
        deadline = time.time() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
