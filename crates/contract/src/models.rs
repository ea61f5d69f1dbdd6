//! `GET /v1/models` and `GET /v1/models/{id}`.

use serde::{Deserialize, Serialize};

use crate::Extra;

/// `{"object":"list","data":[...]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelList {
    #[serde(default = "list_object")]
    pub object: String,
    pub data: Vec<Model>,
    #[serde(flatten)]
    pub extra: Extra,
}

impl ModelList {
    /// A list of the given models.
    pub fn new(data: Vec<Model>) -> Self {
        ModelList {
            object: list_object(),
            data,
            extra: Extra::new(),
        }
    }
}

fn list_object() -> String {
    "list".to_owned()
}

/// One model. Servers add their own fields (`meta`, context length, ...), kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    #[serde(default = "model_object")]
    pub object: String,
    #[serde(default)]
    pub created: i64,
    #[serde(default)]
    pub owned_by: String,
    #[serde(flatten)]
    pub extra: Extra,
}

impl Model {
    /// A model entry with no extra fields.
    pub fn new(id: impl Into<String>, created: i64, owned_by: impl Into<String>) -> Self {
        Model {
            id: id.into(),
            object: model_object(),
            created,
            owned_by: owned_by.into(),
            extra: Extra::new(),
        }
    }
}

fn model_object() -> String {
    "model".to_owned()
}
