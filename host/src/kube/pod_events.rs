//! Events on downsync's own pod, in the downstream cluster: plugin versions rolled back or
//! promoted, where `kubectl describe pod` shows them next to restarts and probe failures.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

/// Publishes Events on one pod.
#[derive(Clone)]
pub struct PodEvents {
    recorder: Recorder,
    pod: ObjectReference,
}

impl std::fmt::Debug for PodEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodEvents").field("pod", &self.pod.name).finish_non_exhaustive()
    }
}

impl PodEvents {
    /// Events on the pod named by `POD_NAME` in `POD_NAMESPACE` (the Downward API), if both
    /// are set; outside a pod there is nothing to put them on.
    pub fn from_env(client: Client) -> Option<Self> {
        let name = std::env::var("POD_NAME").ok().filter(|s| !s.is_empty())?;
        let namespace = std::env::var("POD_NAMESPACE").ok().filter(|s| !s.is_empty())?;
        let reporter = Reporter { controller: "downsync".into(), instance: Some(name.clone()) };
        let pod = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(namespace),
            ..ObjectReference::default()
        };
        Some(Self { recorder: Recorder::new(client, reporter), pod })
    }

    /// Publishes one Event; a failure is logged, never fatal (RBAC may not allow Events).
    pub async fn publish(&self, warning: bool, reason: &str, note: &str) {
        let event = Event {
            type_: if warning { EventType::Warning } else { EventType::Normal },
            reason: reason.to_string(),
            note: Some(note.chars().take(1000).collect()),
            action: "Rollout".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &self.pod).await {
            tracing::warn!(reason, error = %e, "cannot publish an Event on the downsync pod");
        }
    }
}
