//! The PNG chart of a sweep: achieved handshakes/s (x) against latency in milliseconds (y),
//! p50 as a thick line and p99 as a thin one with points, one colour per port and
//! resumption series, all on one chart. Drawn with plotters' bitmap backend and the bundled
//! DejaVu Sans Mono (`loadgen/assets/`, see its licence there), so no system library (no
//! fontconfig, no freetype) is needed.

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::sweep::SweepReport;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSansMono.ttf");
const FAMILY: &str = "mxpipe-loadgen";

fn register() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut r = Ok(());
    ONCE.call_once(|| {
        r = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| "the bundled font is invalid".to_string());
    });
    r
}

/// One line of the chart: its name and its (handshakes/s, ms) points.
struct Line {
    name: String,
    p50: Vec<(f64, f64)>,
    p99: Vec<(f64, f64)>,
}

fn lines(r: &SweepReport) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    for s in &r.series {
        for st in &s.steps {
            for p in &st.ports {
                let name = format!("{} resume {}", p.tls, s.resume);
                let i = match out.iter().position(|l| l.name == name) {
                    Some(i) => i,
                    None => {
                        out.push(Line { name, p50: Vec::new(), p99: Vec::new() });
                        out.len() - 1
                    }
                };
                out[i].p50.push((p.handshakes_per_s, p.p50_us as f64 / 1000.0));
                out[i].p99.push((p.handshakes_per_s, p.p99_us as f64 / 1000.0));
            }
        }
    }
    out
}

/// Draw `r` as a 1200×800 PNG at `path`.
pub fn draw(r: &SweepReport, path: &Path) -> Result<(), String> {
    register()?;
    let lines = lines(r);
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let max_x = lines.iter().flat_map(|l| l.p50.iter()).map(|p| p.0).fold(1.0, f64::max) * 1.1;
    let max_y = lines.iter().flat_map(|l| l.p99.iter().chain(l.p50.iter())).map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let root = BitMapBackend::new(path, (1200, 800)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let title = format!("mxpipe-loadgen sweep over {}: handshakes/s against latency (thick line p50, thin line and dots p99)", r.load);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FAMILY, 20))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..max_x, 0.0..max_y)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("handshakes/s in the window")
        .y_desc("latency, ms (all attempts)")
        .label_style((FAMILY, 14))
        .draw()
        .map_err(|x| e(&x))?;
    for (i, l) in lines.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(l.p50.iter().copied(), colour.stroke_width(3)))
            .map_err(|x| e(&x))?
            .label(format!("{} p50", l.name))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
        chart.draw_series(LineSeries::new(l.p99.iter().copied(), colour.stroke_width(1))).map_err(|x| e(&x))?;
        chart
            .draw_series(l.p99.iter().map(|&p| Circle::new(p, 4, colour.filled())))
            .map_err(|x| e(&x))?
            .label(format!("{} p99", l.name))
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, colour.filled()));
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}
