#!/usr/bin/env python3
"""Reads Omnid's conversation event stream from Kafka and prints each event.

A minimal at-least-once consumer: it joins a consumer group, decodes each
record by its `content-type` header, dispatches by its CloudEvents `ce_type`,
drops duplicates by `ce_id`, and commits offsets only after handling.

    ./generate.sh                  # the protobuf modules, into ./gen
    python3 consumer.py --brokers 127.0.0.1:9092 --group my-helpdesk
"""

import argparse
import collections
import json
import pathlib
import signal
import sys

from confluent_kafka import Consumer, KafkaException
from google.protobuf import json_format

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "gen"))
from omni.v1 import common_pb2, deadletter_pb2, event_pb2, timeline_pb2  # noqa: E402


class SeenIds:
    """The last `capacity` event ids, least recently seen evicted first.

    Enough for a demo and for redeliveries within one run (a rebalance, a
    provider's retry); it is empty after a restart. A production consumer
    deduplicates in its own store, in the same transaction as its side
    effects (e.g. a unique key on the event id).
    """

    def __init__(self, capacity=100_000):
        self.capacity, self.ids = capacity, collections.OrderedDict()

    def __contains__(self, event_id):
        if event_id in self.ids:
            self.ids.move_to_end(event_id)
            return True
        return False

    def add(self, event_id):
        self.ids[event_id] = None
        if len(self.ids) > self.capacity:
            self.ids.popitem(last=False)


def handle_name(handle):
    """`email:ana@example.com`, like the record key (which is opaque)."""
    known = common_pb2.HandleKind.DESCRIPTOR.values_by_number.get(handle.kind)
    # A kind added to the schema after this code was generated: its number.
    kind = known.name.removeprefix("HANDLE_KIND_").lower() if known else str(handle.kind)
    return ":".join(p for p in (kind, handle.scope, handle.value) if p)


def on_conversation_event(event_id, event):
    text = json.dumps(event.content.text, ensure_ascii=False)
    print(event_id, event.channel_id, handle_name(event.sender), text, flush=True)


def on_dead_letter(event_id, dead_letter):
    print(event_id, dead_letter.channel_id, "dead letter:", dead_letter.reason, flush=True)


def on_timeline_event(event_id, entry):
    print(event_id, entry.customer_id, entry.sequence, entry.WhichOneof("entry"), flush=True)


# ce_type -> (payload message type, handler). Other types are skipped, so
# types added later in v1 do not break this consumer.
HANDLERS = {
    "dev.omnid.conversation_event.v1": (event_pb2.ConversationEvent, on_conversation_event),
    "dev.omnid.dead_letter.v1": (deadletter_pb2.DeadLetter, on_dead_letter),
    "dev.omnid.timeline_event.v1": (timeline_pb2.TimelineEvent, on_timeline_event),
}


def decode(content_type, value, message_type):
    if content_type == "application/protobuf":
        return message_type.FromString(value)
    if content_type == "application/json":
        # Fields added later in v1 must not break old consumers.
        return json_format.Parse(value, message_type(), ignore_unknown_fields=True)
    raise ValueError(f"unsupported content-type {content_type!r}")


def handle(record, seen):
    headers = {k.lower(): v.decode() for k, v in record.headers() or []}
    event_id, ce_type = headers.get("ce_id"), headers.get("ce_type")
    if ce_type not in HANDLERS:
        print(f"skipping {record.topic()}@{record.offset()}: ce_type {ce_type!r}", file=sys.stderr)
        return
    if event_id in seen:
        return  # a redelivery: handled already
    message_type, handler = HANDLERS[ce_type]
    # An undecodable record raises: the consumer stops without committing
    # it, rather than skip an event silently.
    handler(event_id, decode(headers.get("content-type"), record.value(), message_type))
    seen.add(event_id)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", default="127.0.0.1:9092")
    parser.add_argument("--group", default="omnid-example")
    parser.add_argument("--topic", action="append", help="default: omni.inbound.v1")
    args = parser.parse_args()

    consumer = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": args.group,
        "auto.offset.reset": "earliest",  # a new group starts at the beginning
        "enable.auto.commit": False,  # we commit after handling
    })
    consumer.subscribe(args.topic or ["omni.inbound.v1"])

    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)

    seen = SeenIds()
    try:
        while not stopping:
            handled = 0
            for record in consumer.consume(num_messages=500, timeout=1.0):
                if record.error():  # e.g. the topic does not exist yet
                    if record.error().fatal():
                        raise KafkaException(record.error())
                    print(f"kafka: {record.error()}", file=sys.stderr)
                    continue
                handle(record, seen)
                handled += 1
            if handled:
                # Every record consumed so far is handled: commit their
                # offsets. A crash before this line means redelivery.
                consumer.commit(asynchronous=False)
    finally:
        consumer.close()  # leaves the group at once, so a rebalance is quick


if __name__ == "__main__":
    main()
