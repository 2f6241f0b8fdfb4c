//! Publishes Warning Events as client-go's recorder does: a repeat of the same report (same
//! object, reason and note) bumps the series of its Event, while a report with another note is
//! an Event of its own, so `kubectl describe` shows the latest cause.
//!
//! kube-runtime's `Recorder` leaves the note out of its key: a `RuleFailed` that first said
//! "trap" kept saying it, with a growing count, after the rule failed for another reason.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};

/// How long a published Event is remembered for a repeat to join its series (kube-runtime's).
const REMEMBERED: SignedDuration = SignedDuration::from_mins(6);

/// What makes two reports the same Event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    uid: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    reason: String,
    note: String,
}

/// The Events published recently, by report.
pub(crate) struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Mutex<HashMap<Key, Event>>,
}

impl Recorder {
    /// Events reported by `controller`, as `instance` (default: the controller's name).
    pub(crate) fn new(client: Client, controller: &str, instance: Option<String>) -> Self {
        Self {
            client,
            controller: controller.to_string(),
            instance: instance.unwrap_or_else(|| controller.to_string()),
            recent: Mutex::default(),
        }
    }

    /// Publishes a Warning Event with `reason` and `note` on `regarding`, for action `action`.
    pub(crate) async fn warn(
        &self,
        regarding: &ObjectReference,
        action: &str,
        reason: &str,
        note: &str,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let key = Key {
            uid: regarding.uid.clone(),
            namespace: regarding.namespace.clone(),
            name: regarding.name.clone(),
            kind: regarding.kind.clone(),
            reason: reason.to_string(),
            note: note.to_string(),
        };
        let known = {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.retain(|_, e| last_seen(e).is_some_and(|t| t + REMEMBERED > now));
            recent.get(&key).cloned()
        };
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".to_string());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let event = match known {
            Some(mut event) => {
                let count = event.series.as_ref().map_or(2, |s| s.count + 1);
                event.series = Some(EventSeries { count, last_observed_time: MicroTime(now) });
                api.patch(&event.name_any(), &PatchParams::default(), &Patch::Merge(&event)).await?;
                event
            }
            None => {
                let event = Event {
                    action: Some(action.to_string()),
                    reason: Some(reason.to_string()),
                    note: Some(note.to_string()),
                    event_time: Some(MicroTime(now)),
                    regarding: Some(regarding.clone()),
                    reporting_controller: Some(self.controller.clone()),
                    reporting_instance: Some(self.instance.clone()),
                    type_: Some("Warning".into()),
                    metadata: ObjectMeta {
                        namespace: Some(namespace.clone()),
                        name: Some(format!(
                            "{}.{:x}",
                            regarding.name.as_deref().unwrap_or(&self.controller),
                            now.as_nanosecond()
                        )),
                        ..ObjectMeta::default()
                    },
                    ..Event::default()
                };
                api.create(&PostParams::default(), &event).await?;
                event
            }
        };
        self.recent.lock().unwrap_or_else(PoisonError::into_inner).insert(key, event);
        Ok(())
    }
}

/// When an Event was last seen: its series' last observation, else its time.
fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series.as_ref().map(|s| s.last_observed_time.0).or_else(|| e.event_time.as_ref().map(|t| t.0))
}
