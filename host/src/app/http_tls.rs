//! The operations endpoints' TLS: the serving certificate (a mounted `tls.crt`/`tls.key`, or a
//! self-signed one made at start) and the accept loop that serves a router over it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why no serving certificate could be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A mounted file cannot be read or holds no PEM certificate or key.
    #[error("the endpoints' certificate: {path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The certificate and key do not make a TLS configuration (a key of another certificate,
    /// an unsupported key type).
    #[error("the endpoints' certificate: {0}")]
    Tls(#[source] rustls::Error),
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(#[source] rcgen::Error),
}

/// The names a self-signed certificate is made for: loopback, and this pod's name when known.
fn self_signed_names() -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()));
    names
}

/// The certificate chain and key from `dir/tls.crt` and `dir/tls.key` (a `kubernetes.io/tls`
/// Secret as mounted), or a self-signed pair when `dir` is None. Blocking: reads files.
pub fn server_config(dir: Option<&Path>) -> Result<Arc<rustls::ServerConfig>, Error> {
    let (chain, key) = match dir {
        Some(dir) => {
            let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
            let file = |path: &Path, message: String| Error::File { path: path.into(), message };
            let chain = CertificateDer::pem_file_iter(&crt)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file(&crt, e.to_string()))?;
            if chain.is_empty() {
                return Err(file(&crt, "no PEM certificate in it".into()));
            }
            let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| file(&key, e.to_string()))?;
            (chain, key)
        }
        None => {
            let made = rcgen::generate_simple_self_signed(self_signed_names()).map_err(Error::SelfSigned)?;
            let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
            (vec![made.cert.der().clone()], key)
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Error::Tls)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(Error::Tls)?;
    Ok(Arc::new(config))
}

/// Serves `app` over TLS on `listener` (HTTP/1.1) until `stop` turns true. Each connection
/// shakes hands on its own task, so a slow client holds up no other.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let stopped = async {
            // The guard wait_for returns is not Send: dropped here.
            let _ = stop.wait_for(|s| *s).await;
        };
        let tcp = tokio::select! {
            () = stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection to the operations endpoints");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!("TLS handshake timed out"),
            };
            let service = TowerToHyperService::new(app);
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await
            {
                tracing::debug!(error = %e, "an operations connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_makes_a_server_config() {
        assert!(server_config(None).is_ok());
    }

    #[test]
    fn a_missing_mounted_certificate_is_named() {
        let dir = std::env::temp_dir().join(format!("downsync-no-cert-{}", std::process::id()));
        let e = server_config(Some(&dir)).expect_err("no files");
        assert!(e.to_string().contains("tls.crt"), "{e}");
    }

    #[test]
    fn a_mounted_certificate_and_key_are_served() {
        let dir = std::env::temp_dir().join(format!("downsync-cert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let made = rcgen::generate_simple_self_signed(vec!["downsync.example".into()]).expect("a certificate");
        std::fs::write(dir.join("tls.crt"), made.cert.pem()).expect("write");
        std::fs::write(dir.join("tls.key"), made.signing_key.serialize_pem()).expect("write");
        let served = server_config(Some(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(served.is_ok(), "{:?}", served.err());
    }
}
