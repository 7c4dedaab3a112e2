"""An exactly-once consume-transform-produce pipeline, run as its own process
by test_eos.py (which kills it with SIGKILL at random points).

    python eos_pipeline.py BOOTSTRAP INPUT OUTPUT GROUP TRANSACTIONAL_ID PARTITIONS

It reads INPUT's partitions by assignment from the group's committed offsets
(read_committed), writes each record to OUTPUT as `out-<value>` with the same
key and partition, and commits the consumed offsets in the same transaction.
It prints `ready` once its transactional id is initialised (which fences and
aborts any earlier instance's open transaction) and `committed N` after each
transaction of N records.
"""

import sys

from confluent_kafka import Consumer, Producer, TopicPartition

BATCH = 500
TIMEOUT_S = 30


def main(bootstrap, in_topic, out_topic, group, transactional_id, partitions):
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id, "linger.ms": 5})
    # First: fences the previous instance and aborts its open transaction, so
    # the offsets read below are the last committed ones.
    producer.init_transactions(TIMEOUT_S)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(in_topic, p) for p in range(partitions)])
    print("ready", flush=True)
    while True:
        records = [m for m in consumer.consume(BATCH, 0.5) if not m.error()]
        if not records:
            continue
        producer.begin_transaction()
        for m in records:
            producer.produce(out_topic, key=m.key(), value=b"out-" + m.value(), partition=m.partition())
        producer.send_offsets_to_transaction(consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), TIMEOUT_S)
        producer.commit_transaction(TIMEOUT_S)
        print(f"committed {len(records)}", flush=True)


if __name__ == "__main__":
    bootstrap, in_topic, out_topic, group, transactional_id, partitions = sys.argv[1:]
    main(bootstrap, in_topic, out_topic, group, transactional_id, int(partitions))
