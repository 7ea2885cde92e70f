"""Draws scripts/bench-engines' lines: the rate, CPU per event, bytes written per
event and resident memory, each against the events stored so far.

    python scripts/engines.py engines.jsonl engines.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(source, target):
    runs = {}
    for line in open(source):
        point = json.loads(line)
        if "interval_cpu_us_per_event" in point:
            runs.setdefault(point["engine"], []).append(point)
    fig, ((rate, cpu), (written, rss)) = plt.subplots(2, 2, figsize=(12, 8))
    for engine, points in runs.items():
        millions = [p["events"] / 1e6 for p in points]
        rate.plot(millions, [p["interval_events_per_s"] / 1000 for p in points], marker="o", label=engine)
        cpu.plot(millions, [p["interval_cpu_us_per_event"] for p in points], marker="o", label=engine)
        previous = [(0, 0)] + [(p["events"], p["written_bytes"]) for p in points]
        per_event = [
            (b - pb) / 1024 / (e - pe) for (pe, pb), (e, b) in zip(previous, previous[1:])
        ]
        written.plot(millions, per_event, marker="o", label=engine)
        rss.plot(millions, [p["rss_bytes"] / 2**20 for p in points], marker="o", label=engine)
    rate.set(title="Events per second (since the last point)", xlabel="events stored (millions)", ylabel="thousands")
    cpu.set(title="CPU per event (since the last point)", xlabel="events stored (millions)", ylabel="µs")
    written.set(title="Bytes written per event", xlabel="events stored (millions)", ylabel="KiB")
    rss.set(title="Resident memory", xlabel="events stored (millions)", ylabel="MiB")
    for ax in (rate, cpu, written, rss):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(target, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:3])
