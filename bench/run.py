"""`make bench`: the broker's performance figures, each measured side by side in one run.

Prints, with the machine it ran on and its speed at the start and the end (bench/yardstick.py):
1. cache-hit throughput as a ratio to a bare FastAPI endpoint returning the same JSON
   (wrk, 32 connections, alternating rounds, medians), with p99 latency;
2. cache-miss overhead above a stand-in VideoDB that answers in 20 ms (p50, p99): one
   request at a time, then under load from wrk (every request a new user);
3. coalescing: upstream calls for 1,000 concurrent requests of one user, and of 1,000 users;
4. resident memory after 100,000 distinct users, unbounded vs BROKER_CACHE_MAX_ENTRIES;
5. what tracing costs a cache hit: off; on with every request kept, at 10 %, at 1 % and
   with every request dropped (bench/tracing_cost.py), each exporting to an OTLP receiver
   on loopback, in a new order each round (BENCH_BASELINE adds the broker at that ref).

BENCH_ONLY=hit,miss,load,coalescing,memory,tracing picks phases (and BENCH_ONLY=hop, not run
by default, shows where one HTTP hop's time goes by forwarder); BENCH_ROUNDS, BENCH_LOAD_ROUNDS,
BENCH_LOAD_CONNECTIONS, BENCH_SECONDS and BENCH_MEMORY_USERS shorten a run.
BENCH_BASELINE=<git ref> also runs the broker as it was at that commit (a temporary worktree,
same interpreter and packages), in the same rounds as today's: figures 1 and 2b then show
before and after side by side.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
from jose import jwt

from app.sandbox.dev_issuer import DevIssuer
from app.videodb.client import UPSTREAM_TOKEN_PATH
from app.web.token_endpoint import TOKEN_PATH
from bench import worktrees
from bench.intervals import median_interval
from bench.processes import cpu_seconds
from bench.tracing_cost import VARIANTS, tracing_cost
from bench.yardstick import yardstick
from harness.broker_process import REPO, BrokerProcess, clean_env, free_port
from harness.servers import ThreadedServer

API_KEY = "sk-bench-0123456789abcdef"
AUDIENCE = "bench"
HS_SECRET = "bench-shared-secret-of-at-least-32-bytes"
CONNECTIONS = 32
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
ROUND_SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
MEMORY_USERS = int(os.environ.get("BENCH_MEMORY_USERS", "100000"))
PHASES = set(os.environ.get("BENCH_ONLY", "hit,miss,load,coalescing,memory,tracing").split(","))
BOUNDED_ENTRIES = 10_000


def machine() -> str:
    """What the figures were measured on."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )


def _duration_ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if found is None:
        raise SystemExit(f"unreadable wrk latency: {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[unit]


def wrk(
    url: str, script: Path, connections: int = CONNECTIONS, *script_args: str
) -> dict[str, float]:
    """One wrk round: requests per second, p50 and p99 latency (ms), requests made."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{ROUND_SECONDS}s",
            "--latency",
            "-s",
            str(script),
            url,
            *(["--", *script_args] if script_args else []),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non_2xx:
        raise SystemExit(f"wrk saw {non_2xx.group(1)} error responses from {url}")

    def found(pattern: str) -> str:
        match = re.search(pattern, out, re.MULTILINE)
        if match is None:
            raise SystemExit(f"unreadable wrk output: {out}")
        return match.group(1)

    return {
        "rps": float(found(r"Requests/sec:\s+([\d.]+)")),
        "p50_ms": _duration_ms(found(r"^\s*50%\s+(\S+)")),
        "p99_ms": _duration_ms(found(r"^\s*99%\s+(\S+)")),
        "requests": int(found(r"(\d+) requests in")),
    }


def start_videodb() -> tuple[subprocess.Popen[bytes], str]:
    """The 20 ms stand-in in its own process, so it never waits for this one's GIL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.stand_ins", str(port), API_KEY],
        cwd=REPO,
        env={**clean_env(), "PYTHONPATH": str(REPO)},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/calls", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit("the stand-in VideoDB did not start")


def start_bare(app: str = "bench.bare_app:app", **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """A bare FastAPI baseline under the same uvicorn as the broker."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            app,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        cwd=REPO,
        env={**clean_env(), "PYTHONPATH": str(REPO), **env},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.post(url + TOKEN_PATH, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit("the bare baseline did not start")


def _wrk_with_cpu(url: str, script: Path, pid: int) -> dict[str, float]:
    """A wrk round, with the CPU time the server at `pid` spent a request (µs)."""
    started = cpu_seconds(pid)
    result = wrk(url, script)
    result["cpu_us"] = (cpu_seconds(pid) - started) * 1e6 / result["requests"]
    return result


def cache_hit_ratio(
    broker: BrokerProcess, bearer: str, before: BrokerProcess | None = None
) -> dict[str, float]:
    """Alternating wrk rounds against the broker (cache hits) and the bare endpoint (and the
    broker as it was at BENCH_BASELINE, in the same turns)."""
    bare, bare_url = start_bare()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            script = _wrk_lua(
                Path(tmp),
                "post.lua",
                "{}",
                {"Authorization": f"Bearer {bearer}", "Content-Type": "application/json"},
            )
            brokers = [broker] if before is None else [broker, before]
            for each in brokers:
                httpx.post(
                    each.url + TOKEN_PATH, headers={"Authorization": f"Bearer {bearer}"}, json={}
                )
                wrk(each.url + TOKEN_PATH, script)  # warm-up, not counted
            wrk(bare_url + TOKEN_PATH, script)
            broker_runs, bare_runs, before_runs = [], [], []
            for _ in range(ROUNDS):
                broker_runs.append(_wrk_with_cpu(broker.url + TOKEN_PATH, script, broker.proc.pid))
                bare_runs.append(_wrk_with_cpu(bare_url + TOKEN_PATH, script, bare.pid))
                if before is not None:
                    before_runs.append(
                        _wrk_with_cpu(before.url + TOKEN_PATH, script, before.proc.pid)
                    )
    finally:
        bare.terminate()
        bare.wait()
    ratios = [b["rps"] / a["rps"] for b, a in zip(broker_runs, bare_runs, strict=True)]
    baseline = {}
    if before_runs:
        before_ratios = [b["rps"] / a["rps"] for b, a in zip(before_runs, bare_runs, strict=True)]
        baseline = {
            "before_rps": statistics.median(r["rps"] for r in before_runs),
            "before_ratio": statistics.median(before_ratios),
            "before_p99_ms": statistics.median(r["p99_ms"] for r in before_runs),
            "before_cpu_us": statistics.median(r["cpu_us"] for r in before_runs),
        }
    return baseline | {
        "broker_cpu_us": statistics.median(r["cpu_us"] for r in broker_runs),
        "bare_cpu_us": statistics.median(r["cpu_us"] for r in bare_runs),
        "broker_rps": statistics.median(r["rps"] for r in broker_runs),
        "bare_rps": statistics.median(r["rps"] for r in bare_runs),
        "ratio": statistics.median(ratios),
        "ratio_low": min(ratios),
        "ratio_high": max(ratios),
        "broker_p99_ms": statistics.median(r["p99_ms"] for r in broker_runs),
        "bare_p99_ms": statistics.median(r["p99_ms"] for r in bare_runs),
    }


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def _interleaved(
    calls: dict[str, Callable[[httpx.Client, int], httpx.Response]], count: int
) -> dict[str, list[float]]:
    """Milliseconds of each call, in turns: call 1 of each, then call 2 of each, and so on,
    so that every path sees the same moments of a noisy machine. Each turn takes the paths
    in a new random order: a call runs measurably faster right after another process ran
    the same libraries (uvicorn, httpx, the interpreter) than after one that did not,
    and a fixed order would hand that head start to the same path every turn."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    order = random.Random(20261128)  # the same orders in every run
    names = list(calls)
    with httpx.Client(timeout=10) as client:
        for i in range(count):
            order.shuffle(names)
            for name in names:
                call = calls[name]
                started = time.perf_counter()
                resp = call(client, i)
                times[name].append((time.perf_counter() - started) * 1000)
                assert resp.status_code == 200, resp.text
    return times


def _direct(videodb_url: str) -> Callable[[httpx.Client, int], httpx.Response]:
    """A call straight to the stand-in VideoDB, as the broker makes it."""

    def call(client: httpx.Client, i: int) -> httpx.Response:
        return client.post(
            videodb_url + UPSTREAM_TOKEN_PATH,
            json={"user_id": f"d{i}", "expires_in": 900},
            headers={"x-access-token": API_KEY},
        )

    return call


def _post(
    url: str, bearers: list[str] | None = None
) -> Callable[[httpx.Client, int], httpx.Response]:
    """POST to the token path; with `bearers`, turn i sends the i-th as its token."""
    if bearers is None:
        return lambda client, _: client.post(url + TOKEN_PATH)
    return lambda client, i: client.post(
        url + TOKEN_PATH, headers={"Authorization": f"Bearer {bearers[i]}"}
    )


def cache_miss_overhead(
    broker: BrokerProcess, videodb_url: str, issuer: DevIssuer
) -> dict[str, float]:
    """Sequential requests, each a new user, interleaved with direct calls to the stand-in,
    calls through a bare FastAPI + httpx forwarder (bench/bare_proxy.py), and through the
    floor of any Python hop (HTTP/1.1 by hand on an asyncio stream), which tells how fast
    this machine is right now."""
    count = 300
    bearers = [issuer.mint(f"miss-{i}-{time.time_ns()}", AUDIENCE) for i in range(count)]
    upstream = {"BENCH_UPSTREAM": videodb_url, "BENCH_API_KEY": API_KEY}
    proxy, proxy_url = start_bare("bench.bare_proxy:app", **upstream)
    floor, floor_url = start_bare("bench.hop_forwarders:raw_app", **upstream)

    try:
        times = _interleaved(
            {  # the same requests through each hop; the forwarders ignore the tokens
                "direct": _direct(videodb_url),
                "via": _post(broker.url, bearers),
                "proxy": _post(proxy_url, bearers),
                "floor": _post(floor_url, bearers),
            },
            count,
        )
    finally:
        for proc in (proxy, floor):
            proc.terminate()
            proc.wait()
    direct, via, forwarded = times["direct"], times["via"], times["proxy"]
    base = statistics.median(direct)
    return {
        "direct_p50_ms": base,
        "broker_p50_ms": statistics.median(via),
        "overhead_p50_ms": statistics.median(via) - base,
        "proxy_overhead_p50_ms": statistics.median(forwarded) - base,
        "floor_overhead_p50_ms": statistics.median(times["floor"]) - base,
        "direct_p99_ms": _percentile(direct, 99),
        "broker_p99_ms": _percentile(via, 99),
        "proxy_p99_ms": _percentile(forwarded, 99),
    }


# Cache misses under load: wrk's connections for each figure, and its rounds (5 s each).
LOAD_CONNECTIONS = [int(n) for n in os.environ.get("BENCH_LOAD_CONNECTIONS", "8,32").split(",")]
# 15: the broker's lead or lag on the forwarder at 8 connections moves by a millisecond and
# more from one round to the next, and the median of 5 rounds swung with it from run to run
# (-0.24 to +1.48 ms, against a target of +0.5; docs/performance.md).
LOAD_ROUNDS = int(os.environ.get("BENCH_LOAD_ROUNDS", "15"))
SATURATED = 0.9  # of a core: past it, a round measures the queue of one full worker


def _wrk_lua(directory: Path, name: str, body: str, headers: dict[str, str]) -> Path:
    """A wrk script that POSTs the same request every time."""
    script = directory / name
    script.write_text(
        'wrk.method = "POST"\n'
        + "".join(f'wrk.headers["{key}"] = "{value}"\n' for key, value in headers.items())
        + f"wrk.body = '{body}'\n"
    )
    return script


def _wrk_users_lua(directory: Path, bearers: list[str]) -> Path:
    """A wrk script that sends each bearer token once, so every request is a new user.
    Its arguments pick the slice of the token file for one round; past its end the script
    sends no token, which the broker refuses, and wrk's non-2xx count stops the benchmark
    rather than let repeats be measured as misses."""
    tokens = directory / "bearers.txt"
    tokens.write_text("\n".join(bearers) + "\n")
    script = directory / "users.lua"
    script.write_text(
        "local tokens = {}\n"
        "local sent = 0\n"
        "function init(args)\n"
        "  local first, last = tonumber(args[1]), tonumber(args[2])\n"
        "  local n = 0\n"
        f'  for line in io.lines("{tokens}") do\n'
        "    n = n + 1\n"
        "    if n > first and n <= last then tokens[#tokens + 1] = line end\n"
        "  end\n"
        "end\n"
        "function request()\n"
        "  sent = sent + 1\n"
        '  local headers = {["Content-Type"] = "application/json"}\n'
        "  if tokens[sent] then\n"
        '    headers["Authorization"] = "Bearer " .. tokens[sent]\n'
        "  end\n"
        '  return wrk.format("POST", nil, headers, "{}")\n'
        "end\n"
    )
    return script


def cache_miss_under_load(
    broker: BrokerProcess,
    videodb_url: str,
    issuer: DevIssuer,
    connections: int,
    before: BrokerProcess | None = None,
) -> dict[str, float]:
    """wrk with this many connections, every request a new user, in rounds
    beside wrk straight at the stand-in and through the bare forwarder (each round's order
    shuffled); the overhead is each round's p50 minus the direct round's, median of rounds."""
    # The stand-in answers no faster than 20 ms, which caps a round's requests.
    per_round = int(connections / 0.020 * ROUND_SECONDS * 1.1)
    stamp = time.time_ns()
    brokers_measured = 1 if before is None else 2
    bearers = [
        issuer.mint(f"load-{stamp}-{i}", AUDIENCE)
        for i in range(per_round * (LOAD_ROUNDS + 1) * brokers_measured)
    ]
    proxy, proxy_url = start_bare(
        "bench.bare_proxy:app", BENCH_UPSTREAM=videodb_url, BENCH_API_KEY=API_KEY
    )
    runs: dict[str, list[dict[str, float]]] = {"direct": [], "broker": [], "proxy": []}
    if before is not None:
        runs["before"] = []
    order = random.Random(20261129)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            users = _wrk_users_lua(directory, bearers)
            direct = _wrk_lua(
                directory,
                "direct.lua",
                '{"user_id": "load", "expires_in": 900}',
                {"x-access-token": API_KEY, "Content-Type": "application/json"},
            )
            # The forwarder gets the same requests as the broker (it ignores their tokens):
            # the same bytes to read, and the same work for wrk's script between them.
            targets = {
                "direct": (videodb_url + UPSTREAM_TOKEN_PATH, direct),
                "broker": (broker.url + TOKEN_PATH, users),
                "proxy": (proxy_url + TOKEN_PATH, users),
            }
            pids = {"broker": broker.proc.pid, "proxy": proxy.pid}
            if before is not None:
                targets["before"] = (before.url + TOKEN_PATH, users)
                pids["before"] = before.proc.pid
            for turn in range(LOAD_ROUNDS + 1):  # the first round warms up and is not counted
                names = list(targets)
                order.shuffle(names)
                for name in names:
                    url, script = targets[name]
                    # each broker its own users: none finds another's tokens in Redis or memory
                    first = (turn * brokers_measured + (name == "before")) * per_round
                    args = [str(first), str(first + per_round)]
                    pid = pids.get(name)
                    cpu_before = cpu_seconds(pid) if pid else 0.0
                    result = wrk(url, script, connections, *args)
                    if pid is not None:
                        busy = cpu_seconds(pid) - cpu_before
                        result["cpu_share"] = busy / ROUND_SECONDS
                        result["cpu_ms_per_request"] = busy * 1000 / result["requests"]
                    if turn:
                        runs[name].append(result)
    finally:
        proxy.terminate()
        proxy.wait()

    def above_direct(name: str, figure: str) -> float:
        pairs = zip(runs[name], runs["direct"], strict=True)
        return statistics.median(mine[figure] - base[figure] for mine, base in pairs)

    differences = [
        b["p50_ms"] - p["p50_ms"] for b, p in zip(runs["broker"], runs["proxy"], strict=True)
    ]
    print(  # the spread, beside the median the target reads
        f"   ({connections} connections, the broker minus the forwarder, p50, rounds: "
        f"{min(differences):+.2f} to {max(differences):+.2f} ms: "
        + " ".join(f"{d:+.2f}" for d in differences)
        + ")",
        file=sys.stderr,
    )
    low, high = median_interval(differences)
    baseline = {}
    if before is not None:
        baseline = {
            "before_overhead_p50_ms": above_direct("before", "p50_ms"),
            "before_overhead_p99_ms": above_direct("before", "p99_ms"),
            "before_cpu_ms": statistics.median(r["cpu_ms_per_request"] for r in runs["before"]),
            "before_rps": statistics.median(r["rps"] for r in runs["before"]),
            "before_cpu_share": statistics.median(r["cpu_share"] for r in runs["before"]),
        }
    return baseline | {
        "direct_p50_ms": statistics.median(r["p50_ms"] for r in runs["direct"]),
        "direct_p99_ms": statistics.median(r["p99_ms"] for r in runs["direct"]),
        "broker_rps": statistics.median(r["rps"] for r in runs["broker"]),
        "broker_cpu_share": statistics.median(r["cpu_share"] for r in runs["broker"]),
        "broker_cpu_ms": statistics.median(r["cpu_ms_per_request"] for r in runs["broker"]),
        "overhead_p50_ms": above_direct("broker", "p50_ms"),
        "overhead_p99_ms": above_direct("broker", "p99_ms"),
        "proxy_overhead_p50_ms": above_direct("proxy", "p50_ms"),
        "proxy_overhead_p99_ms": above_direct("proxy", "p99_ms"),
        "proxy_cpu_ms": statistics.median(r["cpu_ms_per_request"] for r in runs["proxy"]),
        # each round's broker minus the forwarder beside it: the target's own figure
        "above_proxy_p50_ms": statistics.median(differences),
        "above_proxy_p50_low": low,
        "above_proxy_p50_high": high,
    }


HOP_FORWARDERS = {
    "raw ASGI, HTTP/1.1 by hand on an asyncio stream (the floor)": "bench.hop_forwarders:raw_app",
    "raw ASGI + httpx.AsyncClient (httpcore over anyio)": "bench.hop_forwarders:httpx_app",
    "FastAPI + httpx.AsyncClient (bench/bare_proxy.py)": "bench.bare_proxy:app",
}


def hop_overheads(videodb_url: str) -> dict[str, float]:
    """What one hop costs by forwarder: p50 above the direct call, 300 sequential turns."""
    started = [
        start_bare(app, BENCH_UPSTREAM=videodb_url, BENCH_API_KEY=API_KEY)
        for app in HOP_FORWARDERS.values()
    ]
    try:
        calls = {"direct": _direct(videodb_url)}
        calls.update(
            {name: _post(url) for name, (_, url) in zip(HOP_FORWARDERS, started, strict=True)}
        )
        times = _interleaved(calls, 300)
    finally:
        for proc, _ in started:
            proc.terminate()
            proc.wait()
    base = statistics.median(times.pop("direct"))
    return {name: statistics.median(values) - base for name, values in times.items()}


async def _concurrent(url: str, bearers: list[str]) -> list[int]:
    """All requests at once; ten clients of 100 connections (httpcore's pool slows down
    badly with a thousand connections in one client, which would measure the load generator)."""
    clients = [
        httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) for _ in range(10)
    ]
    try:
        responses = await asyncio.gather(
            *(
                clients[i % 10].post(url + TOKEN_PATH, headers={"Authorization": f"Bearer {b}"})
                for i, b in enumerate(bearers)
            )
        )
    finally:
        for client in clients:
            await client.aclose()
    return [r.status_code for r in responses]


def _calls(videodb_url: str, reset: bool = False) -> int:
    if reset:
        httpx.post(videodb_url + "/reset")
    calls: int = httpx.get(videodb_url + "/calls").json()["calls"]
    return calls


def coalescing(broker: BrokerProcess, videodb_url: str, issuer: DevIssuer) -> dict[str, int]:
    """Upstream calls made for 1,000 concurrent requests: one user, then 1,000 users."""
    one = issuer.mint(f"coalesce-{time.time_ns()}", AUDIENCE)
    _calls(videodb_url, reset=True)
    statuses = asyncio.run(_concurrent(broker.url, [one] * 1000))
    same_user = _calls(videodb_url)
    many = [issuer.mint(f"many-{i}-{time.time_ns()}", AUDIENCE) for i in range(1000)]
    _calls(videodb_url, reset=True)
    statuses += asyncio.run(_concurrent(broker.url, many))
    ok = sum(1 for s in statuses if s == 200)
    if ok != len(statuses):
        print(f"   (statuses seen: {dict(Counter(statuses))})")
    return {"one_user_calls": same_user, "many_users_calls": _calls(videodb_url), "ok": ok}


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _drive_users(url: str, start: int, stop: int) -> None:
    """One request per user id in [start, stop), 64 at a time, from 8 clients of 8
    connections (httpcore's pool slows down with many connections in one client)."""
    now = int(time.time())
    queue = list(range(start, stop))
    clients = [
        httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=8)) for _ in range(8)
    ]

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            token = jwt.encode(
                {"sub": f"mem-{i}", "aud": AUDIENCE, "exp": now + 3600},
                HS_SECRET,
                algorithm="HS256",
            )
            headers = {"Authorization": f"Bearer {token}"}
            try:
                resp = await client.post(url + TOKEN_PATH, headers=headers)
            except (httpx.ReadError, httpx.RemoteProtocolError):
                # a keep-alive connection closed by the server as we reused it: once more
                resp = await client.post(url + TOKEN_PATH, headers=headers)
            if resp.status_code != 200:
                raise SystemExit(f"memory run: HTTP {resp.status_code}: {resp.text}")

    try:
        await asyncio.gather(*(worker(clients[n % 8]) for n in range(64)))
    finally:
        for client in clients:
            await client.aclose()


def memory(videodb_url: str, max_entries: int, repo: Path = REPO) -> list[tuple[int, float]]:
    """RSS (MiB) of one broker (this tree's, or another checkout's) after 0, 10k, 50k and
    MEMORY_USERS distinct users."""
    settings = _settings(
        videodb_url,
        None,
        BROKER_AUTH_HS256_SECRET=HS_SECRET,
        BROKER_CACHE_MAX_ENTRIES=str(max_entries),
    )
    settings.pop("BROKER_AUTH_JWKS_URL")
    broker = BrokerProcess(settings, repo=repo).wait_ready()
    points = [(0, _rss_mib(broker.proc.pid))]
    done = 0
    try:
        for target in sorted({10_000, 50_000, MEMORY_USERS}):
            if target > MEMORY_USERS:
                continue
            asyncio.run(_drive_users(broker.url, done, target))
            done = target
            points.append((done, _rss_mib(broker.proc.pid)))
            print(
                f"   (max entries {max_entries:,}: {done:,} users, {points[-1][1]:.1f} MiB)",
                flush=True,
            )
    finally:
        broker.terminate()
    return points


def _settings(videodb_url: str, jwks_url: str | None, **extra: str) -> dict[str, str]:
    return {
        "VIDEO_DB_API_KEY": API_KEY,
        "VIDEO_DB_API": videodb_url,
        "BROKER_AUTH_JWKS_URL": jwks_url or "",
        "BROKER_AUTH_AUDIENCE": AUDIENCE,
        "BROKER_RATE_LIMIT": "1000000/second",
        "BROKER_CACHE_MAX_ENTRIES": "200000",
        **extra,
    }


BASELINE = os.environ.get("BENCH_BASELINE", "")


def main() -> int:
    """Run every measurement and print the figures."""
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 1
    videodb_proc, videodb_url = start_videodb()
    issuer = DevIssuer()
    issuer_server = ThreadedServer(issuer.asgi_app()).start()
    baseline: Path | None = None
    try:
        settings = _settings(videodb_url, issuer_server.url + "/jwks.json")
        broker = BrokerProcess(settings)
        broker.wait_ready()
        baseline = worktrees.checkout(BASELINE) if BASELINE else None
        before = BrokerProcess(settings, repo=baseline).wait_ready() if baseline else None
        print(f"machine: {machine()}")
        print(f"host speed: {host_speed(videodb_url)}")
        print("broker: one uvicorn worker, JSON logs at INFO; stand-ins on loopback")
        if before is not None:
            print(f"before: the broker at {BASELINE}, in the same rounds")
        print()
        try:
            if "hit" in PHASES:
                report_hit(broker, issuer, before)
            if "miss" in PHASES:
                report_miss(broker, videodb_url, issuer)
            if "load" in PHASES:
                report_miss_under_load(broker, videodb_url, issuer, before)
            if "coalescing" in PHASES:
                report_coalescing(broker, videodb_url, issuer)
            if "hop" in PHASES:
                report_hop(videodb_url)
            if "tracing" in PHASES:
                report_tracing(settings, issuer)
        finally:
            broker.terminate()
            if before is not None:
                before.terminate()
        if "memory" in PHASES:
            report_memory(videodb_url, baseline)
        print(f"host speed at the end: {host_speed(videodb_url)}")
    finally:
        if baseline is not None:
            worktrees.remove([baseline])
        videodb_proc.terminate()
        videodb_proc.wait()
        issuer_server.stop()
    return 0


def host_speed(videodb_url: str) -> str:
    """The yardstick (bench/yardstick.py), as the run prints it."""
    median, low, high = yardstick(videodb_url, API_KEY)
    return (
        f"aiohttp alone to the stand-in, 8 calls in flight: {median:.0f} us of CPU a call "
        f"({low:.0f}-{high:.0f}) (bench/yardstick.py)"
    )


def report_hit(broker: BrokerProcess, issuer: DevIssuer, before: BrokerProcess | None) -> None:
    """Figure 1: cache-hit throughput beside the bare endpoint."""
    hit = cache_hit_ratio(broker, issuer.mint("hot-user", AUDIENCE, lifetime=86400), before)
    print(
        f"1. cache hit, {CONNECTIONS} connections, median of {ROUNDS} alternating "
        f"{ROUND_SECONDS}s rounds"
    )
    print(
        f"   broker {hit['broker_rps']:.0f} req/s, bare FastAPI {hit['bare_rps']:.0f} req/s"
        f" -> ratio {hit['ratio']:.2f} (target >= 0.60)"
    )
    print(
        f"   (the ratio is the median of each round's broker/bare pair, measured back to back; "
        f"rounds ranged {hit['ratio_low']:.2f}-{hit['ratio_high']:.2f})"
    )
    print(f"   p99 latency: broker {hit['broker_p99_ms']:.2f} ms, bare {hit['bare_p99_ms']:.2f} ms")
    print(  # the server's own share; wrk, beside it on the machine, takes the rest
        f"   CPU a request: broker {hit['broker_cpu_us']:.0f} us, bare {hit['bare_cpu_us']:.0f} us"
    )
    if "before_ratio" in hit:
        print(
            f"   before ({BASELINE}): {hit['before_rps']:.0f} req/s -> ratio "
            f"{hit['before_ratio']:.2f}, p99 {hit['before_p99_ms']:.2f} ms, "
            f"{hit['before_cpu_us']:.0f} us of CPU a request"
        )


def report_tracing(settings: dict[str, str], issuer: DevIssuer) -> None:
    """Figure 5: a cache hit's throughput with tracing off, on, and on at 10 %."""
    bearer = issuer.mint("traced-user", AUDIENCE, lifetime=86400)
    figures = tracing_cost(settings, bearer, TOKEN_PATH, ROUNDS, wrk, _wrk_lua)
    print(
        f"5. tracing, cache hits, {CONNECTIONS} connections, median of {ROUNDS} alternating "
        f"{ROUND_SECONDS}s rounds (OTLP/HTTP to a receiver on loopback)"
    )
    for name in VARIANTS:
        each = figures[name]
        interval = (
            ""
            if name == "off"
            else f" (95 % interval of the median {each['ratio_low']:.2f}-{each['ratio_high']:.2f})"
        )
        print(
            f"   tracing {name:<20} {each['rps']:>7.0f} req/s  p99 {each['p99_ms']:.2f} ms"
            f"  -> {each['ratio']:.2f} of tracing off{interval}; CPU {each['cpu_us']:.0f} µs a "
            f"hit, export child included (off's / this: {each['cpu_ratio']:.2f})"
        )
    print(f"   (the receiver got {figures['receiver']['mib']:.1f} MiB of spans)")


def report_miss(broker: BrokerProcess, videodb_url: str, issuer: DevIssuer) -> None:
    """Figure 2: what a cache miss adds above VideoDB's own latency."""
    miss = cache_miss_overhead(broker, videodb_url, issuer)
    print("2. cache miss above a stand-in VideoDB answering in 20 ms (300 sequential users)")
    print(
        f"   p50: direct {miss['direct_p50_ms']:.2f} ms, via broker "
        f"{miss['broker_p50_ms']:.2f} ms -> overhead {miss['overhead_p50_ms']:.2f} ms "
        "(target <= 2)"
    )
    print(
        f"   beside it, a bare FastAPI + httpx forwarder: overhead "
        f"{miss['proxy_overhead_p50_ms']:.2f} ms (the broker minus it: "
        f"{miss['overhead_p50_ms'] - miss['proxy_overhead_p50_ms']:+.2f} ms); the floor of "
        f"any Python hop on this machine now (HTTP/1.1 by hand): "
        f"{miss['floor_overhead_p50_ms']:.2f} ms"
    )
    print(
        f"   p99: direct {miss['direct_p99_ms']:.2f} ms, via broker {miss['broker_p99_ms']:.2f} "
        f"ms, via bare forwarder {miss['proxy_p99_ms']:.2f} ms"
    )


def report_miss_under_load(
    broker: BrokerProcess, videodb_url: str, issuer: DevIssuer, before: BrokerProcess | None
) -> None:
    """Figure 2, under load: the same overhead with wrk keeping the broker busy."""
    print(
        f"2b. cache miss under load: wrk, every request a new user, median of {LOAD_ROUNDS} "
        f"shuffled {ROUND_SECONDS}s rounds beside wrk straight at the stand-in"
    )
    speed, _, _ = yardstick(videodb_url, API_KEY)  # the host's speed as this figure starts
    print(f"   the yardstick now: {speed:.0f} us of CPU a call with aiohttp alone")
    for connections in LOAD_CONNECTIONS:
        load = cache_miss_under_load(broker, videodb_url, issuer, connections, before)
        print(
            f"   {connections} connections: {load['broker_rps']:.0f} new users/s, the broker "
            f"busy {load['broker_cpu_share']:.0%} of a core ({load['broker_cpu_ms']:.2f} ms of "
            f"CPU a miss); direct p50 {load['direct_p50_ms']:.2f} ms, "
            f"p99 {load['direct_p99_ms']:.2f} ms"
        )
        note = (
            "saturated: one worker's capacity"
            if load["broker_cpu_share"] >= SATURATED
            else "target <= 2"
        )
        print(
            f"      overhead p50 {load['overhead_p50_ms']:.2f} ms ({note}), "
            f"p99 {load['overhead_p99_ms']:.2f} ms; a bare FastAPI + httpx forwarder: "
            f"p50 {load['proxy_overhead_p50_ms']:.2f} ms, "
            f"p99 {load['proxy_overhead_p99_ms']:.2f} ms, {load['proxy_cpu_ms']:.2f} ms of CPU a "
            f"call; the broker minus the forwarder, p50: {load['above_proxy_p50_ms']:+.2f} ms "
            f"(95 % interval of the median {load['above_proxy_p50_low']:+.2f} to "
            f"{load['above_proxy_p50_high']:+.2f} ms) "
            f"(target <= +0.5)"
        )
        if "before_overhead_p50_ms" in load:
            print(
                f"      before ({BASELINE}): overhead p50 {load['before_overhead_p50_ms']:.2f} ms, "
                f"p99 {load['before_overhead_p99_ms']:.2f} ms, "
                f"{load['before_cpu_ms']:.2f} ms of CPU a miss, {load['before_rps']:.0f} new "
                f"users/s, busy {load['before_cpu_share']:.0%} of a core"
            )
        capacity = 1000 / load["broker_cpu_ms"]  # one worker, were its CPU the only limit
        print(f"      one worker's capacity at this CPU a miss: {capacity:.0f} new users/s")
        print(
            f"      in yardstick calls: a miss {load['broker_cpu_ms'] * 1000 / speed:.2f}, "
            f"the forwarder's call {load['proxy_cpu_ms'] * 1000 / speed:.2f}"
        )


def report_hop(videodb_url: str) -> None:
    """Beside figure 2 (BENCH_ONLY=hop): where one HTTP hop's time goes, by forwarder."""
    print("hop: p50 above the direct call to the 20 ms stand-in, 300 sequential turns")
    for name, overhead in hop_overheads(videodb_url).items():
        print(f"   {overhead:5.2f} ms  {name}")


def report_coalescing(broker: BrokerProcess, videodb_url: str, issuer: DevIssuer) -> None:
    """Figure 3: upstream calls for concurrent requests."""
    co = coalescing(broker, videodb_url, issuer)
    print("3. coalescing, 1,000 concurrent requests")
    print(
        f"   one user: {co['one_user_calls']} upstream call(s) (target 1); "
        f"1,000 users: {co['many_users_calls']} (target 1000); {co['ok']}/2000 answered 200"
    )


def report_memory(videodb_url: str, baseline: Path | None) -> None:
    """Figure 4: resident memory by cached users, unbounded and bounded (and the broker at
    BENCH_BASELINE, run after, so that both see the same machine)."""
    rows = {
        "unbounded": memory(videodb_url, 200_000),
        f"max {BOUNDED_ENTRIES:,}": memory(videodb_url, BOUNDED_ENTRIES),
    }
    if baseline is not None:
        rows["before, unbounded"] = memory(videodb_url, 200_000, baseline)
        rows[f"before, max {BOUNDED_ENTRIES:,}"] = memory(videodb_url, BOUNDED_ENTRIES, baseline)
    print("4. resident memory (MiB) by distinct users with a cached token")
    print(f"   {'users':<20}" + "  ".join(f"{n:>8,}" for n, _ in rows["unbounded"]))
    for name, points in rows.items():
        print(f"   {name:<20}" + "  ".join(f"{m:>8.1f}" for _, m in points))


if __name__ == "__main__":
    raise SystemExit(main())
