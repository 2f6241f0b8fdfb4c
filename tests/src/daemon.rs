//! The `downsync` binary as a user runs it: built once per test process, started against the
//! test clusters with a free metrics port, probed over HTTP, stopped with SIGTERM or SIGKILL.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

use crate::{clusters, repo_root};

static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Builds the `downsync` binary (a no-op when it is fresh) once per process and returns its path.
pub fn downsync_bin() -> Result<PathBuf> {
    BIN.get_or_init(|| {
        let root = repo_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--quiet", "-p", "downsync", "--bin", "downsync"])
            .status()
            .map_err(|e| format!("running cargo: {e}"))?;
        if !status.success() {
            return Err("building the downsync binary failed".into());
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
        Ok(target.join("debug").join("downsync"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// A free loopback port (bound and released; good enough for a test's own process).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `downsync run`.
pub struct Daemon {
    child: Option<Child>,
    /// Where /metrics, /healthz and /readyz are served.
    pub addr: SocketAddr,
    /// Where /healthz and /readyz are served: `addr` with `--insecure-endpoints` (as the tests
    /// run it), else the next port.
    pub probes: SocketAddr,
    /// Its stderr (the log).
    pub log: PathBuf,
    launch: Launch,
    /// Starts left on another port when the metrics port was taken before downsync bound it.
    port_retries: u8,
}

/// How a [`Daemon`] was started, to start it again on another port.
struct Launch {
    name: String,
    cluster_args: Vec<OsString>,
    args: Vec<OsString>,
    rust_log: Option<String>,
    env: Vec<(String, String)>,
    /// Serve as deployed: HTTPS behind token reviews, probes on the next port.
    secure: bool,
}

impl Launch {
    /// Where the probes answer for metrics address `addr`.
    fn probes(&self, addr: SocketAddr) -> SocketAddr {
        if self.secure { SocketAddr::new(addr.ip(), addr.port().saturating_add(1)) } else { addr }
    }

    /// Spawns `downsync run` with a free metrics port: the child, that address, its log.
    fn spawn(&self) -> Result<(Child, SocketAddr, PathBuf)> {
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let log = std::env::temp_dir().join(format!("downsync-{}-{}-{port}.log", self.name, std::process::id()));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(downsync_bin()?);
        cmd.arg("run").args(&self.cluster_args).args(["--metrics-addr", &addr.to_string()]);
        if !self.secure {
            // Every endpoint plainly on this port, as the tests read them.
            cmd.arg("--insecure-endpoints");
        }
        cmd.args(&self.args);
        match &self.rust_log {
            Some(filter) => cmd.env("RUST_LOG", filter),
            None => cmd.env_remove("RUST_LOG"),
        };
        let child = cmd
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("XDG_CACHE_HOME", std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("starting downsync run")?;
        Ok((child, addr, log))
    }
}

/// The arguments that point `downsync` at the test clusters.
pub fn cluster_args() -> Result<Vec<OsString>> {
    let c = clusters()?;
    let mut args: Vec<OsString> = vec!["--upstream-kubeconfig".into(), c.upstream.kubeconfig.clone().into()];
    if let Some(ctx) = &c.upstream.context {
        args.extend(["--upstream-context".into(), ctx.into()]);
    }
    args.extend(["--downstream-kubeconfig".into(), c.downstream.kubeconfig.clone().into()]);
    if let Some(ctx) = &c.downstream.context {
        args.extend(["--downstream-context".into(), ctx.into()]);
    }
    Ok(args)
}

impl Daemon {
    /// Starts `downsync run ARGS` against the test clusters, with a free metrics port and its log
    /// in a temp file named after `name`.
    pub fn start<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Result<Self> {
        Self::start_with(name, &cluster_args()?, args, Some("info,downsync=debug"))
    }

    /// Starts `downsync run CLUSTER_ARGS ARGS` with a free metrics port; `rust_log` None leaves
    /// `RUST_LOG` unset, so the program's default log filter applies.
    pub fn start_with<S: AsRef<std::ffi::OsStr>>(
        name: &str,
        cluster_args: &[OsString],
        args: &[S],
        rust_log: Option<&str>,
    ) -> Result<Self> {
        Self::start_with_env(name, cluster_args, args, rust_log, &[])
    }

    /// [`Daemon::start_with`] with extra environment variables (`POD_NAME` as a Deployment sets it).
    pub fn start_with_env<S: AsRef<std::ffi::OsStr>>(
        name: &str,
        cluster_args: &[OsString],
        args: &[S],
        rust_log: Option<&str>,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let launch = Launch {
            name: name.to_string(),
            cluster_args: cluster_args.to_vec(),
            args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
            rust_log: rust_log.map(str::to_string),
            env: env.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect(),
            secure: false,
        };
        let (child, addr, log) = launch.spawn()?;
        let probes = launch.probes(addr);
        Ok(Self { child: Some(child), addr, probes, log, launch, port_retries: 3 })
    }

    /// Starts `downsync run ARGS` against the test clusters as it is deployed: the operations
    /// endpoints over HTTPS behind token reviews on `addr`, the probes plainly on `probes`.
    pub fn start_secure<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Result<Self> {
        let launch = Launch {
            name: name.to_string(),
            cluster_args: cluster_args()?,
            args: args.iter().map(|a| a.as_ref().to_os_string()).collect(),
            rust_log: Some("info,downsync=debug".into()),
            env: Vec::new(),
            secure: true,
        };
        let (child, addr, log) = launch.spawn()?;
        let probes = launch.probes(addr);
        Ok(Self { child: Some(child), addr, probes, log, launch, port_retries: 3 })
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn get(&self, path: &str) -> Result<(u16, String)> {
        let addr = if path.starts_with("/healthz") || path.starts_with("/readyz") { self.probes } else { self.addr };
        plain_get(addr, path)
    }

    /// Waits until `/readyz` answers 200. Fails early, with the log, if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log = self.log_text();
                // The free port was free when picked, but the kernel may hand it to an outgoing
                // connection (ours or a control plane's) before downsync binds it.
                let taken =
                    |a: SocketAddr| log.contains(&format!("metricsAddr {a}: cannot listen: Address already in use"));
                if (taken(self.addr) || taken(self.probes)) && self.port_retries > 0 {
                    self.port_retries -= 1;
                    let (child, addr, log) = self.launch.spawn()?;
                    self.probes = self.launch.probes(addr);
                    (self.child, self.addr, self.log) = (Some(child), addr, log);
                    continue;
                }
                bail!("downsync exited with {status} before it was ready; log:\n{log}");
            }
            let last = match self.get("/readyz") {
                Ok((200, _)) => return Ok(()),
                Ok((_, why)) => why,
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!("downsync not ready after {timeout:?}: {last}; log:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET PATH` on the metrics address: status code and body.
    pub fn get_path(&self, path: &str) -> Result<(u16, String)> {
        self.get(path)
    }

    /// The `/plugins` entry of plugin `name`.
    pub fn plugin_status(&self, name: &str) -> Result<serde_json::Value> {
        let (code, body) = self.get_path("/plugins")?;
        anyhow::ensure!(code == 200, "/plugins answered {code}: {body}");
        let all: serde_json::Value = serde_json::from_str(&body)?;
        all["plugins"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
            .ok_or_else(|| anyhow::anyhow!("{name} is not on /plugins: {body}"))
    }

    /// `GET /healthz`: status code and body.
    pub fn healthz(&self) -> Result<(u16, String)> {
        self.get("/healthz")
    }

    /// `/readyz`: status code and body.
    pub fn readyz(&self) -> Result<(u16, String)> {
        self.get("/readyz")
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (code, text) = self.get("/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(text)
    }

    /// The sum of every sample of `name` whose labels include all of `labels` (`k="v"` pairs).
    pub fn metric(&self, name: &str, labels: &[&str]) -> Result<f64> {
        Ok(sum_metric(&self.metrics()?, name, labels))
    }

    /// SIGTERM, then waits for the exit.
    pub fn terminate(mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("already stopped"))?;
        let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        Ok(child.wait()?)
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A plain HTTP/1.0 `GET PATH` on `addr`: status code and body.
pub fn plain_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let code = body.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let text = body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, text))
}

/// The sum of every sample of `name` whose labels include all of `labels` (`k="v"` pairs).
pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Runs `downsync ARGS` to completion (for `diff`, `run --once`, bad input) and returns its
/// exit status, stdout and stderr.
pub fn run_to_end(args: &[OsString]) -> Result<(ExitStatus, String, String)> {
    run_to_end_with_env(args, &[])
}

/// [`run_to_end`] with extra environment variables.
pub fn run_to_end_with_env(args: &[OsString], env: &[(&str, &str)]) -> Result<(ExitStatus, String, String)> {
    let out = Command::new(downsync_bin()?)
        .args(args)
        .envs(env.iter().copied())
        .env("XDG_CACHE_HOME", std::env::temp_dir())
        .output()
        .context("running downsync")?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The built-in rule plugins (service, persistent-volume, immutable-config, service-account),
/// copied into a fresh folder for one daemon's `--plugins-dir`.
pub fn builtin_plugins_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("downsync-plugins-{name}-{}-{}", std::process::id(), free_port()?));
    std::fs::create_dir_all(&dir)?;
    for (krate, file) in [
        ("downsync-plugin-service", "service.wasm"),
        ("downsync-plugin-persistent-volume", "persistent-volume.wasm"),
        ("downsync-plugin-immutable-config", "immutable-config.wasm"),
        ("downsync-plugin-service-account", "service-account.wasm"),
    ] {
        std::fs::copy(crate::plugins::plugin_path(krate)?, dir.join(file))
            .with_context(|| format!("copying {krate} into {}", dir.display()))?;
    }
    Ok(dir)
}
