#!/usr/bin/env python3
"""Unicorn vs llama.cpp on this machine's CPU: prefill and decode speed, time to first token, peak memory.

    python3 bench/compare.py --models qwen3-0.6b,llama-3.2-1b --quant q8_0,q4_0 --threads 2 \\
        --prompt-len 128 --gen 64 --repeat 5 [--peer prebuilt|source] [--out results.json] [--max-busy 0.1]

The peer (--peer) is one of two llama.cpp builds:
  prebuilt  (default) llama.cpp as its users get it: the shared libraries of the npm package
            @node-llama-cpp/linux-x64-vulkan, whose CPU backend picks a variant for this CPU at run time, with
            llama-bench and llama-quantize compiled from the bundled source of that build
            (bench/llama_cpp_prebuilt.sh). Its Vulkan backend stays out of CPU runs (llama-bench -dev none).
  source    llama.cpp vendored in the llama-cpp-python sdist, built here with -DGGML_NATIVE=ON (bench/llama_cpp.sh).
The peer's package, version, llama.cpp commit and CPU variant are printed and stored in the JSON under "llama_cpp".

For each model and weight format:
  1. checkpoint  bench/make_checkpoints.py (random bf16 weights, published shapes; cached)
  2. GGUF        the peer script's `gguf` (that llama.cpp's converter to bf16, then its llama-quantize --pure;
                 cached, one GGUF folder per peer build)
  3. plan        target/release/unicornc compile CKPT -o PLAN --weights Q, under /usr/bin/time -v
                 (wall time and peak RSS of the compile are reported)
  4. R rounds, interleaved, alternating which engine goes first (ABBA...):
       unicorn-rt PLAN --bench --prompt-len P --gen N --repeat 1 --threads T --json
       llama-bench -m GGUF -p P -n 0 -t T -r 1 -o json          (prefill: P tokens into an empty cache)
       llama-bench -m GGUF -p 0 -n N -d P -t T -r 1 -o json     (decode: N tokens after P cached ones)
     every process under /usr/bin/time -v for its peak RSS (VmHWM; mmapped weights count once touched).
     Both engines do one untimed warm-up pass per process. Unicorn's --bench decodes right after its P-token
     prefill, so llama.cpp's decode is measured at the same depth (-d P); --llama-tg-depth 0 measures it
     from an empty cache instead (llama-bench's plain `-p P -n N`).
Each number reported is the median of the R rounds, with the min and max; ratio = Unicorn / llama.cpp of the
medians (> 1: Unicorn faster, or for RSS: Unicorn uses more). llama-bench does not report time to first
token; its TTFT column is P / (prefill tok/s), an estimate, marked "est.".

The machine is shared: for every process the script records the share of the machine's CPU time that OTHER
processes used while it ran (from /proc/stat minus the process's own user+sys time; "others" in the table,
0% = the run had the machine to itself) and the 1-minute load average. --max-busy F waits (up to --max-wait
seconds) before each round until other processes use less than F of the CPUs over 2 s; --redo-busy F runs a
round again (at most --max-redo times; the discarded round stays in the JSON) when other processes used more
than F of the CPUs during any of its runs. The choice depends only on other processes, never on the numbers.

Only one compare.py measures at a time (a lock file in the cache; a second one waits). The Unicorn binaries are
copied to CACHE/bin/<digest>/ when a run starts and its plans live in CACHE/plans/<digest>/, so a rebuild or
another run with another build cannot change what this run measures.

Writes a JSON file with every raw measurement and prints a markdown table on stdout (progress on stderr).
"""

import argparse
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = Path(os.environ.get("UNICORN_BENCH_CACHE", Path.home() / ".cache" / "unicorn-bench"))

# llama.cpp's pre-tokenizer name for each bench model (see bench/convert_gguf.py)
PRE = {"qwen3-0.6b": "qwen2", "llama-3.2-1b": "llama-bpe", "gemma-3-1b": "llama-bpe", "llama-3.1-8b": "llama-bpe"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def load1() -> float:
    return os.getloadavg()[0]


CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1


def cpu_busy_s() -> float:
    """CPU seconds spent busy (all CPUs, all processes) since boot, from /proc/stat."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in f]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK


def others_busy(seconds: float = 2.0) -> float:
    """Fraction of the machine's CPUs busy over `seconds` while this script is idle: other people's work."""
    b0, t0 = cpu_busy_s(), time.perf_counter()
    time.sleep(seconds)
    return (cpu_busy_s() - b0) / ((time.perf_counter() - t0) * NCPU)


def run_timed(cmd: list, timeout: float | None = None) -> dict:
    """Run cmd under /usr/bin/time -v; return stdout, stderr, wall s, peak RSS MiB, and the share of the
    machine's CPU time that other processes used while it ran (others_cpu: 0 = nothing else ran)."""
    tf = f"/tmp/unicorn-bench-time-{os.getpid()}.txt"
    full = ["/usr/bin/time", "-v", "-o", tf] + [str(c) for c in cmd]
    b0 = cpu_busy_s()
    t0 = time.perf_counter()
    p = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    busy = cpu_busy_s() - b0
    rep = Path(tf).read_text() if Path(tf).exists() else ""
    Path(tf).unlink(missing_ok=True)
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", rep)
    own = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", rep))
    if p.returncode != 0:
        raise SystemExit(f"compare.py: command failed (exit {p.returncode}): {shlex.join(full[4:])}\n"
                         f"{p.stderr[-3000:]}")
    return {"stdout": p.stdout, "stderr": p.stderr, "wall_s": wall,
            "peak_rss_mib": int(m.group(1)) / 1024 if m else None,
            "cpu_s": own, "others_cpu": max(0.0, busy - own) / (wall * NCPU)}


def spread(v: list) -> dict | None:
    v = [x for x in v if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def wait_for_quiet(max_busy: float | None, max_wait: float) -> float:
    """Wait until other processes use less than max_busy of the CPUs (measured over 2 s); return that share."""
    b = others_busy()
    if max_busy is None:
        return b
    t0 = time.time()
    while b > max_busy and time.time() - t0 < max_wait:
        time.sleep(5)
        b = others_busy()
    if b > max_busy:
        log(f"other processes still use {b:.0%} of the CPUs after {max_wait:.0f} s; running anyway")
    return b


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for key in ["Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache", "Hypervisor vendor"]:
            m = re.search(rf"^{re.escape(key)}:\s+(.*)$", lscpu, re.M)
            if m:
                info[key] = m.group(1).strip()
        flags = re.search(r"^Flags:\s+(.*)$", lscpu, re.M)
        if flags:
            fl = flags.group(1).split()
            info["simd"] = [f for f in ["avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                                        "avx512_bf16", "avx512_vbmi", "avx_vnni", "amx_tile", "amx_int8",
                                        "amx_bf16"] if f in fl]
    except OSError:
        pass
    mem = Path("/proc/meminfo").read_text()
    m = re.search(r"MemTotal:\s+(\d+) kB", mem)
    if m:
        info["mem_total_gib"] = round(int(m.group(1)) / 2**20, 1)
    return info


PEER_SCRIPT = {"prebuilt": "llama_cpp_prebuilt.sh", "source": "llama_cpp.sh"}


def peer_cmd(peer: str, vulkan: bool, *args) -> list:
    """The peer's script with a subcommand; the source build has a Vulkan flavour of its own (--vulkan), the
    prebuilt libraries carry the Vulkan backend already."""
    return (["bash", str(HERE / PEER_SCRIPT[peer])] + [str(x) for x in args]
            + (["--vulkan"] if vulkan and peer == "source" else []))


def llama_paths(peer: str, vulkan: bool) -> dict:
    out = subprocess.run(peer_cmd(peer, vulkan, "paths"), capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.strip().splitlines())


def peer_info(peer: str, lp: dict) -> dict:
    """What the JSON and the table say about the llama.cpp build measured."""
    if peer == "prebuilt":
        return {"peer": "prebuilt", "package": lp.get("package"), "version": lp.get("version"),
                "source_package": lp.get("source_package"), "commit": lp.get("commit"),
                "build_number": lp.get("build_number"), "compiler": lp.get("compiler"),
                "cpu_variant": lp.get("cpu_variant"), "cpu_backend_lib": lp.get("cpu_backend_lib"),
                "cpu_features": lp.get("cpu_features"), "devices": lp.get("devices"),
                "llama_bench": lp.get("llama_bench")}
    return {"peer": "source", "package": f"llama-cpp-python=={lp.get('version')} (sdist, vendor/llama.cpp)",
            "version": lp.get("version"), "llama_cpp_python_version": lp.get("version"),
            "build_flags": "-DGGML_NATIVE=ON, Release, static", "llama_bench": lp.get("llama_bench")}


def peer_line(info: dict) -> str:
    if info.get("peer") == "prebuilt":
        return (f"llama.cpp peer: prebuilt, {info.get('package')} (llama.cpp build {info.get('build_number')}, "
                f"commit {info.get('commit')}), CPU variant {info.get('cpu_variant')}")
    commit = info.get("build_commit")
    return (f"llama.cpp peer: built from source, {info.get('package')}, {info.get('build_flags')}"
            + (f" (llama.cpp commit {commit})" if commit else ""))


def parse_unicorn_json(stdout: str) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    try:
        return json.loads(stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"compare.py: no JSON object in unicorn-rt's output:\n{stdout[-2000:]}")


def parse_llama_bench(stdout: str) -> list:
    i = stdout.find("[")
    if i < 0:
        raise SystemExit(f"compare.py: no JSON array in llama-bench's output:\n{stdout[-2000:]}")
    return json.loads(stdout[i:])


def fmt(s: dict | None, digits: int = 1, est: bool = False) -> str:
    if not s:
        return "–"
    d = digits
    txt = f"{s['median']:.{d}f} ({s['min']:.{d}f}–{s['max']:.{d}f})"
    return txt + " est." if est else txt


def ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or not b["median"]:
        return None
    return a["median"] / b["median"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="qwen3-0.6b,llama-3.2-1b")
    ap.add_argument("--quant", default="q8_0,q4_0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--llama-tg-depth", type=int, default=None,
                    help="cache depth for llama.cpp's decode test (default: --prompt-len, as Unicorn's)")
    ap.add_argument("--out", type=Path, default=None, help="results JSON (default: CACHE/results/compare-DATE.json)")
    ap.add_argument("--bin-dir", type=Path, default=REPO / "target" / "release")
    ap.add_argument("--reuse-plans", action="store_true", help="do not recompile plans that exist (no compile timing)")
    ap.add_argument("--peer", choices=sorted(PEER_SCRIPT), default="prebuilt",
                    help="llama.cpp build to measure against: prebuilt (npm @node-llama-cpp/linux-x64-vulkan, "
                         "default) or source (llama-cpp-python sdist built with -DGGML_NATIVE=ON)")
    ap.add_argument("--vulkan", action="store_true",
                    help="llama.cpp on its Vulkan device (source: the build with -DGGML_VULKAN=ON; prebuilt: its "
                         "Vulkan backend instead of -dev none)")
    ap.add_argument("--max-busy", type=float, default=None,
                    help="before each round, wait until other processes use less than this share of the CPUs (e.g. 0.1)")
    ap.add_argument("--max-wait", type=float, default=600, help="longest wait for --max-busy, seconds")
    ap.add_argument("--redo-busy", type=float, default=None,
                    help="redo a round if other processes used more than this share of the CPUs during any of its runs")
    ap.add_argument("--max-redo", type=int, default=3, help="redo a round at most this many times")
    ap.add_argument("--drop-intermediates", action="store_true",
                    help="delete the bf16 GGUF after quantizing and each plan after its rounds (disk space, e.g. 8B)")
    ap.add_argument("--skip-unicorn", action="store_true", help="measure llama.cpp only")
    ap.add_argument("--skip-llama", action="store_true", help="measure Unicorn only")
    a = ap.parse_args()
    models = [m for m in a.models.split(",") if m]
    quants = [q for q in a.quant.split(",") if q]
    tg_depth = a.prompt_len if a.llama_tg_depth is None else a.llama_tg_depth
    unicornc, unicorn_rt = a.bin_dir / "unicornc", a.bin_dir / "unicorn-rt"

    if not a.skip_unicorn:
        for b in (unicornc, unicorn_rt):
            if not b.exists():
                sys.exit(f"compare.py: {b} missing; run `cargo build --release --bins` in {REPO}")
        # Run copies, so that a rebuild in target/ during the run cannot mix two builds in one result.
        digest = hashlib.sha256(unicornc.read_bytes() + unicorn_rt.read_bytes()).hexdigest()[:16]
        snap = CACHE / "bin" / digest
        snap.mkdir(parents=True, exist_ok=True)
        for b in (unicornc, unicorn_rt):
            if not (snap / b.name).exists():
                shutil.copy2(b, snap / (b.name + ".part"))
                (snap / (b.name + ".part")).rename(snap / b.name)
        src_bins = {"unicornc": str(unicornc), "unicorn-rt": str(unicorn_rt)}
        unicornc, unicorn_rt = snap / "unicornc", snap / "unicorn-rt"
        helptext = subprocess.run([unicorn_rt, "--help"], capture_output=True, text=True).stdout
        if "--bench" not in helptext:
            sys.exit(f"compare.py: {unicorn_rt} has no --bench; rebuild with `cargo build --release --bins`")

    # One comparison at a time on this machine: two would skew each other's timings.
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = open(CACHE / "compare.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another compare.py holds {CACHE / 'compare.lock'}; waiting for it to finish")
        fcntl.flock(lock, fcntl.LOCK_EX)

    # 1-2. checkpoints and GGUFs
    ckpt_dir = CACHE / "checkpoints"
    missing = [m for m in models if not (ckpt_dir / m / ".done").exists()]
    if missing:
        log(f"making checkpoints {missing}")
        subprocess.run([sys.executable, HERE / "make_checkpoints.py", ckpt_dir, "--models", ",".join(missing)], check=True)
    lp = {}
    if not a.skip_llama:
        subprocess.run(peer_cmd(a.peer, a.vulkan, "build"), check=True)
        lp = llama_paths(a.peer, a.vulkan)
        gpus = [d for d in lp.get("devices", "").split(";") if d.split(":")[0] in ("gpu", "igpu")]
        if a.peer == "prebuilt" and a.vulkan and not gpus:
            sys.exit(f"compare.py: --vulkan, but the prebuilt llama.cpp sees no GPU device here "
                     f"(devices: {lp.get('devices')}; is libvulkan1 with a Vulkan driver installed?)")
        log(peer_line(peer_info(a.peer, lp)))
        for m in models:
            subprocess.run(peer_cmd(a.peer, a.vulkan, "gguf", ckpt_dir / m, m, PRE[m], ",".join(quants))
                           + (["--drop-bf16"] if a.drop_intermediates else []), check=True)

    results = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "settings": {"threads": a.threads, "prompt_len": a.prompt_len, "gen": a.gen, "repeat": a.repeat,
                     "llama_tg_depth": tg_depth, "vulkan": a.vulkan, "peer": a.peer},
        "llama_cpp": peer_info(a.peer, lp) if lp else {"peer": None},
        "unicorn": {"unicorn_rt": str(unicorn_rt)},
        "load_before": os.getloadavg(),
        "runs": [],
    }
    if not a.skip_unicorn:
        results["unicorn"]["version"] = subprocess.run([unicorn_rt, "--version"], capture_output=True,
                                                       text=True).stdout.strip()
        for b in (unicornc, unicorn_rt):
            st_ = b.stat()
            results["unicorn"][b.name] = {
                "mtime": dt.datetime.fromtimestamp(st_.st_mtime).astimezone().isoformat(timespec="seconds"),
                "sha256": hashlib.sha256(b.read_bytes()).hexdigest()[:16]}
        g = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        # The checkout's state when the run started; the binaries may be older (see mtime, or --bin-dir).
        results["unicorn"]["repo_head_at_start"] = g.stdout.strip() if g.returncode == 0 else None
        d = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True)
        results["unicorn"]["repo_modified_at_start"] = (sorted(l[3:] for l in d.stdout.splitlines())
                                                        if d.returncode == 0 else None)
        results["unicorn"]["copied_from"] = src_bins
    # Plans are kept per Unicorn build, so two builds never read or delete each other's plans.
    plan_dir = CACHE / "plans" / (digest if not a.skip_unicorn else "none")
    plan_dir.mkdir(parents=True, exist_ok=True)

    for m in models:
        for q in quants:
            entry = {"model": m, "quant": q, "unicorn": [], "llama_pp": [], "llama_tg": []}
            plan = plan_dir / f"{m}-{q}.ucp"
            gguf = Path(lp["gguf_dir"]) / f"{m}-{q}.gguf" if lp else None
            # 3. compile
            if not a.skip_unicorn:
                if a.reuse_plans and plan.exists():
                    log(f"{m} {q}: reusing {plan}")
                else:
                    log(f"{m} {q}: compiling {plan} (load {load1():.2f})")
                    r = run_timed([unicornc, "compile", ckpt_dir / m, "-o", plan, "--weights", q, "--quiet"])
                    entry["compile"] = {"wall_s": r["wall_s"], "cpu_s": r["cpu_s"], "peak_rss_mib": r["peak_rss_mib"],
                                        "others_cpu": r["others_cpu"]}
                    log(f"{m} {q}: compiled in {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB")
                entry["plan_bytes"] = plan.stat().st_size
            if gguf:
                entry["gguf_bytes"] = gguf.stat().st_size
            # 4. interleaved rounds; a round in which other processes took more than --redo-busy of the CPUs
            # (in any of its runs) is kept under "discarded" and run again, at most --max-redo times per round.
            entry["discarded"] = []
            for i in range(a.repeat):
                for attempt in range(a.max_redo + 1):
                    rnd = {"unicorn": [], "llama_pp": [], "llama_tg": []}
                    quiet = wait_for_quiet(a.max_busy, a.max_wait)
                    order = ["unicorn", "llama"] if i % 2 == 0 else ["llama", "unicorn"]
                    for eng in order:
                        if eng == "unicorn" and not a.skip_unicorn:
                            l0 = load1()
                            r = run_timed([unicorn_rt, plan, "--bench", "--prompt-len", a.prompt_len, "--gen", a.gen,
                                           "--repeat", 1, "--threads", a.threads, "--json"])
                            j = parse_unicorn_json(r["stdout"])
                            rnd["unicorn"].append({
                                "prefill_tok_s": j["prefill_tok_s"]["median"], "decode_tok_s": j["decode_tok_s"]["median"],
                                "ttft_ms": j["ttft_ms"]["median"], "peak_rss_mib": r["peak_rss_mib"],
                                "self_peak_rss_mib": j.get("peak_rss_mib"), "wall_s": r["wall_s"], "load1": l0,
                                "others_cpu": r["others_cpu"], "others_before": quiet, "raw": j})
                            log(f"{m} {q} round {i + 1}: unicorn prefill {j['prefill_tok_s']['median']:.1f} tok/s, "
                                f"decode {j['decode_tok_s']['median']:.2f} tok/s, RSS {r['peak_rss_mib']:.0f} MiB "
                                f"(others {r['others_cpu']:.0%}, load {l0:.2f})")
                        if eng == "llama" and not a.skip_llama:
                            base = [lp["llama_bench"], "-m", gguf, "-t", a.threads, "-r", 1, "-o", "json"]
                            if a.peer == "prebuilt" and not a.vulkan:
                                base += ["-dev", "none"]  # the CPU only, whatever Vulkan device the machine has
                            l0 = load1()
                            r = run_timed(base + ["-p", a.prompt_len, "-n", 0])
                            pp = parse_llama_bench(r["stdout"])[0]
                            rnd["llama_pp"].append({"tok_s": pp["avg_ts"], "peak_rss_mib": r["peak_rss_mib"],
                                                    "wall_s": r["wall_s"], "load1": l0,
                                                    "others_cpu": r["others_cpu"], "others_before": quiet, "raw": pp})
                            l1 = load1()
                            r2 = run_timed(base + ["-p", 0, "-n", a.gen, "-d", tg_depth])
                            tg = parse_llama_bench(r2["stdout"])[0]
                            rnd["llama_tg"].append({"tok_s": tg["avg_ts"], "peak_rss_mib": r2["peak_rss_mib"],
                                                    "wall_s": r2["wall_s"], "load1": l1,
                                                    "others_cpu": r2["others_cpu"], "raw": tg})
                            log(f"{m} {q} round {i + 1}: llama.cpp prefill {pp['avg_ts']:.1f} tok/s, "
                                f"decode {tg['avg_ts']:.2f} tok/s, RSS {max(r['peak_rss_mib'], r2['peak_rss_mib']):.0f} MiB "
                                f"(others {r['others_cpu']:.0%}/{r2['others_cpu']:.0%}, load {l0:.2f}/{l1:.2f})")
                    worst = max(x["others_cpu"] for k in rnd for x in rnd[k])
                    if a.redo_busy is not None and worst > a.redo_busy and attempt < a.max_redo:
                        log(f"{m} {q} round {i + 1}: other processes took {worst:.0%} of the CPUs; round discarded, redone")
                        entry["discarded"].append({"round": i + 1, "attempt": attempt + 1, "others_cpu_max": worst, **rnd})
                        continue
                    for k in rnd:
                        entry[k] += rnd[k]
                    break
            # summaries
            u, lpp, ltg = entry["unicorn"], entry["llama_pp"], entry["llama_tg"]
            entry["summary"] = {
                "unicorn": {
                    "prefill_tok_s": spread([x["prefill_tok_s"] for x in u]),
                    "decode_tok_s": spread([x["decode_tok_s"] for x in u]),
                    "ttft_ms": spread([x["ttft_ms"] for x in u]),
                    "peak_rss_mib": spread([x["peak_rss_mib"] for x in u]),
                },
                "llama_cpp": {
                    "prefill_tok_s": spread([x["tok_s"] for x in lpp]),
                    "decode_tok_s": spread([x["tok_s"] for x in ltg]),
                    "ttft_ms_est": spread([a.prompt_len / x["tok_s"] * 1e3 for x in lpp]),
                    "peak_rss_mib": spread([max(x["peak_rss_mib"], y["peak_rss_mib"]) for x, y in zip(lpp, ltg)]),
                },
                "load1": spread([x["load1"] for x in u + lpp + ltg]),
                "others_cpu": spread([x["others_cpu"] for x in u + lpp + ltg]),
            }
            s = entry["summary"]
            entry["ratio"] = {k: ratio(s["unicorn"][k], s["llama_cpp"][k])
                              for k in ["prefill_tok_s", "decode_tok_s", "peak_rss_mib"]}
            entry["ratio"]["ttft_ms"] = ratio(s["unicorn"]["ttft_ms"], s["llama_cpp"]["ttft_ms_est"])
            if lpp:
                raw = lpp[0]["raw"]
                # llama-bench's own account of its settings ("devices" there is its -dev, kept apart from the
                # devices ggml found)
                results["llama_cpp"].update({k: raw.get(k) for k in [
                    "build_commit", "build_number", "cpu_info", "gpu_info", "backends", "n_batch", "n_ubatch",
                    "flash_attn", "type_k", "type_v", "use_mmap", "load_mode", "n_gpu_layers", "poll",
                    "cpu_strict"] if k in raw})
                if "devices" in raw:
                    results["llama_cpp"]["llama_bench_dev"] = raw["devices"]
                entry["llama_model_type"] = raw.get("model_type")
            results["runs"].append(entry)
            if a.drop_intermediates and plan.exists():
                plan.unlink()

    results["load_after"] = os.getloadavg()
    out = a.out or CACHE / "results" / f"compare-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(f"wrote {out}")
    print(markdown(results))


def markdown(res: dict) -> str:
    st = res["settings"]
    lines = [
        f"Prompt {st['prompt_len']} tokens, generate {st['gen']}, {st['threads']} threads; each cell: median (min–max) "
        f"of {st['repeat']} interleaved rounds; llama.cpp decode measured at depth {st['llama_tg_depth']}, its TTFT "
        f"estimated as prompt / prefill speed. Ratio = Unicorn / llama.cpp of the medians (tok/s: > 1 Unicorn "
        f"faster; TTFT and RSS: < 1 Unicorn better). Others = median share of the CPUs used by other processes "
        f"during the runs.",
        "",
    ]
    if res["llama_cpp"].get("peer"):
        lines += [peer_line(res["llama_cpp"]) + ".", ""]
    lines += [
        "| model | quant | engine | prefill tok/s | decode tok/s | TTFT ms | peak RSS MiB | ratio prefill / decode / TTFT / RSS | others |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for e in res["runs"]:
        s, r = e["summary"], e["ratio"]
        rs = " / ".join("–" if r[k] is None else f"{r[k]:.2f}"
                        for k in ["prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_mib"])
        oc = s.get("others_cpu")
        octxt = f"{oc['median']:.0%}" if oc else "–"
        u, l = s["unicorn"], s["llama_cpp"]
        lines.append(f"| {e['model']} | {e['quant']} | Unicorn | {fmt(u['prefill_tok_s'])} | {fmt(u['decode_tok_s'], 2)} | "
                     f"{fmt(u['ttft_ms'], 0)} | {fmt(u['peak_rss_mib'], 0)} | {rs} | {octxt} |")
        lines.append(f"| {e['model']} | {e['quant']} | llama.cpp | {fmt(l['prefill_tok_s'])} | {fmt(l['decode_tok_s'], 2)} | "
                     f"{fmt(l['ttft_ms_est'], 0, est=True)} | {fmt(l['peak_rss_mib'], 0)} | | |")
    lines += ["", "| model | quant | unicornc compile s | compile peak RSS MiB | plan MiB | GGUF MiB |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]
    for e in res["runs"]:
        c = e.get("compile")
        mib = lambda k: f"{e[k] / 2**20:.0f}" if k in e else "–"
        lines.append(f"| {e['model']} | {e['quant']} | {c['wall_s']:.1f} | {c['peak_rss_mib']:.0f} | "
                     if c else f"| {e['model']} | {e['quant']} | – | – | ")
        lines[-1] += f"{mib('plan_bytes')} | {mib('gguf_bytes')} |"
    return "\n".join(lines)


if __name__ == "__main__":
    main()
