//! `strom config describe|alter`: topic and broker configs, as Kafka's
//! kafka-configs.sh.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::{ArgGroup, Args, Subcommand};
use serde_json::json;
use strom_client::Admin;
use strom_client::admin::{AlterConfigOp, ConfigResource, ConfigSource, ResourceType};

use crate::tool::{Common, Output, key_value, print_json, print_table, runtime};

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("resource").required(true).args(["topic", "broker", "broker_defaults"])))]
pub(crate) struct Resource {
    /// A topic's configs.
    #[arg(long)]
    topic: Option<String>,
    /// A broker's configs.
    #[arg(long, value_name = "ID")]
    broker: Option<i32>,
    /// The cluster-wide dynamic broker defaults (alter only).
    #[arg(long)]
    broker_defaults: bool,
}

impl Resource {
    fn resource(&self) -> ConfigResource {
        match (&self.topic, self.broker) {
            (Some(topic), _) => ConfigResource::topic(topic),
            (None, Some(id)) => ConfigResource::broker(id),
            (None, None) => ConfigResource::broker_defaults(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Configs with their values and sources (only those set, unless --all).
    Describe {
        #[command(flatten)]
        resource: Resource,
        /// Every config, defaults included.
        #[arg(long)]
        all: bool,
    },
    /// Set or remove configs.
    Alter {
        #[command(flatten)]
        resource: Resource,
        /// KEY=VALUE to set; repeatable.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// A config to return to its default; repeatable.
        #[arg(long = "delete", value_name = "KEY")]
        delete: Vec<String>,
    },
}

/// "topic orders", "broker 1", "the broker defaults".
fn describe(resource: &ConfigResource) -> String {
    match resource.resource_type {
        ResourceType::Topic => format!("topic {}", resource.name),
        _ if resource.name.is_empty() => "the broker defaults".to_owned(),
        _ => format!("broker {}", resource.name),
    }
}

fn source_name(source: ConfigSource) -> &'static str {
    match source {
        ConfigSource::DynamicTopic => "DYNAMIC_TOPIC_CONFIG",
        ConfigSource::DynamicBroker => "DYNAMIC_BROKER_CONFIG",
        ConfigSource::DynamicDefaultBroker => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        ConfigSource::StaticBroker => "STATIC_BROKER_CONFIG",
        ConfigSource::Default => "DEFAULT_CONFIG",
        ConfigSource::DynamicBrokerLogger => "DYNAMIC_BROKER_LOGGER_CONFIG",
        ConfigSource::ClientMetrics => "CLIENT_METRICS_CONFIG",
        ConfigSource::Group => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn run(command: ConfigCommand, common: &Common) -> anyhow::Result<()> {
    let rt = runtime()?;
    let admin = rt.block_on(async { common.admin() })?;
    match command {
        ConfigCommand::Describe { resource, all } => {
            if resource.broker_defaults {
                bail!("describe a broker's configs with --broker ID");
            }
            let resource = resource.resource();
            let entries = rt
                .block_on(admin.describe_configs(std::slice::from_ref(&resource), false))
                .remove(&resource)
                .context("no answer")?
                .with_context(|| describe(&resource))?;
            let shown: Vec<_> = entries
                .iter()
                .filter(|e| all || !(e.is_default || e.source == ConfigSource::Default))
                .collect();
            match common.output {
                Output::Json => print_json(&json!(
                    shown
                        .iter()
                        .map(|e| json!({
                            "name": e.name, "value": e.value, "source": source_name(e.source),
                            "read_only": e.read_only, "sensitive": e.sensitive,
                        }))
                        .collect::<Vec<_>>()
                )),
                Output::Table => print_table(
                    &["NAME", "VALUE", "SOURCE"],
                    &shown
                        .iter()
                        .map(|e| {
                            vec![
                                e.name.clone(),
                                if e.sensitive {
                                    "(sensitive)".to_owned()
                                } else {
                                    e.value.clone().unwrap_or_default()
                                },
                                source_name(e.source).to_owned(),
                            ]
                        })
                        .collect::<Vec<_>>(),
                ),
            }
        }
        ConfigCommand::Alter {
            resource,
            set,
            delete,
        } => alter(
            &rt,
            &admin,
            resource.resource(),
            &set,
            &delete,
            common.output,
        )?,
    }
    Ok(())
}

/// Sets (`KEY=VALUE`) and deletes configs of `resource` in one
/// IncrementalAlterConfigs (also `strom topic alter-config`).
#[allow(clippy::print_stdout, reason = "the tool's output")]
pub(crate) fn alter(
    rt: &tokio::runtime::Runtime,
    admin: &Admin,
    resource: ConfigResource,
    set: &[String],
    delete: &[String],
    output: Output,
) -> anyhow::Result<()> {
    if set.is_empty() && delete.is_empty() {
        bail!("nothing to alter: give --set KEY=VALUE or --delete KEY");
    }
    let mut ops = Vec::new();
    for kv in set {
        let (k, v) = key_value(kv)?;
        ops.push(AlterConfigOp::set(k, v));
    }
    ops.extend(delete.iter().map(AlterConfigOp::delete));
    let changes = BTreeMap::from([(resource.clone(), ops)]);
    rt.block_on(admin.incremental_alter_configs(&changes, false))
        .remove(&resource)
        .context("no answer")?
        .with_context(|| describe(&resource))?;
    if output == Output::Table {
        println!("altered configs of {}", describe(&resource));
    }
    Ok(())
}
