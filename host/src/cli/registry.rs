//! `downsync plugin push` and `plugin pull`: plugins to and from OCI registries, for people and
//! CI pipelines, with the checks and the verification the running syncer applies.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use downsync::plugin::oci::{Pull, RegistrySettings, Source, TrustedKey, VerifyPolicy, docker_config, push};
use downsync::plugin::{DEFAULT_MAX_COMPONENT_BYTES, Plugin, PluginEngine, read_component};

use super::args::{Budget, RegistryArgs};

impl RegistryArgs {
    fn settings(&self, source: &Source) -> Result<RegistrySettings> {
        for (flag, file) in [("--credentials", &self.credentials), ("--ca-file", &self.ca_file)] {
            if let Some(f) = file {
                anyhow::ensure!(f.is_file(), "{flag} {}: no such file", f.display());
            }
        }
        let credentials = self.credentials.clone().or_else(docker_config);
        let insecure = if self.insecure { vec![source.registry().to_string()] } else { Vec::new() };
        Ok(RegistrySettings { credentials, ca_file: self.ca_file.clone(), insecure, ..RegistrySettings::default() })
    }
}

/// `plugin push FILE oci://…`: checks the component as `plugin check` does, pushes it and prints
/// the digest to sign.
pub(super) async fn push_file(
    file: &Path,
    reference: &str,
    registry: &RegistryArgs,
    budget: &Budget,
) -> Result<ExitCode> {
    let source = Source::parse(reference).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(source.pinned().is_none(), "push to a tag (oci://REGISTRY/REPOSITORY:TAG), not to a digest");
    let (path, engine) = (file.to_path_buf(), budget.engine());
    let (plugin, bytes) = tokio::task::spawn_blocking(move || -> Result<(Plugin, Vec<u8>)> {
        let engine = PluginEngine::new(engine).context("starting the wasm engine")?;
        let plugin = Plugin::load_file(&engine, &path).with_context(|| format!("checking {}", path.display()))?;
        Ok((plugin, read_component(&path, DEFAULT_MAX_COMPONENT_BYTES)?))
    })
    .await??;
    let settings = registry.settings(&source)?;
    let client = settings.client()?;
    let auth = settings.auth(source.registry())?;
    let digest = push(&client, &auth, &source, bytes).await?;
    println!("pushed {} {} ({}) as {source}", plugin.name(), plugin.info().version, plugin.digest());
    println!("digest: {digest}");
    let repo = reference.rsplit_once(':').map_or(reference, |(r, _)| r).trim_start_matches("oci://");
    println!("sign:   cosign sign --key cosign.key --tlog-upload=false {repo}@{digest}");
    Ok(ExitCode::SUCCESS)
}

/// `plugin pull oci://… --key K`: pulls, verifies and writes the component.
pub(super) async fn pull_file(
    reference: &str,
    keys: &[PathBuf],
    no_verify: bool,
    out: Option<PathBuf>,
    registry: &RegistryArgs,
) -> Result<ExitCode> {
    let source = Source::parse(reference).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        no_verify || !keys.is_empty(),
        "give --key with the signer's cosign public key (cosign.pub), or --no-verify to take it unverified"
    );
    let keys: Vec<TrustedKey> = keys
        .iter()
        .map(|p| TrustedKey::load(p).map_err(|e| anyhow::anyhow!("--key {}: {e}", p.display())))
        .collect::<Result<_>>()?;
    let settings = registry.settings(&source)?;
    let client = settings.client()?;
    let auth = settings.auth(source.registry())?;
    let policy = if no_verify { VerifyPolicy::Off } else { VerifyPolicy::Required };
    let pull = Pull { client: &client, auth: &auth, keys: &keys, policy, limit: DEFAULT_MAX_COMPONENT_BYTES };
    let pulled = pull.pull(&source).await?;
    let name = source.reference().repository().rsplit('/').next().unwrap_or("plugin").to_string();
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.wasm")));
    std::fs::write(&out, &pulled.bytes).with_context(|| format!("writing {}", out.display()))?;
    println!("pulled {source} ({})", pulled.manifest_digest);
    println!("signed by: {}", pulled.signer.as_deref().unwrap_or("not verified (--no-verify)"));
    println!("wrote {} (sha256:{})", out.display(), pulled.layer_digest.trim_start_matches("sha256:"));
    Ok(ExitCode::SUCCESS)
}
