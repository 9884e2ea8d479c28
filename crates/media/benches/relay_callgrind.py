#!/usr/bin/env python3
"""User-space instructions per relayed packet, counted by callgrind (repeatable, unlike time
on a shared machine). Runs `relay-bench relay-serve` (epoll backend: valgrind does not
emulate io_uring) under `valgrind --tool=callgrind`, opens one session, sends N RTP packets
one at a time from leg A's peer and waits for each at leg B's peer, then quits.

    crates/media/benches/relay_callgrind.py target/release/relay-bench 20000 out.cg
    crates/media/benches/relay_callgrind.py target/release/relay-bench 0 base.cg

(total of the N run - total of the 0 run) / N = instructions per packet. Method and results
in docs/benchmarks.md ("Strict source: cost per packet")."""
import socket, subprocess, sys, struct, time, os
exe, n = sys.argv[1], int(sys.argv[2])
out = sys.argv[3]
env = dict(os.environ, DIALBRIDGE_MEDIA_BACKEND="epoll")
p = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", exe, "relay-serve",
                      "--port-min", "36000", "--port-max", "36999", "--workers", "1"],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
print(p.stdout.readline().strip())
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", 0))
b.settimeout(5)
p.stdin.write(f"open 127.0.0.1:{a.getsockname()[1]} 127.0.0.1:{b.getsockname()[1]}\n"); p.stdin.flush()
ok = p.stdout.readline().split(); pa = int(ok[1])
got = 0
for i in range(n):
    pkt = struct.pack("!BBHII", 0x80, 8, i & 0xffff, i * 160, 0x1234) + b"\xd5" * 160
    a.sendto(pkt, ("127.0.0.1", pa))
    try:
        b.recv(2048); got += 1
    except socket.timeout:
        break
print("relayed", got)
p.stdin.write("quit\n"); p.stdin.flush(); p.wait(timeout=60)
