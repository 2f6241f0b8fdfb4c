//! A plain HTTP/1.0 GET for downsync's /readyz and /metrics, and a Prometheus text parser.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs `path` from `addr`; returns the status code and the body.
pub async fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
            .await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .with_context(|| format!("GET http://{addr}{path} timed out"))?
        .with_context(|| format!("GET http://{addr}{path}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    match status {
        Some(code) => Ok((code, body.to_string())),
        None => bail!("GET http://{addr}{path}: not an HTTP response: {:?}", head.chars().take(80).collect::<String>()),
    }
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (with `_total`, `_bucket`... suffixes as exposed).
    pub name: String,
    /// Label pairs.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

/// A parsed /metrics page.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub Vec<Sample>);

impl Metrics {
    /// Parses the text format; comment and malformed lines are skipped.
    pub fn parse(text: &str) -> Self {
        Self(text.lines().filter(|l| !l.starts_with('#')).filter_map(parse_line).collect())
    }

    /// The sum of the samples named `name` whose labels include every pair of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| with.iter().all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v)))
            .map(|s| s.value)
            // An empty f64 sum is -0.0, which would print as "-0".
            .fold(0.0, |a, b| a + b)
    }
}

/// Requests an apiserver has served, by (verb, resource), from its own `/metrics`
/// (`apiserver_request_total`); watches and the bench's own calls included.
pub async fn apiserver_requests(client: &kube::Client) -> Result<BTreeMap<(String, String), f64>> {
    let req = kube::core::Request::new("").get("metrics", &kube::api::GetParams::default())?;
    let text = client.request_text(req).await.context("GET /metrics from the apiserver")?;
    let mut out = BTreeMap::new();
    for s in Metrics::parse(&text).0.into_iter().filter(|s| s.name == "apiserver_request_total") {
        let label = |k: &str| s.labels.iter().find(|(lk, _)| lk == k).map(|(_, v)| v.clone()).unwrap_or_default();
        let mut resource = label("resource");
        let sub = label("subresource");
        if !sub.is_empty() {
            resource = format!("{resource}/{sub}");
        }
        *out.entry((label("verb"), resource)).or_insert(0.0) += s.value;
    }
    Ok(out)
}

/// `after - before` of two [`apiserver_requests`] readings, as `VERB resource count` for the
/// object kinds and namespaces, most frequent first.
pub fn request_delta(before: &BTreeMap<(String, String), f64>, after: &BTreeMap<(String, String), f64>) -> String {
    let kinds = ["configmaps", "services", "deployments", "namespaces"];
    let mut rows: Vec<(f64, String)> = after
        .iter()
        .filter(|((_, r), _)| kinds.iter().any(|k| r.split('/').next() == Some(k)))
        .map(|(k, v)| (v - before.get(k).copied().unwrap_or(0.0), format!("{} {}", k.0, k.1)))
        .filter(|(d, _)| *d >= 1.0)
        .collect();
    rows.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    rows.iter().map(|(d, k)| format!("{k} {d}")).collect::<Vec<_>>().join(", ")
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    let (series, value) = line.rsplit_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, Vec::new()),
    };
    Some(Sample { name: name.to_string(), labels, value })
}

fn parse_labels(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key.trim_start_matches(',').trim().to_string(), value));
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_by_label_subset() {
        let text = "# HELP downsync_syncs_total Syncs\n\
            downsync_syncs_total{kind=\"ConfigMap\",operation=\"created\",result=\"ok\"} 3\n\
            downsync_syncs_total{kind=\"Service\",operation=\"created\",result=\"error\"} 2\n\
            downsync_syncs_total{kind=\"Service\",operation=\"updated\",result=\"error\"} 1\n\
            downsync_queue_depth 0\n";
        let m = Metrics::parse(text);
        assert_eq!(m.sum("downsync_syncs_total", &[("result", "error")]), 3.0);
        assert_eq!(m.sum("downsync_syncs_total", &[]), 6.0);
        assert_eq!(m.sum("downsync_queue_depth", &[]), 0.0);
    }

    #[test]
    fn request_deltas_keep_the_object_kinds_most_frequent_first() {
        let k = |v: &str, r: &str| (v.to_string(), r.to_string());
        let before = BTreeMap::from([(k("POST", "configmaps"), 5.0), (k("LIST", "pods"), 1.0)]);
        let after = BTreeMap::from([
            (k("POST", "configmaps"), 15.0),
            (k("GET", "services"), 3.0),
            (k("LIST", "pods"), 9.0),
            (k("WATCH", "deployments"), 0.0),
        ]);
        assert_eq!(request_delta(&before, &after), "POST configmaps 10, GET services 3");
    }

    #[test]
    fn label_values_may_hold_escapes_commas_and_braces() {
        let m = Metrics::parse(r#"x{a="1,2",b="q\"}"} 7"#);
        assert_eq!(m.0[0].labels, vec![("a".into(), "1,2".into()), ("b".into(), "q\"}".into())]);
    }
}
