//! A small SVG plot of the sync sections' figures against N: peak RSS, and initial sync time of downsync and the copier.
//!
//! Hand-written SVG (two line charts side by side), so the bench needs no plotting crate.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::sync::Figures;

/// The plot's file name, next to the report (`docs/scale.svg` for `docs/benchmarks.md`).
pub const FILE: &str = "scale.svg";

/// One line of a chart: a name, a colour and its (N, value) points.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// SVG colour.
    pub colour: &'static str,
    /// Points, by N.
    pub points: Vec<(f64, f64)>,
}

/// The chart of `series` in a `w`×`h` box at (`x0`, `y0`), as SVG elements. Axes start at 0.
pub fn chart(title: &str, unit: &str, series: &[Series], (x0, y0, w, h): (f64, f64, f64, f64)) -> String {
    let (left, bottom, top, right) = (56.0, 40.0, 28.0, 12.0);
    let max_x = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).fold(0.0, f64::max).max(1.0);
    let max_y = nice(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max).max(1e-9));
    let (pw, ph) = (w - left - right, h - top - bottom);
    let px = |x: f64| x0 + left + x / max_x * pw;
    let py = |y: f64| y0 + top + ph - y / max_y * ph;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
        x0 + left,
        y0 + 18.0,
        escape(title)
    );
    for i in 0..=4 {
        let v = max_y * f64::from(i) / 4.0;
        let y = py(v);
        let _ = writeln!(
            out,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{} {}</text>"##,
            px(0.0),
            px(max_x),
            px(0.0) - 4.0,
            y + 4.0,
            short(v),
            unit
        );
    }
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            out,
            r##"<line x1="{0:.1}" y1="{1:.1}" x2="{0:.1}" y2="{2:.1}" stroke="#999"/><text x="{0:.1}" y="{3:.1}" font-size="11" text-anchor="middle">{4}</text>"##,
            px(x),
            py(0.0),
            py(0.0) + 4.0,
            py(0.0) + 16.0,
            short(x)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">objects (N)</text>"#,
        px(max_x / 2.0),
        y0 + h - 6.0
    );
    let _ = writeln!(
        out,
        r##"<polyline points="{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}" fill="none" stroke="#333"/>"##,
        px(0.0),
        py(max_y),
        px(0.0),
        py(0.0),
        px(max_x),
        py(0.0)
    );
    for (i, s) in series.iter().enumerate() {
        let pts: Vec<String> = s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y))).collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            pts.join(" "),
            s.colour
        );
        for &(x, y) in &s.points {
            let _ = writeln!(out, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, px(x), py(y), s.colour);
        }
        let ly = y0 + top + 14.0 * (i as f64) + 6.0;
        let _ = writeln!(
            out,
            r#"<rect x="{:.1}" y="{:.1}" width="10" height="3" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            px(0.0) + 8.0,
            ly - 3.0,
            s.colour,
            px(0.0) + 22.0,
            ly + 1.0,
            escape(&s.name)
        );
    }
    out
}

/// The whole plot of the sizes run: peak RSS on the left, initial sync times on the right.
pub fn plot(figures: &[Figures]) -> String {
    let n = |f: &Figures| f.n as f64;
    let rss = Series {
        name: "downsync peak RSS".into(),
        colour: "#1f77b4",
        points: figures
            .iter()
            .filter_map(|f| {
                let p = f.rss_initial.into_iter().chain(f.rss_restart).max()?;
                Some((n(f), p as f64 / f64::from(1 << 20)))
            })
            .collect(),
    };
    let time = |name: &str, colour, pick: fn(&super::sync::Pair) -> Option<std::time::Duration>| Series {
        name: name.into(),
        colour,
        points: figures
            .iter()
            .filter_map(|f| {
                let t: Vec<f64> = f.pairs.iter().filter_map(pick).map(|d| d.as_secs_f64()).collect();
                (!t.is_empty()).then(|| (n(f), t.iter().sum::<f64>() / t.len() as f64))
            })
            .collect(),
    };
    let times = [
        time("downsync (mean of the rounds)", "#d62728", |p| p.downsync),
        time("naive copier (mean of the rounds)", "#7f7f7f", |p| p.copier),
    ];
    let (w, h) = (420.0, 300.0);
    let mut out = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{h}" viewBox="0 0 {} {h}" font-family="sans-serif">"#,
        2.0 * w,
        2.0 * w
    );
    out.push('\n');
    out.push_str(r#"<rect width="100%" height="100%" fill="white"/>"#);
    out.push('\n');
    out.push_str(&chart("Peak RSS against N", "MiB", &[rss], (0.0, 0.0, w, h)));
    out.push_str(&chart("Initial sync against N", "s", &times, (w, 0.0, w, h)));
    out.push_str("</svg>\n");
    out
}

/// Writes [`plot`] next to the report when at least two sizes have figures; returns its file
/// name (a link relative to the report).
pub fn write_plot(out: &std::path::Path, figures: &[Figures]) -> Result<Option<String>> {
    let sized = figures.iter().filter(|f| f.rss_initial.is_some() || !f.pairs.is_empty()).count();
    if sized < 2 {
        return Ok(None);
    }
    let dir = out.parent().map_or_else(PathBuf::new, std::path::Path::to_path_buf);
    let path = dir.join(FILE);
    std::fs::write(&path, plot(figures)).with_context(|| format!("writing {}", path.display()))?;
    Ok(Some(FILE.to_string()))
}

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten.
fn nice(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|c| *c >= v).unwrap_or(10.0 * p)
}

/// A number for an axis label: 100000 as 100k.
fn short(v: f64) -> String {
    if v >= 1000.0 && (v / 1000.0).fract() == 0.0 { format!("{}k", v / 1000.0) } else { format!("{v:.0}") }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::sync::Pair;
    use std::time::Duration;

    fn mk_figures(n: usize, rss_mib: u64, downsync: u64, copier: u64) -> Figures {
        Figures {
            n,
            rss_initial: Some(rss_mib << 20),
            pairs: vec![Pair {
                copier: Some(Duration::from_secs(copier)),
                downsync: Some(Duration::from_secs(downsync)),
                ..Pair::default()
            }],
            ..Figures::default()
        }
    }

    #[test]
    fn the_plot_has_a_point_per_size_and_series_and_round_axes() {
        let svg = plot(&[mk_figures(10_000, 78, 27, 21), mk_figures(50_000, 200, 140, 110)]);
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 6, "2 sizes × (RSS, downsync, copier)");
        assert!(svg.contains(">50k</text>"), "{svg}");
        assert!(svg.contains(">200 MiB</text>"), "the RSS axis ends at a round 200: {svg}");
        assert_eq!(nice(140.0), 200.0);
        assert_eq!(nice(0.7), 1.0);
    }
}
