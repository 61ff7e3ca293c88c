//! PNG plots drawn with plotters into memory, encoded with `png` and written atomically:
//! training curves, confusion heat maps, and the waveform and spectrogram of audio clips.
//!
//! Text uses DejaVu Sans (Bitstream Vera licence, see `assets/fonts/LICENSE-DejaVu`),
//! embedded so plots look the same on every machine.

use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::records::TrainStep;
use super::spectrum::spectrogram_db;
use super::ReportError;
use crate::fsutil::write_atomic;
use crate::metrics::ConfusionMatrix;

const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");

fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded font is not a valid TrueType font".to_string())
        })
        .clone()
}

/// Draws `width × height` pixels with `draw`, then writes them to `path` as a PNG.
fn render_png(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<(), String>,
) -> Result<(), ReportError> {
    let plot_error = |message: String| ReportError::Plot {
        path: path.to_path_buf(),
        message,
    };
    register_font().map_err(plot_error)?;
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(e.to_string()))?;
        draw(&root).map_err(plot_error)?;
        root.present().map_err(|e| plot_error(e.to_string()))?;
    }
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        encoder
            .write_header()
            .and_then(|mut writer| writer.write_image_data(&pixels))
            .map_err(|e| plot_error(e.to_string()))?;
    }
    write_atomic(path, &bytes)?;
    Ok(())
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Padded `(low, high)` of finite `values`, or `(0, 1)` when there are none.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
    if low > high {
        return (0.0, 1.0);
    }
    let pad = ((high - low) * 0.05).max(1e-9 * high.abs().max(1.0));
    (low - pad, high + pad)
}

/// Training loss against step, one line per fold, validation loss dashed where logged.
pub fn training_curve(path: &Path, log: &[TrainStep]) -> Result<(), ReportError> {
    let mut folds: Vec<u32> = log.iter().map(|s| s.fold).collect();
    folds.sort_unstable();
    folds.dedup();
    let (x_low, x_high) = range(log.iter().map(|s| s.step as f64));
    let (y_low, y_high) = range(
        log.iter()
            .flat_map(|s| [Some(s.loss), s.val_loss])
            .flatten(),
    );
    render_png(path, (900, 540), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Training loss", (FONT, 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(x_low..x_high, y_low..y_high)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("loss")
            .label_style((FONT, 14))
            .draw()
            .map_err(text)?;
        for (i, &fold) in folds.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            let steps = || log.iter().filter(move |s| s.fold == fold);
            chart
                .draw_series(LineSeries::new(
                    steps().map(|s| (s.step as f64, s.loss)),
                    colour.stroke_width(2),
                ))
                .map_err(text)?
                .label(format!("fold {fold} train"))
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
            let validation: Vec<(f64, f64)> = steps()
                .filter_map(|s| s.val_loss.map(|v| (s.step as f64, v)))
                .collect();
            if !validation.is_empty() {
                chart
                    .draw_series(DashedLineSeries::new(
                        validation,
                        6,
                        4,
                        colour.stroke_width(1),
                    ))
                    .map_err(text)?
                    .label(format!("fold {fold} validation"))
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour));
            }
        }
        chart
            .configure_series_labels()
            .label_font((FONT, 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(text)
    })
}

/// Heat map of a confusion matrix (rows: label, columns: predicted), shaded by the fraction
/// of each label's examples, with the count in each cell.
pub fn confusion_heat_map(
    path: &Path,
    title: &str,
    matrix: &ConfusionMatrix,
    names: &[String],
) -> Result<(), ReportError> {
    let classes = matrix.classes();
    let side = (140 + 70 * classes as u32).clamp(420, 1400);
    let name_of = |value: &SegmentValue<usize>| match value {
        SegmentValue::CenterOf(k) if *k < classes => names[*k].clone(),
        _ => String::new(),
    };
    // Row r of the plot (counted from the bottom) shows label classes − 1 − r.
    let label_of = |value: &SegmentValue<usize>| match value {
        SegmentValue::CenterOf(r) if *r < classes => names[classes - 1 - r].clone(),
        _ => String::new(),
    };
    render_png(path, (side + 60, side), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 22))
            .margin(12)
            .x_label_area_size(56)
            .y_label_area_size(110)
            // Integer ranges include their end: `0..classes - 1` has `classes` segments.
            .build_cartesian_2d(
                (0..classes - 1).into_segmented(),
                (0..classes - 1).into_segmented(),
            )
            .map_err(text)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_labels(classes)
            .y_labels(classes)
            .x_label_formatter(&name_of)
            .y_label_formatter(&label_of)
            .x_desc("predicted")
            .y_desc("label")
            .label_style((FONT, 14))
            .draw()
            .map_err(text)?;
        for label in 0..classes {
            let row_total: u64 = (0..classes).map(|p| matrix.count(label, p)).sum();
            let r = classes - 1 - label;
            for predicted in 0..classes {
                let count = matrix.count(label, predicted);
                let fraction = if row_total == 0 {
                    0.0
                } else {
                    count as f64 / row_total as f64
                };
                let shade = RGBColor(
                    (255.0 - 222.0 * fraction) as u8,
                    (255.0 - 153.0 * fraction) as u8,
                    (255.0 - 83.0 * fraction) as u8,
                );
                chart
                    .draw_series([Rectangle::new(
                        [
                            (SegmentValue::Exact(predicted), SegmentValue::Exact(r)),
                            (
                                SegmentValue::Exact(predicted + 1),
                                SegmentValue::Exact(r + 1),
                            ),
                        ],
                        shade.filled(),
                    )])
                    .map_err(text)?;
                let ink = if fraction > 0.55 { WHITE } else { BLACK };
                chart
                    .draw_series([Text::new(
                        count.to_string(),
                        (SegmentValue::CenterOf(predicted), SegmentValue::CenterOf(r)),
                        (FONT, 18).into_font().color(&ink).pos(
                            plotters::style::text_anchor::Pos::new(
                                plotters::style::text_anchor::HPos::Center,
                                plotters::style::text_anchor::VPos::Center,
                            ),
                        ),
                    )])
                    .map_err(text)?;
            }
        }
        Ok(())
    })
}

/// A mono clip read from a WAV file: samples scaled to [−1, 1] and the sample rate.
pub struct Clip {
    pub samples: Vec<f64>,
    pub sample_rate: u32,
}

impl Clip {
    /// Reads any PCM or float WAV; channels are averaged.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let wav = |source| ReportError::Wav {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = hound::WavReader::open(path).map_err(wav)?;
        let spec = reader.spec();
        let interleaved: Vec<f64> = match spec.sample_format {
            hound::SampleFormat::Float => reader
                .samples::<f32>()
                .map(|s| s.map(f64::from))
                .collect::<Result<_, _>>()
                .map_err(wav)?,
            hound::SampleFormat::Int => {
                let scale = (1u64 << (spec.bits_per_sample - 1)) as f64;
                reader
                    .samples::<i32>()
                    .map(|s| s.map(|v| v as f64 / scale))
                    .collect::<Result<_, _>>()
                    .map_err(wav)?
            }
        };
        let channels = usize::from(spec.channels.max(1));
        let samples = interleaved
            .chunks(channels)
            .map(|frame| frame.iter().sum::<f64>() / channels as f64)
            .collect();
        Ok(Self {
            samples,
            sample_rate: spec.sample_rate,
        })
    }

    fn seconds(&self) -> f64 {
        self.samples.len() as f64 / f64::from(self.sample_rate.max(1))
    }
}

/// A perceptually ordered dark-blue → green → yellow ramp (five anchors of viridis),
/// linearly interpolated; `t` is clamped to [0, 1].
fn ramp(t: f64) -> RGBColor {
    const ANCHORS: [(f64, f64, f64); 5] = [
        (68.0, 1.0, 84.0),
        (59.0, 82.0, 139.0),
        (33.0, 145.0, 140.0),
        (94.0, 201.0, 98.0),
        (253.0, 231.0, 37.0),
    ];
    let x = t.clamp(0.0, 1.0) * (ANCHORS.len() - 1) as f64;
    let i = (x.floor() as usize).min(ANCHORS.len() - 2);
    let f = x - i as f64;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    let mix = |p: f64, q: f64| (p + (q - p) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// The waveform of `clip`: the range of the samples within each pixel column.
pub fn waveform(path: &Path, title: &str, clip: &Clip) -> Result<(), ReportError> {
    const COLUMNS: usize = 1000;
    let per_column = clip.samples.len().div_ceil(COLUMNS).max(1);
    let rate = f64::from(clip.sample_rate.max(1));
    let spans: Vec<(f64, f64, f64)> = clip
        .samples
        .chunks(per_column)
        .enumerate()
        .map(|(i, chunk)| {
            let low = chunk.iter().copied().fold(f64::INFINITY, f64::min);
            let high = chunk.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            ((i * per_column) as f64 / rate, low, high)
        })
        .collect();
    let peak = spans
        .iter()
        .fold(1.0f64, |p, s| p.max(s.1.abs()).max(s.2.abs()));
    render_png(path, (1000, 360), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..clip.seconds().max(1e-6), -peak..peak)
            .map_err(text)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("amplitude")
            .label_style((FONT, 14))
            .draw()
            .map_err(text)?;
        chart
            .draw_series(
                spans
                    .iter()
                    .map(|&(t, low, high)| PathElement::new([(t, low), (t, high)], BLUE)),
            )
            .map_err(text)?;
        Ok(())
    })
}

/// The spectrogram of `clip` (Hann-windowed STFT, dB, an 80 dB range below the peak).
pub fn spectrogram(path: &Path, title: &str, clip: &Clip) -> Result<(), ReportError> {
    const MAX_FRAMES: usize = 400;
    let window = if clip.sample_rate >= 16_000 { 512 } else { 256 };
    let hop = (window / 4).max(clip.samples.len().div_ceil(MAX_FRAMES));
    let frames = spectrogram_db(&clip.samples, window, hop);
    let peak = frames
        .iter()
        .flatten()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max);
    let floor = peak - 80.0;
    let rate = f64::from(clip.sample_rate.max(1));
    let frame_seconds = hop as f64 / rate;
    let bin_hz = rate / window as f64;
    render_png(path, (1000, 480), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..frames.len() as f64 * frame_seconds, 0.0..rate / 2.0)
            .map_err(text)?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("seconds")
            .y_desc("Hz")
            .label_style((FONT, 14))
            .draw()
            .map_err(text)?;
        chart
            .draw_series(frames.iter().enumerate().flat_map(|(t, bins)| {
                bins.iter().enumerate().map(move |(f, &db)| {
                    let x = t as f64 * frame_seconds;
                    let y = (f as f64 - 0.5).max(0.0) * bin_hz;
                    Rectangle::new(
                        [(x, y), (x + frame_seconds, (f as f64 + 0.5) * bin_hz)],
                        ramp((db - floor) / (peak - floor).max(1e-9)).filled(),
                    )
                })
            }))
            .map_err(text)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ramp_hits_its_ends_and_clamps() {
        assert_eq!(ramp(0.0), RGBColor(68, 1, 84));
        assert_eq!(ramp(1.0), RGBColor(253, 231, 37));
        assert_eq!(ramp(2.0), ramp(1.0));
        assert_eq!(ramp(0.125), RGBColor(64, 42, 112));
    }

    #[test]
    fn range_pads_and_handles_degenerate_input() {
        assert_eq!(range(std::iter::empty()), (0.0, 1.0));
        let (low, high) = range([1.0, 3.0, f64::NAN].into_iter());
        assert!((low - 0.9).abs() < 1e-12 && (high - 3.1).abs() < 1e-12);
        let (low, high) = range([2.0, 2.0].into_iter());
        assert!(low < 2.0 && high > 2.0);
    }

    #[test]
    fn clip_reads_int_and_float_wavs_and_averages_channels() {
        let dir = tempfile::tempdir().unwrap();
        let int_path = dir.path().join("int.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(&int_path, spec).unwrap();
        for s in [16384i16, 0, -32768, -32768] {
            writer.write_sample(s).unwrap();
        }
        writer.finalize().unwrap();
        let clip = Clip::read(&int_path).unwrap();
        assert_eq!(clip.sample_rate, 8000);
        assert_eq!(clip.samples, [0.25, -1.0]);

        let float_path = dir.path().join("float.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut writer = hound::WavWriter::create(&float_path, spec).unwrap();
        writer.write_sample(0.5f32).unwrap();
        writer.finalize().unwrap();
        assert_eq!(Clip::read(&float_path).unwrap().samples, [0.5]);

        let bad = dir.path().join("bad.wav");
        std::fs::write(&bad, b"RIFF nonsense").unwrap();
        let error = Clip::read(&bad).err().unwrap().to_string();
        assert!(error.contains("bad.wav"), "{error}");
    }
}
