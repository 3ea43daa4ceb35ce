//! Output downloads in memory: scripted chunks, by URL.

use super::*;

/// A download that yields the given chunks.
pub struct ScriptedDownload {
    chunks: VecDeque<Vec<u8>>,
    content_type: Option<String>,
    length: Option<u64>,
}

impl ScriptedDownload {
    pub fn new(chunks: Vec<Vec<u8>>, content_type: Option<&str>) -> Self {
        let length = Some(chunks.iter().map(|c| c.len() as u64).sum());
        Self {
            chunks: chunks.into(),
            content_type: content_type.map(str::to_owned),
            length,
        }
    }

    pub fn with_length(mut self, length: u64) -> Self {
        self.length = Some(length);
        self
    }
}

impl Download for ScriptedDownload {
    fn content_type(&self) -> Option<String> {
        self.content_type.clone()
    }

    fn content_length(&self) -> Option<u64> {
        self.length
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, OutputError> {
        Ok(self.chunks.pop_front().map(Bytes::from))
    }
}

/// Output files by URL.
#[derive(Default)]
pub struct MemorySource {
    files: Mutex<HashMap<String, Vec<u8>>>,
    opened: Mutex<Vec<String>>,
}

impl MemorySource {
    pub fn insert(&self, url: &str, body: Vec<u8>) {
        lock(&self.files).insert(url.to_owned(), body);
    }

    pub fn opened(&self) -> Vec<String> {
        lock(&self.opened).clone()
    }
}

impl OutputSource for MemorySource {
    type Download = ScriptedDownload;

    async fn open(&self, url: &Url) -> Result<ScriptedDownload, OutputError> {
        lock(&self.opened).push(url.to_string());
        match lock(&self.files).get(url.as_str()) {
            Some(body) => Ok(ScriptedDownload::new(vec![body.clone()], None)),
            None => Err(OutputError::Http(404)),
        }
    }
}
