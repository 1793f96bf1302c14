//! `--plot`: the run second by second as an SVG chart, for people who would rather look than
//! read. Top: latency of answered requests (p50, p99, p99.9) in milliseconds; bottom: transfers
//! answered per second, with the seconds that had transport errors marked.

use std::path::Path;

use plotters::prelude::*;

use crate::Second;

/// A line of the latency chart: its name, the figure it draws and its colour.
type Line = (&'static str, fn(&Second) -> u64, RGBColor);

/// Refuses, before the run, a path the chart could not be written to.
pub fn check_path(path: &Path) -> Result<(), String> {
    let svg = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !svg {
        return Err(format!("--plot {}: the chart is SVG; name the file *.svg", path.display()));
    }
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            Err(format!("--plot {}: no directory {}", path.display(), dir.display()))
        }
        _ => Ok(()),
    }
}

/// Draws `timeline` into an SVG file at `path`.
pub fn write_svg(
    path: &Path,
    title: &str,
    timeline: &[Second],
) -> Result<(), Box<dyn std::error::Error>> {
    check_path(path)?;
    let root = SVGBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (top, bottom) = root.split_vertically(460);

    let end = timeline.last().map_or(1.0, |s| s.at_seconds).max(1.0);
    let ms = |us: u64| us as f64 / 1_000.0;
    let latency_max = timeline.iter().map(|s| ms(s.p999_us)).fold(0.0, f64::max).max(1.0) * 1.1;
    let mut latency = ChartBuilder::on(&top)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0.0..latency_max)?;
    latency
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency, ms (from intended send time)")
        .draw()?;
    let series: [Line; 3] = [
        ("p50", |s| s.p50_us, BLUE),
        ("p99", |s| s.p99_us, RGBColor(230, 120, 0)),
        ("p99.9", |s| s.p999_us, RED),
    ];
    for (name, value, color) in series {
        latency
            .draw_series(LineSeries::new(
                timeline.iter().map(|s| (s.at_seconds, ms(value(s)))),
                color.stroke_width(2),
            ))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    latency
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let rate_max =
        timeline.iter().map(|s| s.transfers_per_second).fold(0.0, f64::max).max(1.0) * 1.1;
    let mut rate = ChartBuilder::on(&bottom)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0.0..rate_max)?;
    rate.configure_mesh().x_desc("seconds").y_desc("transfers answered / s").draw()?;
    rate.draw_series(LineSeries::new(
        timeline.iter().map(|s| (s.at_seconds, s.transfers_per_second)),
        GREEN.stroke_width(2),
    ))?
    .label("transfers/s")
    .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN.stroke_width(2)));
    rate.draw_series(
        timeline
            .iter()
            .filter(|s| s.transport_errors > 0)
            .map(|s| Circle::new((s.at_seconds, s.transfers_per_second), 5, RED.filled())),
    )?
    .label("seconds with transport errors")
    .legend(|(x, y)| Circle::new((x + 10, y), 5, RED.filled()));
    rate.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(at: f64, p99_us: u64, errors: u64) -> Second {
        Second {
            at_seconds: at,
            transfers_per_second: 16_000.0 - at,
            p50_us: p99_us / 4,
            p99_us,
            p999_us: p99_us * 2,
            max_us: p99_us * 3,
            transport_errors: errors,
        }
    }

    /// The numbers of every polyline in the SVG, in order.
    fn polyline_points(svg: &str) -> Vec<usize> {
        svg.split("<polyline")
            .skip(1)
            .map(|rest| {
                let points = rest.split("points=\"").nth(1).expect("points attribute");
                let points = &points[..points.find('"').expect("closing quote")];
                points.split_whitespace().count()
            })
            .collect()
    }

    #[test]
    fn chart_has_one_point_per_second_for_each_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        let timeline: Vec<Second> = (1..=30u32)
            .map(|k| second(f64::from(k), 3_000 + u64::from(k) * 100, u64::from(k % 10 / 9)))
            .collect();
        write_svg(&path, "test run", &timeline).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        for label in ["p50", "p99", "p99.9", "transfers/s", "test run"] {
            assert!(svg.contains(label), "no {label} in the chart");
        }
        // Three latency lines and the rate line, 30 points each (legend swatches have 2).
        let long: Vec<usize> = polyline_points(&svg).into_iter().filter(|&n| n > 2).collect();
        assert_eq!(long, vec![30, 30, 30, 30]);
        // Seconds 9, 19 and 29 had errors: three red marks plus the legend's.
        assert_eq!(svg.matches("<circle").count(), 4);
    }

    #[test]
    fn only_svg_paths_are_taken() {
        assert!(check_path(Path::new("run.png")).is_err());
        assert!(check_path(Path::new("/no/such/dir/run.svg")).is_err());
        assert!(check_path(Path::new("run.svg")).is_ok());
        assert!(check_path(Path::new("/tmp/RUN.SVG")).is_ok());
    }
}
