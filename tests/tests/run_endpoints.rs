//! The operations endpoints of `downsync run` as deployed, on a real API server: `/metrics` and
//! the rest over HTTPS (the self-signed certificate made at start) to callers whose bearer
//! token the downstream cluster's TokenReview accepts and its SubjectAccessReview grants `get`
//! on the path; the probes plainly on the next port, without a token.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use downsync_tests::TestEnv;
use downsync_tests::daemon::{Daemon, plain_get, run_to_end};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::Api;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Accepts the server's certificate unseen (downsync's is self-signed, made at start), as a
/// Prometheus job with `insecure_skip_verify` does; signatures are still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `GET https://ADDR/PATH` (HTTP/1.0) with an optional bearer token: status code and body.
async fn https_get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?.to_owned(), tcp)
        .await
        .context("TLS handshake")?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").as_bytes()).await?;
    let mut raw = Vec::new();
    // The server may close without a TLS close_notify; what was read by then is the answer.
    let _ = tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw);
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((code, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// A token of ServiceAccount `name` in `ns` from the TokenRequest API.
async fn token(client: &kube::Client, ns: &str, name: &str) -> Result<String> {
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), ns);
    let sa =
        ServiceAccount { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    sas.create(&PostParams::default(), &sa).await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { audiences: None, expiration_seconds: Some(600), ..Default::default() }),
        ..Default::default()
    };
    let answer = sas.create_token_request(name, &PostParams::default(), &request).await?;
    answer.status.and_then(|s| s.token).context("a TokenRequest without a token")
}

/// A ClusterRole granting `get` on `urls`, bound to ServiceAccount `sa` in `ns`.
async fn grant(client: &kube::Client, name: &str, urls: &[&str], ns: &str, sa: &str) -> Result<()> {
    let role = ClusterRole {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            non_resource_urls: Some(urls.iter().map(|u| (*u).to_string()).collect()),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
        ..Default::default()
    };
    Api::<ClusterRole>::all(client.clone()).create(&PostParams::default(), &role).await?;
    let binding = ClusterRoleBinding {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: sa.into(),
            namespace: Some(ns.into()),
            ..Default::default()
        }]),
    };
    Api::<ClusterRoleBinding>::all(client.clone()).create(&PostParams::default(), &binding).await?;
    Ok(())
}

async fn revoke(client: &kube::Client, name: &str) {
    let _ = Api::<ClusterRoleBinding>::all(client.clone()).delete(name, &DeleteParams::default()).await;
    let _ = Api::<ClusterRole>::all(client.clone()).delete(name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn operations_endpoints_answer_401_403_200_by_token_and_grant_and_probes_need_none() -> Result<()> {
    let started = Instant::now();
    let env = TestEnv::new("run-endpoints").await?;
    let ns = env.namespace.clone();
    let role = format!("{ns}-metrics-reader");
    let operator_role = format!("{ns}-endpoints-reader");
    let outcome = async {
        grant(&env.downstream, &role, &["/metrics"], &ns, "reader").await?;
        grant(&env.downstream, &operator_role, &["/metrics", "/plugins", "/explain", "/shards"], &ns, "operator")
            .await?;
        let operator = token(&env.downstream, &ns, "operator").await?;
        let reader = token(&env.downstream, &ns, "reader").await?;
        let stranger = token(&env.downstream, &ns, "stranger").await?;
        let mut d = Daemon::start_secure("endpoints", &["--resource", "v1/ConfigMap", "--namespace", &ns])?;
        d.wait_ready(Duration::from_secs(60)).await?;

        let mut matrix = Vec::new();
        for (who, tok, path) in [
            ("no token", None, "/metrics"),
            ("a token no cluster issued", Some("not-a-token"), "/metrics"),
            ("stranger (no grant)", Some(stranger.as_str()), "/metrics"),
            ("reader (/metrics granted)", Some(reader.as_str()), "/metrics"),
            ("reader (/metrics granted)", Some(reader.as_str()), "/explain?kind=ConfigMap&name=x"),
            ("reader (/metrics granted)", Some(reader.as_str()), "/plugins"),
            // The same again: answered from the cache, the same way.
            ("reader again", Some(reader.as_str()), "/metrics"),
            ("stranger again", Some(stranger.as_str()), "/metrics"),
        ] {
            let (code, body) = https_get(d.addr, path, tok).await?;
            matrix.push((who, path, code, body));
        }
        let codes: Vec<u16> = matrix.iter().map(|m| m.2).collect();
        eprintln!("matrix (who, path, code):");
        for (who, path, code, _) in &matrix {
            eprintln!("  {who:28} {path:34} {code}");
        }
        assert_eq!(codes, [401, 401, 403, 200, 403, 403, 200, 403], "{matrix:#?}");
        assert!(matrix[3].3.contains("downsync_"), "the metrics: {}", matrix[3].3);
        assert!(!d.log_text().contains(&reader), "a token was logged");

        // The probes: plainly, on the next port, without a token; nothing else there.
        assert_eq!(d.probes.port(), d.addr.port() + 1);
        assert_eq!(plain_get(d.probes, "/healthz")?.0, 200);
        assert_eq!(plain_get(d.probes, "/readyz")?.0, 200);
        assert_eq!(plain_get(d.probes, "/metrics")?.0, 404);
        // And the HTTPS port speaks no plain HTTP.
        if let Ok((code, _)) = plain_get(d.addr, "/metrics")
            && code == 200
        {
            bail!("/metrics answered over plain HTTP");
        }

        // The CLI over HTTPS: with an operator's token and the self-signed certificate accepted.
        let addr = d.addr.to_string();
        let cli = |extra: &[&str]| {
            let mut a: Vec<OsString> =
                ["plugin", "status", "--addr", addr.as_str(), "--json"].map(OsString::from).into();
            a.extend(extra.iter().map(OsString::from));
            run_to_end(&a)
        };
        let (code, text, err) = cli(&["--token", &operator, "--insecure-skip-tls-verify"])?;
        assert!(code.success(), "plugin status with an operator's token: {err}");
        assert!(text.contains("\"plugins\""), "{text}");
        let (code, _, err) = cli(&["--token", &operator])?;
        assert!(!code.success() && err.contains("--insecure-skip-tls-verify"), "an unverified certificate: {err}");
        let (code, _, err) = cli(&["--token", &reader, "--insecure-skip-tls-verify"])?;
        assert!(!code.success() && err.contains("403"), "a token without the grant: {err}");
        let (code, _, err) = cli(&["--insecure-skip-tls-verify"])?;
        assert!(!code.success() && err.contains("401"), "no token: {err}");

        let status = d.terminate()?;
        assert!(status.success(), "{status}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    revoke(&env.downstream, &role).await;
    revoke(&env.downstream, &operator_role).await;
    env.cleanup().await?;
    eprintln!("took {:?}", started.elapsed());
    outcome
}
