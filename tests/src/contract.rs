//! Responses checked against the API's OpenAPI document (`shared/openapi.json`, served at
//! `GET /openapi.json`): the status must be documented for the route and method, and the
//! body must match the documented schema of its media type.

use std::sync::OnceLock;

use serde_json::{Value, json};

pub struct OpenApi {
    doc: Value,
}

impl OpenApi {
    pub fn get() -> &'static Self {
        static DOC: OnceLock<OpenApi> = OnceLock::new();
        DOC.get_or_init(|| Self {
            doc: serde_json::from_str(imagegen_shared::http::OPENAPI_DOCUMENT)
                .expect("the OpenAPI document is JSON"),
        })
    }

    pub fn document(&self) -> &Value {
        &self.doc
    }

    /// The documented path template `path` falls under (the most literal one).
    pub fn path_template(&self, path: &str) -> Option<&str> {
        let paths = self.doc["paths"].as_object()?;
        paths
            .keys()
            .filter(|template| matches(template, path))
            .max_by_key(|t| t.split('/').filter(|s| !s.starts_with('{')).count())
            .map(String::as_str)
    }

    /// Checks one response; `Err` says what does not conform.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &Value,
    ) -> Result<(), String> {
        let template = self
            .path_template(path)
            .ok_or_else(|| format!("{path} is not in the document"))?;
        let operation = &self.doc["paths"][template][method.to_ascii_lowercase()];
        if operation.is_null() {
            return Err(format!("{method} {template} is not in the document"));
        }
        let response = &operation["responses"][status.to_string()];
        if response.is_null() {
            return Err(format!("{method} {template} does not document {status}"));
        }
        let Some(content) = response["content"].as_object() else {
            return Ok(());
        };
        let media = content_type
            .map(|c| c.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let schema = &content.get(&media).ok_or_else(|| {
            format!("{method} {template} {status}: {media} is not a documented media type")
        })?["schema"];
        let root = json!({"allOf": [schema], "components": self.doc["components"]});
        let validator = jsonschema::validator_for(&root).map_err(|e| {
            format!("{method} {template} {status}: the schema does not compile: {e}")
        })?;
        let errors: Vec<String> = validator
            .iter_errors(body)
            .take(5)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{method} {template} {status}: {}",
                errors.join("; ")
            ))
        }
    }

    /// `check`, failing the test.
    pub fn assert_conforms(
        &self,
        method: &str,
        path: &str,
        status: u16,
        content_type: Option<&str>,
        body: &Value,
    ) {
        if let Err(reason) = self.check(method, path, status, content_type, body) {
            panic!("response outside the OpenAPI document: {reason}\n{body}");
        }
    }
}

fn matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (
        template.trim_end_matches('/').split('/').collect(),
        path.trim_end_matches('/').split('/').collect(),
    );
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}
