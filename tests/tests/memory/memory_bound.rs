//! Storing large outputs keeps memory flat: the webhook path streams each output to the
//! bucket in bounded parts, so peak heap does not grow with output size. Measured with a
//! counting allocator (this test binary only); `make bench` prints the figures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use imagegen_shared::app::outputs::store_outputs;
use imagegen_shared::domain::ids::PredictionId;
use imagegen_shared::domain::outputs::{HostAllowlist, OutputError, PART_SIZE};
use imagegen_shared::ports::StoreError;
use imagegen_shared::ports::downloads::{Download, OutputSource};
use imagegen_shared::ports::objects::{ObjectRead, ObjectStore, PresignedPut};
use integration_tests::heap;

const CHUNK: usize = 64 * 1024;

/// A download of `size` bytes generated on the fly (a PNG signature, then a pattern), in
/// 64 KiB chunks as an HTTP body arrives.
struct Generated {
    remaining: usize,
    first: bool,
}

impl Download for Generated {
    fn content_type(&self) -> Option<String> {
        Some("image/png".into())
    }

    fn content_length(&self) -> Option<u64> {
        None
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, OutputError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let n = self.remaining.min(CHUNK);
        let mut chunk = vec![(self.remaining % 251) as u8; n];
        if self.first {
            chunk[..8].copy_from_slice(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]);
            self.first = false;
        }
        self.remaining -= n;
        Ok(Some(Bytes::from(chunk)))
    }
}

struct Source(usize);

impl OutputSource for Source {
    type Download = Generated;

    async fn open(&self, _url: &url::Url) -> Result<Generated, OutputError> {
        Ok(Generated {
            remaining: self.0,
            first: true,
        })
    }
}

/// A bucket that keeps only a running hash and size per key, like S3 keeps the bytes
/// out of our process.
#[derive(Default)]
struct Sink {
    stored: Mutex<Vec<(String, u64)>>,
}

impl ObjectStore for Sink {
    async fn put_object(&self, key: &str, _: &str, body: Bytes) -> Result<(), StoreError> {
        self.stored
            .lock()
            .unwrap()
            .push((key.to_owned(), body.len() as u64));
        Ok(())
    }

    async fn create_multipart(&self, _: &str, _: &str) -> Result<String, StoreError> {
        Ok("upload".into())
    }

    async fn upload_part(
        &self,
        key: &str,
        _: &str,
        n: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.stored
            .lock()
            .unwrap()
            .push((format!("{key}#{n}"), body.len() as u64));
        Ok(format!("etag{n}"))
    }

    async fn complete_multipart(
        &self,
        _: &str,
        _: &str,
        _: &[(i32, String)],
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn abort_multipart(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }

    async fn presign_get(&self, key: &str, _: Duration) -> Result<String, StoreError> {
        Ok(key.to_owned())
    }

    // Output storage never writes through slots nor reads objects back.
    async fn presign_put(
        &self,
        _: &str,
        _: &str,
        _: u64,
        _: Duration,
    ) -> Result<PresignedPut, StoreError> {
        Err(StoreError::new("presign put", "the sink keeps no uploads"))
    }

    async fn read_object(&self, _: &str, _: u64) -> Result<ObjectRead, StoreError> {
        Err(StoreError::new("read object", "the sink keeps no bytes"))
    }
}

/// Peak heap above the starting point while storing `count` outputs of `size` bytes.
fn peak_while_storing(count: usize, size: usize) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let allowlist = HostAllowlist::parse("replicate.delivery").unwrap();
    let urls: Vec<String> = (0..count)
        .map(|i| format!("https://replicate.delivery/out-{i}.png"))
        .collect();
    let id = PredictionId::generate();
    let sink = Arc::new(Sink::default());
    let baseline = heap::start();
    let stored = runtime
        .block_on(store_outputs(
            &Source(size),
            sink.as_ref(),
            &allowlist,
            &id,
            &urls,
        ))
        .expect("stored");
    let peak = heap::peak_since(baseline);
    assert_eq!(stored.len(), count);
    for output in &stored {
        assert_eq!(output.size, size as u64);
        assert_eq!(output.sha256.len(), 64);
    }
    let uploaded: u64 = sink.stored.lock().unwrap().iter().map(|(_, n)| n).sum();
    assert_eq!(
        uploaded,
        (count * size) as u64,
        "every byte reached the bucket"
    );
    peak
}

#[test]
fn peak_memory_does_not_grow_with_output_size() {
    let _alone = heap::exclusive();
    const MB: usize = 1024 * 1024;
    let small = peak_while_storing(4, 2 * MB);
    let large = peak_while_storing(4, 20 * MB);
    let huge = peak_while_storing(4, 60 * MB);
    for (label, bytes, peak) in [
        ("4 x 2 MB", 8 * MB, small),
        ("4 x 20 MB", 80 * MB, large),
        ("4 x 60 MB", 240 * MB, huge),
    ] {
        println!(
            "memory-bound: storing {label} ({} MB) peaked at {:.1} MB of heap",
            bytes / MB,
            peak as f64 / MB as f64
        );
    }
    // Bounded by a few parts' worth, whatever the size: 80 MB and 240 MB of outputs need
    // the same memory.
    let bound = 3 * PART_SIZE;
    assert!(
        large <= bound,
        "4 x 20 MB peaked at {large} bytes (bound {bound})"
    );
    assert!(
        huge <= bound,
        "4 x 60 MB peaked at {huge} bytes (bound {bound})"
    );
    assert!(
        huge <= large + PART_SIZE / 2,
        "peak grew with size: {large} -> {huge}"
    );
}
