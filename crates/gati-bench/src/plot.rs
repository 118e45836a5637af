//! The report's plots, drawn in Rust as SVG and PNG: latency CDFs, hit rate per layer, speed-up
//! against fidelity loss (the budget sweep), and mean-latency speed-up per model.

use crate::measure::Config;
use crate::report::{ModelReport, Report};
use anyhow::{anyhow, bail, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

const W: u32 = 900;
const H: u32 = 560;

/// Fonts are read from the system (no fontconfig): `GATI_FONT`, then common DejaVu/Liberation paths.
fn register_font() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let candidates = [
            std::env::var("GATI_FONT").unwrap_or_default(),
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf".into(),
            "/usr/share/fonts/dejavu/DejaVuSans.ttf".into(),
            "/usr/share/fonts/TTF/DejaVuSans.ttf".into(),
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf".into(),
        ];
        for c in candidates.iter().filter(|c| !c.is_empty()) {
            if let Ok(bytes) = std::fs::read(c) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font_bytes(bytes) {
                    return Ok(());
                }
            }
        }
        Err("no TrueType font found (set GATI_FONT to a .ttf file)".to_string())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn register_font_bytes(bytes: &'static [u8]) -> bool {
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
}

/// Draws `$body` (a block using `$root`) once into an SVG and once into a PNG named `$name`.
macro_rules! both {
    ($out:expr, $files:expr, $name:expr, |$root:ident| $body:block) => {{
        let name: String = $name;
        {
            let svg = $out.join(format!("{name}.svg"));
            let $root = SVGBackend::new(&svg, (W, H)).into_drawing_area();
            $body.map_err(|e| anyhow!("drawing {}: {e:?}", svg.display()))?;
            $root
                .present()
                .map_err(|e| anyhow!("writing {}: {e:?}", svg.display()))?;
        }
        {
            let png = $out.join(format!("{name}.png"));
            let mut buf = vec![0u8; (W * H * 3) as usize];
            {
                let $root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
                $body.map_err(|e| anyhow!("drawing {}: {e:?}", png.display()))?;
                $root
                    .present()
                    .map_err(|e| anyhow!("drawing {}: {e:?}", png.display()))?;
            }
            image::RgbImage::from_raw(W, H, buf)
                .context("internal: PNG buffer size")?
                .save(&png)
                .with_context(|| format!("writing {}", png.display()))?;
        }
        $files.push(format!("{name}.svg"));
        $files.push(format!("{name}.png"));
    }};
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;
type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Every chart's frame: a title, margins, room for axis labels.
fn frame<'a, 'b, DB: DrawingBackend>(root: &'a DrawingArea<DB, Shift>, title: &'b str) -> ChartBuilder<'a, 'b, DB> {
    let mut b = ChartBuilder::on(root);
    b.caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60);
    b
}

/// One legend, boxed, where it covers no data.
fn legend<'a, DB: DrawingBackend + 'a>(chart: &mut Chart<'a, DB>, at: SeriesLabelPosition) -> DrawResult<DB> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()
}

/// Every plot for `r`, written into `out`; returns the file names.
pub fn draw_all(r: &Report, out: &Path) -> Result<Vec<String>> {
    register_font()?;
    let mut files = Vec::new();
    for m in &r.models {
        if let Some(st) = m.streams.first() {
            both!(out, files, format!("latency-cdf-{}-{}", m.model, st.stream), |root| {
                latency_cdf(&root, m, 0)
            });
        }
        if m.streams.iter().any(|s| has_hits(s, hit_config(m))) {
            both!(out, files, format!("hit-rate-{}", m.model), |root| {
                hit_rates(&root, m)
            });
        }
    }
    if r.models.iter().any(|m| !m.sweep.is_empty()) {
        both!(out, files, "speedup-vs-fidelity".to_string(), |root| {
            sweep(&root, &r.models)
        });
    }
    if r.models.iter().any(|m| !m.streams.is_empty()) {
        both!(out, files, "speedup-per-model".to_string(), |root| {
            speedup_bars(&root, &r.models)
        });
    }
    if files.is_empty() {
        bail!("nothing to plot");
    }
    Ok(files)
}

fn palette(i: usize) -> RGBColor {
    const C: [RGBColor; 7] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(127, 127, 127),
    ];
    C[i % C.len()]
}

/// The configuration whose hit rates per layer are plotted: Thrift inline if measured.
fn hit_config(m: &ModelReport) -> Config {
    let measured = |c| m.streams.iter().any(|s| s.configs.iter().any(|x| x.config == c));
    [Config::ThriftInline, Config::GatiInProcess, Config::ThriftDistributed]
        .into_iter()
        .find(|c| measured(*c))
        .unwrap_or(Config::ThriftInline)
}

fn has_hits(s: &crate::report::StreamReport, c: Config) -> bool {
    s.configs
        .iter()
        .any(|x| x.config == c && !x.hit_rate_per_layer.is_empty())
}

fn latency_cdf<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, m: &ModelReport, stream: usize) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let st = &m.streams[stream];
    let mut curves = Vec::new();
    for c in &st.configs {
        let mut xs: Vec<f64> = st
            .runs
            .iter()
            .filter(|r| r.config == c.config)
            .flat_map(|r| r.samples_ms.iter().copied())
            .collect();
        xs.sort_by(f64::total_cmp);
        if !xs.is_empty() {
            curves.push((c.name, xs));
        }
    }
    // Clip the x axis (at the largest p99, at most 3x the largest median) so that one slow tail
    // does not flatten every curve.
    let q = |xs: &Vec<f64>, p: f64| xs[((xs.len() as f64 * p) as usize).min(xs.len() - 1)];
    let p99 = curves.iter().map(|(_, xs)| q(xs, 0.99)).fold(0.0, f64::max);
    let p50 = curves.iter().map(|(_, xs)| q(xs, 0.5)).fold(0.0, f64::max);
    let xmax = p99.min(3.0 * p50) * 1.05;
    let title = format!("{}: latency CDF, {} stream", m.model, st.stream);
    let mut chart = frame(root, &title).build_cartesian_2d(0.0..xmax.max(1e-3), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("latency per request (ms)")
        .y_desc("requests answered within (%)")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for (i, (name, xs)) in curves.iter().enumerate() {
        let n = xs.len() as f64;
        let color = palette(i);
        // At most ~400 points a curve (and always the last): the files stay small.
        let step = (xs.len() / 400).max(1);
        let points = xs
            .iter()
            .enumerate()
            .filter(|(k, _)| k % step == 0 || k + 1 == xs.len())
            .map(|(k, &x)| (x, 100.0 * (k + 1) as f64 / n));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)
}

fn hit_rates<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, m: &ModelReport) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let cfg = hit_config(m);
    let mut layers: Vec<String> = m
        .streams
        .iter()
        .flat_map(|s| s.configs.iter().filter(|c| c.config == cfg))
        .flat_map(|c| c.hit_rate_per_layer.keys().cloned())
        .collect();
    layers.sort_by_key(|l| stage_order(l));
    layers.dedup();
    let series: Vec<(String, Vec<f64>)> = m
        .streams
        .iter()
        .filter_map(|s| {
            let c = s.configs.iter().find(|c| c.config == cfg)?;
            Some((
                s.stream.clone(),
                layers
                    .iter()
                    .map(|l| 100.0 * c.hit_rate_per_layer.get(l).copied().unwrap_or(0.0))
                    .collect(),
            ))
        })
        .collect();
    let ymax = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.0, f64::max) * 1.25;
    grouped_bars(
        root,
        &format!(
            "{}: share of requests answered per cache layer ({})",
            m.model,
            cfg.name()
        ),
        &layers,
        &series,
        "cache layer",
        "requests answered (%)",
        ymax,
    )
}

/// `layer3.10` sorts after `layer3.9`.
fn stage_order(l: &str) -> Vec<u32> {
    l.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn grouped_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    groups: &[String],
    series: &[(String, Vec<f64>)],
    xdesc: &str,
    ydesc: &str,
    ymax: f64,
) -> DrawResult<DB> {
    let n = groups.len().max(1);
    let mut chart = frame(root, title).build_cartesian_2d(-0.5..(n as f64 - 0.5), 0.0..ymax)?;
    let label = |x: &f64| {
        let k = x.round();
        if (x - k).abs() < 1e-6 && k >= 0.0 && (k as usize) < groups.len() {
            groups[k as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n + 1)
        .x_label_formatter(&label)
        .x_desc(xdesc)
        .y_desc(ydesc)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    let k = series.len().max(1) as f64;
    let width = 0.8 / k;
    for (si, (name, values)) in series.iter().enumerate() {
        let color = palette(si);
        chart
            .draw_series(values.iter().enumerate().map(|(g, &v)| {
                let x0 = g as f64 - 0.4 + si as f64 * width;
                Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
            }))?
            .label(name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

fn sweep<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, models: &[ModelReport]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let pts: Vec<(&str, Vec<(f64, f64)>)> = models
        .iter()
        .filter(|m| !m.sweep.is_empty())
        .map(|m| {
            let mut v: Vec<(f64, f64)> = m
                .sweep
                .iter()
                .map(|p| (100.0 * p.fidelity_loss.median, p.speedup.median))
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .collect();
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            (m.model.as_str(), v)
        })
        .collect();
    let all = pts.iter().flat_map(|(_, v)| v.iter());
    let (xmax, ymax) = all.fold((0.5f64, 1.2f64), |(x, y), p| (x.max(p.0), y.max(p.1)));
    let mut chart = frame(
        root,
        "Mean-latency speed-up vs fidelity loss (budget sweep, via Thrift)",
    )
    .build_cartesian_2d(0.0..xmax * 1.1, 0.0..ymax * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("fidelity loss: answers differing from the base model (%)")
        .y_desc("speed-up over base only (x)")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    chart.draw_series(LineSeries::new([(0.0, 1.0), (xmax * 1.1, 1.0)], BLACK.mix(0.4)))?;
    for (i, (name, v)) in pts.iter().enumerate() {
        let color = palette(i);
        chart
            .draw_series(LineSeries::new(v.iter().copied(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        chart.draw_series(v.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    // Budget labels beside the points of the first model (the others share the budgets).
    if let Some(m) = models.iter().find(|m| !m.sweep.is_empty()) {
        chart.draw_series(m.sweep.iter().filter(|p| p.speedup.median.is_finite()).map(|p| {
            // Above and right of the point, in pixels, clear of the line.
            EmptyElement::at((100.0 * p.fidelity_loss.median, p.speedup.median))
                + Text::new(
                    format!("budget {:.1}%", 100.0 * p.budget),
                    (6, -18),
                    ("sans-serif", 12).into_font(),
                )
        }))?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)
}

fn speedup_bars<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, models: &[ModelReport]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let groups: Vec<String> = models.iter().map(|m| m.model.clone()).collect();
    let configs = [Config::GatiInProcess, Config::ThriftInline, Config::ThriftDistributed];
    let stream = models
        .first()
        .and_then(|m| m.streams.first())
        .map_or("iid".to_string(), |s| s.stream.clone());
    let series: Vec<(String, Vec<f64>)> = configs
        .iter()
        .filter(|c| {
            models
                .iter()
                .any(|m| m.streams.iter().any(|s| s.configs.iter().any(|x| x.config == **c)))
        })
        .map(|c| {
            let v = models
                .iter()
                .map(|m| {
                    m.streams
                        .first()
                        .and_then(|s| s.configs.iter().find(|x| x.config == *c))
                        .map_or(0.0, |x| x.speedup.median)
                })
                .collect();
            (c.name().to_string(), v)
        })
        .collect();
    let ymax = series.iter().flat_map(|(_, v)| v.iter().copied()).fold(1.5, f64::max) * 1.3;
    grouped_bars(
        root,
        &format!("Mean-latency speed-up over base only, {stream} stream"),
        &groups,
        &series,
        "model",
        "speed-up (x)",
        ymax,
    )
}
