//! Line charts as standalone SVG files, for docs/BENCHMARKS.md: one line per system,
//! linear axes with round ticks, a legend. Small on purpose: the report needs a handful
//! of charts, not a plotting library.

use std::fmt::Write as _;

/// One line.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Series {
    /// The legend entry.
    pub name: String,
    /// `(x, y)` points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A chart's title and axis labels.
#[derive(Debug, Clone)]
pub struct Chart<'a> {
    /// Above the plot.
    pub title: &'a str,
    /// Under the x axis.
    pub x_label: &'a str,
    /// Beside the y axis.
    pub y_label: &'a str,
}

const W: f64 = 720.0;
const H: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 48.0;
const BOTTOM: f64 = 64.0;
const COLORS: [&str; 4] = ["#d9480f", "#1c7ed6", "#2b8a3e", "#862e9c"];

/// The chart as an SVG document.
pub fn line_chart(chart: &Chart<'_>, series: &[Series]) -> String {
    let all = || series.iter().flat_map(|s| s.points.iter().copied());
    let (x_max, y_max) = all().fold((0.0_f64, 0.0_f64), |(x, y), (px, py)| {
        (x.max(px), y.max(py))
    });
    let x_min = all().map(|p| p.0).fold(f64::INFINITY, f64::min).min(0.0);
    let x_step = nice_step(x_max - x_min);
    let y_step = nice_step(y_max);
    let x_top = ((x_max / x_step).ceil() * x_step).max(x_step);
    let y_top = ((y_max / y_step).ceil() * y_step).max(y_step);
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let sx = |x: f64| LEFT + (x - x_min) / (x_top - x_min) * pw;
    let sy = |y: f64| TOP + ph - y / y_top * ph;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
        W / 2.0,
        escape(chart.title)
    );
    // Grid and ticks.
    let mut y = 0.0;
    while y <= y_top + y_step / 2.0 {
        let py = sy(y);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e9ecef"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            label(y)
        );
        y += y_step;
    }
    let mut x = (x_min / x_step).floor() * x_step;
    while x <= x_top + x_step / 2.0 {
        let px = sx(x);
        let _ = writeln!(
            svg,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{:.1}" stroke="#f1f3f5"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            TOP + ph,
            TOP + ph + 18.0,
            label(x)
        );
        x += x_step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#495057"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#495057"/>"##,
        TOP + ph,
        W - RIGHT,
        TOP + ph,
        TOP + ph
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        H - 20.0,
        escape(chart.x_label)
    );
    let _ = writeln!(
        svg,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        escape(chart.y_label)
    );
    // Lines, points and the legend.
    for (i, s) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        if s.points.len() <= 24 {
            for &(x, y) in &s.points {
                let _ = writeln!(
                    svg,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                    sx(x),
                    sy(y)
                );
            }
        }
        let ly = TOP + 8.0 + i as f64 * 18.0;
        let _ = writeln!(
            svg,
            r#"<rect x="{:.1}" y="{:.1}" width="14" height="4" fill="{color}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + 14.0,
            ly,
            LEFT + 34.0,
            ly + 5.0,
            escape(&s.name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// A round tick step (1, 2 or 5 times a power of ten) giving about five ticks.
fn nice_step(span: f64) -> f64 {
    if span <= 0.0 || !span.is_finite() {
        return 1.0;
    }
    let raw = span / 5.0;
    let magnitude = 10_f64.powf(raw.log10().floor());
    let unit = raw / magnitude;
    let nice = if unit <= 1.0 {
        1.0
    } else if unit <= 2.0 {
        2.0
    } else if unit <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

fn label(v: f64) -> String {
    if v.abs() >= 10_000.0 {
        format!("{}k", trim(v / 1000.0))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(100.0), 20.0);
        assert_eq!(nice_step(7.0), 2.0);
        assert_eq!(nice_step(0.3), 0.1);
        assert_eq!(nice_step(0.0), 1.0);
        assert_eq!(label(20_000.0), "20k");
        assert_eq!(label(0.5), "0.5");
    }

    #[test]
    fn every_series_is_drawn_with_its_legend() {
        let svg = line_chart(
            &Chart {
                title: "Memory <vs> connections",
                x_label: "connections",
                y_label: "MB",
            },
            &[
                Series {
                    name: "Belfry".into(),
                    points: vec![(0.0, 10.0), (1000.0, 20.0)],
                },
                Series {
                    name: "Node".into(),
                    points: vec![(0.0, 40.0), (1000.0, 80.0)],
                },
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">Belfry</text>") && svg.contains(">Node</text>"));
        assert!(svg.contains("Memory &lt;vs&gt; connections"));
    }
}
