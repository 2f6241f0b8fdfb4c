//! `downsync plugin check|test|new|status|promote|replay`: a plugin file checked, tested against
//! fixtures, scaffolded, asked about in a running downsync, promoted, or replayed over a cluster.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use downsync::plugin::{Plugin, PluginEngine, fixtures, scaffold};

use super::args::Budget;

/// `plugin new`: a skeleton with fixtures that pass `plugin test` once built.
pub(super) fn new(name: String, lang: scaffold::Lang, dir: Option<PathBuf>, sdk: Option<PathBuf>) -> Result<ExitCode> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
    let skeleton = scaffold::Skeleton { name, lang, dir: dir.clone(), sdk };
    let written = skeleton.write().context("writing the plugin skeleton")?;
    println!("wrote {} files in {}", written.files.len(), dir.display());
    println!("build:  (cd {} && {})", dir.display(), written.build);
    println!(
        "test:   downsync plugin test {} {}",
        dir.join(&written.component).display(),
        dir.join("fixtures").display()
    );
    Ok(ExitCode::SUCCESS)
}

fn load(file: &Path, budget: &Budget) -> Result<Plugin> {
    let engine = PluginEngine::new(budget.engine()).context("starting the wasm engine")?;
    Plugin::load_file(&engine, file).with_context(|| format!("checking {}", file.display()))
}

fn print_info(plugin: &Plugin) {
    let info = plugin.info();
    println!("name:    {}", info.name);
    println!("version: {}", info.version);
    println!("sha256:  {}", plugin.digest());
    println!("wit:     downsync:rules@{}", info.wit);
    // Whether `instances: reused` would be honoured (version build metadata `+stateless`).
    println!("stateless: {}", if info.declares_stateless() { "yes (runs in reused instances)" } else { "no" });
    let hooks: Vec<&str> = [
        ("transform", info.hooks.transform),
        ("preserve", info.hooks.preserve),
        ("ignore-paths", info.hooks.ignore_paths),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    println!("hooks:   {}", hooks.join(", "));
    if info.reads.is_empty() {
        println!("reads:   the whole object");
    } else {
        println!("reads:   {}", info.reads.join(", "));
    }
    println!("kinds:");
    for k in &info.kinds {
        let group = if k.group.is_empty() { "core" } else { k.group.as_str() };
        println!("  - {} ({group})", k.kind);
    }
    if info.scope.is_empty() {
        println!("scope:   none (it only decides; it writes no field)");
    } else {
        println!("scope:");
        for s in &info.scope {
            println!("  - {s}");
        }
    }
    let concrete: Vec<_> = info.kinds.iter().filter(|k| k.group != "*" && k.kind != "*").collect();
    if !concrete.is_empty() {
        println!("ignore-paths:");
        for k in concrete {
            match plugin.ignore_paths(&k.group, &k.kind) {
                Ok(called) if called.value.is_empty() => println!("  {}: none", k.kind),
                Ok(called) => println!("  {}: {}", k.kind, called.value.join(", ")),
                Err(e) => println!("  {}: error: {e}", k.kind),
            }
        }
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("      {l}")).collect::<Vec<_>>().join("\n")
}

/// `plugin check`: loads the component and prints what it describes.
pub(super) fn check(file: &Path, budget: &Budget) -> Result<ExitCode> {
    print_info(&load(file, budget)?);
    Ok(ExitCode::SUCCESS)
}

/// `plugin test`: runs the component against its fixture cases; fails when one fails.
pub(super) fn test(file: &Path, dir: &Path, budget: &Budget) -> Result<ExitCode> {
    let plugin = load(file, budget)?;
    let cases = fixtures::load_dir(dir).with_context(|| format!("loading fixtures from {}", dir.display()))?;
    if cases.is_empty() {
        anyhow::bail!("no fixture cases in {}", dir.display());
    }
    let outcomes = fixtures::run_all(&plugin, &cases);
    let failed = outcomes.iter().filter(|o| o.failure.is_some()).count();
    for o in &outcomes {
        match &o.failure {
            None => println!("ok    {}", o.name),
            Some(why) => println!("FAIL  {}\n{}", o.name, indent(why)),
        }
    }
    println!("{} passed, {failed} failed ({} {})", outcomes.len() - failed, plugin.name(), plugin.info().version);
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `plugin status`: the plugins of a running downsync, from its `/plugins`.
pub(super) async fn status(endpoint: &super::args::EndpointArgs, json: bool) -> Result<ExitCode> {
    let answer = super::ops_client::get_json(endpoint, "/plugins").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        print!("{}", super::ops_client::render_plugins(&answer));
    }
    Ok(ExitCode::SUCCESS)
}

/// `plugin promote`: writes `<stem>.promote` (the component's sha256) next to the component.
pub(super) fn promote(file: &Path) -> Result<ExitCode> {
    let bytes = downsync::plugin::read_component(file, downsync::plugin::DEFAULT_MAX_COMPONENT_BYTES)?;
    let digest = downsync::plugin::sha256_hex(&bytes);
    let stem = file.file_stem().and_then(|s| s.to_str()).context("the file has no name")?;
    let marker = file.with_file_name(format!("{stem}.promote"));
    std::fs::write(&marker, format!("{digest}\n")).with_context(|| format!("writing {}", marker.display()))?;
    println!("wrote {} ({digest}); a running downsync promotes that version once it sees it", marker.display());
    println!("(for a ConfigMap-mounted folder, add the key {stem}.promote with that value to the ConfigMap)");
    Ok(ExitCode::SUCCESS)
}
