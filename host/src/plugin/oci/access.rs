//! How registries are reached: credentials from a docker config file (an image pull Secret's
//! `.dockerconfigjson`), a custom CA, and plain HTTP only for registries named as insecure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;

use super::error::{PullError, PullFailure};

/// The largest credentials or CA file read.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The `registry` section of the config file: how plugin sources are pulled.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrySettings {
    /// A docker config file (`{"auths": {...}}`, the `.dockerconfigjson` of an image pull
    /// Secret) with the credentials of the registries plugins come from, re-read at every check
    /// so a rotated Secret is picked up. Not a setting: docker's own place, [`docker_config`]
    /// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`), where `docker login`,
    /// `cosign login` and `oras login` write and a pod mounts its pull Secret; the push and pull
    /// commands take another with `--credentials`. None there: anonymous.
    #[serde(skip)]
    pub credentials: Option<PathBuf>,
    /// PEM file of CA certificates trusted for registries, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Registries (`host:port`) reached over plain HTTP. Every other registry is HTTPS only.
    pub insecure: Vec<String>,
    /// How often the tag of each plugin source is checked for a new digest, in seconds. A
    /// source pinned by digest never changes and is not checked.
    pub check_seconds: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self { credentials: docker_config(), ca_file: None, insecure: Vec::new(), check_seconds: 60 }
    }
}

impl RegistrySettings {
    /// The interval between checks of a tag (at least a second).
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.check_seconds.max(1))
    }

    /// A registry client with these settings.
    pub fn client(&self) -> Result<oci_client::Client, PullError> {
        // reqwest is built without a crypto provider of its own: it takes the process's, which
        // is ring here as everywhere else in downsync. Installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut extra = Vec::new();
        if let Some(path) = &self.ca_file {
            let data = read_small(path).map_err(|e| setting_error("registry.caFile", path, &e))?;
            extra.push(Certificate { encoding: CertificateEncoding::Pem, data });
        }
        let protocol = if self.insecure.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(self.insecure.clone())
        };
        let config = ClientConfig {
            protocol,
            extra_root_certificates: extra,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("downsync/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        // Not `Client::new`: on a bad setting it falls back to a default client, silently
        // dropping the CA and the insecure registries.
        oci_client::Client::try_from(config).map_err(|e| {
            let path = self.ca_file.as_deref().unwrap_or(Path::new("-"));
            setting_error("registry.caFile", path, &format!("cannot be used: {e}"))
        })
    }

    /// The credentials for `registry` in the credentials file; anonymous when none is set or
    /// it has none for that registry.
    pub fn auth(&self, registry: &str) -> Result<RegistryAuth, PullError> {
        let Some(path) = &self.credentials else { return Ok(RegistryAuth::Anonymous) };
        let text = read_small(path).map_err(|e| setting_error("the docker config file", path, &e))?;
        auth_from_docker_config(&text, registry).map_err(|e| setting_error("the docker config file", path, &e))
    }
}

/// `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, when it exists: where `docker
/// login` and `cosign login` write.
pub fn docker_config() -> Option<PathBuf> {
    let dir = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))?;
    Some(dir.join("config.json")).filter(|p| p.is_file())
}

fn setting_error(setting: &str, path: &Path, why: &str) -> PullError {
    PullError::new(PullFailure::Setup, format!("{setting} ({}): {why}", path.display()))
}

fn read_small(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err("larger than 1 MiB".into());
    }
    Ok(bytes)
}

/// The credentials for `registry` in a docker config file's text: `auths.<registry>` with an
/// `auth` (base64 of `user:password`) or `username` and `password`. The key may also carry a
/// scheme (`https://host`), as `docker login` writes for some registries.
pub(super) fn auth_from_docker_config(text: &[u8], registry: &str) -> Result<RegistryAuth, String> {
    let doc: serde_json::Value = serde_json::from_slice(text).map_err(|e| format!("not a docker config file: {e}"))?;
    let auths = doc.get("auths").and_then(serde_json::Value::as_object).ok_or("no \"auths\" map")?;
    let entry = auths.iter().find(|(key, _)| {
        let host = key.trim_start_matches("https://").trim_start_matches("http://");
        host.trim_end_matches('/') == registry || host.split('/').next() == Some(registry)
    });
    let Some((key, entry)) = entry else { return Ok(RegistryAuth::Anonymous) };
    let field = |name: &str| entry.get(name).and_then(serde_json::Value::as_str).filter(|s| !s.is_empty());
    if let Some(encoded) = field("auth") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| format!("auths.{key:?}.auth is not base64"))?;
        let pair = String::from_utf8(decoded).map_err(|_| format!("auths.{key:?}.auth is not text"))?;
        let (user, password) = pair.split_once(':').ok_or(format!("auths.{key:?}.auth is not user:password"))?;
        return Ok(RegistryAuth::Basic(user.to_string(), password.to_string()));
    }
    match (field("username"), field("password")) {
        (Some(u), Some(p)) => Ok(RegistryAuth::Basic(u.to_string(), p.to_string())),
        _ => Err(format!("auths.{key:?} has neither auth nor username and password")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mk_config(entries: &str) -> Vec<u8> {
        format!("{{\"auths\": {{{entries}}}}}").into_bytes()
    }

    #[test]
    fn credentials_are_found_by_registry_in_either_form() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("robot:s3cret:with-colon");
        let text = mk_config(&format!(
            "\"127.0.0.1:5000\": {{\"auth\": \"{b64}\"}}, \"https://ghcr.io\": {{\"username\": \"u\", \"password\": \"p\"}}"
        ));
        let basic = |u: &str, p: &str| RegistryAuth::Basic(u.into(), p.into());
        assert_eq!(auth_from_docker_config(&text, "127.0.0.1:5000"), Ok(basic("robot", "s3cret:with-colon")));
        assert_eq!(auth_from_docker_config(&text, "ghcr.io"), Ok(basic("u", "p")));
        assert_eq!(auth_from_docker_config(&text, "quay.io"), Ok(RegistryAuth::Anonymous));
    }

    #[test]
    fn a_ca_file_that_holds_no_certificate_is_an_error_naming_the_setting() {
        let path = std::env::temp_dir().join(format!("downsync-oci-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
            .expect("write");
        let settings = RegistrySettings { ca_file: Some(path.clone()), ..RegistrySettings::default() };
        let err = settings.client().map(drop).expect_err("a broken CA").to_string();
        assert!(err.contains("registry.caFile") && err.contains(&path.display().to_string()), "{err}");
        let missing = RegistrySettings { ca_file: Some("/nonexistent/ca.crt".into()), ..RegistrySettings::default() };
        assert!(missing.client().map(drop).expect_err("missing").to_string().contains("registry.caFile"));
        assert!(RegistrySettings::default().client().is_ok());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_broken_credentials_file_is_an_error_naming_the_entry() {
        assert!(auth_from_docker_config(b"{", "x").expect_err("json").contains("docker config"));
        assert!(auth_from_docker_config(b"{}", "x").expect_err("auths").contains("auths"));
        let bad = mk_config("\"reg.example\": {\"auth\": \"%%%\"}");
        assert!(auth_from_docker_config(&bad, "reg.example").expect_err("b64").contains("reg.example"));
        let empty = mk_config("\"reg.example\": {}");
        assert!(auth_from_docker_config(&empty, "reg.example").expect_err("empty").contains("neither"));
    }
}
