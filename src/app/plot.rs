//! Small line-chart helper: one or several panels of line series written to a
//! PNG file with plotters, optionally with a logarithmic y axis.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary
//! (`assets/DejaVuSans.ttf`, Bitstream Vera license in
//! `assets/DejaVuSans-LICENSE.txt`), so no system font is needed.
//!
//! ```no_run
//! use natgrad::app::plot::{line_chart_png, Series};
//! let s = Series::new("halving", (0..20).map(|k| (k as f64, 0.5f64.powi(k))).collect());
//! line_chart_png("halving.png".as_ref(), "Halving", "step", "value", &[s], true)?;
//! # Ok::<(), natgrad::Error>(())
//! ```

use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::Error;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// Default palette (colour-blind friendly "Tableau 10").
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

/// One line: a label for the legend, points `(x, y)`, and an optional colour
/// (the palette colour of its position otherwise).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub label: String,
    /// The points, drawn in order.
    pub points: Vec<(f64, f64)>,
    /// RGB colour; `None` picks from [`PALETTE`] by position.
    pub color: Option<(u8, u8, u8)>,
    /// Stroke width in pixels.
    pub stroke_width: u32,
}

impl Series {
    /// A series with the default colour and a 2-pixel stroke.
    pub fn new(label: impl Into<String>, points: Vec<(f64, f64)>) -> Series {
        Series {
            label: label.into(),
            points,
            color: None,
            stroke_width: 2,
        }
    }

    /// The same series drawn in `color`.
    pub fn with_color(mut self, color: (u8, u8, u8)) -> Series {
        self.color = Some(color);
        self
    }
}

/// One panel: title, axis labels, series, and whether y is logarithmic (then
/// points with `y <= 0` or non-finite are skipped).
#[derive(Clone, Debug, PartialEq)]
pub struct Chart {
    /// Panel title.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// The lines.
    pub series: Vec<Series>,
    /// Logarithmic y axis.
    pub log_y: bool,
}

/// Writes a single-panel chart of `series` to `path` (800 x 600 PNG).
///
/// Errors: [`Error::InvalidConfig`] if there is nothing drawable,
/// [`Error::Io`] if the file cannot be written.
pub fn line_chart_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<(), Error> {
    let chart = Chart {
        title: title.into(),
        x_label: x_label.into(),
        y_label: y_label.into(),
        series: series.to_vec(),
        log_y,
    };
    charts_png(path, &[chart], 1, (800, 600))
}

/// Writes `charts` as panels on a grid of `columns` columns, each panel
/// `panel_size` pixels, to the PNG file `path`.
///
/// Errors: [`Error::InvalidConfig`] if there are no charts, `columns` is 0, or
/// a chart has no drawable point; [`Error::Io`] if the file cannot be written.
pub fn charts_png(
    path: &Path,
    charts: &[Chart],
    columns: usize,
    panel_size: (u32, u32),
) -> Result<(), Error> {
    if charts.is_empty() || columns == 0 {
        return Err(Error::InvalidConfig(
            "a figure needs at least one chart and one column".into(),
        ));
    }
    register_font()?;
    let rows = charts.len().div_ceil(columns);
    let size = (panel_size.0 * columns as u32, panel_size.1 * rows as u32);
    let io_err = |detail: String| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(detail),
    };
    // Drawn into memory and encoded here (`encode_png`), so that plotters
    // needs no image codec (the `image` crate was a sixth of a clean build).
    let mut rgb = vec![0u8; size.0 as usize * size.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| io_err(e.to_string()))?;
        let areas = root.split_evenly((rows, columns));
        for (chart, area) in charts.iter().zip(areas.iter()) {
            draw_chart(chart, area).map_err(|e| match e {
                DrawError::Empty(t) => {
                    Error::InvalidConfig(format!("chart \"{t}\" has no drawable point"))
                }
                DrawError::Backend(s) => io_err(s),
            })?;
        }
        root.present().map_err(|e| io_err(e.to_string()))?;
    }
    let png = encode_png(&rgb, size.0, size.1).map_err(|e| io_err(e.to_string()))?;
    crate::app::output::write_atomic(path, &png)
}

/// A PNG file (8-bit RGB, no interlacing, filter type 0 on every row) of the
/// `width x height` image `rgb`, row by row, three bytes a pixel.
pub fn encode_png(rgb: &[u8], width: u32, height: u32) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let row = width as usize * 3;
    if rgb.len() != row * height as usize || width == 0 || height == 0 {
        return Err(std::io::Error::other(format!(
            "a {width} x {height} RGB image needs {} bytes, got {}",
            row * height as usize,
            rgb.len()
        )));
    }
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    for line in rgb.chunks_exact(row) {
        z.write_all(&[0])?;
        z.write_all(line)?;
    }
    let idat = z.finish()?;
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, adaptive filtering, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (b"IHDR", &ihdr[..]),
        (b"IDAT", &idat[..]),
        (b"IEND", &[][..]),
    ] {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    Ok(out)
}

enum DrawError {
    Empty(String),
    Backend(String),
}

fn draw_chart(
    chart: &Chart,
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
) -> Result<(), DrawError> {
    let keep = |&(x, y): &(f64, f64)| x.is_finite() && y.is_finite() && (!chart.log_y || y > 0.0);
    let points: Vec<Vec<(f64, f64)>> = chart
        .series
        .iter()
        .map(|s| s.points.iter().copied().filter(keep).collect())
        .collect();
    let all = points.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !(x0.is_finite() && y0.is_finite()) {
        return Err(DrawError::Empty(chart.title.clone()));
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = if chart.log_y { y0 * 10.0 } else { y0 + 1.0 };
    }
    let be = |e: plotters::drawing::DrawingAreaErrorKind<_>| DrawError::Backend(format!("{e:?}"));
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&chart.title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    if chart.log_y {
        let (lo, hi) = (y0 / 2.0, y1 * 2.0);
        // Our own key points: plotters' log axis labels only from the first
        // power of ten inside the range, which left the whole lower decade
        // (where the final losses lie) unlabelled.
        let ticks = log_ticks(lo, hi);
        let mut ctx = builder
            .build_cartesian_2d(x0..x1, (lo..hi).log_scale().with_key_points(ticks))
            .map_err(be)?;
        ctx.configure_mesh()
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .y_label_formatter(&|v| tick_label(*v))
            .draw()
            .map_err(be)?;
        draw_series(&mut ctx, chart, &points)?;
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(be)?;
    } else {
        let pad = 0.05 * (y1 - y0);
        let mut ctx = builder
            .build_cartesian_2d(x0..x1, y0 - pad..y1 + pad)
            .map_err(be)?;
        ctx.configure_mesh()
            .x_desc(chart.x_label.as_str())
            .y_desc(chart.y_label.as_str())
            .draw()
            .map_err(be)?;
        draw_series(&mut ctx, chart, &points)?;
        ctx.configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(be)?;
    }
    Ok(())
}

/// Tick values for a logarithmic axis over `[lo, hi]` (`0 < lo < hi`): 1, 2
/// and 5 times each power of ten in the range, and 3 as well when the range
/// spans fewer than three decades.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let decades = (hi / lo).log10();
    let steps: &[f64] = if decades < 3.0 {
        &[1.0, 2.0, 3.0, 5.0]
    } else {
        &[1.0, 2.0, 5.0]
    };
    let first = lo.log10().floor() as i32;
    let last = hi.log10().ceil() as i32;
    (first..=last)
        .flat_map(|e| steps.iter().map(move |m| m * 10f64.powi(e)))
        .filter(|v| (lo..=hi).contains(v))
        .collect()
}

/// A tick value as plain digits between 0.01 and 10,000, else in `1e5` form.
fn tick_label(v: f64) -> String {
    if (0.01..10_000.0).contains(&v.abs()) {
        let s = format!("{v:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.0e}")
    }
}

fn draw_series<'a, X, Y>(
    ctx: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    chart: &Chart,
    points: &[Vec<(f64, f64)>],
) -> Result<(), DrawError>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    for (k, (s, pts)) in chart.series.iter().zip(points).enumerate() {
        if pts.is_empty() {
            continue;
        }
        let (r, g, b) = s.color.unwrap_or(PALETTE[k % PALETTE.len()]);
        let style = RGBColor(r, g, b).stroke_width(s.stroke_width);
        ctx.draw_series(LineSeries::new(pts.iter().copied(), style))
            .map_err(|e| DrawError::Backend(format!("{e:?}")))?
            .label(s.label.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(r, g, b).stroke_width(2))
            });
    }
    Ok(())
}

fn register_font() -> Result<(), Error> {
    let mut result = Ok(());
    REGISTER.call_once(|| {
        for style in [FontStyle::Normal, FontStyle::Bold] {
            if plotters::style::register_font("sans-serif", style, FONT).is_err() {
                result = Err(Error::InvalidConfig(
                    "the embedded DejaVu Sans font could not be loaded".into(),
                ));
            }
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::encode_png;
    use std::io::Read;

    /// Parses the chunks of `png`, checking every CRC; returns (kind, data) pairs.
    fn chunks(png: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut out = Vec::new();
        let mut at = 8;
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind: [u8; 4] = png[at + 4..at + 8].try_into().unwrap();
            let data = png[at + 8..at + 8 + len].to_vec();
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            let mut c = flate2::Crc::new();
            c.update(&kind);
            c.update(&data);
            assert_eq!(c.sum(), crc, "CRC of {:?}", std::str::from_utf8(&kind));
            out.push((kind, data));
            at += 12 + len;
        }
        out
    }

    #[test]
    fn png_round_trips_through_its_chunks_and_inflate() {
        let (w, h) = (7u32, 5u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        let png = encode_png(&rgb, w, h).unwrap();
        let c = chunks(&png);
        let kinds: Vec<&[u8; 4]> = c.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, [b"IHDR", b"IDAT", b"IEND"]);
        let ihdr = &c[0].1;
        assert_eq!(u32::from_be_bytes(ihdr[0..4].try_into().unwrap()), w);
        assert_eq!(u32::from_be_bytes(ihdr[4..8].try_into().unwrap()), h);
        assert_eq!(&ihdr[8..], &[8, 2, 0, 0, 0]);
        let mut raw = Vec::new();
        flate2::read::ZlibDecoder::new(&c[1].1[..])
            .read_to_end(&mut raw)
            .unwrap();
        let row = w as usize * 3;
        assert_eq!(raw.len(), (row + 1) * h as usize);
        for (y, line) in raw.chunks_exact(row + 1).enumerate() {
            assert_eq!(line[0], 0, "filter byte of row {y}");
            assert_eq!(&line[1..], &rgb[y * row..(y + 1) * row]);
        }
    }

    #[test]
    fn log_ticks_label_every_decade_in_range() {
        let t = super::log_ticks(13.0, 800.0);
        assert_eq!(t, [20.0, 30.0, 50.0, 100.0, 200.0, 300.0, 500.0]);
        let wide = super::log_ticks(0.5, 5000.0);
        assert_eq!(wide.first(), Some(&0.5));
        assert_eq!(wide.last(), Some(&5000.0));
        assert!(!wide.contains(&3.0), "3x ticks only on narrow ranges");
        assert_eq!(super::tick_label(30.0), "30");
        assert_eq!(super::tick_label(0.25), "0.25");
        assert_eq!(super::tick_label(1e6), "1e6");
    }

    #[test]
    fn png_refuses_a_buffer_of_the_wrong_size() {
        assert!(encode_png(&[0; 10], 2, 2).is_err());
        assert!(encode_png(&[], 0, 0).is_err());
    }
}
