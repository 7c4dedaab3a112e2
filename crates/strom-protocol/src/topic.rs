//! Kafka's rules for topic names (`org.apache.kafka.common.internals.Topic`),
//! with Kafka's messages, so that the broker can answer and a client can
//! explain an INVALID_TOPIC_EXCEPTION in the same words.

/// Kafka's internal topics, named in one place. The offsets topic holds
/// consumer groups and their committed offsets (the group coordinator's log).
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// The transaction coordinator's log: each transactional id's state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// The cluster metadata log (KRaft's); never visible to clients.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// Whether `name` is one of the internal topics clients see
/// (`__consumer_offsets`, `__transaction_state`): Metadata marks them
/// internal and Kafka refuses to let users create them.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC || name == TRANSACTION_STATE_TOPIC
}

/// The longest topic name: the partition directory `<name>-<partition>`
/// must fit in a 255-byte file name with room for the partition number and
/// the `.<suffix>-delete` Kafka renames deleted logs to.
pub const TOPIC_NAME_MAX_CHARS: usize = 249;

/// Why `name` is not a legal topic name, in Kafka's words (its
/// `Topic.validate`), or `None` for a legal one: 1 to 249 characters of
/// ASCII alphanumerics, `.`, `_` and `-`, and neither `.` nor `..`.
pub fn illegal_topic_name(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("Topic name is illegal, it can't be empty".to_owned())
    } else if name == "." || name == ".." {
        Some("Topic name cannot be \".\" or \"..\"".to_owned())
    } else if name.chars().count() > TOPIC_NAME_MAX_CHARS {
        Some(format!(
            "Topic name is illegal, it can't be longer than {TOPIC_NAME_MAX_CHARS} characters, topic name: {name}"
        ))
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        Some(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_has_kafkas_message() {
        assert_eq!(illegal_topic_name("orders.v2_x-1"), None);
        assert_eq!(illegal_topic_name(&"a".repeat(249)), None);
        assert_eq!(
            illegal_topic_name("").as_deref(),
            Some("Topic name is illegal, it can't be empty")
        );
        assert_eq!(
            illegal_topic_name("..").as_deref(),
            Some("Topic name cannot be \".\" or \"..\"")
        );
        assert!(
            illegal_topic_name(&"a".repeat(250))
                .unwrap()
                .starts_with("Topic name is illegal, it can't be longer than 249 characters")
        );
        assert_eq!(
            illegal_topic_name("a/b").as_deref(),
            Some(
                "Topic name \"a/b\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
            )
        );
    }
}
