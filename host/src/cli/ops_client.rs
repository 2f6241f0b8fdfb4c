//! A client for the operations endpoints of a running downsync (`--addr HOST:PORT`), for
//! `downsync explain` and `downsync plugin status`.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

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

/// `GET http://ADDR/PATH` and its JSON answer. `addr` may carry `http://`.
pub(super) async fn get_json(addr: &str, path_and_query: &str) -> Result<Value> {
    let host = addr.trim_start_matches("http://").trim_end_matches('/');
    let url = format!("http://{host}{path_and_query}");
    let uri: http::Uri =
        url.parse().map_err(|e: http::uri::InvalidUri| Error::Addr { addr: addr.into(), message: e.to_string() })?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let request = |message: String| Error::Request { url: url.clone(), addr: host.into(), message };
    let response = tokio::time::timeout(std::time::Duration::from_secs(30), client.get(uri))
        .await
        .map_err(|_| request("no answer within 30 s".into()))?
        .map_err(|e| request(e.to_string()))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| request(e.to_string()))?.to_bytes();
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
    fn a_plugin_still_on_winch_code_says_so() {
        let text = render_plugins(&mk_answer("baseline"));
        assert!(text.contains("active:      0123456789ab wit 0.2.0, Winch's code"), "{text}");
        let text = render_plugins(&mk_answer("optimized"));
        assert!(text.contains("active:      0123456789ab wit 0.2.0\n"), "{text}");
    }
}
