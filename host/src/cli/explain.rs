//! `downsync explain`: asks a running downsync's `/explain` which plugin (or built-in rule) kept
//! or changed each field where an object's downstream copy differs from upstream.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::Value;

use super::args::ExplainArgs;

/// Asks and prints the answer, for a terminal or as JSON.
pub(super) async fn show(a: ExplainArgs) -> Result<ExitCode> {
    // NAMESPACE/NAME, or, from many kcp workspaces, CLUSTER/NAMESPACE/NAME: the namespace as
    // the process keys it is everything before the last `/`.
    let (namespace, name) = match a.object.rsplit_once('/') {
        Some((ns, name)) => (Some(ns), name),
        None => (None, a.object.as_str()),
    };
    let mut path = format!("/explain?kind={}&name={name}", a.kind);
    if let Some(ns) = namespace {
        path.push_str(&format!("&namespace={ns}"));
    }
    let answer = super::ops_client::get_json(&a.endpoint, &path).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", render(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders the `/explain` answer for a terminal.
pub(super) fn render(answer: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}", answer["object"].as_str().unwrap_or("?"));
    if let Some(cluster) = answer["workspace"].as_str() {
        let ns = answer["upstreamNamespace"].as_str().unwrap_or("?");
        let _ = writeln!(out, "  from kcp workspace {cluster} (logical cluster), namespace {ns}");
    }
    let fields = answer["fields"].as_array().cloned().unwrap_or_default();
    if fields.is_empty() {
        let _ = writeln!(out, "  downstream matches upstream (status and server bookkeeping aside)");
    }
    let show = |v: &Value| if v.is_null() { "(absent)".to_string() } else { v.to_string() };
    for f in &fields {
        let _ = writeln!(out, "  {}", f["path"].as_str().unwrap_or("?"));
        let _ = writeln!(out, "    upstream:   {}", show(&f["upstream"]));
        let _ = writeln!(out, "    downstream: {}", show(&f["downstream"]));
        let _ = writeln!(out, "    by {}: {}", f["by"].as_str().unwrap_or("?"), f["why"].as_str().unwrap_or(""));
    }
    let history = answer["history"].as_array().cloned().unwrap_or_default();
    if !history.is_empty() {
        let _ = writeln!(out, "last rule calls (oldest first):");
        for h in history {
            let _ = writeln!(
                out,
                "  {}@{} {} -> {} ({} fuel, {} us) changed: {}",
                h["plugin"].as_str().unwrap_or("?"),
                h["digest"].as_str().unwrap_or("?"),
                h["hook"].as_str().unwrap_or("?"),
                h["decision"].as_str().unwrap_or("?"),
                h["fuel"],
                h["micros"],
                h["paths"]
                    .as_array()
                    .map(|p| p.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_answer_from_many_workspaces_names_the_workspace_and_one_from_one_does_not() {
        let mut answer = json!({"object": "ConfigMap ds-0123456789abcdef/cm", "fields": []});
        assert!(!render(&answer).contains("workspace"), "{}", render(&answer));
        answer["workspace"] = json!("2abc9xyz");
        answer["upstreamNamespace"] = json!("app");
        let text = render(&answer);
        assert!(text.contains("from kcp workspace 2abc9xyz (logical cluster), namespace app"), "{text}");
    }
}
