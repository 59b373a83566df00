//! The admin API's credential: `Authorization: Bearer <ADMIN_API_KEY>`. Unset, the admin
//! API does not exist (404), so an instance without it offers nothing to guess at.

use axum::http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::ApiError;

#[derive(Clone)]
pub struct AdminKey {
    /// SHA-256 of the key: comparing digests leaks nothing about the key's bytes.
    digest: Option<[u8; 32]>,
}

impl AdminKey {
    pub fn new(key: Option<&SecretString>) -> Self {
        let digest = key
            .map(|key| key.expose_secret().trim().to_owned())
            .filter(|key| !key.is_empty())
            .map(|key| Sha256::digest(key.as_bytes()).into());
        Self { digest }
    }

    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(expected) = self.digest else {
            return Err(ApiError::NotFound(
                "the admin API is off: set ADMIN_API_KEY to turn it on".to_owned(),
            ));
        };
        let shown = super::bearer(headers).map(|key| <[u8; 32]>::from(Sha256::digest(key)));
        if shown == Some(expected) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized(
                "the admin API takes Authorization: Bearer <ADMIN_API_KEY>".to_owned(),
            ))
        }
    }
}
