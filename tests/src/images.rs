//! Test images: real PNGs (plain, or noise that does not compress), as bytes or data URLs.

use base64::Engine as _;
use sha2::{Digest, Sha256};

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A small PNG as a data URL, for image inputs.
pub fn png_data_url(width: u32, height: u32) -> String {
    png_as_data_url(&image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, 128])
    }))
}

/// A PNG of noise (it does not compress) of about `bytes` bytes, as a data URL: for inputs
/// near the inline-image cap.
pub fn noise_png_data_url(bytes: usize) -> String {
    data_url(&noise_png(bytes))
}

/// A PNG of noise of about `bytes` bytes.
pub fn noise_png(bytes: usize) -> Vec<u8> {
    let side = ((bytes / 3) as f64).sqrt() as u32;
    noise_png_sized(side, side)
}

/// A `width`×`height` PNG of noise.
pub fn noise_png_sized(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    png_bytes(&image::RgbImage::from_fn(width, height, |_, _| {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        };
        image::Rgb([next(), next(), next()])
    }))
}

fn png_as_data_url(image: &image::RgbImage) -> String {
    data_url(&png_bytes(image))
}

fn png_bytes(image: &image::RgbImage) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode");
    bytes.into_inner()
}

fn data_url(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}
