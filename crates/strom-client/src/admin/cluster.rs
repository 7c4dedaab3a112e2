//! The cluster: DescribeCluster, or Metadata from a broker without it.

use strom_protocol::messages::kafka::{BrokerId, DescribeClusterRequest};

use crate::cluster::BrokerInfo;
use crate::error::{Error, Result};

use super::Admin;
use super::routing::{Dest, no_answer};

const DESCRIBE_CLUSTER_VERSION: i16 = 2;
/// DescribeCluster's endpoint type for brokers (KIP-919).
const ENDPOINT_BROKERS: i8 = 1;

/// The cluster as DescribeCluster (or Metadata) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterDescription {
    pub cluster_id: Option<String>,
    /// `None` when the answer names no controller.
    pub controller: Option<i32>,
    /// By id.
    pub brokers: Vec<BrokerInfo>,
}

impl Admin {
    /// The cluster id, the controller and the brokers: DescribeCluster where
    /// the broker supports it, Metadata otherwise.
    pub async fn describe_cluster(&self) -> Result<ClusterDescription> {
        let deadline = self.deadline();
        let mut answers = self
            .each(
                deadline,
                [()],
                DESCRIBE_CLUSTER_VERSION,
                |()| Dest::Any,
                |_, _| DescribeClusterRequest::default().with_endpoint_type(ENDPOINT_BROKERS),
                |_, response| {
                    let result =
                        Error::check(response.error_code, response.error_message.as_deref()).map(
                            |()| {
                                let mut brokers: Vec<BrokerInfo> = response
                                    .brokers
                                    .into_iter()
                                    .map(|b| BrokerInfo {
                                        id: b.broker_id.0,
                                        host: b.host.to_string(),
                                        port: b.port,
                                        rack: b.rack.map(|r| r.to_string()),
                                    })
                                    .collect();
                                brokers.sort_by_key(|b| b.id);
                                let BrokerId(controller) = response.controller_id;
                                ClusterDescription {
                                    cluster_id: Some(response.cluster_id.to_string()),
                                    controller: (controller >= 0).then_some(controller),
                                    brokers,
                                }
                            },
                        );
                    vec![((), result)]
                },
            )
            .await;
        match answers.remove(&()) {
            Some(Err(Error::Unsupported(_))) => {
                self.retrying(deadline, "describing the cluster", || {
                    self.cluster.fetch_metadata(Some(&[]), false)
                })
                .await?;
                let (cluster_id, controller) = self.cluster.cluster_id_and_controller();
                Ok(ClusterDescription {
                    cluster_id,
                    controller: (controller >= 0).then_some(controller),
                    brokers: self.cluster.brokers(),
                })
            }
            Some(result) => result,
            None => Err(no_answer("DescribeCluster")),
        }
    }
}
