"""Topic and broker configs with both admin clients: DescribeConfigs (sources,
synonyms, documentation), IncrementalAlterConfigs, the legacy AlterConfigs,
dynamic broker configs, and configs surviving a restart.

The module's broker has two static properties: `log.retention.hours=100` (a
topic's `retention.ms` becomes 360,000,000) and `log.segment.bytes=536870912`.
Tests that change broker-wide configs start a broker of their own.

Two client limits shape the checks. confluent-kafka returns synonyms as a dict
keyed by name, so two layers of one property collapse into one entry (the
later one wins); the full chain, in order, is read with kafka-python. Neither
client can name the cluster-default broker resource `""` (librdkafka refuses
an empty name, kafka-python wants an integer), so those requests are sent raw
through kafka-python's connection manager.

In the cluster pass each node applies a topic's creation and config changes
from the metadata log after the client's answer, and clients ask any node: the
describe helpers first wait until every node describes the topic alike
(`settle`); against one broker that holds at once.
"""

import kafka.errors as kerr
import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewTopic
from kafka import KafkaProducer
from kafka.admin import AlterConfigOp, ConfigResourceType, KafkaAdminClient
from kafka.admin import ConfigResource as KConfigResource
from kafka.protocol.admin import AlterConfigsRequest, DescribeConfigsRequest, IncrementalAlterConfigsRequest

from clients import confluent_error
from conftest import CLUSTER_NODES, NODE_IDS, REPLICATION_FACTOR, module_broker, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")

STATIC = ("log.retention.hours=100", "log.segment.bytes=536870912")
broker = module_broker(*STATIC)

RETENTION_MS_FROM_HOURS = str(100 * 3_600_000)
SEGMENT_BYTES_STATIC = "536870912"
SEGMENT_BYTES_DEFAULT = "1073741824"

TOPIC, BROKER = 2, 4  # ConfigResource types on the wire
SET, DELETE, APPEND, SUBTRACT = (AlterConfigOpType.SET, AlterConfigOpType.DELETE, AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT)

# Source codes as confluent-kafka reports them (ints) ...
TOPIC_CONFIG = ConfigSource.DYNAMIC_TOPIC_CONFIG.value
BROKER_CONFIG = ConfigSource.DYNAMIC_BROKER_CONFIG.value
DEFAULT_BROKER_CONFIG = ConfigSource.DYNAMIC_DEFAULT_BROKER_CONFIG.value
STATIC_CONFIG = ConfigSource.STATIC_BROKER_CONFIG.value
DEFAULT_CONFIG = ConfigSource.DEFAULT_CONFIG.value
# ... and by name, as kafka-python does.
NAMES = {
    TOPIC_CONFIG: "DYNAMIC_TOPIC_CONFIG",
    BROKER_CONFIG: "DYNAMIC_BROKER_CONFIG",
    DEFAULT_BROKER_CONFIG: "DYNAMIC_DEFAULT_BROKER_CONFIG",
    STATIC_CONFIG: "STATIC_BROKER_CONFIG",
    DEFAULT_CONFIG: "DEFAULT_CONFIG",
}

# The topic configs `kafka-configs --describe --all` lists for every Kafka topic.
KAFKA_TOPIC_CONFIGS = {
    "cleanup.policy",
    "compression.type",
    "compression.gzip.level",
    "compression.lz4.level",
    "compression.zstd.level",
    "delete.retention.ms",
    "file.delete.delay.ms",
    "flush.messages",
    "flush.ms",
    "index.interval.bytes",
    "max.compaction.lag.ms",
    "max.message.bytes",
    "message.timestamp.type",
    "message.timestamp.before.max.ms",
    "message.timestamp.after.max.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "min.insync.replicas",
    "preallocate",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.index.bytes",
    "segment.jitter.ms",
    "segment.ms",
    "unclean.leader.election.enable",
}


# ---------------------------------------------------------------- helpers

# The cluster pass's kafka-python admin client that asks each node (see settle).
_SETTLER = []


@pytest.fixture(scope="module", autouse=True)
def settler(request):
    if not CLUSTER_NODES:
        yield
        return
    client = KafkaAdminClient(bootstrap_servers=request.getfixturevalue("broker").bootstrap)
    _SETTLER.append(client)
    try:
        yield
    finally:
        _SETTLER.clear()
        client.close()


def settle(resource_type, name):
    """In the cluster pass, waits until every node answers DescribeConfigs of a topic alike (each node
    applies a creation or a change after the client's answer). A broker resource is its own node's."""
    if not CLUSTER_NODES or resource_type != "topic":
        return
    (kadmin,) = _SETTLER
    request = DescribeConfigsRequest(resources=[(TOPIC, name, None)], include_synonyms=True, include_documentation=False)
    answers = {}

    def agree():
        for node in NODE_IDS:

            async def send(node=node):
                return await kadmin._manager.send(request, node_id=node)

            (result,) = kadmin._manager.run(send).results
            answers[node] = (result.error_code, sorted(repr(c) for c in result.configs))
        return all(a == answers[NODE_IDS[0]] for a in answers.values())

    assert wait_until(agree, 30), f"the nodes describe topic {name} differently after 30 s: {answers}"


def create_topic(admin, topic, configs=None, partitions=1):
    admin.create_topics([NewTopic(topic, partitions, REPLICATION_FACTOR, config=configs or {})])[topic].result(30)
    settle("topic", topic)


def describe(admin, resource_type, name):
    """confluent-kafka: {config name: ConfigEntry} of one resource."""
    settle(resource_type, name)
    (future,) = admin.describe_configs([ConfigResource(resource_type, name)]).values()
    return future.result(30)


def kdescribe(kadmin, resource_type, name, config_filter="all"):
    """kafka-python, with synonyms: {config name: {value, config_source, synonyms, ...}}."""
    settle(resource_type, name)
    resource = KConfigResource(ConfigResourceType[resource_type.upper()], name)
    described = kadmin.describe_configs([resource], include_synonyms=True, config_filter=config_filter)
    return described[resource_type][name]


def value_and_source(admin, kadmin, resource_type, name, config):
    """The (value, source code) both clients report; fails if they disagree."""
    entry = describe(admin, resource_type, name)[config]
    kentry = kdescribe(kadmin, resource_type, name)[config]
    assert (kentry["value"], kentry["config_source"]) == (entry.value, NAMES[entry.source]), f"{config}: the clients disagree"
    return entry.value, entry.source


def chain(kentry):
    """A kafka-python entry's synonyms as [(name, value, source name)], most specific first."""
    return [(s["name"], s["value"], s["source"]) for s in kentry["synonyms"]]


def incremental(admin, resource_type, name, *ops):
    """confluent-kafka IncrementalAlterConfigs of one resource: None, or (error code, message)."""
    entries = [ConfigEntry(config, value, incremental_operation=op) for config, op, value in ops]
    (future,) = admin.incremental_alter_configs([ConfigResource(resource_type, name, incremental_configs=entries)]).values()
    try:
        future.result(30)
    except KafkaException as e:
        return e.args[0].code(), e.args[0].str()
    return None


def kafka_python_request(kadmin, request):
    """Sends one request to the broker through kafka-python's connection manager.

    For what neither client's API can express: the cluster-default broker
    resource "", the legacy AlterConfigs without kafka-python's client-side
    merge, DescribeConfigs with documentation.
    """

    async def send():
        return await kadmin._manager.send(request)

    return kadmin._manager.run(send)


def raw_incremental(kadmin, resource_type, name, *ops):
    """kafka-python IncrementalAlterConfigs, raw: (error code, message)."""
    wire = [(config, op.value, value) for config, op, value in ops]
    response = kafka_python_request(kadmin, IncrementalAlterConfigsRequest(resources=[(resource_type, name, wire)], validate_only=False))
    (result,) = response.responses
    return result.error_code, result.error_message


def raw_describe(kadmin, resource_type, name, keys=None, documentation=False):
    settle({TOPIC: "topic"}.get(resource_type), name)
    response = kafka_python_request(
        kadmin, DescribeConfigsRequest(resources=[(resource_type, name, keys)], include_synonyms=True, include_documentation=documentation)
    )
    (result,) = response.results
    assert result.error_code == 0, result
    return {c.name: c for c in result.configs}


def kafka_python_error(result, code, message=None):
    """kafka-python's alter_configs reports a failure as the string "[Error <code>] <Name>: <message>"."""
    assert result.startswith(f"[Error {code}] "), result
    if message is not None:
        assert result.endswith(f": {message}"), result


def modified(kadmin, topic):
    """The topic's own overrides (source DYNAMIC_TOPIC_CONFIG), as kafka-python reads them."""
    return {name: e["value"] for name, e in kdescribe(kadmin, "topic", topic).items() if e["config_source"] == "DYNAMIC_TOPIC_CONFIG"}


# ---------------------------------------------------------------- describe


def test_describe_topic_sources(admin, kadmin):
    topic = "described"
    create_topic(admin, topic, {"cleanup.policy": "compact", "max.message.bytes": "2000000"})

    entries = describe(admin, "topic", topic)
    assert KAFKA_TOPIC_CONFIGS <= set(entries), f"missing topic configs: {sorted(KAFKA_TOPIC_CONFIGS - set(entries))}"
    # CreateTopics overrides: the topic's own configs.
    for name, value in [("cleanup.policy", "compact"), ("max.message.bytes", "2000000")]:
        assert (entries[name].value, entries[name].source, entries[name].is_default) == (value, TOPIC_CONFIG, False), name
    # Static broker property, same unit: the broker's value.
    assert (entries["segment.bytes"].value, entries["segment.bytes"].source) == (SEGMENT_BYTES_STATIC, STATIC_CONFIG)
    assert not entries["segment.bytes"].is_default
    # log.retention.hours=100, in the topic's unit.
    assert entries["retention.ms"].value == RETENTION_MS_FROM_HOURS
    # Kafka's defaults.
    for name, value in [("compression.type", "producer"), ("min.insync.replicas", "1"), ("segment.ms", "604800000"), ("retention.bytes", "-1")]:
        assert (entries[name].value, entries[name].source, entries[name].is_default) == (value, DEFAULT_CONFIG, True), name
    assert not any(e.is_read_only or e.is_sensitive for e in entries.values()), "topic configs are neither read-only nor sensitive"

    kentries = kdescribe(kadmin, "topic", topic)
    assert {n: (e["value"], e["config_source"]) for n, e in kentries.items()} == {n: (e.value, NAMES[e.source]) for n, e in entries.items()}
    assert kentries["retention.ms"]["config_type"] == "LONG"
    assert kentries["cleanup.policy"]["config_type"] == "LIST"
    # kafka-python's default filter ("modified") keeps the topic's own overrides only here.
    overrides = kdescribe(kadmin, "topic", topic, config_filter="modified")
    assert {n: e["value"] for n, e in overrides.items()} == {"cleanup.policy": "compact", "max.message.bytes": "2000000"}
    # Asking for some keys returns those keys.
    some = raw_describe(kadmin, TOPIC, topic, keys=["retention.ms", "cleanup.policy"], documentation=True)
    assert set(some) == {"retention.ms", "cleanup.policy"}
    assert "retain" in some["retention.ms"].documentation, some["retention.ms"].documentation


def test_topic_synonym_chains(admin, kadmin):
    """Each layer that sets a config, most specific first, ending with Kafka's default:
    (value, source) per layer; the names Kafka gives the layers are checked below."""
    topic = "synonyms"
    create_topic(admin, topic, {"cleanup.policy": "compact"})
    kentries = kdescribe(kadmin, "topic", topic)
    layers = {name: [(v, s) for _, v, s in chain(kentries[name])] for name in ["cleanup.policy", "segment.bytes", "compression.type"]}
    assert layers == {
        "cleanup.policy": [("compact", "DYNAMIC_TOPIC_CONFIG"), ("delete", "DEFAULT_CONFIG")],
        "segment.bytes": [(SEGMENT_BYTES_STATIC, "STATIC_BROKER_CONFIG"), (SEGMENT_BYTES_DEFAULT, "DEFAULT_CONFIG")],
        "compression.type": [("producer", "DEFAULT_CONFIG")],
    }
    # The override is named as the topic config.
    assert chain(kentries["cleanup.policy"])[0] == ("cleanup.policy", "compact", "DYNAMIC_TOPIC_CONFIG")
    # Without include_synonyms there are none.
    plain = kadmin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, topic)], config_filter="all")["topic"][topic]
    assert plain["cleanup.policy"]["synonyms"] == []


def test_topic_synonym_names_match_kafka(admin, kadmin):
    topic = "synonym-names"
    create_topic(admin, topic, {"cleanup.policy": "compact"})
    kentries = kdescribe(kadmin, "topic", topic)
    assert chain(kentries["cleanup.policy"]) == [
        ("cleanup.policy", "compact", "DYNAMIC_TOPIC_CONFIG"),
        ("log.cleanup.policy", "delete", "DEFAULT_CONFIG"),
    ]
    assert chain(kentries["segment.bytes"]) == [
        ("log.segment.bytes", SEGMENT_BYTES_STATIC, "STATIC_BROKER_CONFIG"),
        ("log.segment.bytes", SEGMENT_BYTES_DEFAULT, "DEFAULT_CONFIG"),
    ]
    assert chain(kentries["compression.type"]) == [("compression.type", "producer", "DEFAULT_CONFIG")]
    synonyms = describe(admin, "topic", topic)["cleanup.policy"].synonyms
    assert [(n, s.value, s.source) for n, s in synonyms.items()] == [
        ("cleanup.policy", "compact", TOPIC_CONFIG),
        ("log.cleanup.policy", "delete", DEFAULT_CONFIG),
    ]


def test_retention_from_hours_describes_as_kafka(admin, kadmin):
    """Kafka keeps only the synonyms from the first broker synonym on
    (ConfigHelper.configSynonyms: dropWhile(name != log.retention.ms)), so a
    retention.ms that only log.retention.hours sets is DEFAULT_CONFIG with no
    synonyms, while log.retention.hours itself is STATIC_BROKER_CONFIG."""
    topic = "retention-hours"
    create_topic(admin, topic)
    entry = describe(admin, "topic", topic)["retention.ms"]
    kentry = kdescribe(kadmin, "topic", topic)["retention.ms"]
    assert (entry.value, entry.source, entry.synonyms) == (RETENTION_MS_FROM_HOURS, DEFAULT_CONFIG, {})
    assert (kentry["value"], kentry["config_source"], chain(kentry)) == (RETENTION_MS_FROM_HOURS, "DEFAULT_CONFIG", [])


# ---------------------------------------------------------------- incremental alter


def test_incremental_alter_confluent(admin, kadmin):
    topic = "incremental-ck"
    create_topic(admin, topic)
    assert incremental(admin, "topic", topic, ("retention.ms", SET, "3600000"), ("max.message.bytes", SET, "500000")) is None
    assert value_and_source(admin, kadmin, "topic", topic, "retention.ms") == ("3600000", TOPIC_CONFIG)
    assert value_and_source(admin, kadmin, "topic", topic, "max.message.bytes") == ("500000", TOPIC_CONFIG)

    # APPEND to a list config without an override starts from its default, delete.
    assert incremental(admin, "topic", topic, ("cleanup.policy", APPEND, "compact")) is None
    assert value_and_source(admin, kadmin, "topic", topic, "cleanup.policy") == ("delete,compact", TOPIC_CONFIG)
    # Appending a value already there changes nothing.
    assert incremental(admin, "topic", topic, ("cleanup.policy", APPEND, "compact")) is None
    assert value_and_source(admin, kadmin, "topic", topic, "cleanup.policy") == ("delete,compact", TOPIC_CONFIG)
    assert incremental(admin, "topic", topic, ("cleanup.policy", SUBTRACT, "delete")) is None
    assert value_and_source(admin, kadmin, "topic", topic, "cleanup.policy") == ("compact", TOPIC_CONFIG)

    # DELETE falls back to the broker's value; deleting what is not set is no error.
    assert incremental(admin, "topic", topic, ("retention.ms", DELETE, None), ("segment.ms", DELETE, None)) is None
    value, source = value_and_source(admin, kadmin, "topic", topic, "retention.ms")
    assert value == RETENTION_MS_FROM_HOURS and source != TOPIC_CONFIG
    assert modified(kadmin, topic) == {"cleanup.policy": "compact", "max.message.bytes": "500000"}


def test_incremental_alter_kafka_python(admin, kadmin):
    topic = "incremental-kp"
    create_topic(admin, topic, {"cleanup.policy": "compact"})

    def resource(configs):
        return [KConfigResource(ConfigResourceType.TOPIC, topic, configs)]

    assert kadmin.alter_configs(resource({"retention.ms": "7200000", "segment.ms": "3600000"})) == {"topic": {topic: "OK"}}
    assert kadmin.alter_configs(resource({"cleanup.policy": (AlterConfigOp.APPEND, "delete")})) == {"topic": {topic: "OK"}}
    # confluent-kafka sees kafka-python's changes.
    entries = describe(admin, "topic", topic)
    assert (entries["retention.ms"].value, entries["retention.ms"].source) == ("7200000", TOPIC_CONFIG)
    assert (entries["segment.ms"].value, entries["segment.ms"].source) == ("3600000", TOPIC_CONFIG)
    assert (entries["cleanup.policy"].value, entries["cleanup.policy"].source) == ("compact,delete", TOPIC_CONFIG)

    assert kadmin.alter_configs(resource({"cleanup.policy": (AlterConfigOp.SUBTRACT, "compact")})) == {"topic": {topic: "OK"}}
    assert kadmin.alter_configs(resource({"segment.ms": (AlterConfigOp.DELETE, None)})) == {"topic": {topic: "OK"}}
    entries = describe(admin, "topic", topic)
    assert (entries["cleanup.policy"].value, entries["cleanup.policy"].source) == ("delete", TOPIC_CONFIG)
    assert (entries["segment.ms"].value, entries["segment.ms"].source) == ("604800000", DEFAULT_CONFIG)
    assert kadmin.reset_configs([KConfigResource(ConfigResourceType.TOPIC, topic, ["retention.ms"])]) == {"topic": {topic: "OK"}}
    assert modified(kadmin, topic) == {"cleanup.policy": "delete"}


def test_append_starts_from_the_topic_default(broker_factory):
    broker = broker_factory(["log.cleanup.policy=compact"])
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    create_topic(admin, "appended")
    assert describe(admin, "topic", "appended")["cleanup.policy"].value == "compact"
    assert incremental(admin, "topic", "appended", ("cleanup.policy", APPEND, "delete")) is None
    assert describe(admin, "topic", "appended")["cleanup.policy"].value == "delete"


INVALID = [
    # (case, [(config, op, value)], Kafka's error message or None to skip the message)
    ("below-minimum", [("retention.ms", SET, "-5")], "Invalid value -5 for configuration retention.ms: Value must be at least -1"),
    ("unknown-name", [("no.such.config", SET, "1")], "Unknown topic config name: no.such.config"),
    ("append-to-long", [("retention.ms", APPEND, "5")], None),
    ("subtract-from-long", [("retention.ms", SUBTRACT, "5")], None),
    ("not-in-list", [("cleanup.policy", SET, "sometimes")], None),
    ("not-a-boolean", [("preallocate", SET, "perhaps")], None),
    ("bad-codec", [("compression.type", SET, "brotli")], None),
    # The valid first change is not applied either: a resource changes whole or not at all.
    ("one-bad-of-two", [("retention.ms", SET, "1000"), ("segment.bytes", SET, "12")], None),
    pytest.param(
        "not-a-number",
        [("retention.ms", SET, "soon")],
        "Invalid value soon for configuration retention.ms: Not a number of type LONG",
        id="not-a-number",
    ),
    *[
        pytest.param(
            f"{op.name.lower()}-message",
            [("retention.ms", op, "5")],
            f"Can't {op.name} to key retention.ms because its type is not LIST.",
            id=f"{op.name.lower()}-message",
        )
        for op in [APPEND, SUBTRACT]
    ],
]


@pytest.fixture(scope="module")
def untouched(broker):
    """A topic every invalid change is tried on; it must keep no override."""
    create_topic(AdminClient({"bootstrap.servers": broker.bootstrap}), "untouched")
    return "untouched"


@pytest.mark.parametrize("case,ops,message", [c if hasattr(c, "marks") else pytest.param(*c, id=c[0]) for c in INVALID])
def test_invalid_changes_are_refused(admin, kadmin, untouched, case, ops, message):
    got = incremental(admin, "topic", untouched, *ops)
    assert got is not None and got[0] == KafkaError.INVALID_CONFIG, f"{case}: {got}"
    if message:
        assert got[1] == message

    configs = {c: (AlterConfigOp(op.value), v) for c, op, v in ops}
    result = kadmin.alter_configs([KConfigResource(ConfigResourceType.TOPIC, untouched, configs)], raise_on_unknown=False)
    kafka_python_error(result["topic"][untouched], KafkaError.INVALID_CONFIG, message)

    if all(op == SET for _, op, _ in ops):
        # The legacy AlterConfigs validates the same way.
        (future,) = admin.alter_configs([ConfigResource("topic", untouched, set_config={c: v for c, _, v in ops})]).values()
        assert confluent_error(future) == KafkaError.INVALID_CONFIG
    assert modified(kadmin, untouched) == {}, f"{case}: a refused change left an override"


def test_alter_errors_for_resources(admin, kadmin):
    assert incremental(admin, "topic", "no-such-topic", ("retention.ms", SET, "1"))[0] == KafkaError.UNKNOWN_TOPIC_OR_PART
    result = kadmin.alter_configs([KConfigResource(ConfigResourceType.TOPIC, "no-such-topic", {"retention.ms": "1"})], raise_on_unknown=False)
    kafka_python_error(result["topic"]["no-such-topic"], KafkaError.UNKNOWN_TOPIC_OR_PART)
    # One resource twice in a request: both refused, neither applied.
    create_topic(admin, "twice")
    twice = [(TOPIC, "twice", [("retention.ms", SET.value, "1000")]), (TOPIC, "twice", [("segment.ms", SET.value, "1000")])]
    response = kafka_python_request(kadmin, IncrementalAlterConfigsRequest(resources=twice, validate_only=False))
    assert [r.error_code for r in response.responses] == [KafkaError.INVALID_REQUEST] * 2
    assert modified(kadmin, "twice") == {}
    # One config twice in a resource.
    response = kafka_python_request(
        kadmin, IncrementalAlterConfigsRequest(resources=[(TOPIC, "twice", [("retention.ms", SET.value, "1"), ("retention.ms", SET.value, "2")])], validate_only=False)
    )
    assert [r.error_code for r in response.responses] == [KafkaError.INVALID_REQUEST]
    assert modified(kadmin, "twice") == {}


def test_alter_configs_of_another_broker_is_refused(kadmin):
    code, message = raw_incremental(kadmin, BROKER, "7", ("log.retention.ms", SET, "1000"))
    assert code == KafkaError.INVALID_REQUEST, (code, message)


def test_validate_only_changes_nothing(admin, kadmin):
    topic = "validate-only"
    create_topic(admin, topic, {"retention.ms": "1000"})
    entries = [ConfigEntry("retention.ms", "2000", incremental_operation=SET), ConfigEntry("cleanup.policy", "compact", incremental_operation=SET)]
    (future,) = admin.incremental_alter_configs([ConfigResource("topic", topic, incremental_configs=entries)], validate_only=True).values()
    assert future.result(30) is None
    (future,) = admin.alter_configs([ConfigResource("topic", topic, set_config={"segment.ms": "1000"})], validate_only=True).values()
    assert future.result(30) is None
    result = kadmin.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "3000"})], validate_only=True)
    assert result == {"topic": {topic: "OK"}}
    # validate_only still answers what a real change would fail with.
    entries = [ConfigEntry("retention.ms", "-5", incremental_operation=SET)]
    (future,) = admin.incremental_alter_configs([ConfigResource("topic", topic, incremental_configs=entries)], validate_only=True).values()
    assert confluent_error(future) == KafkaError.INVALID_CONFIG
    assert modified(kadmin, topic) == {"retention.ms": "1000"}


# ---------------------------------------------------------------- legacy AlterConfigs


def test_legacy_alter_configs_replaces_every_override(admin, kadmin):
    """AlterConfigs sets a resource's overrides to exactly the given set: what is left out returns to the default."""
    topic = "legacy"
    create_topic(admin, topic, {"retention.ms": "3600000", "cleanup.policy": "compact"})

    (future,) = admin.alter_configs([ConfigResource("topic", topic, set_config={"max.message.bytes": "2000000"})]).values()
    assert future.result(30) is None
    assert modified(kadmin, topic) == {"max.message.bytes": "2000000"}
    entries = describe(admin, "topic", topic)
    assert (entries["cleanup.policy"].value, entries["cleanup.policy"].source) == ("delete", DEFAULT_CONFIG)
    assert entries["retention.ms"].value == RETENTION_MS_FROM_HOURS and entries["retention.ms"].source != TOPIC_CONFIG

    # The same request from kafka-python, raw (its alter_configs would merge in the current overrides first).
    response = kafka_python_request(kadmin, AlterConfigsRequest(resources=[(TOPIC, topic, [("segment.ms", "3600000")])], validate_only=False))
    assert [(r.error_code, r.resource_name) for r in response.responses] == [(0, topic)]
    assert modified(kadmin, topic) == {"segment.ms": "3600000"}

    # kafka-python's alter_configs without IncrementalAlterConfigs: a read-modify-write over AlterConfigs keeps the rest.
    result = kadmin.alter_configs([KConfigResource(ConfigResourceType.TOPIC, topic, {"retention.ms": "60000"})], incremental=False)
    assert result == {"topic": {topic: "OK"}}
    assert modified(kadmin, topic) == {"segment.ms": "3600000", "retention.ms": "60000"}

    # An empty set removes every override.
    (future,) = admin.alter_configs([ConfigResource("topic", topic, set_config={})]).values()
    assert future.result(30) is None
    assert modified(kadmin, topic) == {}


# ---------------------------------------------------------------- dynamic broker configs


def test_dynamic_broker_configs(broker_factory):
    """log.retention.ms as cluster default, then for broker 1: topics without an override follow, with the right source."""
    broker = broker_factory(STATIC)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        create_topic(admin, "follows")
        create_topic(admin, "own", {"retention.ms": "1000"})
        assert value_and_source(admin, kadmin, "topic", "follows", "retention.ms")[0] == RETENTION_MS_FROM_HOURS

        # The cluster default ("").
        assert raw_incremental(kadmin, BROKER, "", ("log.retention.ms", SET, "5000")) == (0, None)
        assert value_and_source(admin, kadmin, "topic", "follows", "retention.ms") == ("5000", DEFAULT_BROKER_CONFIG)
        assert [s for _, _, s in chain(kdescribe(kadmin, "topic", "follows")["retention.ms"])] == [
            "DYNAMIC_DEFAULT_BROKER_CONFIG",
            "STATIC_BROKER_CONFIG",
            "DEFAULT_CONFIG",
        ]
        assert value_and_source(admin, kadmin, "topic", "own", "retention.ms") == ("1000", TOPIC_CONFIG)
        # The "" resource lists the dynamic cluster defaults only; broker 1 shows it as its value.
        defaults = raw_describe(kadmin, BROKER, "")
        assert {n: (c.value, c.config_source) for n, c in defaults.items()} == {"log.retention.ms": ("5000", DEFAULT_BROKER_CONFIG)}
        assert value_and_source(admin, kadmin, "broker", "1", "log.retention.ms") == ("5000", DEFAULT_BROKER_CONFIG)

        # This broker's own value wins over the default.
        assert incremental(admin, "broker", "1", ("log.retention.ms", SET, "7000")) is None
        assert value_and_source(admin, kadmin, "topic", "follows", "retention.ms") == ("7000", BROKER_CONFIG)
        assert [s for _, _, s in chain(kdescribe(kadmin, "topic", "follows")["retention.ms"])] == [
            "DYNAMIC_BROKER_CONFIG",
            "DYNAMIC_DEFAULT_BROKER_CONFIG",
            "STATIC_BROKER_CONFIG",
            "DEFAULT_CONFIG",
        ]
        assert value_and_source(admin, kadmin, "broker", "1", "log.retention.ms") == ("7000", BROKER_CONFIG)
        assert value_and_source(admin, kadmin, "topic", "own", "retention.ms") == ("1000", TOPIC_CONFIG)

        # kafka-python changes broker 1 too (its alter_configs takes integer broker names only).
        result = kadmin.alter_configs([KConfigResource(ConfigResourceType.BROKER, "1", {"log.cleanup.policy": "compact"})])
        assert result == {"broker": {"1": "OK"}}
        assert value_and_source(admin, kadmin, "topic", "follows", "cleanup.policy") == ("compact", BROKER_CONFIG)

        # Deleting walks back down the layers.
        assert incremental(admin, "broker", "1", ("log.retention.ms", DELETE, None), ("log.cleanup.policy", DELETE, None)) is None
        assert value_and_source(admin, kadmin, "topic", "follows", "retention.ms") == ("5000", DEFAULT_BROKER_CONFIG)
        assert value_and_source(admin, kadmin, "topic", "follows", "cleanup.policy") == ("delete", DEFAULT_CONFIG)
        assert raw_incremental(kadmin, BROKER, "", ("log.retention.ms", DELETE, None)) == (0, None)
        assert value_and_source(admin, kadmin, "topic", "follows", "retention.ms")[0] == RETENTION_MS_FROM_HOURS
        assert raw_describe(kadmin, BROKER, "") == {}
    finally:
        kadmin.close()
    broker.stop()


def test_dynamic_broker_config_applies_to_existing_logs(broker_factory):
    """A dynamic message.max.bytes takes effect on existing topics at once, and leaves when deleted."""
    broker = broker_factory()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    topic = "follows-broker"
    create_topic(admin, topic)
    big = bytes(range(256)) * 80  # 20,480 bytes, sent uncompressed

    def produce_big():
        errors = []
        producer = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": False, "retries": 0})
        producer.produce(topic, big, partition=0, on_delivery=lambda err, msg: errors.append(err))
        assert producer.flush(30) == 0
        assert len(errors) == 1
        return errors[0]

    try:
        assert produce_big() is None
        assert raw_incremental(kadmin, BROKER, "", ("message.max.bytes", SET, "10000")) == (0, None)
        assert value_and_source(admin, kadmin, "topic", topic, "max.message.bytes") == ("10000", DEFAULT_BROKER_CONFIG)
        error = produce_big()
        assert error is not None and error.code() == KafkaError.MSG_SIZE_TOO_LARGE, error
        kp = KafkaProducer(bootstrap_servers=broker.bootstrap, enable_idempotence=False, retries=0)
        try:
            with pytest.raises(kerr.MessageSizeTooLargeError):
                kp.send(topic, big, partition=0).get(timeout=30)
        finally:
            kp.close(timeout=5)
        assert raw_incremental(kadmin, BROKER, "", ("message.max.bytes", DELETE, None)) == (0, None)
        assert produce_big() is None
    finally:
        kadmin.close()
    broker.stop()


READ_ONLY = ["num.partitions", "auto.create.topics.enable", "log.dirs"]


@pytest.mark.parametrize("config", READ_ONLY)
def test_read_only_broker_configs_are_refused(admin, kadmin, config):
    before = describe(admin, "broker", "1")[config]
    assert before.is_read_only

    def refused(code, message):
        # Kafka's message names the refused configs (its wording of the set varies by version).
        assert code == KafkaError.INVALID_REQUEST, (code, message)
        assert message.startswith("Cannot update these configs dynamically: ") and config in message, message

    refused(*incremental(admin, "broker", "1", (config, SET, "5")))
    refused(*raw_incremental(kadmin, BROKER, "", (config, SET, "5")))
    result = kadmin.alter_configs([KConfigResource(ConfigResourceType.BROKER, "1", {config: "5"})], raise_on_unknown=False)
    kafka_python_error(result["broker"]["1"], KafkaError.INVALID_REQUEST)
    refused(KafkaError.INVALID_REQUEST, result["broker"]["1"].split(": ", 1)[1])
    (future,) = admin.alter_configs([ConfigResource("broker", "1", set_config={config: "5"})]).values()
    assert confluent_error(future) == KafkaError.INVALID_REQUEST
    after = describe(admin, "broker", "1")[config]
    assert (after.value, after.source) == (before.value, before.source)
    assert raw_describe(kadmin, BROKER, "") == {}


def test_unit_synonyms_are_read_only(broker_factory):
    broker = broker_factory()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    entries = describe(admin, "broker", "1")
    assert entries["log.retention.hours"].is_read_only and not entries["log.retention.ms"].is_read_only
    got = incremental(admin, "broker", "1", ("log.retention.hours", SET, "5"))
    assert got is not None and got[0] == KafkaError.INVALID_REQUEST, got


def test_invalid_broker_config_value_is_invalid_request(broker_factory):
    broker = broker_factory()
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    got = incremental(admin, "broker", "1", ("log.retention.ms", SET, "soon"))
    assert got is not None and got[0] == KafkaError.INVALID_REQUEST, got


def test_dynamic_synonym_chains_match_kafka(broker_factory):
    broker = broker_factory(STATIC)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        create_topic(admin, "chained")
        assert raw_incremental(kadmin, BROKER, "", ("log.retention.ms", SET, "5000")) == (0, None)
        assert incremental(admin, "broker", "1", ("log.retention.ms", SET, "7000")) is None
        want = [
            ("log.retention.ms", "7000", "DYNAMIC_BROKER_CONFIG"),
            ("log.retention.ms", "5000", "DYNAMIC_DEFAULT_BROKER_CONFIG"),
            ("log.retention.hours", "100", "STATIC_BROKER_CONFIG"),
            ("log.retention.hours", "168", "DEFAULT_CONFIG"),
        ]
        assert chain(kdescribe(kadmin, "topic", "chained")["retention.ms"]) == want
        assert chain(kdescribe(kadmin, "broker", "1")["log.retention.ms"]) == want
    finally:
        kadmin.close()


# ---------------------------------------------------------------- restart


def test_configs_survive_a_restart(broker_factory):
    """Topic overrides, dynamic broker configs and removals are in the metadata log: a kill -9 keeps them."""
    broker = broker_factory(STATIC)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        create_topic(admin, "kept", {"retention.ms": "1000", "segment.ms": "2000", "max.message.bytes": "3000"})
        create_topic(admin, "replaced", {"retention.ms": "1000", "cleanup.policy": "compact"})
        create_topic(admin, "follows")
        assert incremental(admin, "topic", "kept", ("cleanup.policy", APPEND, "compact"), ("segment.ms", DELETE, None), ("retention.ms", SET, "4000")) is None
        (future,) = admin.alter_configs([ConfigResource("topic", "replaced", set_config={"flush.messages": "10"})]).values()
        assert future.result(30) is None
        assert raw_incremental(kadmin, BROKER, "", ("log.retention.ms", SET, "5000"), ("log.segment.bytes", SET, "1048576")) == (0, None)
        assert incremental(admin, "broker", "1", ("log.retention.ms", SET, "6000")) is None
        assert raw_incremental(kadmin, BROKER, "", ("log.segment.bytes", DELETE, None)) == (0, None)

        def snapshot():
            return {
                "kept": modified(kadmin, "kept"),
                "replaced": modified(kadmin, "replaced"),
                "follows": {n: value_and_source(admin, kadmin, "topic", "follows", n) for n in ["retention.ms", "segment.bytes"]},
                "default": {n: c.value for n, c in raw_describe(kadmin, BROKER, "").items()},
                "broker": value_and_source(admin, kadmin, "broker", "1", "log.retention.ms"),
            }

        before = snapshot()
        assert before == {
            "kept": {"retention.ms": "4000", "max.message.bytes": "3000", "cleanup.policy": "delete,compact"},
            "replaced": {"flush.messages": "10"},
            "follows": {"retention.ms": ("6000", BROKER_CONFIG), "segment.bytes": (SEGMENT_BYTES_STATIC, STATIC_CONFIG)},
            "default": {"log.retention.ms": "5000"},
            "broker": ("6000", BROKER_CONFIG),
        }
    finally:
        kadmin.close()
    broker.kill()

    broker = broker_factory(STATIC)
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        assert snapshot() == before
    finally:
        kadmin.close()
    broker.stop()
