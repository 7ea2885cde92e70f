#!/usr/bin/env python3
"""The soak benchmark's measuring and reporting half (scripts/bench-soak
drives the daemon and the load; this file samples and draws).

    soak.py point   --out FILE --pid PID --data DIR --url URL [--cpu-base S]
                    [--loadgen JSON] [--extra JSON] [--progress]
    soak.py report  --dir RESULTS [--no-plots]
    soak.py watch   --out FILE --pid PID [--every S]
    soak.py lag     --data DIR          (the threading lag alone)
    soak.py get     JSON a.b            (one field, for the shell)

`point` appends one JSON line to FILE: what the daemon holds at that moment
(RSS, its high-water mark and its anonymous part, CPU seconds, every file
of the data directory, per-topic sizes from the log's own tables and from
/metrics, the threading worker's committed offset against the inbound
topic's end), the
loadgen result of the chunk just run and whatever `--extra` adds. It needs
only the standard library, so it runs on Debian's own python3.

`watch` appends the daemon's VmRSS, RssAnon and RssFile to FILE (CSV)
every S seconds (0.2) until the process exits: the points come every
chunk, and a peak between two of them shows only as VmHWM, with nothing
to say when it came or whether it was heap or mapped file pages.

`report` reads RESULTS/points.jsonl (and watch.csv, when there) and writes points.csv, restarts.csv,
summary.json and summary.txt, and the PNGs (matplotlib, from the venv
bench-soak makes).
"""

import argparse
import csv
import json
import os
import sqlite3
import sys
import time
import urllib.request

MIB = 1024 * 1024
RSS_TARGET_MIB = 256
THREADING_GROUP = "omnid-threading"


# ---------------------------------------------------------------- sampling


def proc_status(pid):
    """VmRSS, VmHWM, RssAnon and RssFile in KiB (empty when the process is
    gone). RssFile counts the pages of the SQLite files the daemon maps
    (the threading store's mmap), which the kernel can drop at will;
    RssAnon is the heap."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def proc_cpu_seconds(pid):
    """User + system CPU seconds of a process; the fields after the
    command name, which may hold spaces and parentheses."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def data_files(data_dir):
    """Every regular file under the data directory and its size."""
    files = {}
    for root, _dirs, names in os.walk(data_dir):
        for name in names:
            path = os.path.join(root, name)
            try:
                files[os.path.relpath(path, data_dir)] = os.stat(path).st_size
            except OSError:
                pass  # removed while walking (a -shm or -journal)
    return dict(sorted(files.items()))


def parse_metrics(text):
    """Prometheus text format: [(name, {label: value}, value)]."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        labels = {}
        name = head
        if "{" in head:
            name, _, rest = head.partition("{")
            for part in rest.rstrip("}").split('",'):
                if "=" in part:
                    key, _, val = part.partition("=")
                    labels[key.strip()] = val.strip().strip('"')
        try:
            samples.append((name, labels, float(value)))
        except ValueError:
            pass
    return samples


def scrape(url):
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
            return parse_metrics(response.read().decode())
    except OSError:
        return []


def log_state(events_path):
    """Per topic the log's own counters, and the consumer groups' committed
    offsets, read from the embedded log file (read-only; WAL readers never
    block the writer). Exact and kept across restarts, unlike the
    daemon's per-process counters."""
    if not os.path.exists(events_path):
        return {}, {}
    try:
        db = sqlite3.connect(f"file:{events_path}?mode=ro", uri=True, timeout=10)
        try:
            topics = {
                name: {"records": r, "bytes": b, "start_offset": s, "next_offset": n}
                for name, r, b, s, n in db.execute(
                    "SELECT t.name, s.records, s.bytes, s.start_offset, s.next_offset "
                    "FROM log_topic_stats s JOIN log_topics t ON t.id = s.topic_id"
                )
            }
            groups = {
                f"{group}/{topic}": offset
                for group, topic, offset in db.execute(
                    "SELECT group_id, topic, MAX(next_offset) FROM log_consumer_offsets "
                    "GROUP BY group_id, topic"
                )
            }
        finally:
            db.close()
        return topics, groups
    except sqlite3.Error as error:
        print(f"soak.py: cannot read {events_path}: {error}", file=sys.stderr)
        return {}, {}


def sample(pid, data_dir, url):
    status = proc_status(pid)
    metrics = scrape(url)
    by_name = {}
    for name, labels, value in metrics:
        by_name.setdefault(name, []).append((labels, value))

    def per(name, label):
        return {l.get(label, ""): v for l, v in by_name.get(name, [])}

    topics, groups = log_state(os.path.join(data_dir, "events.sqlite3"))
    inbound = next((t for t in topics if t.endswith("inbound.v1")), None)
    threaded_offset = groups.get(f"{THREADING_GROUP}/{inbound}") if inbound else None
    inbound_next = topics[inbound]["next_offset"] if inbound else None
    files = data_files(data_dir)
    return {
        "time": time.time(),
        "rss_kib": status.get("VmRSS"),
        "hwm_kib": status.get("VmHWM"),
        "rss_anon_kib": status.get("RssAnon"),
        "rss_file_kib": status.get("RssFile"),
        "process_cpu_s": proc_cpu_seconds(pid),
        "files": files,
        "disk_bytes": sum(files.values()),
        "topic_bytes_metric": per("omnid_log_topic_bytes", "topic"),
        "topic_records_metric": per("omnid_log_topic_records", "topic"),
        "threading_events": per("omnid_threading_events_total", "outcome"),
        "timeline_published": sum(v for _, v in by_name.get("omnid_timeline_published_total", [])),
        # The threading store's in-memory indexes and on-disk dedupe ids.
        "threading_state_rows": per("omnid_threading_state_rows", "kind"),
        "threading_dedupe_event_ids": sum(
            v for _, v in by_name.get("omnid_threading_dedupe_event_ids", [])
        ),
        "threading_journal_rows": sum(v for _, v in by_name.get("omnid_threading_journal_rows", [])),
        "log_topics": topics,
        "log_groups": groups,
        "inbound_next_offset": inbound_next,
        "threaded_offset": threaded_offset,
        "threading_lag": (
            inbound_next - (threaded_offset or 0) if inbound_next is not None else None
        ),
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }


def cmd_point(args):
    record = sample(args.pid, args.data, args.url)
    if args.loadgen:
        record["chunk"] = json.loads(args.loadgen)
    if args.extra:
        record.update(json.loads(args.extra))
    if record["process_cpu_s"] is not None:
        record["cpu_s"] = args.cpu_base + record["process_cpu_s"]
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    if args.progress:
        print(progress_line(record), file=sys.stderr)


def progress_line(r):
    parts = [f"# {r.get('kind', 'point')} {r.get('point', '')}: {r.get('messages', 0):,} messages"]
    if "chunk" in r:
        parts.append(f"{r['chunk']['acknowledged_per_s']:,.0f} acked/s")
    if r["rss_kib"] is not None:
        parts.append(
            f"RSS {r['rss_kib'] / 1024:.1f} MiB (anon {(r.get('rss_anon_kib') or 0) / 1024:.1f}, "
            f"peak {r['hwm_kib'] / 1024:.1f})"
        )
    if r.get("threading_lag") is not None:
        parts.append(f"threading lag {r['threading_lag']:,}")
    parts.append(f"disk {r['disk_bytes'] / MIB:,.1f} MiB")
    parts.append(f"load {r['loadavg'][0]}")
    return ", ".join(parts)


WATCH_FIELDS = ("time", "pid", "rss_kib", "rss_anon_kib", "rss_file_kib")


def cmd_watch(args):
    new = not os.path.exists(args.out)
    with open(args.out, "a", newline="") as f:
        out = csv.writer(f)
        if new:
            out.writerow(WATCH_FIELDS)
        while True:
            status = proc_status(args.pid)
            if not status:
                return
            out.writerow((f"{time.time():.3f}", args.pid, status.get("VmRSS"),
                          status.get("RssAnon"), status.get("RssFile")))
            f.flush()
            time.sleep(args.every)


def load_watch(results):
    """The watcher's samples, oldest first (none when it did not run)."""
    path = os.path.join(results, "watch.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [
            {k: float(v) if k == "time" else int(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(f)
        ]


def watch_peaks(watch, points):
    """For each point, the highest watched VmRSS since the point before
    it (the first point: since the load started)."""
    peaks = []
    start = 0.0
    for p in points:
        inside = [w for w in watch if start < w["time"] <= p["time"] and "rss_kib" in w]
        peaks.append(max(inside, key=lambda w: w["rss_kib"]) if inside else None)
        start = p["time"]
    return peaks


def cmd_lag(args):
    """The threading lag alone, for the driver's waits."""
    topics, groups = log_state(os.path.join(args.data, "events.sqlite3"))
    inbound = next((t for t in topics if t.endswith("inbound.v1")), None)
    if inbound is None:
        print(0)
        return
    print(topics[inbound]["next_offset"] - groups.get(f"{THREADING_GROUP}/{inbound}", 0))


def cmd_get(args):
    """One field of a JSON object, for the driver (`get JSON a.b`)."""
    value = json.loads(args.json)
    for key in args.path.split("."):
        value = value[key]
    print(value if not isinstance(value, (dict, list)) else json.dumps(value))


# ---------------------------------------------------------------- report


def load(results):
    records = []
    with open(os.path.join(results, "points.jsonl")) as f:
        for line in f:
            if line.strip():
                records.append(json.loads(line))
    return records


def mib(kib_or_bytes, unit="kib"):
    if kib_or_bytes is None:
        return None
    return kib_or_bytes / 1024 if unit == "kib" else kib_or_bytes / MIB


def short_topic(name):
    # omni.inbound.v1 -> inbound
    parts = name.split(".")
    return parts[-2] if len(parts) >= 2 else name


def write_csv(results, points, restarts):
    files = sorted({f for p in points for f in p.get("files", {})})
    topics = sorted({t for p in points for t in p.get("log_topics", {})})
    cols = [
        "point", "messages", "elapsed_s", "chunk_acked", "chunk_s", "acked_per_s",
        "p50_ms", "p99_ms", "non_2xx", "rss_mib", "rss_anon_mib", "rss_file_mib", "hwm_mib", "cpu_s", "cpu_us_per_msg_interval",
        "loadgen_cpu_us_per_msg", "inbound_next_offset", "threaded_offset", "threading_lag",
        "threaded_per_s", "disk_mib",
    ]
    cols += [f"file:{f}" for f in files]
    cols += [f"topic_bytes:{t}" for t in topics]
    cols += [f"topic_bytes_metric:{t}" for t in topics]
    kinds = sorted({k for p in points for k in p.get("threading_state_rows", {})})
    cols += [f"threading_rows:{k}" for k in kinds]
    cols += ["timeline_published_since_start", "loadavg_1m"]
    with open(os.path.join(results, "points.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in points:
            c = p.get("chunk", {})
            row = [
                p["point"], p["messages"], round(p["elapsed_s"], 1), c.get("acknowledged"),
                c.get("duration_s"), c.get("acknowledged_per_s"),
                c.get("latency_ms", {}).get("p50"), c.get("latency_ms", {}).get("p99"),
                p.get("chunk_non_2xx"), r1(mib(p["rss_kib"])), r1(mib(p.get("rss_anon_kib"))),
                r1(mib(p.get("rss_file_kib"))), r1(mib(p["hwm_kib"])),
                r1(p["cpu_s"]), r1(p.get("cpu_us_per_msg_interval")),
                (c.get("cpu_us_per_msg") or {}).get("loadgen"),
                p.get("inbound_next_offset"), p.get("threaded_offset"), p.get("threading_lag"),
                r1(p.get("threaded_per_s")), r1(mib(p["disk_bytes"], "b")),
            ]
            row += [p.get("files", {}).get(name) for name in files]
            row += [p.get("log_topics", {}).get(t, {}).get("bytes") for t in topics]
            row += [p.get("topic_bytes_metric", {}).get(t) for t in topics]
            row += [p.get("threading_state_rows", {}).get(k) for k in kinds]
            row += [p.get("timeline_published"), p["loadavg"][0]]
            w.writerow(row)
    cols = [
        "after_point", "messages", "lag_before", "shutdown_s", "ready_s", "threading_s",
        "threading_probe", "rss_before_mib", "rss_at_ready_mib", "rss_at_threading_mib",
        "disk_mib",
    ]
    with open(os.path.join(results, "restarts.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in restarts:
            w.writerow([
                r["after_point"], r["messages"], r.get("lag_before"), r["shutdown_s"],
                r["ready_s"], r.get("threading_s"), r.get("threading_probe"),
                r1(mib(r.get("rss_before_kib"))), r1(mib(r.get("rss_at_ready_kib"))),
                r1(mib(r.get("rss_at_threading_kib"))), r1(mib(r["disk_bytes"], "b")),
            ])


def r1(x):
    return None if x is None else round(x, 1)


def derive(records, load_start):
    """Per-interval figures of each point: the daemon's CPU per message
    and the threading rate since the previous sample, a point or the end
    of a restart (so a restart's downtime is not in the interval; each
    process's CPU is read just before it is stopped)."""
    prev = None
    for r in records:
        if r["kind"] not in ("point", "restart"):
            continue
        if r["kind"] == "point":
            base_m = prev["messages"] if prev else 0
            base_cpu = prev["cpu_s"] if prev else 0.0
            base_t = prev["time"] if prev else load_start
            base_off = (prev.get("threaded_offset") or 0) if prev else 0
            dm = r["messages"] - base_m
            r["cpu_us_per_msg_interval"] = (r["cpu_s"] - base_cpu) * 1e6 / dm if dm > 0 else None
            if r.get("threaded_offset") is not None and base_t:
                r["threaded_per_s"] = (r["threaded_offset"] - base_off) / (r["time"] - base_t)
        prev = r


def summarize(records, watch=()):
    meta = next((r for r in records if r["kind"] == "meta"), {})
    end = next((r for r in records if r["kind"] == "end"), {})
    compare = [r for r in records if r["kind"] == "compare"]
    points = [r for r in records if r["kind"] == "point"]
    restarts = [r for r in records if r["kind"] == "restart"]
    drain = next((r for r in records if r["kind"] == "drain"), None)
    derive(records, meta.get("load_start_time"))
    s = {"meta": meta, "end": end}
    if points:
        last = points[-1]
        n = last["messages"]
        s["messages"] = n
        s["points"] = len(points)
        s["final_rss_mib"] = r1(mib(last["rss_kib"]))
        s["max_rss_mib"] = r1(max(mib(p["hwm_kib"]) for p in points))
        half = [p for p in points if p["messages"] >= n / 2]
        s["last_half_rss_mib"] = {
            "min": r1(min(mib(p["rss_kib"]) for p in half)),
            "max": r1(max(mib(p["rss_kib"]) for p in half)),
        }
        anon = [mib(p.get("rss_anon_kib")) for p in points if p.get("rss_anon_kib") is not None]
        if anon:
            s["final_rss_anon_mib"] = r1(mib(last.get("rss_anon_kib")))
            s["max_rss_anon_mib"] = r1(max(anon))
            s["last_half_rss_anon_mib"] = {
                "min": r1(min(mib(p["rss_anon_kib"]) for p in half)),
                "max": r1(max(mib(p["rss_anon_kib"]) for p in half)),
            }
        s["final_threading_state_rows"] = last.get("threading_state_rows")
        load_s = sum(p["chunk"]["duration_s"] for p in points if "chunk" in p)
        acked = sum(p["chunk"]["acknowledged"] for p in points if "chunk" in p)
        s["load_seconds"] = r1(load_s)
        s["avg_acked_per_s"] = r1(acked / load_s) if load_s else None
        rates = [p["chunk"]["acknowledged_per_s"] for p in points if "chunk" in p]
        s["chunk_acked_per_s"] = {"min": min(rates), "max": max(rates)}
        s["non_2xx"] = sum(p.get("chunk_non_2xx", 0) for p in points)
        s["cpu_s"] = r1(last["cpu_s"])
        s["cpu_us_per_msg"] = r1(last["cpu_s"] * 1e6 / n) if n else None
        lg = [(p["chunk"].get("cpu_us_per_msg") or {}).get("loadgen") for p in points if "chunk" in p]
        lg = [x for x in lg if x is not None]
        s["loadgen_cpu_us_per_msg"] = r1(sum(lg) / len(lg)) if lg else None
        s["final_disk"] = {
            "files_mib": {k: r1(mib(v, "b")) for k, v in last["files"].items()},
            "total_mib": r1(mib(last["disk_bytes"], "b")),
            "max_total_mib": r1(max(mib(p["disk_bytes"], "b") for p in points)),
            "topics_mib": {k: r1(mib(v["bytes"], "b")) for k, v in last["log_topics"].items()},
            "topic_records": {k: v["records"] for k, v in last["log_topics"].items()},
        }
        tps = [p["threaded_per_s"] for p in points if p.get("threaded_per_s") is not None]
        s["threading"] = {
            "final_lag": last.get("threading_lag"),
            "max_lag": max((p.get("threading_lag") or 0) for p in points),
            "threaded_offset": last.get("threaded_offset"),
            "threaded_per_s": {
                "min": r1(min(tps)) if tps else None,
                "max": r1(max(tps)) if tps else None,
            },
        }
    if watch:
        top = max((w for w in watch if "rss_kib" in w), key=lambda w: w["rss_kib"])
        s["watched"] = {
            "samples": len(watch),
            "max_rss_mib": r1(mib(top["rss_kib"])),
            "anon_at_max_mib": r1(mib(top.get("rss_anon_kib"))),
            "file_at_max_mib": r1(mib(top.get("rss_file_kib"))),
            "max_at_s": r1(top["time"] - meta["load_start_time"]) if meta.get("load_start_time") else None,
            "max_anon_mib": r1(max(mib(w.get("rss_anon_kib", 0)) for w in watch)),
            "max_file_mib": r1(max(mib(w.get("rss_file_kib", 0)) for w in watch)),
            "over_target_samples": sum(1 for w in watch if mib(w.get("rss_kib", 0)) > RSS_TARGET_MIB),
        }
    if restarts:
        s["restarts"] = [
            {
                "messages": r["messages"],
                "ready_s": r["ready_s"],
                "threading_s": r.get("threading_s"),
                "shutdown_s": r["shutdown_s"],
                "lag_before": r.get("lag_before"),
                "rss_at_ready_mib": r1(mib(r.get("rss_at_ready_kib"))),
                "rss_at_threading_mib": r1(mib(r.get("rss_at_threading_kib"))),
            }
            for r in restarts
        ]
    if drain:
        s["drain"] = {k: drain.get(k) for k in ("seconds", "caught_up", "lag_at_start", "lag_at_end", "threaded_per_s")}
        s["drain"]["rss_mib"] = r1(mib(drain.get("rss_kib")))
        s["drain"]["topic_records"] = {k: v["records"] for k, v in drain.get("log_topics", {}).items()}
    if compare:
        s["compare"] = {
            r["threading"]: {
                "acked_per_s": r["result"]["acknowledged_per_s"],
                "daemon_cpu_us_per_msg": (r["result"].get("cpu_us_per_msg") or {}).get("daemon"),
                "p99_ms": r["result"]["latency_ms"]["p99"],
                "statuses": r["result"]["statuses"],
            }
            for r in compare
        }
        on, off = s["compare"].get("on"), s["compare"].get("off")
        if on and off and off["acked_per_s"]:
            s["compare"]["short_on_vs_off"] = round(on["acked_per_s"] / off["acked_per_s"], 3)
            if s.get("avg_acked_per_s") and not meta.get("rate"):
                s["compare"]["soak_avg_vs_off"] = round(s["avg_acked_per_s"] / off["acked_per_s"], 3)
    return s, points, restarts, compare, drain


def text_summary(s):
    m, e = s.get("meta", {}), s.get("end", {})
    out = []
    p = out.append
    p(f"soak: {s.get('messages', 0):,} messages acknowledged in {s.get('points', 0)} chunks "
      f"({m.get('mode')}, {m.get('connections')} connections), results in {m.get('out')}")
    p(f"commit {m.get('commit')}, {m.get('cores')} cores; load average at start {m.get('loadavg_start')}, "
      f"at end {e.get('loadavg_end')}")
    ret = m.get("retention") or {}
    if ret:
        p("retention (defaults, from the daemon's log): " + "; ".join(
            f"{short_topic(t)} max_age {fmt_secs(v.get('max_age_secs'))}, max_bytes {fmt_bytes(v.get('max_bytes'))}"
            for t, v in sorted(ret.items())) + f"; check_interval_secs {m.get('retention_check_interval_secs', '?')}")
    if "final_rss_mib" in s:
        p(f"RSS: final {s['final_rss_mib']} MiB, max (VmHWM) {s['max_rss_mib']} MiB, "
          f"last half {s['last_half_rss_mib']['min']}-{s['last_half_rss_mib']['max']} MiB "
          f"(target {RSS_TARGET_MIB} MiB)")
        if "final_rss_anon_mib" in s:
            p(f"  of which anonymous (heap): final {s['final_rss_anon_mib']} MiB, max at the points "
              f"{s['max_rss_anon_mib']} MiB, last half {s['last_half_rss_anon_mib']['min']}-"
              f"{s['last_half_rss_anon_mib']['max']} MiB; the rest is mapped file pages")
        if s.get("watched"):
            w = s["watched"]
            p(f"  watched every 0.2 s ({w['samples']:,} samples): highest VmRSS {w['max_rss_mib']} MiB "
              f"({w['anon_at_max_mib']} anonymous, {w['file_at_max_mib']} file) {w['max_at_s']} s into the load; "
              f"highest anonymous {w['max_anon_mib']} MiB, file {w['max_file_mib']} MiB; "
              f"{w['over_target_samples']} samples over {RSS_TARGET_MIB} MiB")
        if s.get("final_threading_state_rows"):
            p("  threading store in memory at the end: " + ", ".join(
                f"{k} {int(v):,}" for k, v in sorted(s["final_threading_state_rows"].items())))
        p(f"throughput, threading on: {s['avg_acked_per_s']:,} acked/s on average over {s['load_seconds']} s "
          f"of load (chunks {s['chunk_acked_per_s']['min']:,}-{s['chunk_acked_per_s']['max']:,}/s); "
          f"non-2xx answers: {s['non_2xx']}")
        p(f"CPU: daemon {s['cpu_s']} s = {s['cpu_us_per_msg']} µs per message (ingest + threading + relay); "
          f"load generator ~{s['loadgen_cpu_us_per_msg']} µs per message")
        t = s["threading"]
        p(f"threading: {t['threaded_offset']:,} of {s['messages']:,} inbound records threaded when the "
          f"load ended; lag at the points: final {t['final_lag']:,}, max {t['max_lag']:,} records; "
          f"threaded per interval {t['threaded_per_s']['min']:,}-{t['threaded_per_s']['max']:,}/s")
        d = s["final_disk"]
        big = {k: v for k, v in d["files_mib"].items() if v >= 0.1}
        rest = sum(v for k, v in d["files_mib"].items() if v < 0.1)
        p(f"disk: {d['total_mib']} MiB at the end (max {d['max_total_mib']} MiB): " + ", ".join(
            f"{k} {v}" for k, v in big.items()) + f" MiB, other files {rest:.1f} MiB")
        p("topics (log's own size): " + ", ".join(
            f"{short_topic(k)} {v} MiB / {d['topic_records'][k]:,} records" for k, v in d["topics_mib"].items()))
    for r in s.get("restarts", []):
        p(f"restart at {r['messages']:,}: /readyz 200 after {r['ready_s']} s, threading running after "
          f"{r['threading_s']} s (stop took {r['shutdown_s']} s; lag before {r['lag_before']:,}); "
          f"RSS {r['rss_at_ready_mib']} MiB at ready, {r['rss_at_threading_mib']} MiB when threading ran")
    if "drain" in s:
        d = s["drain"]
        p(f"drain after the load: {'caught up' if d['caught_up'] else 'NOT caught up'} in {d['seconds']} s "
          f"(lag {d['lag_at_start']:,} -> {d['lag_at_end']:,}, {d['threaded_per_s']} threaded/s), RSS {d['rss_mib']} MiB; "
          "records then: " + ", ".join(f"{short_topic(k)} {v:,}" for k, v in d["topic_records"].items()))
    c = s.get("compare")
    if c:
        for k in ("off", "on"):
            if k in c:
                p(f"short fresh run, threading {k}: {c[k]['acked_per_s']:,} acked/s, daemon "
                  f"{c[k]['daemon_cpu_us_per_msg']} µs CPU/msg, p99 {c[k]['p99_ms']} ms, statuses {c[k]['statuses']}")
        if "short_on_vs_off" in c:
            soak_vs = c.get("soak_avg_vs_off")
            p(f"ingest with threading on vs off: {c['short_on_vs_off']:.0%} (short closed-loop runs)"
              + (f", soak average {soak_vs:.0%} of the short off run" if soak_vs else "")
              + " (target >= 80%)")
    return "\n".join(out)


def fmt_secs(v):
    if not v:
        return "none"
    return f"{v / 86400:g} d" if v % 86400 == 0 else f"{v} s"


def fmt_bytes(v):
    if not v:
        return "none"
    return f"{v / 2**30:g} GiB" if v >= 2**30 else f"{v / MIB:g} MiB"


def plot(results, s, points, restarts, compare, watch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    millions = FuncFormatter(
        lambda x, _: "0" if x == 0 else f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k"
    )
    xs = [p["messages"] for p in points]
    restart_x = [r["messages"] for r in restarts]
    m = s.get("meta", {})
    title_tail = f"{m.get('mode', '')}, {m.get('connections', '')} conns, load avg {m.get('loadavg_start', ['?'])[0]}"

    def mark_restarts(ax):
        for i, x in enumerate(restart_x):
            ax.axvline(x, color="grey", ls=":", lw=1, label="restart" if i == 0 else None)

    def rss(ax):
        ax.plot(xs, [mib(p["rss_kib"]) for p in points], "o-", ms=3, label="VmRSS")
        ax.plot(xs, [mib(p["hwm_kib"]) for p in points], "--", color="tab:orange", label="VmHWM (peak)")
        if watch:
            peaks = watch_peaks(watch, points)
            ax.plot(xs, [mib(w["rss_kib"]) if w else None for w in peaks], "x", ms=5,
                    color="tab:red", label="highest VmRSS since the point before (every 0.2 s)")
        if any(p.get("rss_anon_kib") for p in points):
            ax.plot(xs, [mib(p.get("rss_anon_kib")) for p in points], "^-", ms=3, color="tab:cyan",
                    label="RssAnon (heap)")
        if restarts:
            ax.plot(restart_x, [mib(r.get("rss_at_ready_kib")) for r in restarts], "v",
                    color="tab:green", label="right after restart (/readyz 200)")
        ax.axhline(RSS_TARGET_MIB, color="red", lw=1, label=f"target {RSS_TARGET_MIB} MiB")
        mark_restarts(ax)
        top = max([RSS_TARGET_MIB] + [mib(p["hwm_kib"]) or 0 for p in points])
        ax.set_ylim(0, top * 1.15)
        ax.set_ylabel("MiB")
        ax.set_title("omnid resident memory")
        ax.legend(fontsize=7, loc="lower right")

    def throughput(ax):
        ax.plot(xs, [p["chunk"]["acknowledged_per_s"] for p in points], "o-", ms=3,
                label="ingest (acked/s, threading on)")
        tps = [p.get("threaded_per_s") for p in points]
        ax.plot(xs, tps, "s-", ms=3, color="tab:purple", label="threaded/s")
        off = next((c for c in compare if c["threading"] == "off"), None)
        if off:
            ax.axhline(off["result"]["acknowledged_per_s"], color="tab:gray", ls="--", lw=1,
                       label="short run, threading off")
            ax.axhline(0.8 * off["result"]["acknowledged_per_s"], color="red", ls=":", lw=1,
                       label="80% of threading off")
        mark_restarts(ax)
        # Headroom above the lines for the legend.
        ax.set_ylim(0, ax.get_ylim()[1] * 1.45)
        ax.set_ylabel("messages/s")
        ax.set_title("throughput per chunk")
        handles, labels = ax.get_legend_handles_labels()
        lag = [p.get("threading_lag") for p in points]
        if any(lag):
            ax2 = ax.twinx()
            (line,) = ax2.plot(xs, lag, "--", color="tab:brown", lw=1.5,
                               label="threading lag (records, right axis)")
            handles.append(line)
            labels.append(line.get_label())
            ax2.set_ylabel("threading lag (inbound records not yet threaded)", color="tab:brown",
                           fontsize=8)
            ax2.yaxis.set_major_formatter(millions)
            ax2.set_ylim(0, max(l or 0 for l in lag) * 1.45)
            ax2.tick_params(labelsize=7, colors="tab:brown")
        ax.legend(handles, labels, fontsize=7, loc="upper left", ncol=2)

    def disk(ax):
        files = sorted({f for p in points for f in p["files"]},
                       key=lambda f: -max(p["files"].get(f, 0) for p in points))
        for name in files:
            ys = [mib(p["files"].get(name, 0), "b") for p in points]
            if max(ys) < 1:
                continue
            ax.plot(xs, ys, "-", label=name)
        topics = sorted({t for p in points for t in p.get("log_topics", {})})
        for t in topics:
            ys = [mib(p["log_topics"].get(t, {}).get("bytes", 0), "b") for p in points]
            if max(ys) >= 1:
                ax.plot(xs, ys, "--", lw=1, label=f"topic {short_topic(t)} (its records' bytes)")
        ax.plot(xs, [mib(p["disk_bytes"], "b") for p in points], "k-", lw=2, label="data dir total")
        mark_restarts(ax)
        ax.set_ylabel("MiB")
        ax.set_ylim(bottom=0)
        ax.set_title("disk")
        ax.legend(fontsize=6, loc="upper left")

    def restart_bars(ax):
        if not restarts:
            ax.text(0.5, 0.5, "no restarts", ha="center", transform=ax.transAxes)
            return
        labels = [
            (f"{r['messages'] / 1e6:.2f}M" if r["messages"] >= 1e6 else f"{r['messages'] / 1e3:.0f}k")
            + f"\nstop took {r['shutdown_s']:.1f} s"
            for r in restarts
        ]
        idx = range(len(restarts))
        w = 0.38
        ax.bar([i - w / 2 for i in idx], [r["ready_s"] for r in restarts], w, label="/readyz 200")
        ax.bar([i + w / 2 for i in idx], [r.get("threading_s") or 0 for r in restarts], w,
               label="threading running")
        for i, r in enumerate(restarts):
            ax.annotate(f"{r['ready_s']:.2f}", (i - w / 2, r["ready_s"]), ha="center", va="bottom", fontsize=7)
            if r.get("threading_s") is not None:
                ax.annotate(f"{r['threading_s']:.2f}", (i + w / 2, r["threading_s"]), ha="center",
                            va="bottom", fontsize=7)
        ax.set_xticks(list(idx), labels)
        ax.set_xlabel("restart after messages")
        ax.set_ylabel("seconds from start")
        ax.set_title("restart: SIGTERM'd, started again; time to ready")
        ax.legend(fontsize=7)

    panels = {"rss": rss, "throughput": throughput, "disk": disk, "restarts": restart_bars}
    for name, draw in panels.items():
        fig, ax = plt.subplots(figsize=(7, 4.2))
        draw(ax)
        if name != "restarts":
            ax.set_xlabel("messages acknowledged")
            ax.xaxis.set_major_formatter(millions)
        ax.grid(alpha=0.3)
        fig.suptitle(f"soak, {title_tail}", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(results, f"{name}.png"), dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    for (name, draw), ax in zip(panels.items(), axes.flat):
        draw(ax)
        if name != "restarts":
            ax.set_xlabel("messages acknowledged")
            ax.xaxis.set_major_formatter(millions)
        ax.grid(alpha=0.3)
    fig.suptitle(f"omnid soak: {s.get('messages', 0):,} messages, embedded SQLite log, threading on "
                 f"({title_tail})", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(results, "soak.png"), dpi=100)
    plt.close(fig)


def cmd_report(args):
    records = load(args.dir)
    watch = load_watch(args.dir)
    s, points, restarts, compare, _drain = summarize(records, watch)
    write_csv(args.dir, points, restarts)
    with open(os.path.join(args.dir, "summary.json"), "w") as f:
        json.dump(s, f, indent=2)
    text = text_summary(s)
    with open(os.path.join(args.dir, "summary.txt"), "w") as f:
        f.write(text + "\n")
    if points and not args.no_plots:
        plot(args.dir, s, points, restarts, compare, watch)
    print(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("watch", help="append the daemon's RSS to a CSV until it exits")
    w.add_argument("--out", required=True)
    w.add_argument("--pid", required=True, type=int)
    w.add_argument("--every", type=float, default=0.2)
    w.set_defaults(func=cmd_watch)
    p = sub.add_parser("point", help="sample the daemon and append one JSON line")
    p.add_argument("--out", required=True)
    p.add_argument("--pid", required=True, type=int)
    p.add_argument("--data", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--loadgen")
    p.add_argument("--extra")
    p.add_argument("--cpu-base", type=float, default=0.0,
                   help="CPU seconds of the daemon's earlier processes (before restarts)")
    p.add_argument("--progress", action="store_true", help="print a line to stderr")
    p.set_defaults(func=cmd_point)
    l = sub.add_parser("lag", help="print the threading lag (records)")
    l.add_argument("--data", required=True)
    l.set_defaults(func=cmd_lag)
    g = sub.add_parser("get", help="print one field of a JSON object")
    g.add_argument("json")
    g.add_argument("path")
    g.set_defaults(func=cmd_get)
    r = sub.add_parser("report", help="CSV, summary and PNGs from points.jsonl")
    r.add_argument("--dir", required=True)
    r.add_argument("--no-plots", action="store_true")
    r.set_defaults(func=cmd_report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
