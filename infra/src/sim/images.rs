//! Real images for the simulator: a deterministic picture per (prompt, seed, index), in the
//! size and format the model's input asks for.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Outputs larger than this on a side are clamped, to keep the simulator's memory bounded.
const MAX_SIDE: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Png,
    Jpeg,
    Webp,
}

impl Format {
    pub fn parse(s: &str) -> Self {
        match s {
            "jpg" | "jpeg" => Self::Jpeg,
            "webp" => Self::Webp,
            _ => Self::Png,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Png => "image/png",
            Self::Jpeg => "image/jpeg",
            Self::Webp => "image/webp",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg => "jpg",
            Self::Webp => "webp",
        }
    }
}

/// What one prediction produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub width: u32,
    pub height: u32,
    pub count: usize,
    pub format: Format,
    pub quality: u8,
}

fn int(input: &Map<String, Value>, key: &str) -> Option<u64> {
    input.get(key).and_then(Value::as_u64)
}

/// Flux's sizes per aspect ratio at one megapixel.
fn flux_size(aspect: &str) -> (u32, u32) {
    match aspect {
        "16:9" => (1344, 768),
        "21:9" => (1536, 640),
        "3:2" => (1216, 832),
        "2:3" => (832, 1216),
        "4:5" => (896, 1088),
        "5:4" => (1088, 896),
        "3:4" => (896, 1152),
        "4:3" => (1152, 896),
        "9:16" => (768, 1344),
        "9:21" => (640, 1536),
        _ => (1024, 1024),
    }
}

/// The output plan for `model` (`owner/name`) given its input. `source` is the decoded input
/// image's size, for upscalers.
pub fn plan(model: &str, input: &Map<String, Value>, source: Option<(u32, u32)>) -> Plan {
    let format = Format::parse(
        input
            .get("output_format")
            .and_then(Value::as_str)
            .unwrap_or("png"),
    );
    let quality = int(input, "output_quality").unwrap_or(80).min(100) as u8;
    let count = int(input, "num_outputs").unwrap_or(1).clamp(1, 4) as usize;
    let aspect = input
        .get("aspect_ratio")
        .and_then(Value::as_str)
        .unwrap_or("1:1");
    let (width, height, count, format) = match model {
        "black-forest-labs/flux-schnell" => {
            let (w, h) = flux_size(aspect);
            let quarter = input.get("megapixels").and_then(Value::as_str) == Some("0.25");
            let (w, h) = if quarter { (w / 2, h / 2) } else { (w, h) };
            (w, h, count, format)
        }
        "black-forest-labs/flux-1.1-pro" => {
            let (w, h) = if aspect == "custom" {
                (
                    int(input, "width").unwrap_or(1024) as u32,
                    int(input, "height").unwrap_or(1024) as u32,
                )
            } else {
                flux_size(aspect)
            };
            (w, h, 1, format)
        }
        "nightmareai/real-esrgan" => {
            let scale = input
                .get("scale")
                .and_then(Value::as_f64)
                .unwrap_or(4.0)
                .max(0.1);
            let (w, h) = source.unwrap_or((64, 64));
            let scaled = |side: u32| ((f64::from(side) * scale).round() as u32).max(1);
            (scaled(w), scaled(h), 1, Format::Png)
        }
        _ => {
            let w = int(input, "width").unwrap_or(1024) as u32;
            let h = int(input, "height").unwrap_or(1024) as u32;
            (w, h, count, Format::Png)
        }
    };
    Plan {
        width: width.clamp(1, MAX_SIDE),
        height: height.clamp(1, MAX_SIDE),
        count,
        format,
        quality,
    }
}

/// A picture that depends on the prompt, seed and index: a two-colour gradient with rings.
pub fn render(width: u32, height: u32, prompt: &str, seed: u64, index: usize) -> RgbImage {
    let digest = Sha256::new()
        .chain_update(prompt.as_bytes())
        .chain_update(seed.to_le_bytes())
        .chain_update((index as u64).to_le_bytes())
        .finalize();
    let a = [digest[0], digest[1], digest[2]];
    let b = [digest[3], digest[4], digest[5]];
    let (cx, cy) = (
        f32::from(digest[6]) / 255.0 * width as f32,
        f32::from(digest[7]) / 255.0 * height as f32,
    );
    let ring = 8.0 + f32::from(digest[8] % 48);
    RgbImage::from_fn(width, height, |x, y| {
        let t = (x + y) as f32 / (width + height).max(1) as f32;
        let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
        let band = ((d / ring) as u32).is_multiple_of(2);
        let mix = |i: usize| {
            let v = f32::from(a[i]) * (1.0 - t) + f32::from(b[i]) * t;
            if band { v as u8 } else { 255 - v as u8 }
        };
        Rgb([mix(0), mix(1), mix(2)])
    })
}

pub fn encode(image: &RgbImage, format: Format, quality: u8) -> Result<Vec<u8>, image::ImageError> {
    let mut out = Cursor::new(Vec::new());
    let (w, h) = image.dimensions();
    match format {
        Format::Png => {
            PngEncoder::new(&mut out).write_image(image.as_raw(), w, h, ExtendedColorType::Rgb8)?
        }
        Format::Jpeg => JpegEncoder::new_with_quality(&mut out, quality.max(1)).write_image(
            image.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        )?,
        Format::Webp => WebPEncoder::new_lossless(&mut out).write_image(
            image.as_raw(),
            w,
            h,
            ExtendedColorType::Rgb8,
        )?,
    }
    Ok(out.into_inner())
}

/// Decodes an input image to learn its size (and to fail like a model would on junk).
pub fn decode_size(bytes: &[u8]) -> Result<(u32, u32), image::ImageError> {
    let img = image::load_from_memory(bytes)?;
    Ok((img.width(), img.height()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn plans_follow_each_models_inputs() {
        let p = plan(
            "black-forest-labs/flux-schnell",
            &input(json!({"aspect_ratio": "16:9", "num_outputs": 2, "output_format": "webp"})),
            None,
        );
        assert_eq!(
            (p.width, p.height, p.count, p.format),
            (1344, 768, 2, Format::Webp)
        );
        let p = plan(
            "black-forest-labs/flux-schnell",
            &input(json!({"megapixels": "0.25"})),
            None,
        );
        assert_eq!((p.width, p.height), (512, 512));
        let p = plan(
            "black-forest-labs/flux-1.1-pro",
            &input(
                json!({"aspect_ratio": "custom", "width": 640, "height": 384, "num_outputs": 3}),
            ),
            None,
        );
        assert_eq!((p.width, p.height, p.count), (640, 384, 1));
        let p = plan(
            "stability-ai/sdxl",
            &input(json!({"width": 768, "height": 512})),
            None,
        );
        assert_eq!((p.width, p.height, p.format), (768, 512, Format::Png));
        let p = plan(
            "nightmareai/real-esrgan",
            &input(json!({"scale": 2.0})),
            Some((100, 50)),
        );
        assert_eq!((p.width, p.height), (200, 100));
    }

    #[test]
    fn rendered_images_encode_and_decode_at_their_size() {
        let img = render(96, 64, "a cat", 1, 0);
        for format in [Format::Png, Format::Jpeg, Format::Webp] {
            let bytes = encode(&img, format, 80).unwrap();
            assert_eq!(decode_size(&bytes).unwrap(), (96, 64), "{format:?}");
        }
        assert_ne!(render(8, 8, "a cat", 1, 0), render(8, 8, "a dog", 1, 0));
        assert_eq!(render(8, 8, "a cat", 1, 0), render(8, 8, "a cat", 1, 0));
    }
}
