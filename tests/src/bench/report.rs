//! The report: the machine and cluster it ran on, one table per section, and the goals met or missed, as markdown.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// Where and when the figures were taken.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `std::thread::available_parallelism`.
    pub cores: usize,
    /// The downstream apiserver's `/version` (`gitVersion`), or why it is unknown.
    pub kubernetes: String,
    /// UTC date and time of the run.
    pub date: String,
    /// `git describe`-like commit of the checkout (with `-dirty` for local changes).
    pub commit: String,
    /// The command line that produced the report.
    pub command: String,
}

impl Environment {
    /// Gathers the machine facts; the Kubernetes version is filled in once a cluster answers.
    pub fn detect(repo: &Path) -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            kubernetes: "not contacted".into(),
            date: utc_now(),
            commit: git_commit(repo),
            command: std::env::args().collect::<Vec<_>>().join(" "),
        }
    }
}

/// Whether a goal was reached.
#[derive(Debug, Clone)]
pub struct Goal {
    /// The goal as the issue states it.
    pub text: String,
    /// Met, missed, or not measured.
    pub met: Option<bool>,
    /// The measured figure.
    pub measured: String,
    /// The goal's row in the performance issue's table (issue 11), if it is one of those.
    pub row: Option<u8>,
}

/// One section's table and what it says.
#[derive(Debug, Clone, Default)]
pub struct Section {
    /// The number of the measurement in issue 6.
    pub number: u8,
    /// Title.
    pub title: String,
    /// Column headers.
    pub columns: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
    /// Goals checked by this section.
    pub goals: Vec<Goal>,
    /// Remarks printed under the table (method, explanations).
    pub notes: Vec<String>,
}

impl Section {
    /// An empty section with its column headers.
    pub fn new(number: u8, title: &str, columns: &[&str]) -> Self {
        Self {
            number,
            title: title.into(),
            columns: columns.iter().map(|c| (*c).to_string()).collect(),
            ..Self::default()
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Adds a goal.
    pub fn goal(&mut self, text: &str, met: Option<bool>, measured: String) {
        self.goals.push(Goal { text: text.into(), met, measured, row: None });
    }

    /// Adds a goal that is row `row` of the performance issue's table.
    pub fn issue_goal(&mut self, row: u8, text: &str, met: Option<bool>, measured: String) {
        self.goals.push(Goal { text: text.into(), met, measured, row: Some(row) });
    }

    /// Adds a remark.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// The section as markdown.
    pub fn markdown(&self) -> String {
        let mut out = format!("## {}. {}\n\n", self.number, self.title);
        out.push_str(&table(&self.columns, &self.rows));
        for n in &self.notes {
            let _ = writeln!(out, "\n{n}");
        }
        out
    }
}

/// A whole run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Where it ran.
    pub env: Environment,
    /// The sections that ran, in order.
    pub sections: Vec<Section>,
}

impl Report {
    /// The report as a markdown document.
    pub fn markdown(&self) -> String {
        let mut out = String::from("# Benchmarks\n\n");
        out.push_str(
            "Produced by `downsync-bench` ([`tests/src/bin/downsync-bench.rs`](../tests/src/bin/downsync-bench.rs)), \
             which starts two local control planes (or uses `DOWNSYNC_UPSTREAM_KUBECONFIG` / \
             `DOWNSYNC_DOWNSTREAM_KUBECONFIG`) and measures everything in one run. The machine is shared and \
             noisy, so the figures that matter are ratios of two things measured side by side.\n\n\
             ```sh\ncargo run --release -p downsync-tests --bin downsync-bench -- --out docs/benchmarks.md\n```\n\n",
        );
        let e = &self.env;
        let facts = vec![
            vec!["cores".to_string(), e.cores.to_string()],
            vec!["Kubernetes".to_string(), e.kubernetes.clone()],
            vec!["date".to_string(), e.date.clone()],
            vec!["commit".to_string(), format!("`{}`", e.commit)],
            vec!["command".to_string(), format!("`{}`", e.command.replace('|', "\\|"))],
        ];
        out.push_str(&table(&["run".to_string(), String::new()], &facts));
        let verdict = |g: &Goal| match g.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "not measured",
        };
        let mut issue: Vec<(u8, Vec<String>)> = Vec::new();
        let mut other = Vec::new();
        for s in &self.sections {
            for g in &s.goals {
                match g.row {
                    Some(row) => issue.push((
                        row,
                        vec![
                            row.to_string(),
                            g.text.clone(),
                            g.measured.clone(),
                            verdict(g).into(),
                            s.number.to_string(),
                        ],
                    )),
                    None => {
                        other.push(vec![s.number.to_string(), g.text.clone(), g.measured.clone(), verdict(g).into()])
                    }
                }
            }
        }
        issue.sort_by_key(|(row, _)| *row);
        if !issue.is_empty() {
            out.push_str("\n## Goals\n\n");
            let rows: Vec<Vec<String>> = issue.into_iter().map(|(_, r)| r).collect();
            out.push_str(&table(&["#", "goal", "measured", "", "section"].map(String::from), &rows));
        }
        if !other.is_empty() {
            out.push_str(if rows_empty(self) { "\n## Goals\n\n" } else { "\nGoals kept from earlier issues:\n\n" });
            out.push_str(&table(&["section", "goal", "measured", ""].map(String::from), &other));
        }
        for s in &self.sections {
            out.push('\n');
            out.push_str(&s.markdown());
        }
        out
    }
}

/// Whether no goal of the run is a row of the performance issue.
fn rows_empty(r: &Report) -> bool {
    r.sections.iter().all(|s| s.goals.iter().all(|g| g.row.is_none()))
}

/// A markdown table.
pub fn table(columns: &[String], rows: &[Vec<String>]) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut out = line(columns);
    out.push_str(&line(&vec!["---".to_string(); columns.len()]));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn git_commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else { return "unknown".into() };
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{commit}-dirty") } else { commit }
}

/// The current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    utc(secs)
}

fn utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rest / 3600, rest % 3600 / 60)
}

/// Howard Hinnant's days-to-civil: days since 1970-01-01 to (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_computed_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400 + 3_660), "2000-02-29 01:01 UTC");
        assert_eq!(utc(1_767_225_600), "2026-01-01 00:00 UTC");
    }

    #[test]
    fn goals_are_gathered_at_the_top() {
        let mut s = Section::new(4, "Memory", &["N", "peak RSS"]);
        s.row(vec!["1000".into(), "40 MiB".into()]);
        s.goal("peak RSS ≤ 100 MiB at 10,000", Some(true), "40 MiB".into());
        let md = Report { env: Environment::default(), sections: vec![s] }.markdown();
        assert!(md.contains("| 4 | peak RSS ≤ 100 MiB at 10,000 | 40 MiB | met |"), "{md}");
        assert!(md.contains("## 4. Memory\n\n| N | peak RSS |\n| --- | --- |\n| 1000 | 40 MiB |"), "{md}");
        let mut s = Section::new(6, "Hot reload", &["swaps"]);
        s.goal("0 failed syncs", Some(true), "0".into());
        s.issue_goal(3, "reload p99 ≤ 250 ms", Some(false), "300 ms".into());
        let md = Report { env: Environment::default(), sections: vec![s] }.markdown();
        assert!(md.contains("| 3 | reload p99 ≤ 250 ms | 300 ms | **missed** | 6 |"), "{md}");
        assert!(md.contains("Goals kept from earlier issues:\n\n| section | goal | measured |  |\n| --- | --- | --- | --- |\n| 6 | 0 failed syncs | 0 | met |"), "{md}");
    }
}
