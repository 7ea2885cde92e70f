//! The daemon's own API token (`http.api_token`): the bearer every `/v1/`
//! route checks.

use axum::http::{HeaderMap, StatusCode, header};
use omni_connector::{
    Secret, WebhookResponse, signature::constant_time_eq, webhook::error_response,
};
use sha2::{Digest as _, Sha256};

/// The configured token, kept as its SHA-256: presented tokens are hashed
/// and the digests compared in constant time, so neither the token's
/// bytes nor its length leak through timing.
#[derive(Debug)]
pub(crate) struct ApiToken {
    sha256: [u8; 32],
}

impl ApiToken {
    pub(crate) fn new(token: &Secret) -> Self {
        Self::from_bytes(token.expose())
    }

    fn from_bytes(token: &[u8]) -> Self {
        Self {
            sha256: Sha256::digest(token).into(),
        }
    }

    /// Whether `presented` is the configured token.
    pub(crate) fn authorizes(&self, presented: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented).into();
        constant_time_eq(&digest, &self.sha256)
    }

    /// Checks a request's `Authorization: Bearer` header. On refusal: why,
    /// for the log (answer [`unauthorized`]).
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().as_bytes());
        match presented {
            Some(token) if self.authorizes(token) => Ok(()),
            Some(_) => Err("wrong token"),
            None => Err("no bearer token"),
        }
    }
}

/// The 401 answer of a missing or wrong bearer token.
pub(crate) fn unauthorized() -> WebhookResponse {
    let mut response = error_response(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or wrong bearer token",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Bearer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn only_the_configured_bearer_token_passes() {
        let token = ApiToken::from_bytes(b"helpdesk-token");
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            token.authorize(&headers)
        };
        assert_eq!(with("Bearer helpdesk-token"), Ok(()));
        assert_eq!(with("bearer  helpdesk-token "), Ok(()));
        assert_eq!(with("Bearer helpdesk-tokeN"), Err("wrong token"));
        assert_eq!(with("Bearer "), Err("wrong token"));
        assert_eq!(with("Basic helpdesk-token"), Err("no bearer token"));
        assert_eq!(token.authorize(&HeaderMap::new()), Err("no bearer token"));
        assert_eq!(unauthorized().status(), StatusCode::UNAUTHORIZED);
    }
}
