//! The growth curves drawn as one SVG (plotters), a panel per measured quantity, one line per
//! store engine. Both axes are logarithmic: a cost that grows linearly with its cause is then a
//! line of slope one, a flat cost a level line, and a bend is visible whatever the scale.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use super::Point;

/// One panel: which curve, which of its values, and what the axes say.
struct Panel {
    curve: &'static str,
    metric: &'static str,
    title: &'static str,
    x: &'static str,
    y: &'static str,
}

const PANELS: [Panel; 10] = [
    Panel {
        curve: "held",
        metric: "store_mib",
        title: "Held messages: store size",
        x: "messages held",
        y: "MiB",
    },
    Panel {
        curve: "held",
        metric: "rss_mib",
        title: "Held messages: xup's memory (RSS)",
        x: "messages held",
        y: "MiB",
    },
    Panel {
        curve: "held",
        metric: "start_s",
        title: "Held messages: start-up",
        x: "messages held",
        y: "seconds",
    },
    Panel {
        curve: "held",
        metric: "backlog_s",
        title: "Held messages: 1 000 to one returning client",
        x: "messages held",
        y: "seconds",
    },
    Panel {
        curve: "revocations",
        metric: "rss_mib",
        title: "Revocations: xup's memory (RSS)",
        x: "revocations kept",
        y: "MiB",
    },
    Panel {
        curve: "revocations",
        metric: "start_s",
        title: "Revocations: start-up",
        x: "revocations kept",
        y: "seconds",
    },
    Panel {
        curve: "revocations",
        metric: "xup_us_per_push",
        title: "Revocations: xup's CPU per push (C = 64)",
        x: "revocations kept",
        y: "µs",
    },
    Panel {
        curve: "concurrency",
        metric: "registrations_per_second",
        title: "Registrations over XMPP",
        x: "registrations in flight",
        y: "per second",
    },
    Panel {
        curve: "concurrency",
        metric: "pushes_per_second",
        title: "Pushes",
        x: "requests in flight",
        y: "per second",
    },
    Panel {
        curve: "matrix",
        metric: "notifies_per_second",
        title: "Matrix gateway notifies (C = 64)",
        x: "pushkeys per notify",
        y: "per second",
    },
];

const ENGINES: [(&str, RGBColor); 2] = [("SQLite", BLUE), ("PostgreSQL", RED)];

/// Draw every panel that has points into an SVG at `path`.
pub fn write(path: &Path, points: &[Point]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let root = SVGBackend::new(path, (1200, 1900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    for (panel, area) in PANELS.iter().zip(root.split_evenly((5, 2))) {
        draw(panel, &area, points).map_err(|e| anyhow!("drawing {:?}: {e}", panel.title))?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// One engine's line in a panel: its name, its colour, its points.
type Line = (&'static str, RGBColor, Vec<(f64, f64)>);

fn draw(panel: &Panel, area: &Area, points: &[Point]) -> anyhow::Result<()> {
    let lines: Vec<Line> = ENGINES
        .iter()
        .map(|&(engine, color)| {
            let line = points
                .iter()
                .filter(|p| p.engine == engine && p.curve == panel.curve)
                .filter_map(|p| Some((p.x, p.value(panel.metric)?)))
                .filter(|&(x, y)| x > 0.0 && y > 0.0)
                .collect();
            (engine, color, line)
        })
        .collect();
    let all = || lines.iter().flat_map(|(_, _, line)| line.iter().copied());
    let (Some(x_min), Some(x_max)) = (min(all().map(|p| p.0)), max(all().map(|p| p.0))) else {
        return Ok(());
    };
    let (Some(y_min), Some(y_max)) = (min(all().map(|p| p.1)), max(all().map(|p| p.1))) else {
        return Ok(());
    };
    let mut chart = ChartBuilder::on(area)
        .caption(panel.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x_min / 1.3..x_max * 1.3).log_scale(),
            (y_min / 3.0..y_max * 3.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc(panel.x)
        .y_desc(panel.y)
        .x_label_formatter(&|x| short(*x))
        .y_label_formatter(&|y| short(*y))
        .draw()?;
    for (engine, color, line) in lines {
        if line.is_empty() {
            continue;
        }
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(engine)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            line.iter()
                .map(|&point| Circle::new(point, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn min(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.reduce(f64::min)
}

fn max(values: impl Iterator<Item = f64>) -> Option<f64> {
    values.reduce(f64::max)
}

/// An axis label: 1k, 30k, 1M rather than 1000000.
fn short(value: f64) -> String {
    match value {
        v if v >= 1e6 => format!("{}M", round(v / 1e6)),
        v if v >= 1e3 => format!("{}k", round(v / 1e3)),
        v => round(v),
    }
}

fn round(value: f64) -> String {
    match value {
        v if v >= 10.0 || v.fract() == 0.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}
