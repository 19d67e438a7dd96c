//! Server-drawn SVG charts for the analytics page: a line with a band (p50 within p95)
//! and bars. Each is an `<svg role="img">` with a title and a description for screen
//! readers; the page puts the same numbers in a table next to it. No script, no CDN.

use std::fmt::Write;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 36.0;

/// Text made safe inside SVG/HTML.
pub(crate) fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(c),
        }
    }
    escaped
}

/// What a chart shows: its accessible name and description, the x labels, and how a
/// value reads (`12 s`, `85%`).
pub(crate) struct Frame<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub description: &'a str,
    pub labels: &'a [String],
    pub format: &'a dyn Fn(f64) -> String,
    /// The least the y axis reaches (so an empty or tiny chart still reads sensibly:
    /// a minute for durations, 2 for counts).
    pub floor: f64,
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

fn y_of(value: f64, max: f64) -> f64 {
    TOP + plot_height() * (1.0 - (value / max).clamp(0.0, 1.0))
}

/// The frame: the `<svg>` start, title, description, the y grid with three labels and
/// up to seven x labels spread along the axis.
fn open(frame: &Frame, max: f64, x_of: &dyn Fn(usize) -> f64) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" id="{id}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-labelledby="{id}-title {id}-desc" preserveAspectRatio="xMidYMid meet"><title id="{id}-title">{title}</title><desc id="{id}-desc">{desc}</desc>"#,
        id = escape(frame.id),
        title = escape(frame.title),
        desc = escape(frame.description),
    );
    for step in 0..=2 {
        let value = max * step as f64 / 2.0;
        let y = y_of(value, max);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" x2="{x2}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{lx}" y="{ty:.1}" text-anchor="end">{label}</text>"#,
            x2 = WIDTH - RIGHT,
            lx = LEFT - 6.0,
            ty = y + 4.0,
            label = escape(&(frame.format)(value)),
        );
    }
    let count = frame.labels.len();
    let every = count.div_ceil(7).max(1);
    for (index, label) in frame.labels.iter().enumerate() {
        if index % every != 0 && index + 1 != count {
            continue;
        }
        if index + 1 == count && index % every != 0 && index % every < every / 2 {
            continue;
        }
        let _ = write!(
            svg,
            r#"<text class="axis" x="{x:.1}" y="{y}" text-anchor="middle">{label}</text>"#,
            x = x_of(index),
            y = HEIGHT - 12.0,
            label = escape(label),
        );
    }
    svg
}

/// A rounded maximum for the y axis (so grid labels read well), at least `floor`.
fn nice_max(max: f64, floor: f64) -> f64 {
    let max = max.max(floor);
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// A p50 line inside its p95 band, one point per label (gaps where a value is absent).
pub(crate) fn band(frame: &Frame, p50: &[Option<f64>], p95: &[Option<f64>]) -> String {
    let max = nice_max(
        p95.iter().chain(p50).flatten().copied().fold(0.0, f64::max),
        frame.floor,
    );
    let count = frame.labels.len().max(1);
    let x_of = |index: usize| {
        if count == 1 {
            LEFT + plot_width() / 2.0
        } else {
            LEFT + plot_width() * index as f64 / (count - 1) as f64
        }
    };
    let mut svg = open(frame, max, &x_of);
    // The band: one polygon per run of days having both figures.
    let mut run: Vec<usize> = Vec::new();
    let mut runs: Vec<Vec<usize>> = Vec::new();
    for index in 0..frame.labels.len() {
        if p50.get(index).copied().flatten().is_some()
            && p95.get(index).copied().flatten().is_some()
        {
            run.push(index);
        } else if !run.is_empty() {
            runs.push(std::mem::take(&mut run));
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    for run in &runs {
        let mut points: Vec<String> = run
            .iter()
            .map(|&i| format!("{:.1},{:.1}", x_of(i), y_of(p95[i].unwrap_or(0.0), max)))
            .collect();
        points.extend(
            run.iter()
                .rev()
                .map(|&i| format!("{:.1},{:.1}", x_of(i), y_of(p50[i].unwrap_or(0.0), max))),
        );
        if run.len() == 1 {
            let i = run[0];
            let _ = write!(
                svg,
                r#"<line class="band-single" x1="{x:.1}" x2="{x:.1}" y1="{a:.1}" y2="{b:.1}"/>"#,
                x = x_of(i),
                a = y_of(p95[i].unwrap_or(0.0), max),
                b = y_of(p50[i].unwrap_or(0.0), max),
            );
        } else {
            let _ = write!(
                svg,
                r#"<polygon class="band" points="{}"/>"#,
                points.join(" ")
            );
        }
        let line: Vec<String> = run
            .iter()
            .map(|&i| format!("{:.1},{:.1}", x_of(i), y_of(p50[i].unwrap_or(0.0), max)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline class="line" points="{}"/>"#,
            line.join(" ")
        );
        for &i in run {
            let _ = write!(
                svg,
                r#"<circle class="point" cx="{:.1}" cy="{:.1}" r="3"/>"#,
                x_of(i),
                y_of(p50[i].unwrap_or(0.0), max)
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

/// One bar per label (none where a value is absent); `max` fixes the scale (100% for
/// rates), else the largest value sets it.
pub(crate) fn bars(frame: &Frame, values: &[Option<f64>], max: Option<f64>) -> String {
    let max = max.unwrap_or_else(|| {
        nice_max(
            values.iter().flatten().copied().fold(0.0, f64::max),
            frame.floor,
        )
    });
    let count = frame.labels.len().max(1);
    let slot = plot_width() / count as f64;
    let x_of = |index: usize| LEFT + slot * (index as f64 + 0.5);
    let mut svg = open(frame, max, &x_of);
    let width = (slot * 0.7).max(1.0);
    for (index, value) in values.iter().enumerate() {
        let Some(value) = value else { continue };
        let y = y_of(*value, max);
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{width:.1}" height="{h:.1}"><title>{label}: {text}</title></rect>"#,
            x = x_of(index) - width / 2.0,
            h = (TOP + plot_height() - y).max(0.0),
            label = escape(frame.labels.get(index).map_or("", String::as_str)),
            text = escape(&(frame.format)(*value)),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame<'a>(labels: &'a [String], format: &'a dyn Fn(f64) -> String) -> Frame<'a> {
        Frame {
            id: "c",
            title: "Durations <p50>",
            description: "per day",
            labels,
            format,
            floor: 1.0,
        }
    }

    #[test]
    fn charts_are_accessible_escaped_and_skip_gaps() {
        let labels: Vec<String> = (1..=5).map(|d| format!("12-0{d}")).collect();
        let format = |v: f64| format!("{v:.0} s");
        let svg = band(
            &frame(&labels, &format),
            &[Some(10.0), Some(12.0), None, Some(11.0), Some(13.0)],
            &[Some(20.0), Some(25.0), None, Some(22.0), Some(30.0)],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains(r#"role="img""#));
        assert!(svg.contains("<title id=\"c-title\">Durations &lt;p50&gt;</title>"));
        // Two runs of days (a gap on the third): two bands and two lines.
        assert_eq!(svg.matches("<polygon").count(), 2);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        // The axis tops out at a round 30 s.
        assert!(svg.contains(">30 s<"), "{svg}");

        let rates = bars(
            &frame(&labels, &|v| format!("{:.0}%", v * 100.0)),
            &[Some(1.0), Some(0.5), None, Some(0.0), Some(0.75)],
            Some(1.0),
        );
        assert_eq!(rates.matches("<rect").count(), 4);
        assert!(rates.contains("<title>12-02: 50%</title>"));
        assert!(rates.contains(">100%<"));
    }

    #[test]
    fn nice_maxima_and_empty_charts() {
        assert_eq!(nice_max(0.0, 1.0), 1.0);
        assert_eq!(nice_max(7.0, 1.0), 8.0);
        assert_eq!(nice_max(180.0, 1.0), 200.0);
        assert_eq!(nice_max(2300.0, 1.0), 2500.0);
        let svg = band(&frame(&[], &|v| format!("{v}")), &[], &[]);
        assert!(svg.ends_with("</svg>") && !svg.contains("<polygon"));
    }
}
