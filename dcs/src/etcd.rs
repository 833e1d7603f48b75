//! The etcd v3 backend (placeholder; implemented in a follow-up step).

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::{Cluster, Dcs, DcsError, DcsEvent, DcsIdentity, Expect, Failover, HistoryEntry, MemberData, Status, SyncState, Version};

/// etcd v3 backend.
pub struct EtcdDcs {
    _identity: DcsIdentity,
}

impl EtcdDcs {
    /// Connects to `endpoints` (`http://host:port`).
    pub async fn connect(_endpoints: &[String], identity: DcsIdentity) -> Result<Self, DcsError> {
        Ok(EtcdDcs { _identity: identity })
    }
}

#[async_trait]
impl Dcs for EtcdDcs {
    async fn load(&self) -> Result<Cluster, DcsError> { todo!() }
    async fn create_initialize(&self, _value: &str) -> Result<bool, DcsError> { todo!() }
    async fn update_initialize(&self, _expected: &str, _value: &str) -> Result<(), DcsError> { todo!() }
    async fn cancel_initialize(&self, _expected: &str) -> Result<(), DcsError> { todo!() }
    async fn acquire_leader(&self) -> Result<bool, DcsError> { todo!() }
    async fn renew_leader(&self) -> Result<bool, DcsError> { todo!() }
    async fn release_leader(&self) -> Result<bool, DcsError> { todo!() }
    async fn touch_member(&self, _data: &MemberData) -> Result<(), DcsError> { todo!() }
    async fn delete_member(&self) -> Result<(), DcsError> { todo!() }
    async fn set_config(&self, _value: &serde_json::Value, _expect: Expect) -> Result<(), DcsError> { todo!() }
    async fn set_failover(&self, _value: &Failover, _expect: Expect) -> Result<(), DcsError> { todo!() }
    async fn delete_failover(&self, _version: Version) -> Result<(), DcsError> { todo!() }
    async fn set_history(&self, _value: &[HistoryEntry], _expect: Expect) -> Result<(), DcsError> { todo!() }
    async fn set_status(&self, _value: &Status) -> Result<(), DcsError> { todo!() }
    async fn set_sync(&self, _value: &SyncState, _expect: Expect) -> Result<(), DcsError> { todo!() }
    async fn set_ttl(&self, _ttl_secs: u32) -> Result<(), DcsError> { todo!() }
    fn watch(&self) -> broadcast::Receiver<DcsEvent> { todo!() }
    async fn close(&self) -> Result<(), DcsError> { todo!() }
}
