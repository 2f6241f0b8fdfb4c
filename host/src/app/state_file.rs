//! What downsync last wrote, kept across a restart: the state cache is saved to a file at
//! shutdown and read at the next start, so that the first look at a copy nobody touched since
//! is the fast path (the same desired hash, the copy still at the recorded resourceVersion and
//! uid) instead of the whole update path with its rule calls.
//!
//! The file is a cache: it holds facts about downstream copies ("at this resourceVersion, this
//! copy is what downsync wrote for this desired hash"), which a copy changed since simply no
//! longer matches. It is read only by the same binary with the same configuration against the
//! same downstream; anything else starts afresh, as does a missing or unreadable file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::config::RunConfig;
use super::context::Controller;
use crate::plugin::{check_owner, ensure_private_dir, sha256_hex, write_private_atomically};
use crate::sync::{DownstreamKey, Gvr, ResourceState, StateCache};

/// Bumped when the rows change meaning.
const FORMAT: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    format: u32,
    /// The binary, the configuration and the downstream it was written with.
    fingerprint: String,
    objects: Vec<Row>,
}

/// One copy: its key, and what downsync recorded after its last write or check.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Row {
    group: String,
    version: String,
    resource: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    name: String,
    rv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
    uid: String,
    hash: String,
    content: u64,
}

impl Row {
    fn of(s: ResourceState) -> Self {
        let DownstreamKey { gvr: Gvr { group, version, resource }, kind, namespace, name } = s.key;
        Self {
            group,
            version,
            resource,
            kind,
            namespace,
            name,
            rv: s.resource_version,
            generation: s.generation,
            uid: s.uid,
            hash: s.desired_hash,
            content: s.content,
        }
    }

    fn into_state(self) -> ResourceState {
        let Row { group, version, resource, kind, namespace, name, rv, generation, uid, hash, content } = self;
        ResourceState {
            key: DownstreamKey { gvr: Gvr { group, version, resource }, kind, namespace, name },
            resource_version: rv,
            generation,
            uid,
            desired_hash: hash,
            content,
            last_sync: SystemTime::now(),
        }
    }
}

/// Where one instance keeps its state: one file per downstream, identity and sync target,
/// beside the compiled components.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
    fingerprint: String,
}

impl StateFile {
    /// The state file of a run of `config` against the downstream at `downstream_url`.
    pub fn new(config: &RunConfig, downstream_url: &str) -> Self {
        let ownership = &config.sync.ownership;
        let place = sha256_hex(format!("{downstream_url}\n{}\n{}", ownership.identity, ownership.target).as_bytes());
        let path = config.cache_root().join("state").join(format!("{}.json", &place[..16]));
        // The binary by its size and time: a rebuilt downsync may write otherwise.
        let binary = std::env::current_exe()
            .and_then(std::fs::metadata)
            .map(|m| format!("{}:{:?}", m.len(), m.modified().ok()))
            .unwrap_or_default();
        // What shapes the writes, not where downsync serves or how many workers it runs.
        let shaping = RunConfig { metrics_addr: None, workers: 0, ha: None, ..config.clone() };
        let settings = serde_json::to_string(&shaping).unwrap_or_default();
        let fingerprint =
            sha256_hex(format!("{}\n{binary}\n{downstream_url}\n{settings}", env!("CARGO_PKG_VERSION")).as_bytes());
        Self { path, fingerprint }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The state of the last run, if it was saved by this binary with this configuration
    /// against this downstream; else an empty state. Blocking: reads and parses the file.
    ///
    /// Whoever can write the file can make downsync leave a changed copy alone, so, as the
    /// compiled components are, it is read only when downsync's own user owns it and no one
    /// else can write it.
    pub fn load(&self) -> StateCache {
        let state = StateCache::new();
        let text = match std::fs::symlink_metadata(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return state,
            Err(e) => Err(e.to_string()),
            Ok(meta) => check_owner(&meta, "file").and_then(|()| std::fs::read(&self.path).map_err(|e| e.to_string())),
        };
        let text = match text {
            Ok(t) => t,
            Err(why) => {
                warn!(path = %self.path.display(), reason = %why, "the state of the last run is not used; starting afresh");
                return state;
            }
        };
        match serde_json::from_slice::<Saved>(&text) {
            Ok(saved) if saved.format == FORMAT && saved.fingerprint == self.fingerprint => {
                let n = saved.objects.len();
                for row in saved.objects {
                    state.insert(row.into_state());
                }
                info!(path = %self.path.display(), objects = n, "kept the state of the last run");
            }
            Ok(_) => {
                debug!(path = %self.path.display(), "the state of the last run is of another binary, configuration or downstream; starting afresh")
            }
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "the state of the last run is unreadable; starting afresh")
            }
        }
        state
    }

    /// Saves the state for the next run. Blocking: writes the file (a temporary one, then
    /// renamed over the old, so that a crash half-way leaves the old one or none).
    pub fn save(&self, state: &StateCache) {
        let objects: Vec<Row> = state.list(None).into_iter().map(Row::of).collect();
        let n = objects.len();
        let saved = Saved { format: FORMAT, fingerprint: self.fingerprint.clone(), objects };
        let write = || -> Result<(), String> {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            ensure_private_dir(dir)?;
            let bytes = serde_json::to_vec(&saved).map_err(|e| e.to_string())?;
            write_private_atomically(dir, "state", &self.path, &bytes).map_err(|e| e.to_string())
        };
        match write() {
            Ok(()) => info!(path = %self.path.display(), objects = n, "saved the state for the next run"),
            Err(why) => warn!(path = %self.path.display(), reason = %why, "cannot save the state for the next run"),
        }
    }
}

/// Saves the state after the initial sync and at every resync period from then on: a process
/// killed without a SIGTERM (an OOM kill, a lost node's pod started elsewhere with the same
/// volume) still leaves a recent state. Whatever changed since has another resourceVersion and
/// takes the whole path.
pub(super) async fn keep(controller: std::sync::Arc<Controller>, file: StateFile) {
    controller.wait_initial().await;
    let mut tick = tokio::time::interval(controller.config.resync());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let (file, state) = (file.clone(), controller.syncer.state().clone());
        let _ = tokio::task::spawn_blocking(move || file.save(&state)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("downsync-state-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn mk_config(dir: &Path) -> RunConfig {
        let mut c = RunConfig::default();
        c.engine.cache_dir = Some(dir.join("components"));
        c
    }

    fn mk_state(name: &str, rv: &str) -> ResourceState {
        ResourceState {
            key: DownstreamKey {
                gvr: Gvr { group: "apps".into(), version: "v1".into(), resource: "deployments".into() },
                kind: "Deployment".into(),
                namespace: Some("team-a".into()),
                name: name.into(),
            },
            resource_version: rv.into(),
            generation: Some(2),
            uid: format!("uid-{name}"),
            desired_hash: "h".into(),
            content: 7,
            last_sync: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn a_saved_state_is_read_back_by_the_same_run() {
        let dir = mk_dir("read-back");
        let file = StateFile::new(&mk_config(&dir), "https://down:6443");
        let state = StateCache::new();
        state.insert(mk_state("web", "41"));
        state.insert(mk_state("api", "42"));
        file.save(&state);
        let back = file.load();
        assert_eq!(back.count(None), 2);
        let web = mk_state("web", "41");
        assert!(back.is_current(&web.key, "h", "41", "uid-web"));
        assert_eq!(back.get(&web.key).map(|s| (s.generation, s.content)), Some((Some(2), 7)));
    }

    #[test]
    fn another_configuration_or_downstream_starts_afresh() {
        let dir = mk_dir("another");
        let config = mk_config(&dir);
        let state = StateCache::new();
        state.insert(mk_state("web", "41"));
        StateFile::new(&config, "https://down:6443").save(&state);
        assert_eq!(StateFile::new(&config, "https://other:6443").load().count(None), 0, "another downstream");
        let mut changed = config.clone();
        changed.upstream_writes.push(super::super::config::UpstreamWrite::Status);
        let same_place = StateFile::new(&changed, "https://down:6443");
        assert_eq!(same_place.path(), StateFile::new(&config, "https://down:6443").path(), "one file per place");
        assert_eq!(same_place.load().count(None), 0, "another configuration");
        let mut served_elsewhere = config.clone();
        served_elsewhere.metrics_addr = Some(([127, 0, 0, 1], 9999).into());
        served_elsewhere.workers += 1;
        let served = StateFile::new(&served_elsewhere, "https://down:6443");
        assert_eq!(served.load().count(None), 1, "where it serves and how many workers do not change a write");
    }

    #[test]
    fn a_missing_or_broken_file_starts_afresh() {
        let dir = mk_dir("broken");
        let file = StateFile::new(&mk_config(&dir), "https://down:6443");
        assert_eq!(file.load().count(None), 0);
        std::fs::create_dir_all(file.path().parent().expect("a parent")).expect("the dir");
        std::fs::write(file.path(), b"{not json").expect("written");
        assert_eq!(file.load().count(None), 0);
    }

    #[test]
    fn a_file_others_can_write_is_not_read() {
        use std::os::unix::fs::PermissionsExt;
        let dir = mk_dir("writable");
        let file = StateFile::new(&mk_config(&dir), "https://down:6443");
        let state = StateCache::new();
        state.insert(mk_state("web", "41"));
        file.save(&state);
        let mode = |p: &Path| std::fs::metadata(p).expect("saved").permissions().mode() & 0o777;
        assert_eq!(mode(file.path()), 0o600);
        assert_eq!(mode(file.path().parent().expect("a parent")), 0o700);
        assert_eq!(file.load().count(None), 1);
        std::fs::set_permissions(file.path(), std::fs::Permissions::from_mode(0o666)).expect("chmod");
        assert_eq!(file.load().count(None), 0, "anyone could have written it");
    }
}
