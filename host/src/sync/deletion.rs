//! Deleting a downstream copy: only an owned one, waiting out its finalizers, and telling a
//! new object of the same name from the one deleted.

use std::time::Duration;

use serde_json::Value;
use tracing::{debug, info};

use super::desired::str_at;
use super::error::{ApiError, SyncError};
use super::ownership;
use super::rules::Rules;
use super::syncer::{Downstream, Syncer, api_error};
use super::types::{DownstreamKey, Operation, SyncResult};

impl<D: Downstream, R: Rules> Syncer<D, R> {
    /// Deletes an object downstream, if downsync owns it for the upstream object of logical
    /// cluster `cluster` (many kcp workspaces; else `None`): a copy another workspace's object
    /// owns is never deleted. `cached` as in [`Syncer::apply`].
    pub async fn delete(
        &self,
        key: &DownstreamKey,
        cluster: Option<&str>,
        cached: Option<Option<Value>>,
    ) -> SyncResult {
        let mut result = SyncResult::new(Some(key.clone()), Operation::Skipped);
        match self.delete_inner(key, cluster, cached, &mut result).await {
            Ok(op) => result.operation = op,
            Err(e) => {
                debug!(object = %key, kind = %key.kind, error = %e, "delete failed");
                result.error = Some(e);
            }
        }
        result
    }

    async fn delete_inner(
        &self,
        key: &DownstreamKey,
        cluster: Option<&str>,
        cached: Option<Option<Value>>,
        result: &mut SyncResult,
    ) -> Result<Operation, SyncError> {
        let existing = match cached {
            Some(c) => c,
            None => self.get(key).await?,
        };
        let Some(existing) = existing else {
            self.state.remove(key);
            return Ok(Operation::Deleted);
        };
        if !ownership::is_owned(&existing, &self.config.ownership, cluster) {
            return Err(SyncError::NotOwned { object: key.to_string(), owner: ownership::describe_owner(&existing) });
        }
        if existing.pointer("/metadata/deletionTimestamp").is_none() {
            let uid = str_at(&existing, "/metadata/uid").unwrap_or_default();
            result.attempts += 1;
            match self.downstream.delete(key, uid, self.config.propagation).await {
                Ok(()) => {}
                Err(ApiError::NotFound) => {
                    self.state.remove(key);
                    return Ok(Operation::Deleted);
                }
                Err(source) => return Err(api_error(key, "delete", source)),
            }
        }
        match self.get(key).await? {
            None => {
                self.log_write(key, "deleted");
                self.state.remove(key);
                Ok(Operation::Deleted)
            }
            Some(o) if str_at(&o, "/metadata/uid") != str_at(&existing, "/metadata/uid") => {
                // Someone else created a new object with the same name: ours is gone.
                self.state.remove(key);
                Ok(Operation::Deleted)
            }
            Some(o) => {
                let finalizers = o.pointer("/metadata/finalizers").cloned().unwrap_or(Value::Array(vec![]));
                info!(object = %key, kind = %key.kind, %finalizers, "deleting; held by finalizers");
                result.retry_after = Some(Duration::from_secs(2));
                Ok(Operation::Deleting)
            }
        }
    }
}
