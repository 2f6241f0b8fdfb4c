//! The Grafana dashboard and the Prometheus alerts (charts/downsync/files, copied to
//! examples/monitoring): every metric they use, with every label they select, group by or print,
//! is on the /metrics of a running downsync that has synced, met a name conflict and a drift,
//! promoted, compared, rolled back and refused plugin versions, run a failing plugin, and holds
//! HA shards (and of a
//! second run that met a field conflict); the rules load in Prometheus' own rule parser; and the
//! example copies are the chart's files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use downsync_plugin_testing_stamp::{MARKER, TRAP, variant};
use downsync_tests::bench::reload::patch_bytes;
use downsync_tests::daemon::{Daemon, builtin_plugins_dir, cluster_args};
use downsync_tests::helm::rulecheck;
use downsync_tests::plugins::plugin_path;
use downsync_tests::{TestEnv, eventually, repo_root};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// Labels the scrape adds to every series (a PodMonitor or the Kubernetes pod relabelling):
/// the dashboard and the alerts may use them on any metric.
const TARGET_LABELS: &[&str] = &["namespace", "pod", "instance", "job", "container", "endpoint"];

/// One PromQL expression of the dashboard or the rules, with the labels its legend or its
/// annotations print.
#[derive(Debug)]
struct Use {
    /// Where: `alert DownsyncWriteLoop`, `panel Syncs by kind and result`.
    at: String,
    expr: String,
    printed: Vec<String>,
}

fn files_dir() -> std::path::PathBuf {
    repo_root().join("charts/downsync/files")
}

/// `{{ $labels.kind }}` (alerts) and `{{kind}}` (legends): the label names inside.
fn printed_labels(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        let after = &rest[i + 2..];
        let Some(end) = after.find("}}") else { break };
        let inner = after[..end].trim();
        let inner = inner.strip_prefix("$labels.").unwrap_or(inner);
        if !inner.is_empty() && inner.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.push(inner.to_string());
        }
        rest = &after[end..];
    }
    out
}

/// Every expression of files/alerts.yaml and files/dashboard.json.
fn uses() -> Result<Vec<Use>> {
    let mut uses = Vec::new();
    let alerts: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(files_dir().join("alerts.yaml"))?)?;
    for group in alerts["groups"].as_array().context("alerts.yaml: no groups")? {
        for rule in group["rules"].as_array().context("alerts.yaml: a group without rules")? {
            let expr = rule["expr"].as_str().context("alerts.yaml: a rule without expr")?;
            let annotations: String =
                rule["annotations"].as_object().into_iter().flatten().filter_map(|(_, v)| v.as_str()).collect();
            uses.push(Use {
                at: format!("alert {}", rule["alert"].as_str().unwrap_or("?")),
                expr: expr.into(),
                printed: printed_labels(&annotations),
            });
        }
    }
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(files_dir().join("dashboard.json"))?)?;
    for panel in dashboard["panels"].as_array().context("dashboard.json: no panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            uses.push(Use {
                at: format!("panel {}", panel["title"].as_str().unwrap_or("?")),
                expr: target["expr"].as_str().context("dashboard.json: a target without expr")?.into(),
                printed: printed_labels(target["legendFormat"].as_str().unwrap_or_default()),
            });
        }
    }
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(query) = var["query"]["query"].as_str() {
            uses.push(Use { at: format!("variable {}", var["name"]), expr: query.into(), printed: Vec::new() });
        }
    }
    Ok(uses)
}

/// The metrics an expression names, each with the labels of its selector (`{a="x", b=~"y"}`).
fn selectors(expr: &str) -> Vec<(String, Vec<String>)> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("downsync_").map(|p| p + i) {
        let starts_word = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let mut end = at;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        i = end;
        if !starts_word {
            continue;
        }
        let name = expr[at..end].to_string();
        let mut labels = Vec::new();
        if bytes.get(end) == Some(&b'{') {
            // Label matchers up to the closing brace, skipping quoted values.
            let (mut j, mut in_quotes, mut start) = (end + 1, false, end + 1);
            while j < bytes.len() {
                match bytes[j] {
                    b'\\' if in_quotes => j += 1,
                    b'"' => in_quotes = !in_quotes,
                    b',' | b'}' if !in_quotes => {
                        let matcher = expr[start..j].trim();
                        let label: String =
                            matcher.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                        if !label.is_empty() {
                            labels.push(label);
                        }
                        start = j + 1;
                        if bytes[j] == b'}' {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            i = j;
        }
        out.push((name, labels));
    }
    out
}

/// Labels an expression groups or matches by (`by (..)`, `without (..)`, `on (..)`,
/// `ignoring (..)`), and the label of `label_values(metric, label)`.
fn grouping(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let words = ["by", "without", "on", "ignoring"];
    let bytes = expr.as_bytes();
    for word in words {
        let mut i = 0;
        while let Some(at) = expr[i..].find(word).map(|p| p + i) {
            i = at + word.len();
            let before_ok = at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
            let rest = expr[i..].trim_start();
            if before_ok && rest.starts_with('(') {
                let inside = rest[1..].split(')').next().unwrap_or_default();
                out.extend(inside.split(',').map(str::trim).filter(|l| !l.is_empty()).map(String::from));
            }
        }
    }
    if let Some(args) = expr.strip_prefix("label_values(").and_then(|a| a.strip_suffix(')'))
        && let Some((_, label)) = args.rsplit_once(',')
    {
        out.push(label.trim().to_string());
    }
    out
}

/// The scrape as sample name -> label names seen on its samples.
fn scraped(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let series = line.rsplit_once(' ').map_or(line, |(s, _)| s);
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let entry = out.entry(name.to_string()).or_default();
        if let Some((_, names)) = selectors(&format!("downsync_x{{{labels}")).pop() {
            entry.extend(names);
        }
    }
    out
}

/// What the uses need that the scrape lacks, one line each.
fn missing(uses: &[Use], scrape: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for u in uses {
        let refs = selectors(&u.expr);
        if refs.is_empty() {
            problems.push(format!("{}: uses no downsync metric: {}", u.at, u.expr));
        }
        let mut known: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for (metric, labels) in &refs {
            let Some(have) = scrape.get(metric) else {
                problems.push(format!("{}: {metric} is not on /metrics", u.at));
                continue;
            };
            known.extend(have.iter().map(String::as_str));
            for l in labels {
                if !have.contains(l) && !TARGET_LABELS.contains(&l.as_str()) {
                    problems.push(format!("{}: {metric} has no label {l} (it has {have:?})", u.at));
                }
            }
        }
        for l in grouping(&u.expr).iter().chain(&u.printed) {
            if !known.contains(l.as_str()) {
                problems.push(format!("{}: label {l} is on none of its metrics", u.at));
            }
        }
    }
    problems
}

#[test]
fn the_examples_are_the_charts_monitoring_files() -> Result<()> {
    let examples = repo_root().join("examples/monitoring");
    for file in ["alerts.yaml", "dashboard.json"] {
        let (a, b) = (std::fs::read(examples.join(file))?, std::fs::read(files_dir().join(file))?);
        assert!(a == b, "examples/monitoring/{file} differs from charts/downsync/files/{file}: copy it over");
    }
    let rule: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(examples.join("prometheusrule.yaml"))?)?;
    let alerts: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(files_dir().join("alerts.yaml"))?)?;
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["spec"], alerts, "examples/monitoring/prometheusrule.yaml's spec is alerts.yaml");
    Ok(())
}

/// Runs rulecheck on `text` (written to a temp file named after `name`): success, stdout, stderr.
fn check_rules(name: &str, text: &str) -> Result<(bool, String, String)> {
    let path = std::env::temp_dir().join(format!("downsync-rules-{name}-{}.yaml", std::process::id()));
    std::fs::write(&path, text)?;
    let out = std::process::Command::new(rulecheck()?).arg(&path).output().context("running rulecheck")?;
    let _ = std::fs::remove_file(&path);
    Ok((out.status.success(), String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?))
}

#[test]
fn the_alert_rules_load_in_prometheus() -> Result<()> {
    let text = std::fs::read_to_string(files_dir().join("alerts.yaml"))?;
    let alerts: Value = serde_yaml_ng::from_str(&text)?;
    let rules: usize =
        alerts["groups"].as_array().into_iter().flatten().map(|g| g["rules"].as_array().map_or(0, Vec::len)).sum();
    assert!(rules >= 10, "{rules} rules");
    let (ok, out, err) = check_rules("alerts", &text)?;
    assert!(ok, "Prometheus' rule parser refuses alerts.yaml:\n{err}");
    assert!(out.trim().ends_with(&format!(": {rules} rules")), "{out}");

    // The parser is not blind: a broken expression and a broken annotation template are refused.
    let broken = text.replacen("ignoring (state)", "ignoring (state", 1);
    assert_ne!(broken, text);
    let (ok, _, err) = check_rules("broken-expr", &broken)?;
    assert!(!ok && err.contains("parse error"), "{err}");
    let broken = text.replacen("{{ $labels.side }}", "{{ $labels.side }", 1);
    assert_ne!(broken, text);
    let (ok, _, err) = check_rules("broken-template", &broken)?;
    assert!(!ok && err.contains("template"), "{err}");
    Ok(())
}

/// Replaces the plugin file the way an operator's tooling does: write aside, then rename.
fn install(dir: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(".stamp.wasm.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join("stamp.wasm"))?;
    Ok(())
}

fn stamp_version(marker: &str) -> Result<Vec<u8>> {
    let base = std::fs::read(plugin_path("downsync-plugin-testing-stamp")?)?;
    patch_bytes(&base, MARKER.as_bytes(), marker.as_bytes())
}

/// The same component with a custom section added: a new digest, the same behaviour.
fn rebuilt(wasm: &[u8]) -> Vec<u8> {
    let name = b"downsync-test-rebuild";
    let mut payload = vec![u8::try_from(name.len()).unwrap_or(0)];
    payload.extend_from_slice(name);
    payload.extend_from_slice(b"2");
    let mut out = wasm.to_vec();
    out.push(0);
    out.push(u8::try_from(payload.len()).unwrap_or(0));
    out.extend(payload);
    out
}

/// Waits until the sum of `metric`'s samples with `labels` reaches `at_least`.
async fn metric_reaches(d: &Daemon, metric: &str, labels: &[&str], at_least: f64) -> Result<()> {
    eventually(&format!("{metric}{labels:?} >= {at_least}"), Duration::from_secs(60), || async {
        Ok((d.metric(metric, labels)? >= at_least).then_some(()))
    })
    .await
}

#[tokio::test]
async fn every_metric_and_label_of_the_dashboard_and_the_alerts_is_on_a_running_downsyncs_metrics() -> Result<()> {
    let uses = uses()?;
    assert!(uses.len() >= 30, "the dashboard and the rules hold at least 30 expressions: {}", uses.len());

    let env = TestEnv::new("monitoring").await?;
    let ns = env.namespace.clone();
    let (up, down) = (
        Api::<ConfigMap>::namespaced(env.upstream.clone(), &ns),
        Api::<ConfigMap>::namespaced(env.downstream.clone(), &ns),
    );
    for i in 0..3 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}}))?;
        up.create(&PostParams::default(), &cm).await?;
    }
    // A name conflict: a downstream ConfigMap downsync does not own, with an upstream namesake.
    let taken: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "taken"}, "data": {"v": "theirs"}}))?;
    down.create(&PostParams::default(), &taken).await?;
    up.create(&PostParams::default(), &taken).await?;

    let plugins = builtin_plugins_dir(&format!("{ns}-mon"))?;
    let v1 = stamp_version(&variant(1))?;
    install(&plugins, &v1)?;
    // New stamp versions run in shadow for 3 calls.
    let config = plugins.with_extension("config.yaml");
    std::fs::write(&config, "plugins:\n  stamp:\n    rollout:\n      mode: shadow\n")?;
    let mut args: Vec<String> =
        ["--resource", "v1/ConfigMap", "--namespace", &ns, "--target", &ns].map(String::from).to_vec();
    let ha = [
        "--plugins-dir",
        &plugins.display().to_string(),
        "--config",
        &config.display().to_string(),
        "--ha",
        "--ha-shards",
        "2",
        "--ha-timing",
        "4,3,1",
        "--trial-window-calls",
        "3",
    ]
    .map(String::from);
    args.extend(ha);
    // As a Deployment's pod: its name and namespace from the downward API.
    let pod = [("POD_NAME", "monitoring-r0"), ("POD_NAMESPACE", ns.as_str())];
    let mut d = Daemon::start_with_env("monitoring", &cluster_args()?, &args, Some("info,downsync=debug"), &pod)?;
    d.wait_ready(Duration::from_secs(90)).await?;
    metric_reaches(&d, "downsync_ha_shards_held", &[], 2.0).await?;
    assert_eq!(d.metric("downsync_ha_shards", &[])?, 2.0, "downsync_ha_shards is --ha-shards");
    metric_reaches(&d, "downsync_sync_failures_total", &[r#"reason="NameConflict""#], 1.0).await?;

    // Drift: another manager changes a field downstream, and downsync reverts it.
    eventually("cm-0 downstream", Duration::from_secs(30), || async { Ok(down.get_opt("cm-0").await?) }).await?;
    let intruder = PatchParams { field_manager: Some("intruder".into()), ..PatchParams::default() };
    let change = Patch::Merge(json!({"data": {"i": "changed"}}));
    down.patch("cm-0", &intruder, &change).await?;
    metric_reaches(&d, "downsync_drift_total", &[r#"manager="intruder""#, r#"action="revert""#], 1.0).await?;

    // Plugin rollouts: a clean rebuild is promoted, a divergent version compared, a trapping one
    // rolled back, a file that is no component refused.
    install(&plugins, &rebuilt(&v1))?;
    metric_reaches(&d, "downsync_plugin_promotions_total", &[r#"plugin="stamp""#], 1.0).await?;
    install(&plugins, &stamp_version(&variant(2))?)?;
    metric_reaches(&d, "downsync_plugin_shadow_divergences_total", &[r#"plugin="stamp""#], 1.0).await?;
    install(&plugins, &stamp_version(TRAP)?)?;
    metric_reaches(&d, "downsync_plugin_rollbacks_total", &[r#"plugin="stamp""#], 1.0).await?;
    install(&plugins, b"not a component")?;
    metric_reaches(&d, "downsync_plugin_reload_failures_total", &[r#"plugin="stamp""#], 1.0).await?;
    // A shadow's failed calls are not counted as plugin errors; those of a brand-new plugin that
    // traps are (the same component under another file name, once the old file is gone).
    std::fs::remove_file(plugins.join("stamp.wasm"))?;
    eventually("the stamp plugin to be unloaded", Duration::from_secs(30), || async {
        let (code, body) = d.get_path("/plugins")?;
        let all: Value = serde_json::from_str(&body).with_context(|| format!("/plugins answered {code}: {body}"))?;
        let names: Vec<&str> =
            all["plugins"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
        Ok((!names.contains(&"stamp")).then_some(()))
    })
    .await?;
    std::fs::write(plugins.join(".fresh.tmp"), stamp_version(TRAP)?)?;
    std::fs::rename(plugins.join(".fresh.tmp"), plugins.join("fresh.wasm"))?;
    metric_reaches(&d, "downsync_plugin_errors_total", &[r#"plugin="stamp""#, r#"failure="trap""#], 1.0).await?;
    let first = d.metrics()?;
    d.terminate()?;

    // Field conflicts (409s) need server-side apply without force: a second run, whose writes
    // meet the field the intruder takes again.
    let ssa = plugins.with_extension("ssa.yaml");
    std::fs::write(&ssa, "sync:\n  strategy:\n    type: serverSideApply\n    force: false\n")?;
    down.patch("cm-0", &intruder, &change).await?;
    args.truncate(6);
    args.extend(["--config".to_string(), ssa.display().to_string()]);
    let mut d = Daemon::start("monitoring-ssa", &args)?;
    d.wait_ready(Duration::from_secs(90)).await?;
    metric_reaches(&d, "downsync_conflicts_total", &[r#"kind="ConfigMap""#], 1.0).await?;
    let second = d.metrics()?;
    d.terminate()?;

    // A plugin whose registry is out of reach (nothing listens on port 1): its pulls fail, and
    // the syncer is not ready without it (it never syncs without its rules).
    let offline = plugins.with_extension("offline.yaml");
    std::fs::write(
        &offline,
        "plugins:\n  offline:\n    source: oci://127.0.0.1:1/rules/offline:v1\n    verify: off\n",
    )?;
    let mut offline_args = args[..6].to_vec();
    offline_args.extend(["--config".to_string(), offline.display().to_string()]);
    let o = Daemon::start("monitoring-offline", &offline_args)?;
    let failing = [r#"plugin="offline""#, r#"reason="unreachable""#];
    // Not ready, so not waited for: its endpoint answers once it has connected.
    eventually("the offline plugin's pull failures", Duration::from_secs(60), || async {
        Ok(o.metric("downsync_plugin_pull_failures_total", &failing).ok().filter(|n| *n >= 1.0))
    })
    .await?;
    assert_ne!(o.readyz()?.0, 200, "not ready without a version of its plugin");
    let text = format!("{first}\n{second}\n{}", o.metrics()?);
    o.terminate()?;
    let scrape = scraped(&text);
    let problems = missing(&uses, &scrape);

    // The check is not blind: an unknown metric and an unknown label are reported.
    let wrong = [Use {
        at: "probe".into(),
        expr: r#"sum by (nope) (downsync_syncs_total{kind="x", bogus="y"}) + downsync_nope_total"#.into(),
        printed: vec!["absent".into()],
    }];
    let caught = missing(&wrong, &scrape);
    env.cleanup().await?;
    assert_eq!(caught.len(), 4, "{caught:#?}");
    assert!(
        problems.is_empty(),
        "the dashboard and the alerts use what /metrics lacks:\n  {}\n/metrics:\n{text}",
        problems.join("\n  ")
    );
    Ok(())
}
