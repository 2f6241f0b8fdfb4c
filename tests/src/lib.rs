//! Test harness: upstream and downstream clients against real control planes, one fresh
//! namespace per test (deleted when the test ends, pass or fail), and the built plugin
//! components.
//!
//! Like envtest's `USE_EXISTING_CLUSTER`: when `DOWNSYNC_UPSTREAM_KUBECONFIG` and
//! `DOWNSYNC_DOWNSTREAM_KUBECONFIG` are set, tests use those clusters (contexts from
//! `DOWNSYNC_UPSTREAM_CONTEXT` / `DOWNSYNC_DOWNSTREAM_CONTEXT`, if set) and nothing is built.
//! Otherwise the first test in a process starts two control planes with
//! `tests/cluster/controlplane.sh` (the downstream one with the volume controllers, see
//! [`DOWNSTREAM_CONTROLLERS`] and its audit log on, read by [`audit`]), watched by the process's
//! PID so they stop when it exits, however it exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

pub mod admission;
pub mod audit;
pub mod bench;
pub mod daemon;
pub mod ha;
pub mod helm;
pub mod kcp;
pub mod logs;
pub mod manifests;
pub mod objects;
pub mod plugins;
pub mod proxy;
pub mod registry;

/// Label put on every test namespace, so leftovers on an existing cluster can be found.
pub const TEST_LABEL: &str = "downsync.dev/test";

/// Where one side's cluster is.
#[derive(Debug, Clone)]
pub struct ClusterRef {
    /// The kubeconfig file.
    pub kubeconfig: PathBuf,
    /// The context to use, or the current one.
    pub context: Option<String>,
}

impl ClusterRef {
    /// A client for this cluster. Made per test: a kube `Client` is tied to the tokio runtime
    /// that made it, and every `#[tokio::test]` has its own.
    pub async fn client(&self) -> Result<Client> {
        let kc = Kubeconfig::read_from(&self.kubeconfig)
            .with_context(|| format!("reading kubeconfig {}", self.kubeconfig.display()))?;
        let opts = KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        let config = Config::from_custom_kubeconfig(kc, &opts)
            .await
            .with_context(|| format!("loading kubeconfig {}", self.kubeconfig.display()))?;
        Client::try_from(config).context("building a kube client")
    }
}

/// The two clusters of this test process.
#[derive(Debug, Clone)]
pub struct Clusters {
    /// The upstream (source of desired objects).
    pub upstream: ClusterRef,
    /// The downstream (where downsync writes).
    pub downstream: ClusterRef,
}

static CLUSTERS: OnceLock<Result<Clusters, String>> = OnceLock::new();

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// The kube-controller-manager controllers of the downstream test control plane: besides the
/// garbage collector and the namespace controller (all the upstream runs), the volume binder and
/// the PV/PVC protection controllers, as a real cluster has, so that synced volumes really bind.
/// tests/run.sh starts its downstream with the same list.
pub const DOWNSTREAM_CONTROLLERS: &str = "garbage-collector-controller,namespace-controller,\
persistentvolume-binder-controller,persistentvolume-protection-controller,\
persistentvolumeclaim-protection-controller";

fn start_control_plane(name: &str, controllers: Option<&str>, audit: bool) -> Result<PathBuf> {
    let script = repo_root().join("tests/cluster/controlplane.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).args(["up", name, "--owner-pid", &std::process::id().to_string()]);
    if let Some(list) = controllers {
        cmd.args(["--controllers", list]);
    }
    if audit {
        cmd.arg("--audit");
    }
    let out =
        cmd.stderr(std::process::Stdio::inherit()).output().with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("starting control plane {name} failed (see the output above)");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path =
        stdout.lines().last().map(PathBuf::from).ok_or_else(|| anyhow!("controlplane.sh printed no kubeconfig"))?;
    Ok(path)
}

/// A control plane of one test's own, for what would disturb the shared ones (stopping its API
/// server); stopped and removed when dropped.
pub struct PrivateControlPlane {
    name: String,
    /// Its admin kubeconfig.
    pub kubeconfig: PathBuf,
}

impl PrivateControlPlane {
    /// Starts control plane `name` (garbage collector and namespace controller).
    pub fn start(name: &str) -> Result<Self> {
        Ok(Self { name: name.to_string(), kubeconfig: start_control_plane(name, None, false)? })
    }

    fn run(&self, verb: &str) -> Result<()> {
        let script = repo_root().join("tests/cluster/controlplane.sh");
        let status = Command::new("bash").arg(&script).args([verb, &self.name]).status()?;
        if !status.success() {
            bail!("controlplane.sh {verb} {} failed", self.name);
        }
        Ok(())
    }

    /// Stops its kube-apiserver; etcd and the data stay.
    pub fn stop_apiserver(&self) -> Result<()> {
        self.run("stop-apiserver")
    }

    /// Starts its kube-apiserver again, as it was, and waits until it is ready.
    pub fn start_apiserver(&self) -> Result<()> {
        self.run("start-apiserver")
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

fn from_env_or_start() -> Result<Clusters> {
    let up = std::env::var_os("DOWNSYNC_UPSTREAM_KUBECONFIG");
    let down = std::env::var_os("DOWNSYNC_DOWNSTREAM_KUBECONFIG");
    match (up, down) {
        (Some(up), Some(down)) => Ok(Clusters {
            upstream: ClusterRef { kubeconfig: up.into(), context: std::env::var("DOWNSYNC_UPSTREAM_CONTEXT").ok() },
            downstream: ClusterRef {
                kubeconfig: down.into(),
                context: std::env::var("DOWNSYNC_DOWNSTREAM_CONTEXT").ok(),
            },
        }),
        (None, None) => {
            let pid = std::process::id();
            Ok(Clusters {
                upstream: ClusterRef {
                    kubeconfig: start_control_plane(&format!("up-{pid}"), None, false)?,
                    context: None,
                },
                downstream: ClusterRef {
                    kubeconfig: start_control_plane(&format!("down-{pid}"), Some(DOWNSTREAM_CONTROLLERS), true)?,
                    context: None,
                },
            })
        }
        _ => bail!("set both DOWNSYNC_UPSTREAM_KUBECONFIG and DOWNSYNC_DOWNSTREAM_KUBECONFIG, or neither"),
    }
}

/// The clusters of this process, started on first use.
pub fn clusters() -> Result<Clusters> {
    CLUSTERS.get_or_init(|| from_env_or_start().map_err(|e| format!("{e:#}"))).clone().map_err(|e| anyhow!(e))
}

/// How long dropping a [`TestEnv`] may take to delete its namespaces: a failed test must not
/// also hang when the cluster is gone.
pub const DROP_CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// One test's view: clients for both sides and a namespace of its own on each.
///
/// The namespaces are deleted by [`TestEnv::cleanup`], or else when the `TestEnv` is dropped (a
/// failed assertion, an early `?`), so that a failed test leaves nothing behind.
pub struct TestEnv {
    /// Upstream client.
    pub upstream: Client,
    /// Downstream client.
    pub downstream: Client,
    /// The test's namespace; it exists on both sides.
    pub namespace: String,
    /// Where the clusters are, for the cleanup on drop, which needs clients of its own.
    clusters: Clusters,
    /// Whether [`TestEnv::cleanup`] deleted the namespaces already.
    cleaned: bool,
}

impl TestEnv {
    /// Connects to both clusters and creates a fresh namespace named after the test on each.
    pub async fn new(test: &str) -> Result<Self> {
        let clusters = clusters()?;
        let upstream = clusters.upstream.client().await?;
        let downstream = clusters.downstream.client().await?;
        let slug: String = test
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
            .take(40)
            .collect();
        let namespace = format!("{}-{:06x}", slug.trim_matches('-'), rand::random::<u32>() & 0xff_ffff);
        // Made before the namespaces, so that a failure half-way still deletes the first one.
        let env = Self { upstream, downstream, namespace, clusters, cleaned: false };
        for client in [&env.upstream, &env.downstream] {
            create_namespace(client, &env.namespace).await?;
        }
        Ok(env)
    }

    /// Deletes the test's namespaces (without waiting for them to go).
    pub async fn cleanup(mut self) -> Result<()> {
        for client in [&self.upstream, &self.downstream] {
            delete_namespace(client, &self.namespace).await?;
        }
        self.cleaned = true;
        Ok(())
    }
}

/// Deletes the namespaces when the test did not (see [`TestEnv`]).
///
/// A drop cannot await, and it cannot use the test's clients either: a kube `Client` runs on
/// the runtime that made it, whose thread may be the one dropping us, blocked right here. So a
/// thread of its own, with its own runtime, connects afresh and deletes, within
/// [`DROP_CLEANUP_TIMEOUT`].
impl Drop for TestEnv {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        if let Err(e) = delete_namespaces_blocking(&self.clusters, &self.namespace, DROP_CLEANUP_TIMEOUT) {
            eprintln!("TestEnv: namespace {} may be left behind: {e:#}", self.namespace);
        }
    }
}

/// Deletes `namespace` on both clusters from a thread of its own, giving up after `timeout`.
fn delete_namespaces_blocking(clusters: &Clusters, namespace: &str, timeout: Duration) -> Result<()> {
    let (clusters, namespace) = (clusters.clone(), namespace.to_string());
    let worker = std::thread::spawn(move || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let delete = |side: ClusterRef| {
            let namespace = namespace.clone();
            async move { delete_namespace(&side.client().await?, &namespace).await }
        };
        let both = futures::future::join(delete(clusters.upstream), delete(clusters.downstream));
        let outcome = rt.block_on(async { tokio::time::timeout(timeout, both).await });
        // Not waiting for what the timeout left running (a connect to a cluster that is gone).
        rt.shutdown_background();
        let (up, down) = outcome.map_err(|_| anyhow!("gave up after {timeout:?}"))?;
        up.context("upstream")?;
        down.context("downstream")
    });
    worker.join().map_err(|_| anyhow!("the cleanup thread panicked"))?
}

/// Deletes a namespace in the background; one that is already gone is fine.
async fn delete_namespace(client: &Client, name: &str) -> Result<()> {
    match Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("deleting namespace {name}")),
    }
}

/// Creates a namespace labelled as a test namespace.
pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some([(TEST_LABEL.to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    Ok(())
}

/// Polls `check` every 100 ms until it returns `Some`, or fails after `timeout` with `what`.
/// For asynchronous cluster behaviour (garbage collection, namespace cleanup).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cluster that accepts connections and never answers: the worst case for a cleanup.
    fn mk_silent_cluster(dir: &Path) -> Result<(std::net::TcpListener, ClusterRef)> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let server = format!("https://{}", listener.local_addr()?);
        let kubeconfig = dir.join(format!("silent-{}.yaml", std::process::id()));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: silent\n\
                 clusters: [{{name: silent, cluster: {{server: \"{server}\", insecure-skip-tls-verify: true}}}}]\n\
                 users: [{{name: u, user: {{token: t}}}}]\n\
                 contexts: [{{name: silent, context: {{cluster: silent, user: u}}}}]\n"
            ),
        )?;
        Ok((listener, ClusterRef { kubeconfig, context: None }))
    }

    #[test]
    fn the_drop_cleanup_gives_up_in_time_when_the_cluster_does_not_answer() -> Result<()> {
        let (_listener, silent) = mk_silent_cluster(&std::env::temp_dir())?;
        let clusters = Clusters { upstream: silent.clone(), downstream: silent };
        let started = std::time::Instant::now();
        let err = delete_namespaces_blocking(&clusters, "gone", Duration::from_millis(500)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        assert!(err.to_string().contains("gave up"), "{err:#}");
        std::fs::remove_file(&clusters.upstream.kubeconfig)?;
        Ok(())
    }
}
