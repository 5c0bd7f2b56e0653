"""What an OTLP/HTTP request costs a Python server before the gateway does anything with it.

    .venv/bin/python -m benchmarks.http_floor [--spans 100] [--rounds 4] [--seconds 6]

Three servers that read the body and answer 200, nothing else, on uvloop like the gateway:
  aiohttp   aiohttp's low-level server (the gateway's HTTP server until it got its own)
  rampart   the gateway's own (ingest/http_protocol.py: llhttp through httptools, with its limits)
  bare      an asyncio protocol that finds the end of the headers, takes Content-Length bytes and
            writes a fixed answer: no HTTP checks at all, the floor of any Python HTTP server
Each is pinned to CPU 1 and driven from CPU 0 by the same closed loop as `make bench`, in alternating
rounds; the figure is the server process's CPU per request. Issue #9 asks the gateway for 2x the
collector's spans per CPU-second with 100-span requests, i.e. at most about 230 µs a request in all;
this says how much of that the HTTP layer alone takes. Writes benchmarks/results/http-floor.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import cast

import uvloop
from aiohttp import web

from benchmarks.peer_bench import LOAD_CPU, RESULTS, SERVER_CPU, cpu_seconds, drive, make_bodies, pinned, say, versions
from ingest.http_protocol import HttpServer, Request, Response

_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n"
           b"Server: floor\r\n\r\n")


class _Bare(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        self._buffer = bytearray()
        self._end: int | None = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            if self._end is None:
                head_end = self._buffer.find(b"\r\n\r\n")
                if head_end < 0:
                    return
                length = 0
                for line in bytes(self._buffer[:head_end]).split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                self._end = head_end + 4 + length
            if len(self._buffer) < self._end:
                return
            del self._buffer[:self._end]
            self._end = None
            self._transport.write(_ANSWER)


async def _serve(kind: str, port: int) -> None:
    if kind == "bare":
        await asyncio.get_running_loop().create_server(_Bare, "127.0.0.1", port)
    elif kind == "rampart":
        async def handle(request: Request) -> Response:
            await request.body.read(10.0)
            return Response(200, b"", "application/x-protobuf")

        await HttpServer(handle, request_timeout_s=10.0, max_body_bytes=16 << 20).start("127.0.0.1", port, None)
    else:
        async def answer(request: web.BaseRequest) -> web.Response:
            await request.read()
            return web.Response(body=b"", content_type="application/x-protobuf")

        runner = web.ServerRunner(web.Server(answer, access_log=None))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=100, help="spans per request (default 100)")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds (default 4)")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per run (default 6)")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients (default 32)")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "http-floor"), help="output path without extension")
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve(args.serve[0], int(args.serve[1])))
        return 0

    bodies = make_bodies(args.spans, 16, dirty=False, seed=args.spans)
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    with pinned({SERVER_CPU}):
        for kind, port in (("aiohttp", 18431), ("rampart", 18432), ("bare", 18433)):
            servers[kind] = (subprocess.Popen([sys.executable, "-m", "benchmarks.http_floor", "--serve", kind,  # noqa: S603
                                               str(port)]), f"http://127.0.0.1:{port}/v1/traces")
    per_request: dict[str, list[float]] = {kind: [] for kind in servers}
    try:
        time.sleep(2)
        with pinned({LOAD_CPU}):
            for round_no in range(args.rounds):
                order = list(servers) if round_no % 2 == 0 else list(reversed(servers))
                for kind in order:
                    proc, url = servers[kind]
                    before = cpu_seconds([proc.pid])
                    load = asyncio.run(drive(url, bodies, args.seconds, args.clients, None,
                                             {"Content-Type": "application/x-protobuf"}))
                    us = (cpu_seconds([proc.pid]) - before) / max(load.requests, 1) * 1e6
                    per_request[kind].append(round(us, 1))
                    say(f"round {round_no + 1}/{args.rounds} {kind}: {us:.1f} µs of CPU per request "
                        f"({load.requests / load.seconds:,.0f} requests/s)")
    finally:
        for proc, _ in servers.values():
            proc.kill()
    medians = {kind: statistics.median(values) for kind, values in per_request.items()}
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps({"when": when, "versions": versions(), "spans": args.spans,
                                                    "us_per_request": per_request, "medians": medians}, indent=2))
    lines = [f"# The HTTP layer's own CPU per request ({when})", "",
             f"`.venv/bin/python -m benchmarks.http_floor --spans {args.spans} --rounds {args.rounds}`: servers that "
             f"only read a {args.spans}-span OTLP request and answer 200, on uvloop, pinned to one core; "
             f"{args.clients} closed-loop clients on the other.", "",
             "| server | µs of CPU per request (median) | per round |", "|---|---|---|"]
    lines += [f"| {kind} | {medians[kind]:.1f} | {', '.join(str(v) for v in values)} |"
              for kind, values in per_request.items()]
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
