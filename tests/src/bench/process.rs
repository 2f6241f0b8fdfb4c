//! A `downsync run` child process: spawn, wait for /readyz, scrape /metrics, read its peak RSS, stop it with SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

use super::http::{self, Metrics};

/// A running `downsync run`.
#[derive(Debug)]
pub struct Downsync {
    child: Child,
    /// Its process id.
    pub pid: u32,
    /// Where /metrics, /healthz and /readyz are served.
    pub addr: SocketAddr,
    /// Its stderr and stdout.
    pub log: PathBuf,
    /// When it was spawned.
    pub started: Instant,
}

/// A free loopback port (bound, read, released).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

impl Downsync {
    /// Spawns `bin run ARGS --metrics-addr 127.0.0.1:PORT`, logging to `log`, with its
    /// compiled-plugin cache under `cache_home` (as `XDG_CACHE_HOME`).
    pub fn spawn(bin: &Path, args: &[String], log: &Path, cache_home: &Path) -> Result<Self> {
        Self::spawn_with_env(bin, args, log, cache_home, &[])
    }

    /// [`Downsync::spawn`] with more environment variables (a profiler's `LD_PRELOAD`).
    pub fn spawn_with_env(
        bin: &Path,
        args: &[String],
        log: &Path,
        cache_home: &Path,
        env: &[(String, String)],
    ) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let started = Instant::now();
        let child = Command::new(bin)
            .arg("run")
            .args(args)
            .args(["--metrics-addr", &addr.to_string(), "--insecure-endpoints"])
            .env("XDG_CACHE_HOME", cache_home)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Self { child, pid, addr, log: log.to_path_buf(), started })
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("downsync exited early ({status}); last lines of {}:\n{}", self.log.display(), tail(&self.log, 20));
        }
        Ok(())
    }

    /// Polls /readyz until it answers 200; returns when it did.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let last = match http::get(self.addr, "/readyz", Duration::from_secs(2)).await {
                Ok((200, _)) => return Ok(Instant::now()),
                Ok((code, body)) => format!("{code} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!("downsync not ready after {timeout:?} (last answer: {last}); log: {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Scrapes /metrics.
    pub async fn metrics(&self) -> Result<Metrics> {
        let (code, body) = http::get(self.addr, "/metrics", Duration::from_secs(5)).await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(Metrics::parse(&body))
    }

    /// Peak resident set size so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> Result<u64> {
        status_kib(self.pid, "VmHWM").map(|k| k * 1024)
    }

    /// Resident set size now (`VmRSS`), in bytes.
    pub fn rss(&self) -> Result<u64> {
        status_kib(self.pid, "VmRSS").map(|k| k * 1024)
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time(self.pid)
    }

    /// SIGKILL: no chance to release anything. Waits for the exit.
    pub async fn kill(mut self) -> Result<()> {
        self.child.kill().await.context("killing downsync")
    }

    /// Sends SIGTERM and waits for the exit; kills it after `timeout`. Returns the status and
    /// how long the shutdown took.
    pub async fn stop(mut self, timeout: Duration) -> Result<(ExitStatus, Duration)> {
        let asked = Instant::now();
        // By pid, the child we started; `kill` keeps this crate free of unsafe code.
        let sent = std::process::Command::new("kill").args(["-TERM", &self.pid.to_string()]).status()?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => Ok((status?, asked.elapsed())),
            Err(_) => {
                self.child.kill().await?;
                bail!("downsync did not exit within {timeout:?} of SIGTERM; killed (log: {})", self.log.display())
            }
        }
    }
}

/// A `kB` field of `/proc/PID/status`.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// CPU time (user + system) of a process, from `/proc/PID/stat` (in USER_HZ = 100 ticks per
/// second, as on every Linux build that matters).
pub fn cpu_time(pid: u32) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = text.rsplit_once(") ").map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("malformed stat");
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    Ok(Duration::from_millis((tick(11)? + tick(12)?) * 10))
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
