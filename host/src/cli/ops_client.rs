//! A client for the operations endpoints of a running downsync (`--addr HOST:PORT`, HTTPS with
//! a bearer token), for `downsync explain` and `downsync plugin status`.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

use super::args::EndpointArgs;

/// Why an endpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// The address or path does not make a URL.
    #[error("--addr {addr}: not a HOST:PORT ({message})")]
    Addr {
        /// What was given.
        addr: String,
        /// Why.
        message: String,
    },
    /// The TLS client cannot be set up.
    #[error("{message}")]
    Tls {
        /// Why.
        message: String,
    },
    /// The request failed.
    #[error("{url}: {message}; is downsync running with --metrics-addr {addr}?")]
    Request {
        /// The URL.
        url: String,
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The endpoint answered with an error.
    #[error("{url}: {status}: {message}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The `error` field of the answer, or its text.
        message: String,
    },
    /// The answer is not JSON.
    #[error("{url}: the answer is not JSON: {message}")]
    Json {
        /// The URL.
        url: String,
        /// Why.
        message: String,
    },
}

/// Result of a request.
pub(super) type Result<T, E = Error> = std::result::Result<T, E>;

/// The TLS client configuration: the CA given, or no verification when asked.
fn tls_config(endpoint: &EndpointArgs) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = |message: String| Error::Tls { message };
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?;
    if endpoint.insecure_skip_tls_verify {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(super::unverified::AnyCertificate::new(provider)))
            .with_no_client_auth());
    }
    let mut roots = rustls::RootCertStore::empty();
    if let Some(file) = &endpoint.certificate_authority {
        let certs = CertificateDer::pem_file_iter(file)
            .and_then(|c| c.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| tls(format!("--certificate-authority {}: {e}", file.display())))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(tls(format!("--certificate-authority {}: no certificate in it", file.display())));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// `GET https://ADDR/PATH` (or `http://` when `--addr` says so) with the bearer token, and its
/// JSON answer.
pub(super) async fn get_json(endpoint: &EndpointArgs, path_and_query: &str) -> Result<Value> {
    let addr = endpoint.addr.as_str();
    let (scheme, host) = match addr.split_once("://") {
        Some(("http", h)) => ("http", h),
        Some(("https", h)) => ("https", h),
        Some(_) => return Err(Error::Addr { addr: addr.into(), message: "use https:// or http://".into() }),
        None => ("https", addr),
    };
    let host = host.trim_end_matches('/');
    let url = format!("{scheme}://{host}{path_and_query}");
    let uri: http::Uri =
        url.parse().map_err(|e: http::uri::InvalidUri| Error::Addr { addr: addr.into(), message: e.to_string() })?;
    let mut request = http::Request::get(uri);
    if let Some(token) = &endpoint.token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {}", token.trim()));
    }
    let request =
        request.body(Empty::<Bytes>::new()).map_err(|e| Error::Addr { addr: addr.into(), message: e.to_string() })?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_config(endpoint)?)
        .https_or_http()
        .enable_http1()
        .build();
    let client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);
    let failed = |message: String| Error::Request { url: url.clone(), addr: host.into(), message };
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(request))
        .await
        .map_err(|_| failed("no answer within 30 s".into()))?
        .map_err(|e| {
            // The TLS failure is in the source chain; say what to do about a self-signed one.
            let mut message = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                message = format!("{message}: {s}");
                source = s.source();
            }
            if message.contains("UnknownIssuer") {
                message.push_str(
                    " (downsync's default certificate is self-signed: give --insecure-skip-tls-verify, or \
                     --certificate-authority for the CA of the certificate at /etc/downsync/tls)",
                );
            }
            failed(message)
        })?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| failed(e.to_string()))?.to_bytes();
    let parsed: std::result::Result<Value, _> = serde_json::from_slice(&body);
    if !status.is_success() {
        let message = parsed
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        return Err(Error::Status { url, status: status.as_u16(), message });
    }
    parsed.map_err(|e| Error::Json { url, message: e.to_string() })
}

/// Renders the `/plugins` answer for a terminal: one block per plugin file.
/// The registry source of a plugin, if it has one: where from, which digest, who signed it,
/// when it was last checked, and the last failure.
fn render_source(out: &mut String, source: &Value) {
    use std::fmt::Write as _;
    let Some(from) = source["source"].as_str() else { return };
    let cached =
        if source["fromCache"] == true { " (from the cache: the registry was out of reach at start)" } else { "" };
    let _ = writeln!(out, "  source:      {from} {}{cached}", source["digest"].as_str().unwrap_or("not pulled"));
    let _ = writeln!(out, "  signed by:   {}", source["signer"].as_str().unwrap_or("not verified"));
    let ago = source["lastCheckUnixSeconds"].as_u64().map_or_else(
        || "never".to_string(),
        |t| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            format!("{} s ago", now.saturating_sub(t))
        },
    );
    let _ = writeln!(out, "  checked:     {ago}");
    if let Some(e) = source["lastError"].as_str() {
        let _ = writeln!(out, "  pull error:  {e}");
    }
}

pub(super) fn render_plugins(answer: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let plugins = answer["plugins"].as_array().cloned().unwrap_or_default();
    if plugins.is_empty() {
        out.push_str("no plugins loaded\n");
    }
    let short = |v: &Value| v.as_str().map_or_else(|| "-".to_string(), |d| d.get(..12).unwrap_or(d).to_string());
    for p in plugins {
        let _ = writeln!(out, "{} ({})", p["name"].as_str().unwrap_or("?"), p["file"].as_str().unwrap_or("?"));
        let code = match p["code"].as_str() {
            Some("baseline") => ", Winch's code (Cranelift's is being compiled)",
            _ => "",
        };
        let _ = writeln!(out, "  active:      {} wit {}{code}", short(&p["digest"]), p["wit"].as_str().unwrap_or("-"));
        render_source(&mut out, &p["source"]);
        let calls =
            p["calls"].as_object().map(|c| c.iter().map(|(h, n)| format!("{h} {n}")).collect::<Vec<_>>().join(", "));
        let _ = writeln!(out, "  calls:       {}", calls.unwrap_or_default());
        let errors = p["errors"]
            .as_object()
            .filter(|e| !e.is_empty())
            .map(|e| e.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", "));
        let _ = writeln!(out, "  errors:      {}", errors.unwrap_or_else(|| "none".into()));
        let rollout = &p["rollout"];
        if let Some(t) = rollout["trial"].as_object().filter(|t| t["open"] == true) {
            let _ = writeln!(
                out,
                "  trial:       {} {}/{} calls, {}/{} s, {} errors",
                t["stage"].as_str().unwrap_or("?"),
                t["calls"],
                t["windowCalls"],
                t["elapsedSeconds"],
                t["windowSeconds"],
                t["errors"]
            );
        }
        if let Some(prev) = rollout["previousDigest"].as_str() {
            let _ = writeln!(out, "  rollback to: {}", prev.get(..12).unwrap_or(prev));
        }
        if let Some(s) = rollout["shadow"].as_object() {
            let state = if s["awaitingPromotion"] == true { "awaiting promotion" } else { "running" };
            let _ = writeln!(
                out,
                "  shadow:      {} {state}: {}/{} calls, {}/{} s, {} divergences, {} errors, promote {}",
                short(&s["digest"]),
                s["calls"],
                s["windowCalls"],
                s["elapsedSeconds"],
                s["windowSeconds"],
                s["divergences"],
                s["errors"],
                s["promote"].as_str().unwrap_or("?")
            );
            if let Some(d) = s["lastDivergence"].as_str() {
                let _ = writeln!(out, "  divergence:  {d}");
            }
        }
        if let Some(r) = rollout["lastRollout"].as_str() {
            let _ = writeln!(out, "  last change: {r}");
        }
        if let Some(e) = p["lastError"].as_object() {
            let _ = writeln!(
                out,
                "  last error:  {} {}: {}",
                e.get("hook").and_then(Value::as_str).unwrap_or("?"),
                e.get("failure").and_then(Value::as_str).unwrap_or("?"),
                e.get("message").and_then(Value::as_str).unwrap_or("?")
            );
        }
        if let Some(r) = p["refusedVersion"].as_str() {
            let _ = writeln!(out, "  refused:     {r}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::render_plugins;

    fn mk_answer(code: &str) -> serde_json::Value {
        json!({"plugins": [{"name": "service", "file": "service.wasm", "digest": "0123456789abcdef", "wit": "0.2.0",
            "code": code, "calls": {}, "errors": {}, "rollout": {}}]})
    }

    #[test]
    fn a_plugin_from_a_registry_shows_its_source_signer_and_last_failure() {
        let mut answer = mk_answer("optimized");
        answer["plugins"][0]["source"] = json!({"source": "oci://reg.example/rules/service:v1", "digest": "sha256:ab",
            "signer": "/keys/cosign.pub", "lastCheckUnixSeconds": 1, "lastError": "unreachable", "fromCache": true});
        let text = render_plugins(&answer);
        for want in [
            "source:      oci://reg.example/rules/service:v1 sha256:ab (from the cache",
            "signed by:   /keys/cosign.pub",
            "pull error:  unreachable",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert!(!render_plugins(&mk_answer("optimized")).contains("source:"));
    }

    #[test]
    fn a_plugin_still_on_winch_code_says_so() {
        let text = render_plugins(&mk_answer("baseline"));
        assert!(text.contains("active:      0123456789ab wit 0.2.0, Winch's code"), "{text}");
        let text = render_plugins(&mk_answer("optimized"));
        assert!(text.contains("active:      0123456789ab wit 0.2.0\n"), "{text}");
    }
}
