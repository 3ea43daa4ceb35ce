//! The object store in memory, with S3's multipart rules.

use super::*;

/// A multipart upload in progress: key, content type, parts so far by number (ETag, body).
type OpenUpload = (String, String, BTreeMap<i32, (String, Bytes)>);

/// S3's smallest part of a multipart upload, except the last (`EntityTooSmall`).
const S3_MIN_PART_SIZE: usize = 5 * 1024 * 1024;

#[derive(Default)]
pub struct MemoryObjects {
    objects: Mutex<HashMap<String, (Vec<u8>, String)>>,
    uploads: Mutex<HashMap<String, OpenUpload>>,
    part_sizes: Mutex<HashMap<String, Vec<usize>>>,
    started: Mutex<usize>,
    failing_puts: Mutex<usize>,
}

impl MemoryObjects {
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, String)> {
        lock(&self.objects).get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.objects).keys().cloned().collect();
        keys.sort();
        keys
    }

    pub fn multipart_uploads_started(&self) -> usize {
        *lock(&self.started)
    }

    pub fn open_multipart_uploads(&self) -> usize {
        lock(&self.uploads).len()
    }

    pub fn part_sizes(&self, key: &str) -> Vec<usize> {
        lock(&self.part_sizes).get(key).cloned().unwrap_or_default()
    }

    /// Makes the next `n` object writes fail, as an S3 outage would.
    pub fn fail_next_puts(&self, n: usize) {
        *lock(&self.failing_puts) = n;
    }

    fn injected_failure(&self) -> Result<(), StoreError> {
        let mut failing = lock(&self.failing_puts);
        if *failing > 0 {
            *failing -= 1;
            return Err(StoreError::new("put object", "injected failure"));
        }
        Ok(())
    }
}

impl ObjectStore for MemoryObjects {
    async fn put_object(
        &self,
        key: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        self.injected_failure()?;
        lock(&self.objects).insert(key.to_owned(), (body.to_vec(), content_type.to_owned()));
        Ok(())
    }

    async fn create_multipart(&self, key: &str, content_type: &str) -> Result<String, StoreError> {
        let id = PredictionId::generate().to_string();
        lock(&self.uploads).insert(
            id.clone(),
            (key.to_owned(), content_type.to_owned(), BTreeMap::new()),
        );
        *lock(&self.started) += 1;
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.injected_failure()?;
        if !(1..=10_000).contains(&part_number) {
            return Err(StoreError::new(
                "upload part",
                "part numbers are 1 to 10000",
            ));
        }
        let mut uploads = lock(&self.uploads);
        let upload = uploads
            .get_mut(upload_id)
            .filter(|u| u.0 == key)
            .ok_or_else(|| StoreError::new("upload part", "no such upload"))?;
        // Like S3's (an MD5), the ETag names the content; a part uploaded again replaces it.
        let digest = sha2::Sha256::digest(&body);
        let etag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let etag = format!("\"{etag}\"");
        upload.2.insert(part_number, (etag.clone(), body));
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError> {
        // S3's checks; a refused complete leaves the upload open, as S3 does.
        let refused = |why: &str| Err(StoreError::new("complete multipart", why));
        let mut uploads = lock(&self.uploads);
        let Some((_, content_type, uploaded)) = uploads.get(upload_id).filter(|u| u.0 == key)
        else {
            return refused("no such upload");
        };
        if parts.is_empty() {
            return refused("no parts (MalformedXML)");
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return refused("parts not in ascending order (InvalidPartOrder)");
        }
        let mut chosen = Vec::with_capacity(parts.len());
        for (number, etag) in parts {
            match uploaded.get(number) {
                Some((stored, body)) if stored.trim_matches('"') == etag.trim_matches('"') => {
                    chosen.push(body);
                }
                _ => return refused("a part was not uploaded with that ETag (InvalidPart)"),
            }
        }
        if chosen[..chosen.len() - 1]
            .iter()
            .any(|b| b.len() < S3_MIN_PART_SIZE)
        {
            return refused("a part other than the last is under 5 MiB (EntityTooSmall)");
        }
        let sizes = chosen.iter().map(|b| b.len()).collect();
        let body = chosen.iter().flat_map(|b| b.iter().copied()).collect();
        let content_type = content_type.clone();
        uploads.remove(upload_id);
        drop(uploads);
        lock(&self.part_sizes).insert(key.to_owned(), sizes);
        lock(&self.objects).insert(key.to_owned(), (body, content_type));
        Ok(())
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        match lock(&self.uploads).remove(upload_id) {
            Some(_) => Ok(()),
            None => Err(StoreError::new("abort multipart", "no such upload")),
        }
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        Ok(format!(
            "https://bucket.example/{key}?expires-in={}",
            ttl.as_secs()
        ))
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        ttl: Duration,
    ) -> Result<PresignedPut, StoreError> {
        Ok(PresignedPut {
            url: format!(
                "https://bucket.example/{key}?method=PUT&expires-in={}",
                ttl.as_secs()
            ),
            headers: vec![
                ("content-length".to_owned(), size.to_string()),
                ("content-type".to_owned(), content_type.to_owned()),
            ],
        })
    }

    async fn read_object(&self, key: &str, max_bytes: u64) -> Result<ObjectRead, StoreError> {
        Ok(match lock(&self.objects).get(key) {
            None => ObjectRead::Missing,
            Some((bytes, _)) if bytes.len() as u64 > max_bytes => ObjectRead::TooLarge {
                size: bytes.len() as u64,
            },
            Some((bytes, content_type)) => ObjectRead::Found {
                content_type: content_type.clone(),
                bytes: Bytes::from(bytes.clone()),
            },
        })
    }
}
