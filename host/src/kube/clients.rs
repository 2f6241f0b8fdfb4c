//! Connecting to a cluster: a kube client from a kubeconfig and context (or the usual
//! inference: `KUBECONFIG`, `~/.kube/config`, in-cluster), checked by asking for its version.

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::{Deserialize, Serialize};

/// Where one cluster is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterSettings {
    /// A kubeconfig file. Unset: `KUBECONFIG`, then `~/.kube/config`, then in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// A context in it. Unset: the current context.
    pub context: Option<String>,
}

/// Why a cluster cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kubeconfig cannot be read or has no usable context.
    #[error(
        "{side} cluster: cannot load kubeconfig {source_desc}: {message}; check --{side}-kubeconfig and --{side}-context"
    )]
    Config {
        /// `upstream` or `downstream`.
        side: &'static str,
        /// Which kubeconfig was tried.
        source_desc: String,
        /// What went wrong.
        message: String,
    },
    /// The API server did not answer.
    #[error(
        "{side} cluster at {url} is unreachable: {message}; check that it is up and that --{side}-kubeconfig points at it"
    )]
    Unreachable {
        /// `upstream` or `downstream`.
        side: &'static str,
        /// The API server URL.
        url: String,
        /// What went wrong.
        message: String,
    },
}

/// Result of connecting.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connected cluster.
#[derive(Clone)]
pub struct Connected {
    /// The client.
    pub client: Client,
    /// The API server URL, for messages.
    pub url: String,
    /// The API server's `gitVersion`.
    pub version: String,
    /// The client's configuration, to derive clients from (one per kcp workspace).
    pub config: Config,
}

/// Builds a client for `side` (`upstream` or `downstream`) that sends `user_agent` (the API
/// server's audit log records it: with several replicas it tells who wrote what), and checks the
/// server answers within `timeout`.
pub async fn connect(
    side: &'static str,
    settings: &ClusterSettings,
    timeout: Duration,
    user_agent: &str,
) -> Result<Connected> {
    let opts = KubeConfigOptions { context: settings.context.clone(), ..KubeConfigOptions::default() };
    let (config, source_desc) = match &settings.kubeconfig {
        Some(path) => {
            let desc = path.display().to_string();
            let kc = Kubeconfig::read_from(path).map_err(|e| Error::Config {
                side,
                source_desc: desc.clone(),
                message: e.to_string(),
            })?;
            let config = Config::from_custom_kubeconfig(kc, &opts).await.map_err(|e| Error::Config {
                side,
                source_desc: desc.clone(),
                message: e.to_string(),
            })?;
            (config, desc)
        }
        None if settings.context.is_some() => {
            let config = Config::from_kubeconfig(&opts).await.map_err(|e| Error::Config {
                side,
                source_desc: "from KUBECONFIG or ~/.kube/config".into(),
                message: e.to_string(),
            })?;
            (config, "from KUBECONFIG or ~/.kube/config".into())
        }
        None => {
            let config = Config::infer().await.map_err(|e| Error::Config {
                side,
                source_desc: "inferred (KUBECONFIG, ~/.kube/config, in-cluster)".into(),
                message: e.to_string(),
            })?;
            (config, "inferred".into())
        }
    };
    let url = config.cluster_url.to_string();
    let mut config = config;
    match http::HeaderValue::from_str(user_agent) {
        Ok(v) => config.headers.push((http::header::USER_AGENT, v)),
        Err(e) => tracing::warn!(user_agent, error = %e, "not a valid user agent; sending none"),
    }
    let client =
        Client::try_from(config.clone()).map_err(|e| Error::Config { side, source_desc, message: e.to_string() })?;
    let version = match tokio::time::timeout(timeout, client.apiserver_version()).await {
        Ok(Ok(info)) => info.git_version,
        Ok(Err(e)) => return Err(Error::Unreachable { side, url, message: e.to_string() }),
        Err(_) => {
            return Err(Error::Unreachable { side, url, message: format!("no answer within {}s", timeout.as_secs()) });
        }
    };
    Ok(Connected { client, url, version, config })
}
