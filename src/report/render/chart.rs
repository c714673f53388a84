//! The page's chart: its section (legend, or a note without traffic) and the SVG of spend bars
//! and realized quality, drawn with plotters on an axis of whole hours in UTC. The bars are
//! hours, or days over an axis longer than four days; a period with traffic in only a few of its
//! hours narrows the axis to those hours. The SVG comes twice, wide and narrow (larger text on
//! fewer ticks), and the stylesheet shows the narrow one on small screens.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use super::{escape, utc};
use crate::domain::calendar::HOUR_MS;
use crate::report::Report;

/// Longest period, in hours, the chart spans before it narrows to the hours with traffic.
const MAX_AXIS_HOURS: u64 = 24 * 93;
/// Longest axis, in hours, drawn with a bar per hour; a longer one has a bar per UTC day.
const MAX_HOURLY_AXIS: u64 = 4 * 24;
/// Fewest hours an axis narrowed to the traffic spans (when the period has them).
const MIN_AXIS_HOURS: u64 = 4;

/// How one of the two SVGs is drawn.
#[derive(Debug, Clone, Copy)]
pub(super) struct Look {
    /// Size of the SVG, pixels (it scales with the page).
    size: (u32, u32),
    /// Font size of tick labels and axis descriptions, as plotters takes it (it writes 0.8 of
    /// it into the SVG).
    font: u32,
    /// Heights and widths of the label areas: bottom, left, right.
    areas: (u32, u32, u32),
    /// Most intervals between x-axis ticks (one tick fewer than it allows when the axis ends
    /// off a tick).
    max_ticks: u64,
    /// Whether the y axes carry their descriptions (the legend names them too).
    descriptions: bool,
    /// Whether hourly ticks read `HH:MM` (`MM-DD` at midnight) rather than `MM-DD HH:MM`.
    compact: bool,
    /// Line width of the quality line and the bar reference, pixels of the SVG.
    stroke: u32,
}

/// The chart for wide screens: 1120 × 360, shown at about its own size on a laptop.
pub(super) const WIDE: Look = Look {
    size: (1120, 360),
    font: 17,
    areas: (38, 96, 76),
    max_ticks: 8,
    descriptions: true,
    compact: false,
    stroke: 2,
};

/// The chart for phones: 480 × 420 with larger text, about 15 px high on a 390 px wide screen
/// (the wide chart's would be 4 px there).
pub(super) const NARROW: Look = Look {
    size: (480, 420),
    font: 26,
    areas: (50, 92, 58),
    max_ticks: 3,
    descriptions: false,
    compact: true,
    stroke: 3,
};

/// The chart's x axis: `[lo, hi)` in hours since the epoch, the bucket width in hours (1 or
/// 24), and whether it was narrowed to the hours with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Axis {
    /// First hour on the axis.
    pub(super) lo: u64,
    /// Hour the axis ends at (exclusive).
    pub(super) hi: u64,
    /// Hours per bar: 1, or 24 for a bar per UTC day.
    pub(super) bucket: u64,
    /// Whether the axis shows only the part of the period with traffic.
    pub(super) narrowed: bool,
}

/// Spend and realized quality of one bar.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Bucket {
    /// First hour of the bar, hours since the epoch.
    pub(super) start: u64,
    /// Spend in its hours, micro-USD.
    pub(super) spend_micros: i64,
    /// Its hours' realized quality, weighted by their outcomes; `None` without any.
    pub(super) quality: Option<f64>,
}

/// The chart section (or the no-traffic note).
pub(super) fn write_chart(o: &mut String, r: &Report) -> fmt::Result {
    let Some(axis) = axis(r) else {
        writeln!(o, "<section><h2>Spend and quality per hour (UTC)</h2>")?;
        return writeln!(
            o,
            "<div class=\"notraffic\">no traffic in this period</div></section>"
        );
    };
    let unit = if axis.bucket == 1 { "hour" } else { "day" };
    writeln!(o, "<section><h2>Spend and quality per {unit} (UTC)</h2>")?;
    write!(
        o,
        "<div class=\"legend\"><span><span class=\"sw bar\"></span>spend per {unit} (left axis, USD)</span>\
         <span><span class=\"sw line\"></span>realized quality (right axis, 0–1)</span>"
    )?;
    if let Some(bar) = r.total.quality_bar {
        write!(
            o,
            "<span><span class=\"sw dash\"></span>quality bar {bar:.2}</span>"
        )?;
    }
    writeln!(o, "</div>")?;
    if axis.narrowed {
        writeln!(
            o,
            "<p class=\"axisnote\">Showing {} → {} UTC, the part of the period with traffic; the \
             rest had none.</p>",
            utc(axis.lo.saturating_mul(HOUR_MS)),
            utc(axis.hi.saturating_mul(HOUR_MS)),
        )?;
    }
    let bars = buckets(r, axis.bucket);
    for (look, class) in [(WIDE, "wide"), (NARROW, "narrow")] {
        match chart_svg(r, axis, &bars, look) {
            Ok(svg) => writeln!(o, "<div class=\"chart {class}\">{svg}</div>")?,
            Err(e) => writeln!(
                o,
                "<div class=\"notraffic chart {class}\">chart unavailable: {}</div>",
                escape(&e.to_string())
            )?,
        }
    }
    writeln!(o, "</section>")
}

/// The spend bars and quality line as an SVG document (plotters' SVG backend), drawn as `look`
/// says.
///
/// The x axis spans `axis` in hours; a bar covers its bucket, hourly ticks sit on hour
/// boundaries and daily ticks in the middle of their day.
fn chart_svg(
    r: &Report,
    axis: Axis,
    bars: &[Bucket],
    look: Look,
) -> Result<String, Box<dyn std::error::Error>> {
    use plotters::prelude::*;

    let Axis { lo, hi, bucket, .. } = axis;
    let span = hi.saturating_sub(lo) as f64;
    let width = bucket as f64;
    let x_of = |b: &Bucket| b.start.saturating_sub(lo) as f64;

    let max_spend = bars
        .iter()
        .map(|b| b.spend_micros.max(0))
        .max()
        .unwrap_or(0) as f64
        / 1e6;
    let y_max = nice_ceiling(max_spend * 1.08);
    let step = tick_step(hi.saturating_sub(lo), look.max_ticks).next_multiple_of(bucket);
    // Daily ticks in the middle of their day, under their bar.
    let offset = bucket / 2;
    // The ticks stepped to, not searched for: a point in a far year must not make the chart
    // visit every hour in between.
    let ticks: Vec<f64> =
        std::iter::successors(lo.checked_next_multiple_of(step), |h| h.checked_add(step))
            .take_while(|h| h.saturating_add(offset) <= hi)
            .map(|h| (h - lo + offset) as f64)
            .collect();
    let x_label = |x: &f64| {
        let hour = lo.saturating_add(x.floor().max(0.0) as u64);
        let s = utc(hour.saturating_mul(HOUR_MS));
        // "YYYY-MM-DD HH:MM" → "MM-DD" for daily ticks (and a compact midnight), "HH:MM" for
        // compact hourly ones, else "MM-DD HH:MM".
        let range = if step >= 24 || (look.compact && hour % 24 == 0) {
            5..10
        } else if look.compact {
            11..16
        } else {
            5..16
        };
        s.get(range).unwrap_or(&s).to_owned()
    };
    let y_label = |y: &f64| money_tick(*y, y_max);
    let q_label = |q: &f64| format!("{q:.1}");

    let grey = RGBColor(87, 96, 106);
    let grid = RGBColor(234, 238, 242);
    let bar_colour = RGBColor(59, 130, 246);
    let line_colour = RGBColor(234, 88, 12);
    let ref_colour = RGBColor(110, 119, 129);
    let label_font = ("sans-serif", look.font).into_font().color(&grey);
    let (bottom, left, right) = look.areas;
    let unit = if bucket == 1 { "hour" } else { "day" };
    let spend_desc = format!("spend per {unit} (USD)");
    let (spend_desc, quality_desc) = if look.descriptions {
        (spend_desc.as_str(), "realized quality")
    } else {
        ("", "")
    };

    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, look.size).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(14)
            .margin_bottom(6)
            .margin_left(8)
            .margin_right(8)
            .x_label_area_size(bottom)
            .y_label_area_size(left)
            .right_y_label_area_size(right)
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
            .y_desc(spend_desc)
            .label_style(label_font.clone())
            .axis_desc_style(label_font.clone())
            .draw()?;
        chart
            .configure_secondary_axes()
            .axis_style(grey)
            .y_labels(6)
            .y_label_formatter(&q_label)
            .y_desc(quality_desc)
            .label_style(label_font.clone())
            .axis_desc_style(label_font)
            .draw()?;

        chart.draw_series(bars.iter().map(|b| {
            let x = x_of(b);
            let y = (b.spend_micros.max(0) as f64 / 1e6).min(y_max);
            Rectangle::new(
                [(x + 0.12 * width, y), (x + 0.88 * width, 0.0)],
                bar_colour.filled(),
            )
        }))?;

        if let Some(bar) = r.total.quality_bar {
            let bar = bar.clamp(0.0, 1.0);
            chart.draw_secondary_series(DashedLineSeries::new(
                [(0.0, bar), (span, bar)],
                8,
                5,
                ref_colour.stroke_width(look.stroke),
            ))?;
        }

        let quality: Vec<(f64, f64)> = bars
            .iter()
            .filter_map(|b| b.quality.map(|q| (x_of(b) + width / 2.0, q)))
            .collect();
        // One line per run of consecutive bars: a bar without outcomes leaves a gap.
        let mut start = 0;
        for end in 1..=quality.len() {
            let breaks = quality
                .get(end)
                .zip(quality.get(end - 1))
                .is_none_or(|(next, prev)| next.0 - prev.0 > 1.5 * width);
            if breaks {
                if let Some(run) = quality.get(start..end).filter(|run| run.len() > 1) {
                    chart.draw_secondary_series(LineSeries::new(
                        run.iter().copied(),
                        line_colour.stroke_width(look.stroke),
                    ))?;
                }
                start = end;
            }
        }
        chart.draw_secondary_series(
            quality
                .iter()
                .map(|&(x, q)| Circle::new((x, q), look.stroke + 1, line_colour.filled())),
        )?;
        root.present()?;
    }
    Ok(buf)
}

/// The series in bars of `width` hours (aligned to multiples of it, so daily bars are UTC
/// days), oldest first: spend summed, realized quality averaged over the hours with one,
/// weighted by their outcomes (at least one each).
pub(super) fn buckets(r: &Report, width: u64) -> Vec<Bucket> {
    let width = width.max(1);
    // Start hour → (spend, weighted quality sum, weight).
    let mut acc: BTreeMap<u64, (i64, f64, f64)> = BTreeMap::new();
    for p in &r.series {
        let hour = p.start_ms / HOUR_MS;
        let e = acc.entry(hour - hour % width).or_default();
        e.0 = e.0.saturating_add(p.spend_micros);
        if let Some(q) = p.realized_quality.filter(|q| q.is_finite()) {
            let w = p.outcomes.max(1) as f64;
            e.1 += q.clamp(0.0, 1.0) * w;
            e.2 += w;
        }
    }
    acc.into_iter()
        .map(|(start, (spend_micros, sum, weight))| Bucket {
            start,
            spend_micros,
            quality: (weight > 0.0).then(|| (sum / weight).clamp(0.0, 1.0)),
        })
        .collect()
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

/// The chart's x axis; `None` without points.
///
/// The report period when it is known, covers every point and is not too long; otherwise the
/// hours from the first to the last point. When the traffic spans less than half the period,
/// the axis narrows to it, with a margin of a sixth of its hours (at least one) on each side,
/// widened within the period to at least [`MIN_AXIS_HOURS`]. An axis longer than
/// [`MAX_HOURLY_AXIS`] has a bar per UTC day and starts and ends on day boundaries.
pub(super) fn axis(r: &Report) -> Option<Axis> {
    let first = r.series.iter().map(|p| p.start_ms / HOUR_MS).min()?;
    let last = r.series.iter().map(|p| p.start_ms / HOUR_MS).max()?;
    let (tlo, thi) = (first, last.saturating_add(1));
    let (mut lo, mut hi, mut narrowed) = (tlo, thi, false);
    if r.since_ms > 0 && r.until_ms > r.since_ms {
        let plo = r.since_ms / HOUR_MS;
        let phi = r.until_ms.div_ceil(HOUR_MS);
        if plo <= tlo && phi >= thi && phi - plo <= MAX_AXIS_HOURS {
            (lo, hi) = (plo, phi);
            let traffic = thi - tlo;
            if traffic.saturating_mul(2) < phi - plo {
                let margin = (traffic / 6).max(1);
                let mut nlo = tlo.saturating_sub(margin).max(plo);
                let mut nhi = thi.saturating_add(margin).min(phi);
                // Widen, earlier hours first, while short and the period has room.
                while nhi - nlo < MIN_AXIS_HOURS && (nlo > plo || nhi < phi) {
                    if nlo > plo {
                        nlo -= 1;
                    }
                    if nhi - nlo < MIN_AXIS_HOURS && nhi < phi {
                        nhi += 1;
                    }
                }
                narrowed = (nlo, nhi) != (plo, phi);
                (lo, hi) = (nlo, nhi);
            }
        }
    }
    let bucket = if hi - lo > MAX_HOURLY_AXIS { 24 } else { 1 };
    Some(Axis {
        lo: lo - lo % bucket,
        hi: hi.div_ceil(bucket).saturating_mul(bucket),
        bucket,
        narrowed,
    })
}

/// Hours between x-axis ticks: at most `max_ticks` intervals over the span, on UTC-friendly
/// steps.
fn tick_step(span_hours: u64, max_ticks: u64) -> u64 {
    const STEPS: [u64; 12] = [1, 2, 3, 4, 6, 12, 24, 48, 72, 168, 336, 720];
    let max_ticks = max_ticks.max(1);
    STEPS
        .iter()
        .copied()
        .find(|s| span_hours.div_ceil(*s) <= max_ticks)
        .unwrap_or_else(|| span_hours.div_ceil(max_ticks).max(1))
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
    use crate::report::SeriesPoint;
    use crate::report::render::fixtures::{T0, many_days, one_day, sample};
    use crate::report::render::html;

    #[test]
    fn axis_scale_helpers() {
        assert_eq!(nice_ceiling(4.1), 5.0);
        assert_eq!(nice_ceiling(0.0), 0.01);
        assert_eq!(tick_step(6, 8), 1);
        assert_eq!(tick_step(24, 8), 3);
        assert_eq!(tick_step(24 * 30, 8), 168);
        assert_eq!(tick_step(5, 3), 2);
        assert_eq!(tick_step(12, 3), 4);
        assert_eq!(tick_step(24 * 14, 3), 168);
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

    /// The `<svg>…</svg>` inside `<div class="chart {class}">`.
    fn svg<'a>(h: &'a str, class: &str) -> &'a str {
        let start = h
            .find(&format!("<div class=\"chart {class}\"><svg"))
            .unwrap();
        let end = start + h[start..].find("</svg>").unwrap();
        &h[start..end]
    }

    /// The SVG's tick labels and axis descriptions (plotters writes each on a line of its own).
    fn labels(svg: &str) -> Vec<&str> {
        svg.split("<text")
            .skip(1)
            .filter_map(|t| t.split('>').nth(1))
            .map(|t| t.trim_end_matches("</text").trim())
            .collect()
    }

    #[test]
    fn a_short_period_keeps_its_hours() {
        let r = sample();
        let lo = T0 / HOUR_MS;
        assert_eq!(
            axis(&r),
            Some(Axis {
                lo,
                hi: lo + 12,
                bucket: 1,
                narrowed: false
            }),
            "six hours of traffic in twelve: the whole period"
        );
        assert!(!html(&r).contains("class=\"axisnote\""));
    }

    #[test]
    fn a_day_with_traffic_in_three_hours_narrows_to_them() {
        let r = one_day();
        let lo = T0 / HOUR_MS;
        // Traffic at 19:00-22:00 of a period ending 22:25 (axis end 23:00): an hour of margin
        // before, the period's end after, widened to four hours.
        assert_eq!(
            axis(&r),
            Some(Axis {
                lo: lo + 18,
                hi: lo + 23,
                bucket: 1,
                narrowed: true
            })
        );
        let h = html(&r);
        assert!(h.contains(
            "<p class=\"axisnote\">Showing 2025-03-04 18:00 → 2025-03-04 23:00 UTC, the part of \
             the period with traffic; the rest had none.</p>"
        ));
        let wide = labels(svg(&h, "wide"));
        let ticks: Vec<&str> = wide
            .iter()
            .copied()
            .filter(|l| l.starts_with("03-"))
            .collect();
        assert_eq!(
            ticks,
            [
                "03-04 18:00",
                "03-04 19:00",
                "03-04 20:00",
                "03-04 21:00",
                "03-04 22:00",
                "03-04 23:00"
            ]
        );
        // The narrow chart: every other hour, as HH:MM.
        let narrow = labels(svg(&h, "narrow"));
        assert!(
            narrow.contains(&"20:00") && narrow.contains(&"22:00"),
            "{narrow:?}"
        );
        assert!(
            !narrow.iter().any(|l| l.starts_with("03-04 ")),
            "{narrow:?}"
        );
        assert!(h.contains("Spend and quality per hour (UTC)"));
    }

    #[test]
    fn a_single_hour_widens_to_the_least_axis() {
        let mut r = one_day();
        r.series.truncate(1);
        let a = axis(&r).unwrap();
        assert_eq!((a.hi - a.lo, a.narrowed), (MIN_AXIS_HOURS, true));
        // Narrowing stays within the period: at its start, the margin goes after.
        let mut r = sample();
        r.series.truncate(1);
        r.series[0].start_ms = T0;
        r.until_ms = T0 + 24 * HOUR_MS;
        let a = axis(&r).unwrap();
        assert_eq!((a.lo, a.hi), (T0 / HOUR_MS, T0 / HOUR_MS + MIN_AXIS_HOURS));
    }

    #[test]
    fn a_long_period_has_a_bar_per_day() {
        let r = many_days();
        let lo = T0 / HOUR_MS;
        assert_eq!(
            axis(&r),
            Some(Axis {
                lo,
                hi: lo + 14 * 24,
                bucket: 24,
                narrowed: false
            })
        );
        let days = buckets(&r, 24);
        assert_eq!(days.len(), 14);
        for (d, day) in days.iter().enumerate() {
            assert_eq!(day.start, lo + d as u64 * 24);
            let spend: i64 = r
                .series
                .iter()
                .filter(|p| (p.start_ms / HOUR_MS - lo) / 24 == d as u64)
                .map(|p| p.spend_micros)
                .sum();
            assert_eq!(day.spend_micros, spend, "day {d}");
        }
        let h = html(&r);
        assert!(h.contains("Spend and quality per day (UTC)"));
        assert!(h.contains("spend per day (left axis, USD)"));
        let wide = labels(svg(&h, "wide"));
        assert!(wide.contains(&"spend per day (USD)"), "{wide:?}");
        // Every other day, under its bar, as MM-DD.
        let ticks: Vec<&str> = wide
            .iter()
            .copied()
            .filter(|l| l.starts_with("03-"))
            .collect();
        assert_eq!(
            ticks,
            [
                "03-05", "03-07", "03-09", "03-11", "03-13", "03-15", "03-17"
            ]
        );
        // Fourteen bars, not 224 hourly ones.
        assert_eq!(svg(&h, "wide").matches("fill=\"#3B82F6\"").count(), 14);
    }

    #[test]
    fn daily_quality_is_weighted_by_outcomes() {
        let mut r = sample();
        r.series = vec![
            SeriesPoint {
                start_ms: T0 + 3 * HOUR_MS,
                spend_micros: 1_000_000,
                tasks: 10,
                outcomes: 3,
                realized_quality: Some(1.0),
            },
            SeriesPoint {
                start_ms: T0 + 9 * HOUR_MS,
                spend_micros: 500_000,
                tasks: 10,
                outcomes: 1,
                realized_quality: Some(0.0),
            },
            SeriesPoint {
                start_ms: T0 + 10 * HOUR_MS,
                spend_micros: 250_000,
                tasks: 10,
                outcomes: 0,
                realized_quality: None,
            },
        ];
        assert_eq!(
            buckets(&r, 24),
            [Bucket {
                start: T0 / HOUR_MS,
                spend_micros: 1_750_000,
                quality: Some(0.75)
            }]
        );
        assert_eq!(buckets(&r, 1).len(), 3);
    }

    #[test]
    fn phones_get_a_narrow_chart_with_larger_text() {
        let h = html(&sample());
        let (wide, narrow) = (svg(&h, "wide"), svg(&h, "narrow"));
        assert!(wide.contains("<svg width=\"1120\" height=\"360\""));
        assert!(narrow.contains("<svg width=\"480\" height=\"420\""));
        // The font size in the SVG, as shown on a 390 px phone (about 350 px for the chart).
        let font = |svg: &str, width: f64| -> f64 {
            let at = svg.find("font-size=\"").unwrap() + "font-size=\"".len();
            let size: f64 = svg[at..].split('"').next().unwrap().parse().unwrap();
            size * 350.0 / width
        };
        assert!(font(narrow, 480.0) >= 14.0, "{}", font(narrow, 480.0));
        assert!(font(wide, 1120.0) < 5.0);
        // The descriptions are the legend's on the narrow chart.
        assert!(!labels(narrow).contains(&"spend per hour (USD)"));
        // The stylesheet shows one of the two: the narrow one on small screens only.
        assert!(h.contains(".chart.narrow{display:none}"));
        assert!(h.contains(
            "@media (max-width:640px){main{padding:18px 10px 28px}section{padding:12px 10px}\
             .kpis{grid-template-columns:minmax(0,1fr)}.chart.wide{display:none}\
             .chart.narrow{display:block}}"
        ));
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
