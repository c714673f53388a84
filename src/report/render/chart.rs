//! The page's hourly chart: its section (legend, or a note without traffic) and the SVG of spend
//! bars and realized quality, drawn with plotters on an axis of whole hours in UTC.

use std::fmt::{self, Write as _};

use super::{escape, utc};
use crate::report::{Report, SeriesPoint};

/// One hour in milliseconds: the series bucket width.
pub(super) const HOUR_MS: u64 = 3_600_000;
/// Longest period, in hours, the chart spans before it narrows to the hours with traffic.
const MAX_AXIS_HOURS: u64 = 24 * 93;
/// Size of the SVG chart, pixels (it scales down with the page).
const CHART_SIZE: (u32, u32) = (1120, 360);

/// The hourly chart section (or the no-traffic note).
pub(super) fn write_chart(o: &mut String, r: &Report) -> fmt::Result {
    writeln!(o, "<section><h2>Spend and quality per hour (UTC)</h2>")?;
    if r.series.is_empty() {
        writeln!(
            o,
            "<div class=\"notraffic\">no traffic in this period</div></section>"
        )?;
        return Ok(());
    }
    write!(
        o,
        "<div class=\"legend\"><span><span class=\"sw bar\"></span>spend per hour (left axis, USD)</span>\
         <span><span class=\"sw line\"></span>realized quality (right axis, 0–1)</span>"
    )?;
    if let Some(bar) = r.total.quality_bar {
        write!(
            o,
            "<span><span class=\"sw dash\"></span>quality bar {bar:.2}</span>"
        )?;
    }
    writeln!(o, "</div>")?;
    match chart_svg(r) {
        Ok(svg) => writeln!(o, "<div class=\"chart\">{svg}</div>")?,
        Err(e) => writeln!(
            o,
            "<div class=\"notraffic\">chart unavailable: {}</div>",
            escape(&e.to_string())
        )?,
    }
    writeln!(o, "</section>")
}

/// The hourly spend bars and quality line as an SVG document (plotters' SVG backend).
///
/// The x axis spans the report period in hours (narrowed to the hours with traffic when the
/// period is unknown or very long); bar `i` covers hour `i`, ticks sit on hour boundaries.
fn chart_svg(r: &Report) -> Result<String, Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let (lo_h, hi_h) = axis_hours(r).ok_or("no series points")?;
    let span = (hi_h - lo_h) as f64;
    let x_of = |p: &SeriesPoint| (p.start_ms / HOUR_MS).saturating_sub(lo_h) as f64;

    let max_spend = r
        .series
        .iter()
        .map(|p| p.spend_micros.max(0))
        .max()
        .unwrap_or(0) as f64
        / 1e6;
    let y_max = nice_ceiling(max_spend * 1.08);
    let step = tick_step(hi_h - lo_h);
    // The ticks stepped to, not searched for: a point in a far year must not make the chart
    // visit every hour in between.
    let ticks: Vec<f64> =
        std::iter::successors(lo_h.checked_next_multiple_of(step), |h| h.checked_add(step))
            .take_while(|h| *h <= hi_h)
            .map(|h| (h - lo_h) as f64)
            .collect();
    let x_label = |x: &f64| {
        let ms = lo_h
            .saturating_add(x.round().max(0.0) as u64)
            .saturating_mul(HOUR_MS);
        let s = utc(ms);
        // "YYYY-MM-DD HH:MM" → "MM-DD HH:MM", or "MM-DD" for daily ticks.
        if step >= 24 {
            s.get(5..10).unwrap_or(&s).to_owned()
        } else {
            s.get(5..).unwrap_or(&s).to_owned()
        }
    };
    let y_label = |y: &f64| money_tick(*y, y_max);
    let q_label = |q: &f64| format!("{q:.1}");

    let grey = RGBColor(87, 96, 106);
    let grid = RGBColor(234, 238, 242);
    let bar_colour = RGBColor(59, 130, 246);
    let line_colour = RGBColor(234, 88, 12);
    let ref_colour = RGBColor(110, 119, 129);
    let label_font = ("sans-serif", 17).into_font().color(&grey);
    let desc_font = ("sans-serif", 17).into_font().color(&grey);

    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(14)
            .margin_bottom(6)
            .margin_left(8)
            .margin_right(8)
            .x_label_area_size(38)
            .y_label_area_size(96)
            .right_y_label_area_size(76)
            .build_cartesian_2d(HourAxis::new(span, ticks), 0f64..y_max)?
            .set_secondary_coord(HourAxis::new(span, Vec::new()), 0f64..1f64);

        chart
            .configure_mesh()
            .disable_x_mesh()
            .bold_line_style(grid)
            .light_line_style(TRANSPARENT)
            .axis_style(grey)
            .y_labels(6)
            .x_label_formatter(&x_label)
            .y_label_formatter(&y_label)
            .y_desc("spend per hour (USD)")
            .label_style(label_font.clone())
            .axis_desc_style(desc_font.clone())
            .draw()?;
        chart
            .configure_secondary_axes()
            .axis_style(grey)
            .y_labels(6)
            .y_label_formatter(&q_label)
            .y_desc("realized quality")
            .label_style(label_font)
            .axis_desc_style(desc_font)
            .draw()?;

        chart.draw_series(r.series.iter().map(|p| {
            let x = x_of(p);
            let y = (p.spend_micros.max(0) as f64 / 1e6).min(y_max);
            Rectangle::new([(x + 0.12, y), (x + 0.88, 0.0)], bar_colour.filled())
        }))?;

        if let Some(bar) = r.total.quality_bar {
            let bar = bar.clamp(0.0, 1.0);
            chart.draw_secondary_series(DashedLineSeries::new(
                [(0.0, bar), (span, bar)],
                8,
                5,
                ref_colour.stroke_width(2),
            ))?;
        }

        let mut quality: Vec<(f64, f64)> = r
            .series
            .iter()
            .filter_map(|p| {
                p.realized_quality
                    .filter(|q| q.is_finite())
                    .map(|q| (x_of(p) + 0.5, q.clamp(0.0, 1.0)))
            })
            .collect();
        quality.sort_by(|a, b| a.0.total_cmp(&b.0));
        // One line per run of consecutive hours: an hour without outcomes leaves a gap.
        let mut start = 0;
        for end in 1..=quality.len() {
            let breaks = quality
                .get(end)
                .zip(quality.get(end - 1))
                .is_none_or(|(next, prev)| next.0 - prev.0 > 1.5);
            if breaks {
                if let Some(run) = quality.get(start..end).filter(|run| run.len() > 1) {
                    chart.draw_secondary_series(LineSeries::new(
                        run.iter().copied(),
                        line_colour.stroke_width(2),
                    ))?;
                }
                start = end;
            }
        }
        chart.draw_secondary_series(
            quality
                .iter()
                .map(|&(x, q)| Circle::new((x, q), 3, line_colour.filled())),
        )?;
        root.present()?;
    }
    Ok(buf)
}

/// The chart's x axis: hours from the axis start, `0..span`, with ticks exactly at `ticks`
/// (plotters' own f64 axis picks fractional ticks, and its `with_key_points` wrapper loses the
/// label formatter).
struct HourAxis {
    span: f64,
    ticks: Vec<f64>,
}

impl HourAxis {
    fn new(span: f64, ticks: Vec<f64>) -> Self {
        Self { span, ticks }
    }
}

impl plotters::prelude::Ranged for HourAxis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = if self.span > 0.0 {
            value / self.span
        } else {
            0.0
        };
        limit.0 + (f64::from(limit.1 - limit.0) * frac).round() as i32
    }

    fn key_points<Hint: plotters::coord::ranged1d::KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        0.0..self.span
    }
}

/// `[first hour, end hour)` of the chart's x axis, in hours since the epoch; `None` without
/// points. The report period when it is known, covers every point and is not too long;
/// otherwise the hours from the first to the last point.
fn axis_hours(r: &Report) -> Option<(u64, u64)> {
    let first = r.series.iter().map(|p| p.start_ms / HOUR_MS).min()?;
    let last = r.series.iter().map(|p| p.start_ms / HOUR_MS).max()?;
    let (lo, hi) = (first, last + 1);
    if r.since_ms > 0 && r.until_ms > r.since_ms {
        let plo = r.since_ms / HOUR_MS;
        let phi = r.until_ms.div_ceil(HOUR_MS);
        if plo <= lo && phi >= hi && phi - plo <= MAX_AXIS_HOURS {
            return Some((plo, phi));
        }
    }
    Some((lo, hi))
}

/// Hours between x-axis ticks: at most about eight ticks, on UTC-friendly steps.
fn tick_step(span_hours: u64) -> u64 {
    const STEPS: [u64; 12] = [1, 2, 3, 4, 6, 12, 24, 48, 72, 168, 336, 720];
    STEPS
        .iter()
        .copied()
        .find(|s| span_hours.div_ceil(*s) <= 8)
        .unwrap_or_else(|| span_hours.div_ceil(8).max(1))
}

/// Smallest of 1, 2, 2.5, 5 × 10^k at or above `v` (at least a cent).
fn nice_ceiling(v: f64) -> f64 {
    if !v.is_finite() || v <= 0.01 {
        return 0.01;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v - 1e-12 {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Dollar tick label with as many decimals as the axis scale needs.
fn money_tick(y: f64, y_max: f64) -> String {
    let decimals = if y_max >= 10.0 {
        0
    } else if y_max >= 0.1 {
        2
    } else {
        3
    };
    format!("${y:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::render::fixtures::sample;
    use crate::report::render::html;

    #[test]
    fn axis_scale_helpers() {
        assert_eq!(nice_ceiling(4.1), 5.0);
        assert_eq!(nice_ceiling(0.0), 0.01);
        assert_eq!(tick_step(6), 1);
        assert_eq!(tick_step(24), 3);
        assert_eq!(tick_step(24 * 30), 168);
    }

    #[test]
    fn html_single_point_and_unknown_period() {
        let mut r = sample();
        r.series.truncate(1);
        r.since_ms = 0;
        r.until_ms = 0;
        r.total.quality_bar = None;
        let h = html(&r);
        assert!(h.contains("<svg"));
        assert!(
            h.contains("<circle"),
            "single quality point drawn as a marker"
        );

        // Zero spend and no quality at all still draws axes.
        r.series[0].spend_micros = 0;
        r.series[0].realized_quality = None;
        assert!(html(&r).contains("<svg"));
    }

    #[test]
    fn points_in_far_years_render_at_once_without_overflow() {
        // A fuzz find: one point at a far-future hour took a minute to render (every hour in
        // between was visited for ticks), and `u64::MAX` overflowed the tick labels.
        for far in [4_102_444_800_000_000, u64::MAX] {
            let mut r = sample();
            r.series[1].start_ms = far;
            let h = html(&r);
            assert!(h.contains("<svg"), "{far}");
        }
    }
}
